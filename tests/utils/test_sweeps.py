"""SweepSummary's figure: each job's metric history read back from real TensorBoard and CSV
logs, the bars and curves drawn from them, and summary.png written at the end of a sweep."""

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from instseg.utils.sweeps import (
    SweepSummary,
    differing_overrides,
    job_histories,
    metric_history,
    sweep_figure,
)

METRIC = "val/segm_mAP"
# Values a float32 holds exactly: TensorBoard stores scalars as float32.
TENSORBOARD_HISTORY = [(10, 0.125), (20, 0.25), (30, 0.5)]
CSV_HISTORY = [(5, 0.25), (15, 0.375)]


def _tensorboard_job(output_dir: Path) -> None:
    """Logged as conf/logger/tensorboard.yaml logs, with a training metric in between."""
    logger = TensorBoardLogger(save_dir=output_dir / "tensorboard", name=None, version="",
                               default_hp_metric=False)
    for step, value in TENSORBOARD_HISTORY:
        logger.log_metrics({"train/loss": 1.0 / step}, step=step - 1)
        logger.log_metrics({METRIC: value}, step=step)
    logger.finalize("success")


def _csv_job(output_dir: Path) -> None:
    """Logged as conf/logger/csv.yaml logs: rows of other metrics leave METRIC empty."""
    logger = CSVLogger(save_dir=output_dir, name="csv", version="")
    for step, value in CSV_HISTORY:
        logger.log_metrics({"train/loss": 1.0 / step}, step=step - 1)
        logger.log_metrics({METRIC: value}, step=step)
    logger.save()


def _job(number: int, value: float | None, output_dir: Path, overrides: str) -> dict:
    return {"job": number, "overrides": f"trainer.max_epochs=1 {overrides}", METRIC: value,
            "status": "done" if value is not None else "failed: boom",
            "output_dir": str(output_dir)}


@pytest.fixture
def jobs(tmp_path) -> list[dict]:
    """Best first: TensorBoard logs, CSV logs, no logs, failed without logs."""
    directories = [tmp_path / name for name in ("0", "1", "2", "3")]
    for directory in directories:
        directory.mkdir()
    _tensorboard_job(directories[0])
    _csv_job(directories[1])
    return [_job(0, 0.5, directories[0], "seed=1"), _job(1, 0.375, directories[1], "seed=2"),
            _job(2, 0.25, directories[2], "seed=3"), _job(3, None, directories[3], "seed=4")]


def test_metric_history_reads_tensorboard_and_csv_logs(jobs):
    assert metric_history(Path(jobs[0]["output_dir"]), METRIC) == TENSORBOARD_HISTORY
    assert metric_history(Path(jobs[1]["output_dir"]), METRIC) == CSV_HISTORY
    assert metric_history(Path(jobs[2]["output_dir"]), METRIC) == []
    assert metric_history(Path(jobs[0]["output_dir"]), "val/absent") == []


def test_metric_history_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
    for step, value in [(20, 0.5), (10, 0.25), (20, 0.75)]:
        logger.log_metrics({METRIC: value}, step=step)
    logger.save()
    assert metric_history(tmp_path, METRIC) == [(10, 0.25), (20, 0.75)]


def test_differing_overrides_leave_out_what_every_job_shares(jobs):
    assert differing_overrides(jobs) == ["seed=1", "seed=2", "seed=3", "seed=4"]


def test_figure_has_a_bar_per_finished_job_and_a_line_per_logged_job(jobs):
    histories, unreadable = job_histories(jobs, METRIC)
    assert unreadable == []
    bars, curves = sweep_figure(jobs, METRIC, histories).axes
    assert [bar.get_width() for bar in bars.patches] == [0.5, 0.375, 0.25]
    assert [label.get_text() for label in bars.get_yticklabels()] == [
        "0: seed=1", "1: seed=2", "2: seed=3", "3: seed=4"]
    assert "failed" in " ".join(text.get_text() for text in bars.texts)
    lines = curves.get_lines()
    assert len(lines) == 2
    assert lines[0].get_xydata().tolist() == [list(pair) for pair in TENSORBOARD_HISTORY]
    assert lines[1].get_xydata().tolist() == [list(pair) for pair in CSV_HISTORY]
    assert [line.get_label() for line in lines] == ["job 0", "job 1"]


def test_an_unreadable_log_is_named_and_the_rest_are_plotted(jobs, caplog):
    broken = Path(jobs[2]["output_dir"]) / "csv" / "metrics.csv"
    broken.parent.mkdir()
    broken.write_text(f"{METRIC},step\nnot a number,3\n")
    with caplog.at_level(logging.WARNING, logger="instseg.utils.sweeps"):
        histories, unreadable = job_histories(jobs, METRIC)
    assert unreadable == [2]
    assert "job 2" in caplog.text and str(broken) in caplog.text
    assert histories[0] == TENSORBOARD_HISTORY and histories[1] == CSV_HISTORY
    assert len(sweep_figure(jobs, METRIC, histories).axes[1].get_lines()) == 2


def test_sweep_end_writes_a_readable_summary_png(jobs, tmp_path, capsys):
    summary = SweepSummary(metric=METRIC)
    summary.jobs = [jobs[3], jobs[1], jobs[0], jobs[2]]  # in the order jobs finish, not ranked
    sweep_dir = tmp_path / "sweep"
    summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    for name in ("summary.json", "summary.csv"):
        assert (sweep_dir / name).is_file()
    with Image.open(sweep_dir / "summary.png") as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
        image.load()  # decodes the whole file: a truncated PNG raises here
    printed = capsys.readouterr().out
    assert f"summary.json, summary.csv and summary.png written to {sweep_dir}" in printed
    assert "2 of 4 jobs with a val/segm_mAP curve" in printed
    assert "2 without val/segm_mAP" in printed and "(jobs 2, 3)" in printed
