"""ImageDetections: compact storage gives the records of the detections, built at once or later."""

import json

import numpy as np
import torch
from pycocotools import mask as mask_utils

from instseg.data.categories import CategoryMap
from instseg.evaluation.detections import (
    ImageDetections,
    records_by_image,
    records_of,
    write_results,
)

CATEGORIES = CategoryMap((3, 7, 12), ("a", "b", "c"))


def _output(count: int, height=40, width=50, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * 20
    boxes = torch.cat([xy, xy + 5 + torch.rand(count, 2, generator=generator) * 20], dim=1)
    return {"boxes": boxes, "labels": torch.randint(1, 4, (count,), generator=generator),
            "scores": torch.rand(count, generator=generator),
            "masks": torch.rand(count, 1, height, width, generator=generator)}


def test_records_carry_exact_float32_values_dataset_ids_and_masks():
    output = _output(5)
    records = ImageDetections.from_output(9, output, CATEGORIES).records()
    assert [r["category_id"] for r in records] == [(3, 7, 12)[i - 1] for i in output["labels"]]
    assert [r["score"] for r in records] == output["scores"].tolist()
    box = output["boxes"][2]
    assert records[2]["bbox"] == [box[0].item(), box[1].item(),
                                  (box[2] - box[0]).item(), (box[3] - box[1]).item()]
    mask = mask_utils.decode(records[4]["segmentation"])
    assert mask.shape == (40, 50)
    np.testing.assert_array_equal(mask, (output["masks"][4, 0] > 0.5).numpy())


def test_no_detections_and_no_masks():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0), "masks": torch.zeros(0, 1, 8, 8)}
    assert ImageDetections.from_output(1, empty, CATEGORIES).records() == []
    boxes_only = {k: v for k, v in _output(2).items() if k != "masks"}
    records = ImageDetections.from_output(1, boxes_only, CATEGORIES).records()
    assert len(records) == 2 and "segmentation" not in records[0]


def test_records_of_keeps_only_the_fields_a_task_uses():
    detections = ImageDetections.from_output(4, _output(3), CATEGORIES)
    mask_only = {k: v for k, v in detections.records()[0].items() if k != "bbox"}
    grouped = records_by_image([detections, mask_only])
    assert list(grouped) == [4] and len(grouped[4]) == 2
    bbox = records_of(grouped[4], "bbox", mask_areas=True)
    assert "segmentation" not in bbox[0] and "segmentation" in bbox[3]  # no box: mask gives it
    assert all("bbox" not in r for r in records_of(grouped[4], "segm", mask_areas=True))
    assert all("bbox" in r for r in records_of(grouped[4], "segm", mask_areas=False)[:3])
    assert mask_only == {k: v for k, v in detections.records()[0].items() if k != "bbox"}


def test_write_results_streams_a_coco_results_list(tmp_path):
    images = [ImageDetections.from_output(i, _output(i, seed=i), CATEGORIES) for i in (0, 2, 3)]
    path = tmp_path / "results.json"
    assert write_results(path, images) == 5
    assert json.loads(path.read_text()) == [r for image in images for r in image.records()]
    assert write_results(path, []) == 0 and json.loads(path.read_text()) == []
