"""Detections and masks compared across inference paths (optimised, exported): the same
set, to a stated tolerance."""

from __future__ import annotations

import torch

from instseg.structures.detections import Detections


def mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each pair of bool masks [N, H, W] (1 where both are empty), float64 [N]."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_detections(ours: Detections, reference: Detections, box_atol: float,
                           score_atol: float, min_mask_iou: float = 0.99,
                           threshold: float = 0.0, cap: int | None = None,
                           max_unmatched: int = 0) -> int:
    """Every reference detection has one of ours with its category, a score within
    `score_atol` and box corners within `box_atol` px, and a mask of IoU >= min_mask_iou;
    and no detection of ours is left over; up to `max_unmatched` of each side may lack a
    counterpart. Detections scoring within `score_atol` of the `threshold` they were kept
    at may be on either side of it and are left out; so are those near the reference's
    lowest score when it holds `cap` detections (the model's box_detections_per_img), which
    is then a threshold too. Returns how many were matched."""
    limits = [threshold]
    if cap is not None and len(reference) == cap:
        limits.append(reference.scores.min().item())

    def clear(detections: Detections) -> list[int]:
        return [i for i, s in enumerate(detections.scores.tolist())
                if all(abs(s - limit) > score_atol for limit in limits) and s >= limits[-1]]

    unused, missing = set(clear(ours)), []
    for j in clear(reference):
        match = next((i for i in sorted(unused)  # ties in score may come in another order
                      if ours.category_ids[i] == reference.category_ids[j]
                      and abs(ours.scores[i] - reference.scores[j]) <= score_atol
                      and (ours.boxes[i] - reference.boxes[j]).abs().max() <= box_atol), None)
        if match is None:
            missing.append(f"{reference.scores[j]:.4f} at {reference.boxes[j].tolist()}")
            continue
        unused.discard(match)
        iou = mask_ious(ours.masks[match][None], reference.masks[j][None]).item()
        assert iou >= min_mask_iou, (j, iou)
    left_over = [f"{ours.scores[i]:.4f} at {ours.boxes[i].tolist()}" for i in sorted(unused)]
    assert len(missing) <= max_unmatched and len(left_over) <= max_unmatched, \
        f"reference detections without a counterpart: {missing}; ours left over: {left_over}"
    return len(clear(reference)) - len(missing)
