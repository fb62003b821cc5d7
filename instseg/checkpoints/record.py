"""The run record in every checkpoint written by `train`, and reading it back.

Under the key "instseg" a checkpoint holds the resolved config of its run (with the derived
`num_classes` and, with linear scaling, `scaling`), the dataset's categories (COCO ids and
names, in label order) and the validation metrics of the evaluation callback when it was
saved; under "instseg_rng_states" the RNG states, so that a resumed run's random draws
continue where they stopped. `evaluate.py ckpt=` rebuilds model and data from it alone.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from instseg.data.categories import CategoryMap
from instseg.models.weights import read_torch_file
from instseg.utils.environment import restore_rng_states, rng_states
from instseg.utils.errors import InstsegError

CHECKPOINT_KEY = "instseg"
RNG_KEY = "instseg_rng_states"


class RecordRun(pl.Callback):
    """Adds the run record (see the module docstring) to every checkpoint.

    Args:
        config: the run's resolved config, derived values included.
        categories: the model's label space.
        evaluation: what holds the latest validation metrics as `.metrics`
            ({"val/segm_mAP": ...}; instseg.evaluation.callback.CocoEvaluation), or None.
            An object rather than a function, so that DDP-spawned processes (which receive
            pickled callbacks) read their own copy of it.
    """

    def __init__(self, config: dict, categories: CategoryMap, evaluation=None) -> None:
        self.config = config
        self.categories = categories
        self.evaluation = evaluation

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config,
            "categories": {"ids": list(self.categories.category_ids),
                           "names": list(self.categories.names)},
            # the evaluator's float64 numbers, not the logger's float32 copies
            "metrics": dict(getattr(self.evaluation, "metrics", {})),
        }
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # The model's random draws (RPN and RoI sampling) continue where they stopped, so a
        # resumed run repeats an uninterrupted one (the data has its own seeded draws).
        if RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])


def load_checkpoint(path: str | Path, mmap: bool = False) -> tuple[dict, dict]:
    """(run record, model state dict) of a checkpoint written by `train`."""
    checkpoint = read_torch_file(path, "checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise InstsegError(f"{path}: not a checkpoint written by instseg's train (no run record)")
    return checkpoint[CHECKPOINT_KEY], checkpoint["state_dict"]


def recorded_categories(record: dict) -> CategoryMap:
    ids, names = record["categories"]["ids"], record["categories"]["names"]
    return CategoryMap(tuple(ids), tuple(names))
