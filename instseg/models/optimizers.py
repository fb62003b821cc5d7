"""The optimizer from its config partial, with torch's fused kernel where it has one.

torch's SGD, Adam and AdamW step on CPU with a Python loop over the parameter tensors by
default (and with `foreach` kernels on CUDA); `fused=True` updates every tensor in one
kernel call per group. The update is the same (rounding may differ in the last bits); it is
faster: `python benchmarks/bench_train_step.py` prints the optimizer step alone, fused and
torch's default, on the benchmark's model (small_cpu's 12.5 M parameters: AdamW 7.9 ms
against 36.0 ms on 2 CPU cores, benchmarks/README.md).

An optimizer config that sets `fused` or `foreach` itself is taken as it is, and so is an
optimizer class without a `fused` argument.
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
        return factory(params=params, fused=True)
    return factory(params=params)


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
