"""Learning-rate schedules in iterations, built from torch.optim.lr_scheduler parts."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)


def warmup_then(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    decay: str = "cosine",
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    min_lr_factor: float = 0.0,
) -> LRScheduler:
    """Linear warm-up from `warmup_factor` x lr over `warmup_steps`, then a decay.

    decay: "cosine" (to `min_lr_factor` x lr at `total_steps`), "step" (multiply by `gamma`
    at each milestone; a milestone below 1 is a fraction of `total_steps`) or "constant".
    """
    after = max(total_steps - warmup_steps, 1)
    if decay == "cosine":
        base = min(group["lr"] for group in optimizer.param_groups)
        main = CosineAnnealingLR(optimizer, T_max=after, eta_min=base * min_lr_factor)
    elif decay == "step":
        steps = [int(m * total_steps) if m < 1 else int(m) for m in milestones]
        main = MultiStepLR(optimizer, milestones=[s - warmup_steps for s in steps], gamma=gamma)
    elif decay == "constant":
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"decay must be 'cosine', 'step' or 'constant', got {decay!r}")
    if warmup_steps <= 0:
        return main
    warmup = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


def linear_scaling(
    reference_batch: int, total_batch: int, lr: float, max_steps: int = -1,
    warmup_steps: int = 0, milestones: Sequence[float] = (),
) -> dict:
    """A recipe's lr and step counts, given for `reference_batch` images per optimizer step,
    at `total_batch` (Goyal et al.'s linear scaling rule): lr x k, steps / k, k = total /
    reference. max_steps -1 (epoch-based) stays; milestones below 1 are fractions of the
    run and stay."""
    factor = total_batch / reference_batch

    def steps(count: float) -> int:
        return max(1, round(count / factor)) if count > 0 else int(count)

    return {
        "factor": factor,
        "lr": lr * factor,
        "max_steps": steps(max_steps) if max_steps > 0 else max_steps,
        "warmup_steps": steps(warmup_steps),
        "milestones": [m if m < 1 else steps(m) for m in milestones],
    }
