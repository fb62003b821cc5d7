"""Detections compared across runtimes: the same set, to a stated tolerance."""

from __future__ import annotations

import torch

from instseg.structures.detections import Detections


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def assert_same_detections(ours: Detections, reference: Detections, box_atol: float,
                           score_atol: float, min_mask_iou: float = 0.99,
                           threshold: float = 0.0) -> int:
    """Every reference detection has one of ours with its category, a score within
    `score_atol` and box corners within `box_atol` px, and a mask of IoU >= min_mask_iou;
    and no detection of ours is left over. Detections scoring within `score_atol` of the
    `threshold` they were kept at may be on either side of it and are left out. Returns
    how many were compared."""
    def clear(detections: Detections) -> list[int]:
        return [i for i, s in enumerate(detections.scores.tolist())
                if abs(s - threshold) > score_atol]

    mine, theirs = clear(ours), clear(reference)
    assert len(mine) == len(theirs), (len(mine), len(theirs))
    unused = set(mine)
    for j in theirs:
        match = next((i for i in sorted(unused)  # ties in score may come in another order
                      if ours.category_ids[i] == reference.category_ids[j]
                      and abs(ours.scores[i] - reference.scores[j]) <= score_atol
                      and (ours.boxes[i] - reference.boxes[j]).abs().max() <= box_atol), None)
        assert match is not None, f"reference detection {j} ({reference.scores[j]:.4f}, " \
                                  f"{reference.boxes[j].tolist()}) has no counterpart"
        unused.discard(match)
        iou = mask_iou(ours.masks[match], reference.masks[j])
        assert iou >= min_mask_iou, (j, iou)
    return len(theirs)
