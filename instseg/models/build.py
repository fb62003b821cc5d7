"""A LightningModule from a model config.

Args of `instantiate_module(model, **options)`:
    model: a resolved model config (dict; conf/model/<name>.yaml, with `num_classes` already
        filled in: the model's outputs, categories plus background). The keys `weights` and
        `coco_weights` say where training starts; the task reads them, so they are left out
        here, and so are run options that checkpoints of earlier versions recorded inside the
        model config (today the task passes them).
    options: the module's run options (eval backend, NaN policy, optimizer kernel, allocator),
        passed by the task.
Returns the instantiated module (`instseg.models.MaskRCNNModule` for conf/model/).
A user error inside the config (InstsegError raised while instantiating) surfaces alone.
"""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from instseg.utils.errors import InstsegError

# Keys of the model config that the task reads rather than the LightningModule.
PRETRAINED_KEYS = ("weights", "coco_weights")
# Run options that checkpoints of earlier versions recorded inside the model config.
FORMER_MODEL_KEYS = ("eval_backend", "nonfinite_loss", "reuse_memory", "fused_optimizer")


def instantiate_module(model: dict, **options) -> pl.LightningModule:
    dropped = PRETRAINED_KEYS + FORMER_MODEL_KEYS
    try:
        return instantiate({k: v for k, v in model.items() if k not in dropped}, **options)
    except InstantiationException as error:  # a user error in the config: its message alone
        if isinstance(error.__cause__, InstsegError):
            raise error.__cause__ from None
        raise
