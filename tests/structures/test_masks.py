import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops

from instseg.structures.masks import (
    decode_masks,
    encode_masks,
    json_rle,
    paste_masks_to_binary,
    paste_masks_to_rles,
    to_rle,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rles_equal_torchvision_paste_then_threshold(seed):
    generator = torch.Generator().manual_seed(seed)
    height, width, count = 97, 130, 40
    probs = torch.rand(count, 1, 28, 28, generator=generator)
    # Boxes clipped to the image, as Mask R-CNN's are before pasting: tiny to large, at edges.
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width - 1, height - 1])
    wh = torch.rand(count, 2, generator=generator) * 80 + 0.3
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes = box_ops.clip_boxes_to_image(boxes, (height, width))
    boxes[0] = torch.tensor([-30.0, -30, -5, -5])  # wholly outside the image
    ours = paste_masks_to_rles(probs, boxes, (height, width))
    assert len(ours) == count and mask_utils.area(ours[0]) == 0
    # torchvision's paste fails on a box wholly outside (its boxes are clipped before).
    reference = (paste_masks_in_image(probs[1:], boxes[1:], (height, width), padding=1) > 0.5)
    reference = reference[:, 0].numpy().astype(np.uint8)
    for rle, mask in zip(ours[1:], reference, strict=True):
        assert np.array_equal(mask_utils.decode(rle), mask)
    assert paste_masks_to_rles(probs[:0], boxes[:0], (height, width)) == []
    binary = paste_masks_to_binary(probs, boxes, (height, width))
    assert torch.equal(binary, decode_masks(ours, height, width))


def test_polygons_rle_and_bool_masks_convert_into_each_other():
    polygons = [[2.0, 2.0, 20.0, 3.0, 11.0, 15.0], [25.0, 5.0, 30.0, 5.0, 30.0, 9.0]]
    merged = json_rle(to_rle(polygons, 18, 40))
    assert isinstance(merged["counts"], str) and merged["size"] == [18, 40]
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 18, 40)))
    masks = decode_masks([merged], 18, 40)
    assert masks.dtype == torch.bool and np.array_equal(masks[0].numpy(), reference)
    assert encode_masks(masks) == [merged]
    uncompressed = {"size": [18, 40], "counts": [5, 10, 705]}
    assert decode_masks([to_rle(uncompressed, 18, 40)], 18, 40).sum() == 10
    assert encode_masks(torch.zeros(0, 18, 40, dtype=torch.bool)) == []


def test_unpasted_prediction_gives_the_records_of_the_plain_model(tmp_path):
    """Model outputs through predict_unpasted + paste_masks_to_rles == net(images) records."""
    from instseg.data.categories import CategoryMap
    from instseg.models.forward import predict_unpasted
    from instseg.structures.detections import Detections
    from tests.models.test_zoo import build

    net = build(tmp_path, "small_cpu", 3, "model.net.box_score_thresh=0.0").eval()
    images = [torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(3)),
              torch.rand(3, 90, 160, generator=torch.Generator().manual_seed(4))]
    categories = CategoryMap((1, 2), ("a", "b"))
    with torch.no_grad():
        plain = net(images)
    unpasted = predict_unpasted(net, images)
    for image_id, (p, u) in enumerate(zip(plain, unpasted, strict=True)):
        assert len(p["boxes"]) > 0 and torch.equal(p["boxes"], u["boxes"])
        records = [Detections.from_output(output, categories.to_category_ids(output["labels"]),
                                          image_id).records() for output in (p, u)]
        assert records[0] == records[1]
