"""Checkpoints refuse to load where they do not belong.

- `check_fits`: a checkpoint resumed or evaluated must have been written by the same
  architecture (the model config's `net`, and weights of the same names and shapes), else an
  InstsegError lists the differing `model.net` keys and the state-dict mismatch. Run options,
  the weights a run started from, the optimizer and the schedule may differ.
- `check_targets`: a config read from a checkpoint may only instantiate allowlisted
  callables (a checkpoint from elsewhere could name os.system). Files themselves are read
  with torch.load(weights_only=True): no pickled code runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from instseg.utils.errors import InstsegError

# The part of a model config that says what the model is: what check_fits compares.
ARCHITECTURE = "net"
# What conf/model/** and conf/data/** instantiate; a checkpoint's config may name nothing else.
MODEL_TARGETS = ("instseg.models.", "torchvision.models.detection.", "torchvision.ops.",
                 "torch.optim.", "torch.nn.")
DATA_TARGETS = ("instseg.data.",)
# Hydra helpers that return the object named by their `path` argument: that path is checked.
LOOKUPS = ("hydra.utils.get_class", "hydra.utils.get_method", "hydra.utils.get_object")
SHOWN = 5  # keys listed per kind of mismatch


def check_fits(path, recorded_model: dict, current_model: dict,
               checkpoint_state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor],
               hint: str = "") -> int:
    """InstsegError when checkpoint `path` was written by another architecture than the
    current model config's, or its state dict does not fit the model built: both listed.
    Returns the number of architecture keys compared."""
    compared = len(architecture_keys(recorded_model).keys() | architecture_keys(current_model))
    differences = config_differences(recorded_model, current_model)
    mismatch = state_dict_mismatch(checkpoint_state, model_state)
    if not differences and not mismatch:
        return compared
    lines = [f"{path} does not fit this model:"]
    if differences:
        lines += _listed(f"architecture keys that differ (checkpoint -> now; {compared} keys "
                         f"under model.{ARCHITECTURE} compared): {len(differences)}",
                         differences, 2 * SHOWN)
    lines += mismatch or ["(the weights have the same names and shapes)"]
    raise InstsegError("\n  ".join(lines) + (f"\n{hint}" if hint else ""))


def _listed(title: str, items: list[str], shown: int = SHOWN) -> list[str]:
    more = [f"  ... and {len(items) - shown} more"] if len(items) > shown else []
    return [title, *[f"  {item}" for item in items[:shown]], *more]


def architecture_keys(model_config: dict, part: str = ARCHITECTURE) -> dict[str, Any]:
    """The flattened `model.<part>.*` keys of a model config (model.net: the architecture),
    with their values."""
    return _flatten(model_config.get(part) or {}, f"model.{part}")


def config_differences(recorded: dict, current: dict, part: str = ARCHITECTURE) -> list[str]:
    """`key: recorded -> current` for every key under model.<part> (by default model.net,
    the architecture) whose values differ between two model configs."""
    recorded, current = architecture_keys(recorded, part), architecture_keys(current, part)
    absent = "(absent)"
    return [f"{key}: {recorded.get(key, absent)} -> {current.get(key, absent)}"
            for key in sorted(recorded.keys() | current.keys())
            if recorded.get(key, absent) != current.get(key, absent)]


def _flatten(config: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat |= _flatten(value, f"{prefix}.{key}")
    return flat


def state_dict_mismatch(found: dict[str, torch.Tensor],
                        expected: dict[str, torch.Tensor]) -> list[str]:
    """Lines counting (and listing a few of) the keys missing from `found`, not expected,
    and of another shape; empty when `found` fits `expected`."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} -> {tuple(expected[k].shape)}"
              for k in expected if k in found and found[k].shape != expected[k].shape]
    kinds = [("missing from the checkpoint", missing), ("not in the model", unexpected),
             ("of another shape (checkpoint -> model)", shapes)]
    return [line for what, keys in kinds if keys
            for line in _listed(f"weights {what}: {len(keys)}", keys)]


def check_targets(config: Any, allowed: tuple[str, ...], path, where: str = "") -> None:
    """InstsegError unless every `_target_` in `config` (and every `path` a Hydra lookup
    helper names) starts with one of the `allowed` module prefixes."""
    for key, target in _targets(config, where):
        if not target.startswith(allowed):
            raise InstsegError(
                f"{path}: its recorded config names {target!r} at {key}; from a checkpoint "
                f"only {', '.join(p + '*' for p in allowed)} are instantiated (a checkpoint "
                "from elsewhere could name any function). Not loading it."
            )


def _targets(config: Any, where: str) -> Iterable[tuple[str, str]]:
    """(dotted key, callable name) of every instantiation in `config`."""
    if isinstance(config, list):
        for index, item in enumerate(config):
            yield from _targets(item, f"{where}[{index}]")
        return
    if not isinstance(config, dict):
        return
    target = config.get("_target_")
    if target is not None:
        if target in LOOKUPS:
            yield f"{where}.path", str(config.get("path"))
        else:
            yield f"{where}._target_", str(target)
    for key, value in config.items():
        yield from _targets(value, f"{where}.{key}" if where else str(key))
