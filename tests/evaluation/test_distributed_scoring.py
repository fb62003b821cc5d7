"""Distributed evaluation does not stall DDP: while rank 0 scores, the other ranks wait on
the evaluation's own gloo group (instseg.evaluation.coco.evaluation_group), not on the
training group, whose short timeout stands in for NCCL's watchdog here.

Two gloo processes (torch.multiprocessing, as DDP starts them) with a training group whose
timeout is 3 s, and a scorer slowed to 6 s on rank 0 by a subclass: the evaluation finishes
with one process's numbers on both ranks; then the same wait on the training group itself
times out (the control that shows the timeout is real).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from instseg.data.coco import CocoInstances
from instseg.evaluation.coco import CocoEvaluator
from tests.conftest import shared_data

TRAINING_TIMEOUT_S = 3
SLOW_SCORING_S = 6
IMAGES = 24


class SlowScorer(CocoEvaluator):
    """A CocoEvaluator whose scoring takes `delay` seconds longer (a large validation set)."""

    def __init__(self, *args, delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def score(self, image_ids, results):
        time.sleep(self.delay)
        return super().score(image_ids, results)


def _outputs(target: dict, generator: torch.Generator) -> dict:
    """The ground truth as detections, boxes shifted and scores drawn: imperfect bbox AP."""
    boxes = target["boxes"] + torch.randn(target["boxes"].shape, generator=generator) * 4
    return {"boxes": boxes, "labels": target["labels"],
            "scores": torch.rand(len(boxes), generator=generator),
            "masks": target["masks"][:, None].float()}


def _dataset(root) -> CocoInstances:
    return CocoInstances(root / "images/train2017", root / "annotations/instances_train2017.json",
                         train=True)


def _evaluate(evaluator: CocoEvaluator, dataset: CocoInstances, indices) -> dict:
    generator = torch.Generator().manual_seed(0)
    outputs = {}
    for index in range(IMAGES):  # the same draws in every process
        _, target = dataset[index]
        outputs[index] = (target["image_id"], _outputs(target, generator))
    for index in indices:
        image_id, output = outputs[index]
        evaluator.process([image_id], [output])
    return evaluator.evaluate()


def _rank(rank: int, world: int, init_file: str, root, out_dir) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=TRAINING_TIMEOUT_S))
    dataset = _dataset(root)
    evaluator = SlowScorer(dataset.coco, dataset.categories, verbose=False,
                           delay=SLOW_SCORING_S if rank == 0 else 0)
    started = time.monotonic()
    metrics = _evaluate(evaluator, dataset, range(rank, IMAGES, world))
    (out_dir / f"rank{rank}.json").write_text(
        json.dumps({"metrics": metrics, "seconds": time.monotonic() - started}))
    # The control: rank 0 as busy, the other rank waiting on the training group itself.
    if rank == 0:
        time.sleep(SLOW_SCORING_S)
    try:
        dist.broadcast_object_list([rank], src=0)
        outcome = "finished"
    except RuntimeError as error:
        outcome = f"timed out: {error}"
    (out_dir / f"control{rank}.txt").write_text(outcome)


def test_slow_rank0_scoring_does_not_time_out_the_waiting_rank(tmp_path):
    root = shared_data("coco128-seg")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), root, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["seconds"] > TRAINING_TIMEOUT_S  # rank 1 did wait past the timeout
    dataset = _dataset(root)
    single = _evaluate(CocoEvaluator(dataset.coco, dataset.categories, verbose=False),
                       dataset, range(IMAGES))
    assert ranks[0]["metrics"] == ranks[1]["metrics"] == single
    assert 0.2 < single["bbox_mAP"] < 0.99  # an imperfect, nontrivial score
    # the same wait on the training group does time out: the set-up's timeout is real
    assert (tmp_path / "control1.txt").read_text().startswith("timed out")
