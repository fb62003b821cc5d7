"""The optimizer from its config partial, with torch's fused kernel where it has one.

torch's SGD, Adam and AdamW step on CPU with a Python loop over the parameter tensors by
default (and with `foreach` kernels on CUDA); `fused=True` updates every tensor in one
kernel call per group. The update is the same (rounding may differ in the last bits); it is
faster: `python benchmarks/bench_train_step.py` prints the optimizer step alone, fused and
torch's default, on the benchmark's model (small_cpu's 12.5 M parameters: AdamW 7.9 ms
against 36.0 ms on 2 CPU cores, benchmarks/README.md).

An optimizer config that sets `fused` or `foreach` itself is taken as it is, and so is an
optimizer class without a `fused` argument.

The implementation is the one built here even after `load_state_dict` (a resumed run):
torch would take the checkpoint's `fused`/`foreach` along with its hyperparameters, so a
checkpoint written unfused would make a fused-built optimizer step unfused while still
telling a GradScaler that it unscales the gradients itself, which it then would not.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable

import torch


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    params: Iterable[torch.nn.Parameter],
    fused: bool = True,
) -> torch.optim.Optimizer:
    """`factory(params=params)`, adding `fused=True` when asked for and `takes_fused`."""
    if fused and takes_fused(factory):
        optimizer = factory(params=params, fused=True)
    else:
        optimizer = factory(params=params)
    optimizer.register_load_state_dict_post_hook(_implementation_keeper(optimizer))
    return optimizer


IMPLEMENTATION_KEYS = ("fused", "foreach")


def _implementation_keeper(optimizer: torch.optim.Optimizer):
    """A load_state_dict post-hook that puts back the implementation `optimizer` was built
    with (its groups' fused/foreach), whatever the loaded state says."""
    built = [{k: group[k] for k in IMPLEMENTATION_KEYS if k in group}
             for group in optimizer.param_groups]

    def keep(loaded: torch.optim.Optimizer) -> None:
        for group, implementation in zip(loaded.param_groups, built, strict=True):
            group.update(implementation)

    return keep


def takes_fused(factory: Callable[..., torch.optim.Optimizer]) -> bool:
    """Whether `factory` (an optimizer class, or a functools.partial of one as Hydra's
    `_partial_: true` makes) accepts `fused` and its configured arguments leave the choice
    of implementation open."""
    configured = factory.keywords if isinstance(factory, functools.partial) else {}
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return False
    return "fused" in parameters and not {"fused", "foreach"} & configured.keys()
