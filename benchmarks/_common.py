"""What the benchmark scripts share: the repository on sys.path, the Hydra config composed as
the entry scripts compose it, an endless batch stream, the plain training step, quiet
Lightning logs and the help formatter. Imported by the scripts as `_common` (their own
folder is sys.path[0]).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from instseg.models.module import TARGET_KEYS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # instseg without an install


def compose_config(name: str, overrides: list[str], work: Path, output_dir: Path,
                   data_dir: Path | None = None) -> DictConfig:
    """conf/<name>.yaml with `overrides`, as train.py / evaluate.py compose it, writing under
    `work` (paths.root_dir) and into `output_dir`; `data_dir` sets paths.data_dir."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(work)  # Hydra's runtime resolvers are absent outside @main
        cfg.paths.output_dir = str(output_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    return cfg


def endless(loader):
    """Batches of `loader`, epoch after epoch, calling the sampler's set_epoch as Lightning
    does (the order and augmentation are functions of seed and epoch)."""
    for epoch in itertools.count():
        sampler = getattr(loader.batch_sampler, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader


def plain_training_step(net, params, optimizer, images, targets, clip: float,
                        autocast: torch.dtype | None = None,
                        scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """The hand-written step the benchmarks compare against: zero_grad, forward (under
    torch.autocast to `autocast` if given), the loss terms summed, backward (scaled by
    `scaler` and unscaled before clipping, if given), clip_grad_norm_(params, clip),
    optimizer step; the loss, detached (reading it is a device sync: the caller's choice)."""
    targets = [{k: v for k, v in t.items() if k in TARGET_KEYS} for t in targets]
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images[0].device.type, dtype=autocast, enabled=autocast is not None):
        loss = sum(net(images, targets).values())
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def quiet_lightning() -> None:
    """Keep Lightning's info lines (devices, seed, summary) out of the tables, and its
    deprecation notice about torch's pytree API (Lightning 2.6 on torch 2.14)."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""
