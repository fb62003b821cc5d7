"""`data.num_workers: auto` / `data.pin_memory: auto`: what they resolve to for a trainer."""

import warnings

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from instseg.data.datamodule import CocoDataModule
from instseg.data.workers import MAX_AUTO_WORKERS, resolve_num_workers, resolve_pin_memory
from instseg.utils.errors import InstsegError
from tests.conftest import shared_data


@pytest.mark.parametrize(("cpus", "devices", "expected"), [
    (16, 1, MAX_AUTO_WORKERS),  # capped
    (16, 2, 7),  # 8 CPUs per GPU, one for the main process
    (16, 8, 1),
    (4, 8, 1),  # never none on a GPU
])
def test_auto_workers_on_gpus_share_the_cpus_per_device(monkeypatch, cpus, devices, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    assert resolve_num_workers("auto", "cuda", devices) == expected
    assert resolve_pin_memory("auto", "cuda") is True


def test_auto_on_cpus_or_without_a_trainer_reads_in_the_main_process_without_pinning():
    for device in ("cpu", None):
        assert resolve_num_workers("auto", device) == 0
        assert resolve_pin_memory("auto", device) is False
    assert resolve_num_workers(3, "cpu") == 3 and resolve_pin_memory(True, "cpu") is True


def test_the_datamodules_loaders_use_the_resolved_values():
    root = shared_data("coco128-seg")
    images, annotations = root / "images/train2017", root / "annotations/instances_train2017.json"
    datamodule = CocoDataModule(str(images), str(annotations), str(images), str(annotations))
    datamodule.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    datamodule.setup("fit")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (0, False,
                                                                                     False)


@pytest.mark.parametrize(("option", "value"), [("num_workers", -1), ("num_workers", "four"),
                                               ("pin_memory", "yes")])
def test_a_bad_value_fails_when_the_datamodule_is_built(option, value):
    with pytest.raises(InstsegError, match=f"data.{option}="):
        CocoDataModule("a", "a.json", "b", "b.json", **{option: value})


def test_lightnings_hint_to_add_workers_is_dropped_where_auto_chose_none():
    resolve_num_workers("auto", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("The 'train_dataloader' does not have many workers which may be a "
                      "bottleneck.", PossibleUserWarning, stacklevel=1)
        warnings.warn("The 'train_dataloader' is other news.", PossibleUserWarning,
                      stacklevel=1)
    assert [str(w.message) for w in caught] == ["The 'train_dataloader' is other news."]
