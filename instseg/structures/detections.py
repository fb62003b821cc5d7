"""`Detections`: one image's detections in the dataset's terms, the one type that inference,
evaluation and the dataset browser pass around.

Fields:
    boxes: float32 [N, 4], XYXY in image pixels.
    scores: float32 [N].
    category_ids: int64 [N], the dataset's category ids (COCO ids for the COCO weights); the
        model's contiguous labels are converted at the edge, by
        `instseg.data.categories.CategoryMap.to_category_ids`.
    image_id: int, the dataset's image id (0 for an image outside a dataset).
    class_names: N category names, or None where nobody asked for them (evaluation).
    masks: bool [N, H, W] (mask probability > 0.5), or None for a detector without masks.
    rles: the same masks as N json RLEs ({"size": [H, W], "counts": str}), or None.
The masks are stored in the form they were made in (evaluation keeps ~0.2 KB of RLE per
detection instead of an image-sized mask; the `Predictor` keeps bool masks to draw) and
converted to the other on first use.

Conversions:
    Detections.from_output(output, category_ids, ...): a torchvision detection dict.
    Detections.from_records(records, height, width, ...): COCO results records.
    .records(categories=None): COCO results records, exactly as evaluate.py writes them.
    .captions(): "<class name> <score>" per detection, for overlays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from instseg.structures.masks import (
    decode_masks,
    encode_masks,
    mask_box,
    paste_masks_to_binary,
    paste_masks_to_rles,
    to_rle,
)


class Detections:
    def __init__(
        self, boxes: torch.Tensor, scores: torch.Tensor, category_ids: torch.Tensor,
        image_id: int = 0, class_names: list[str] | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        """Masks, if any, as bool [N, H, W] (`from_output` can keep them as RLEs)."""
        self.boxes = boxes.detach().float().cpu().reshape(-1, 4)
        self.scores = scores.detach().float().cpu().reshape(-1)
        self.category_ids = torch.as_tensor(category_ids, dtype=torch.int64).reshape(-1)
        self.image_id = int(image_id)
        self.class_names = class_names
        self._masks = masks
        self._mask_size: list[int] | None = None
        self._mask_counts: list[str] | None = None

    @classmethod
    def from_output(
        cls, output: dict, category_ids: Sequence[int], image_id: int = 0,
        class_names: list[str] | None = None, mask_threshold: float = 0.5, as_rle: bool = True,
    ) -> Detections:
        """One image's torchvision detection dict as Detections.

        Args:
            output: "boxes" float [N, 4] XYXY in image pixels, "scores" [N], and the masks as
                "masks" float [N, 1, H, W] in image pixels (torchvision's MaskRCNN) or as
                "mask_probs" [N, 1, M, M] + "image_size" (H, W)
                (`instseg.models.forward.predict_unpasted`), or no masks.
            category_ids: N dataset category ids (CategoryMap.to_category_ids of the labels).
            as_rle: store the masks as RLE (evaluation) rather than bool [N, H, W].
        Returns:
            Detections whose masks are the probabilities > mask_threshold, pasted exactly as
            torchvision pastes them.
        """
        boxes = output["boxes"].detach().float().cpu()
        detections = cls(boxes, output["scores"], torch.as_tensor(category_ids), image_id,
                         class_names)
        if "mask_probs" in output:
            probs = output["mask_probs"].detach().float().cpu()
            paste = paste_masks_to_rles if as_rle else paste_masks_to_binary
            size = tuple(output["image_size"])
            masks = paste(probs, boxes, size, mask_threshold)
        elif "masks" in output:
            size = tuple(output["masks"].shape[-2:])
            masks = output["masks"][:, 0].detach().cpu() > mask_threshold
            masks = encode_masks(masks) if as_rle else masks
        else:
            return detections
        if as_rle:
            detections._set_rles(masks, size)
        else:
            detections._masks = masks
        return detections

    @classmethod
    def from_records(cls, records: Sequence[dict], height: int, width: int,
                     class_names: list[str] | None = None) -> Detections:
        """COCO results records of one image of H x W (segmentation as RLE or polygons; a
        missing bbox is the mask's) as Detections, in the records' order."""
        rles = [to_rle(r["segmentation"], height, width) for r in records]
        boxes = torch.zeros((len(records), 4))
        for k, (record, rle) in enumerate(zip(records, rles, strict=True)):
            boxes[k] = torch.tensor(record.get("bbox") or mask_box(rle))
        boxes[:, 2:] += boxes[:, :2]  # x y w h -> x0 y0 x1 y1
        return cls(boxes, torch.tensor([float(r["score"]) for r in records]),
                   torch.tensor([int(r["category_id"]) for r in records], dtype=torch.int64),
                   image_id=int(records[0]["image_id"]) if records else 0,
                   class_names=class_names, masks=decode_masks(rles, height, width))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def has_masks(self) -> bool:
        return self._masks is not None or self._mask_counts is not None

    @property
    def masks(self) -> torch.Tensor | None:
        """bool [N, H, W], decoded from the RLEs on first use."""
        if self._masks is None and self._mask_counts is not None:
            self._masks = decode_masks(self.rles, *self._mask_size)
        return self._masks

    @property
    def rles(self) -> list[dict] | None:
        """N json RLEs, encoded from the bool masks on first use."""
        if self._mask_counts is None and self._masks is not None:
            self._set_rles(encode_masks(self._masks), tuple(self._masks.shape[1:]))
        if self._mask_counts is None:
            return None
        return [{"size": list(self._mask_size), "counts": c} for c in self._mask_counts]

    def records(self, categories: set[int] | None = None) -> list[dict]:
        """COCO results records (image_id, category_id, bbox [x, y, w, h], score, and
        segmentation as a json RLE when there are masks), of `categories` only if given. The
        numbers are those of the float32 tensors, exactly."""
        keep = range(len(self))
        if categories is not None:
            wanted = torch.tensor(sorted(categories), dtype=torch.int64)
            keep = torch.isin(self.category_ids, wanted).nonzero().flatten().tolist()
        category_ids, scores = self.category_ids.tolist(), self.scores.tolist()
        boxes = torch.cat([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], 1).tolist()
        records = [{"image_id": self.image_id, "category_id": category_ids[k],
                    "bbox": boxes[k], "score": scores[k]} for k in keep]
        if self.has_masks:
            rles = self.rles
            for record, k in zip(records, keep, strict=True):
                record["segmentation"] = rles[k]
        return records

    def captions(self, scores: bool = True) -> list[str]:
        """"<class name> <score with 2 decimals>" per detection (the category id where no name
        is known; without the score for ground truth)."""
        names = self.class_names or [f"category {c}" for c in self.category_ids.tolist()]
        if not scores:
            return list(names)
        return [f"{name} {score:.2f}" for name, score in zip(names, self.scores.tolist(),
                                                             strict=True)]

    def _set_rles(self, rles: Sequence[dict], size: tuple[int, int] | None = None) -> None:
        """Keep json RLEs of one size (`size`: (H, W), needed when there are none)."""
        self._mask_counts = [rle["counts"] for rle in rles]
        size = rles[0]["size"] if rles else size
        if size is None:
            raise ValueError("no RLEs and no mask size")
        self._mask_size = [int(v) for v in size]
