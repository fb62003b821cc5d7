import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import (
    expand_boxes,
    expand_masks,
    paste_masks_in_image,
)
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


def _full_canvas_rles(mask_probs, boxes, image_size, threshold, padding=1):
    """Plainly: each mask resized to its box, written over the box's pixels (columns x0..x1,
    rows y0..y1) of a zero float image with room around it for the box, cut to the image,
    thresholded, encoded."""
    height, width = image_size
    masks, scale = expand_masks(mask_probs, padding=padding)
    rles = []
    for mask, box in zip(masks[:, 0], expand_boxes(boxes, scale).to(torch.int64).tolist(),
                         strict=True):
        x0, y0, x1, y1 = box
        patch = F.interpolate(mask[None, None], size=(max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)),
                              mode="bilinear", align_corners=False)[0, 0]
        margin = 1 + max(0, -min(box), max(x0, x1) - width, max(y0, y1) - height)
        full = torch.zeros((height + 2 * margin, width + 2 * margin))
        full[y0 + margin:y1 + 1 + margin, x0 + margin:x1 + 1 + margin] = patch[
            :max(y1 - y0 + 1, 0), :max(x1 - x0 + 1, 0)]
        canvas = (full[margin:margin + height, margin:margin + width] > threshold).numpy()
        rles.append(json_rle(mask_utils.encode(np.asfortranarray(canvas.astype(np.uint8)))))
    return rles


def _torchvision_rles(mask_probs, boxes, image_size, threshold, padding=1):
    masks = paste_masks_in_image(mask_probs, boxes, image_size, padding=padding) > threshold
    return [json_rle(mask_utils.encode(np.asfortranarray(m[0].numpy().astype(np.uint8))))
            for m in masks]


def _reaches_image(boxes, image_size, padding=1, mask_size=28):
    """Which boxes, once expanded as the paste expands them, reach the image: torchvision's
    paste_mask_in_image is defined for those only (Mask R-CNN clips its boxes first)."""
    height, width = image_size
    x0, y0, x1, y1 = expand_boxes(boxes, (mask_size + 2 * padding) / mask_size).to(
        torch.int64).unbind(1)
    return (x1 >= 0) & (y1 >= 0) & (x0 <= width - 1) & (y0 <= height - 1)


def _random_case(rng):
    """Masks, boxes, image size and threshold of one random case: boxes of every kind (inside,
    at the edges, partly or wholly outside, tiny, degenerate, covering the image), masks of
    noise, quantised (ties with the threshold), all above or all below it."""
    height, width = (int(v) for v in rng.integers(1, 70, size=2))
    count = int(rng.integers(0, 12))
    boxes = []
    for _ in range(count):
        kind = rng.integers(0, 7)
        if kind == 0:  # inside
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            box = [x0, y0, rng.uniform(x0, width), rng.uniform(y0, height)]
        elif kind == 1:  # partly or wholly outside
            x0, y0 = rng.uniform(-1.5 * width, 1.5 * width), rng.uniform(-1.5 * height,
                                                                         1.5 * height)
            box = [x0, y0, x0 + rng.uniform(0, 2 * width), y0 + rng.uniform(0, 2 * height)]
        elif kind == 2:  # tiny: 1 pixel or less
            x0, y0 = rng.uniform(-1, width), rng.uniform(-1, height)
            box = [x0, y0, x0 + rng.uniform(0, 1), y0 + rng.uniform(0, 1)]
        elif kind == 3:  # on the image's edges, or the whole image
            box = [rng.choice([0.0, width / 2]), rng.choice([0.0, height / 2]),
                   float(width), float(height)]
        elif kind == 4:  # degenerate: x1 < x0 or y1 < y0
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            box = [x0, y0, x0 - rng.uniform(0, 5), y0 + rng.uniform(-5, 5)]
        elif kind == 5:  # a corner pixel
            x, y = rng.choice([0, width - 1]), rng.choice([0, height - 1])
            box = [float(x), float(y), x + 1.0, y + 1.0]
        else:  # larger than the image
            box = [-rng.uniform(0, 30), -rng.uniform(0, 30), width + rng.uniform(0, 30),
                   height + rng.uniform(0, 30)]
        boxes.append(box)
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(count, 4)
    kind = rng.integers(0, 4)
    probs = torch.from_numpy(rng.random((count, 1, 28, 28), dtype=np.float32))
    if kind == 1:
        probs = torch.round(probs * 8) / 8  # many values equal to the threshold
    elif kind == 2:
        probs = torch.full_like(probs, float(rng.choice([0.0, 1.0, 0.49, 0.51])))
    elif kind == 3:  # a soft blob
        grid = torch.linspace(-1, 1, 28)
        probs = (1 - grid[None, :] ** 2 - grid[:, None] ** 2).clamp(0, 1).expand(
            count, 1, 28, 28).contiguous()
    threshold = float(rng.choice([0.5, 0.5, 0.3, 0.75, 0.0, 0.125]))
    return probs, boxes, (height, width), threshold


@pytest.mark.parametrize("seed", range(6))
def test_rles_are_byte_identical_to_full_image_pasting_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        probs, boxes, size, threshold = _random_case(rng)
        ours = paste_masks_to_rles(probs, boxes, size, threshold)
        assert ours == _full_canvas_rles(probs, boxes, size, threshold)
        reach = _reaches_image(boxes, size)
        if reach.any():
            assert ([r for r, ok in zip(ours, reach.tolist(), strict=True) if ok]
                    == _torchvision_rles(probs[reach], boxes[reach], size, threshold))
        binary = paste_masks_to_binary(probs, boxes, size, threshold)
        assert binary.shape == (len(probs), *size)
        assert torch.equal(binary, decode_masks(ours, *size))


def test_rles_identical_on_coco_sized_images_with_many_detections():
    """The evaluation's case: images of 427-640 px, boxes of all sizes, some leaving it."""
    generator = torch.Generator().manual_seed(7)
    for height, width in [(480, 640), (640, 427)]:
        count = 40
        xy = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) - 20
        wh = torch.rand(count, 2, generator=generator) * 300 + 0.5
        boxes = torch.cat([xy, xy + wh], dim=1)
        probs = torch.rand(count, 1, 28, 28, generator=generator)
        ours = paste_masks_to_rles(probs, boxes, (height, width))
        clipped = box_ops.clip_boxes_to_image(boxes, (height, width))
        assert ours == _full_canvas_rles(probs, boxes, (height, width), 0.5)
        assert (paste_masks_to_rles(probs, clipped, (height, width))
                == _torchvision_rles(probs, clipped, (height, width), 0.5))


def test_pasting_handles_no_detections_and_other_dtypes():
    for size in [(5, 9), (9, 5)]:
        assert paste_masks_to_rles(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), size) == []
        empty = paste_masks_to_binary(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), size)
        assert empty.shape == (0, *size) and empty.dtype == torch.bool
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(6, 1, 28, 28, generator=generator, dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 30, 20], [3, 4, 5, 6], [-4, 2, 7, 40], [0, 0, 1, 1],
                          [29, 19, 30, 20], [10, 10, 10, 10]], dtype=torch.float64)
    size = (torch.tensor(20), torch.tensor(30))  # sizes as tensors, as some callers hold them
    ours = paste_masks_to_rles(probs, boxes, size, 0.4)
    assert all(r["size"] == [20, 30] and type(r["size"][0]) is int for r in ours)
    assert ours == _torchvision_rles(probs, boxes, (20, 30), 0.4)
    assert torch.equal(paste_masks_to_binary(probs, boxes, size, 0.4),
                       decode_masks(ours, 20, 30))
