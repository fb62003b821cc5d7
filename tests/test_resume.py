"""Exact resume from a periodic checkpoint, in the default configuration (data=shapes,
model=small_cpu, trainer and callbacks default) with every random augmentation on
(augment=[multiscale,lsj,copy_paste], a superset of the default flip), and in
experiment=coco_r50_fpn made CPU-sized: every loss logged after the resume point, and the
final weights tensor for tensor, equal those of the run never stopped. The runs never
stopped are real `python train.py` processes, as a user runs them; the resumed ones run
train.py's task in the test's process.

Only the run length is cut (max_epochs or max_steps, fewer generated images); the data
module, sampler, worker processes, sanity check, batch and image sizes are the configs' own.
The tiny recipe of test_reliability.py (max_epochs=-1, no workers) cannot show what these
catch: a train loader built before the restore (configure_optimizers reads
estimated_stepping_batches when max_epochs is set), worker processes (their loader iterates
the batch sampler twice), and a validation after the resume point (a resumed run has no
sanity check, which would have created the validation loader's iterator).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from instseg.data.samplers import EpochSampler, ResumableBatchSampler, ResumableDataLoader
from instseg.tasks.train import train
from tests.conftest import ROOT, compose_config, shared_data

# Shapes: 16 training images are 4 batches per epoch; 2 epochs (epoch-based, as the default
# config), each validated (on 8 images, for time); a checkpoint every 2 steps.
# One loader worker: a GPU run's loader has workers (data.num_workers=auto gives none on CPU).
SHAPES = ["seed=7", "data.num_train=16", "data.num_val=8", "trainer.max_epochs=2",
          "data.num_workers=1"]
STEPS = 8
# The per-sample jitter and crop, the batch's pasting and the model's size draws, cut to the
# shapes' 160 px.
AUGMENTED = ["augment=[multiscale,lsj,copy_paste]", "model.net.min_size=[128,144,160]",
             "model.net.max_size=160", "data.train_transforms.crop_size=[160,160]"]
LOGGING = ["logger=csv", "trainer.log_every_n_steps=1",
           "callbacks.periodic_checkpoint.every_n_train_steps=2",
           "callbacks.periodic_checkpoint.save_top_k=-1"]


class EpochEndSnapshot(pl.Callback):
    """Saves epoch-end-<step>.ckpt into `dirpath` at every training epoch end (after the
    epoch's validation): what last.ckpt holds there when no periodic checkpoint falls on the
    epoch's last batch."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(Path(self.dirpath) / f"epoch-end-{trainer.global_step}.ckpt")


def _train(root: Path, run_dir: Path, *overrides: str,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py` with data and logs under `root`; fails the test unless it ends well."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=root, env=(env or os.environ) | {"INSTSEG_ROOT": str(root)},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _resume(root: Path, run_dir: Path, checkpoint: Path, *overrides: str, caplog) -> None:
    """train.py's task in this process (the command line resumes in test_reliability.py's
    kill test), data under `root` as _train's; checks Lightning said it restored everything."""
    cfg = compose_config("train", [*overrides, f"ckpt_path={checkpoint}"], run_dir)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert f"Restored all states from the checkpoint at {checkpoint}" in caplog.text


def _losses(run_dir: Path) -> dict[int, dict[str, str]]:
    """Step -> the train/ columns (the loss and its terms) of the csv logger's rows, as
    written (exact decimal representations of the float32 values)."""
    rows = {}
    with open(run_dir / "csv" / "metrics.csv") as file:
        for row in csv.DictReader(file):
            if row.get("train/loss"):
                rows[int(row["step"])] = {k: v for k, v in row.items() if k.startswith("train/")}
    return rows


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_repeats(straight: Path, resumed: Path, from_step: int, steps: int) -> None:
    """The resumed run logged the straight run's losses at every step after `from_step`
    optimizer steps and ended with the same weights."""
    expected, got = _losses(straight), _losses(resumed)
    assert sorted(expected) == list(range(steps))  # every step logged (log_every_n_steps=1)
    assert sorted(got) == list(range(from_step, steps))
    different = {step: (expected[step]["train/loss"], got[step]["train/loss"])
                 for step in got if got[step] != expected[step]}
    assert not different, f"losses (straight, resumed) differ at steps {different}"
    final, reference = _state(resumed / "checkpoints" / "last.ckpt"), \
        _state(straight / "checkpoints" / "last.ckpt")
    assert final["global_step"] == reference["global_step"] == steps
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    unequal = [k for k, v in reference["state_dict"].items()
               if not torch.equal(final["state_dict"][k], v)]
    assert not unequal, f"{len(unequal)} of {len(reference['state_dict'])} tensors differ, " \
                        f"e.g. {unequal[:3]}"


class Keys(Dataset):
    """Returns the key the sampler gave (EpochSampler: (draw seed, index))."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key):
        return key


def _epoch(epoch: int) -> list:
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(epoch)
    return list(DataLoader(Keys(), batch_sampler=ResumableBatchSampler(sampler, 3, False),
                           collate_fn=list))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_starts_at_its_saved_position_once_whatever_its_workers(workers):
    """The first iteration continues epoch 1 after its 2 batches trained on, though a loader
    with workers iterates its batch sampler twice to create its iterator; the next epoch is
    whole. Lightning's set_epoch(1) after iter() (as it calls it on a resumed run) changes
    nothing."""
    batches = ResumableBatchSampler(EpochSampler(10, seed=3), 3, False,
                                    start={"epoch": 1, "batches_done": 2})
    loader = DataLoader(Keys(), batch_sampler=batches, collate_fn=list, num_workers=workers,
                        persistent_workers=workers > 0)
    iterator = iter(loader)
    batches.sampler.set_epoch(1)
    assert list(iterator) == _epoch(1)[2:]
    batches.sampler.set_epoch(2)
    assert list(loader) == _epoch(2)


def test_the_position_after_an_epochs_last_batch_is_the_next_epochs_start():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(4)
    loader = ResumableDataLoader(Keys(), batch_sampler=ResumableBatchSampler(sampler, 3, False))
    for done, expected in [(0, (4, 0)), (3, (4, 3)), (4, (5, 0))]:
        loader.progress = lambda done=done: (done, 4)
        state = loader.state_dict()
        assert (state["epoch"], state["batches_done"]) == expected


@pytest.fixture(scope="module")
def shapes_straight(tmp_path_factory) -> Iterator[Path]:
    """The root (generated data, runs) and the run never stopped: straight/."""
    root = tmp_path_factory.mktemp("resume_shapes")
    snapshot = [f"+callbacks.snapshot._target_={__name__}.EpochEndSnapshot",
                f"+callbacks.snapshot.dirpath={root / 'straight' / 'epoch-end'}"]
    _train(root, root / "straight", *SHAPES, *AUGMENTED, *LOGGING, *snapshot)
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~3 GB of checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["checkpoints/step-2", "checkpoints/step-4",
                                        "epoch-end/epoch-end-4"],
                         ids=["mid-epoch", "epoch-last-batch", "epoch-end"])
def test_the_augmented_default_config_resumes_exactly_from_a_periodic_checkpoint(
        shapes_straight, checkpoint, caplog):
    """step-2: mid-epoch 0, then through the epoch's validation into epoch 1; step-4: written
    at the last batch of epoch 0, before its validation (Lightning resumes it in epoch 1,
    without that validation); epoch-end-4: after it."""
    root = shapes_straight
    path = root / "straight" / f"{checkpoint}.ckpt"
    resumed = root / f"resumed-{path.stem}"
    _resume(root, resumed, path, *SHAPES, *AUGMENTED, *LOGGING, caplog=caplog)
    from_step = int(path.stem.rsplit("-", 1)[1])
    _assert_repeats(root / "straight", resumed, from_step, steps=STEPS)


@pytest.mark.slow
def test_the_coco_r50_fpn_experiment_resumes_exactly_from_a_periodic_checkpoint(
        tmp_path, weights_cache, monkeypatch, caplog):
    """COCO-format photos with aspect-ratio grouping (GroupedBatchSampler), the R50-FPN
    with its ImageNet backbone (planted stand-in weights), SGD with warm-up, linearly scaled
    (from a batch of 8 here, for time: one CPU process with batch 2 is a quarter of it, so
    trainer.max_steps=1 runs 4 steps); resumed from step 3 (of 63 per epoch). Small images,
    64 RoIs per image for the box and mask heads (512 in the recipe) and one validation
    batch, for time."""
    coco = shared_data("coco128-seg")
    weights_cache.plant("ResNet50_Weights.IMAGENET1K_V1")
    monkeypatch.setenv("TORCH_HOME", str(weights_cache.root))
    images, annotations = coco / "images" / "train2017", \
        coco / "annotations" / "instances_train2017.json"
    overrides = [
        "experiment=coco_r50_fpn", "data=coco_format", "trainer=cpu",
        f"data.train_images={images}", f"data.train_annotations={annotations}",
        f"data.val_images={images}", f"data.val_annotations={annotations}",
        "trainer.precision=32-true", "trainer.limit_val_batches=1",
        "model.net.min_size=160", "model.net.max_size=224",
        "model.net.box_batch_size_per_image=64",
        "seed=7", "scale_lr_from_batch=8", "trainer.max_steps=1", "logger=csv",
        "trainer.log_every_n_steps=1", "callbacks.periodic_checkpoint.every_n_train_steps=3",
        "callbacks.periodic_checkpoint.save_top_k=-1",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = _train(tmp_path, straight, *overrides)
    assert "linear scaling" in result.stdout + result.stderr
    checkpoint = straight / "checkpoints" / "step-3.ckpt"
    _resume(tmp_path, resumed, checkpoint, *overrides, caplog=caplog)
    _assert_repeats(straight, resumed, from_step=3, steps=4)
