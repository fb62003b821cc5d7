"""W&B (offline) and MLflow (its local SQLite store) through a real training run, read back from
the trackers' own files: the run's W&B transaction log and MLflow's database and artifacts."""

import base64
import hashlib
import json
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml

from instseg.tasks.train import train
from instseg.utils.errors import InstsegError
from tests.conftest import compose_config, tiny_train_overrides

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

LOGGED = ("train/loss_mask", "train/loss", "val/segm_mAP", "val/bbox_mAP50", "val/segm_AP/circle")


@pytest.fixture(scope="module")
def tracked_run(tiny_shapes, tmp_path_factory):
    """(run directory, returned metrics, config) of a tiny run logging to TensorBoard, W&B
    (offline) and MLflow together."""
    root = tmp_path_factory.mktemp("tracked")
    environment = {f"WANDB_{name}_DIR": str(root / "wandb_home" / name.lower())
                   for name in ("CACHE", "CONFIG", "DATA")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**environment, "WANDB_SILENT": "true"}.items():
            patch.setenv(name, value)
        cfg = compose_config("train", [*tiny_train_overrides(tiny_shapes),
                                       "logger=[tensorboard,wandb,mlflow]",
                                       "logger.wandb.offline=true"], root)
        metrics = train(cfg)
    return root, metrics, cfg


def wandb_records(run_dir: Path) -> list:
    """Every record of the run's offline transaction log (run-<id>.wandb): a 7-byte header,
    then LevelDB-log blocks of 32 KiB holding (crc32c, length, type) + payload chunks."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, position, block = [], [], 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # the block's tail is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
        elif kind == 0:
            break
    return records


def wandb_history(records) -> dict[str, list]:
    history: dict[str, list] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def test_wandb_offline_run_holds_metrics_config_figures_and_best_checkpoint(tracked_run):
    root, metrics, cfg = tracked_run
    records = wandb_records(root)
    history = wandb_history(records)
    for key in LOGGED:
        assert key in history, key
    assert history["val/segm_mAP"][-1] == pytest.approx(metrics["val/segm_mAP"], abs=1e-7)
    assert len(history["val/segm_mAP"]) == 2  # two validations
    config = {item.key: json.loads(item.value_json) for record in records
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr
    assert config["data"]["root"] == cfg.data.root
    assert config["model_cost"]["gflops"] > 0
    # WandbLogger.log_image logs a list of images: its fields are nested keys of the tag
    assert history["val/precision_recall/_type"] == ["images/separated"] * 2
    (files,) = root.glob("wandb/offline-run-*/files")
    for (name,) in history["val/precision_recall/filenames"]:
        assert (files / name).stat().st_size > 0

    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and "best" in artifact.aliases
    (entry,) = artifact.manifest.contents
    best = next((root / "checkpoints").glob("best-*.ckpt"))
    assert entry.path == best.name
    md5 = base64.b64encode(hashlib.md5(best.read_bytes()).digest()).decode()
    assert entry.digest == md5
    logged_score = json.loads(artifact.metadata)["score"]
    assert logged_score == pytest.approx(
        torch.load(best, weights_only=True)["instseg"]["metrics"]["val/segm_mAP"], abs=1e-7)


def test_mlflow_store_holds_metrics_parameters_figures_and_best_checkpoint(tracked_run):
    root, metrics, cfg = tracked_run
    with sqlite3.connect(root / "logs" / "mlflow.db") as db:
        (run_id, artifact_uri), = db.execute("select run_uuid, artifact_uri from runs").fetchall()
        rows = db.execute("select key, value, step from metrics order by step").fetchall()
        params = dict(db.execute("select key, value from params").fetchall())
        tags = dict(db.execute("select key, value from tags").fetchall())
    names = {key for key, _, _ in rows}
    assert set(LOGGED) <= names
    segm = [value for key, value, _ in rows if key == "val/segm_mAP"]
    assert len(segm) == 2 and segm[-1] == pytest.approx(metrics["val/segm_mAP"], abs=1e-7)
    assert float(params["model/optimizer/lr"]) == cfg.model.optimizer.lr
    assert params["data/root"] == cfg.data.root

    artifacts = Path(artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(root / "logs" / "mlflow-artifacts")
    best = next((root / "checkpoints").glob("best-*.ckpt"))
    assert (artifacts / "checkpoints" / best.name).read_bytes() == best.read_bytes()
    assert tags["best_checkpoint"] == best.name
    assert len(list((artifacts / "val" / "precision_recall").glob("step_*.png"))) == 2


def test_tensorboard_records_the_config_as_hyperparameters(tracked_run):
    root, _, cfg = tracked_run
    hparams = yaml.safe_load((root / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr


@pytest.mark.parametrize(("logger", "extra"), [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(logger, extra, tiny_shapes,
                                                                tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, extra, None)  # `import wandb` fails as if not installed
    cfg = compose_config("train", [*tiny_train_overrides(tiny_shapes), f"logger={logger}"],
                         tmp_path)
    with pytest.raises(InstsegError) as error:
        train(cfg)
    message = str(error.value)
    assert f'pip install -e ".[{extra}]"' in message and "\n" not in message
    assert message.startswith(f"logger.{logger}: ")
