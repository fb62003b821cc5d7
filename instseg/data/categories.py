"""The one place where COCO category ids and the model's contiguous labels meet.

Inside the model, labels are contiguous: 0 is background and the dataset's categories,
sorted by COCO category id, are 1..K. At the edges (annotation files, results json,
reports) only COCO category ids appear. `CategoryMap` converts in both directions.

torchvision's COCO weights are the exception that the same map covers: they predict raw COCO
ids (91 outputs with background and "N/A" gaps), i.e. label i is category id i
(`CategoryMap.from_torchvision`). A model keeps such a label space when the dataset's
categories are a subset of it (`covers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CategoryMap:
    """Sorted COCO category ids and names; label i (1-based) is `category_ids[i - 1]`."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco_categories(cls, categories: Sequence[dict]) -> CategoryMap:
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in ordered), tuple(str(c["name"]) for c in ordered))

    @classmethod
    def from_torchvision(cls, names: Sequence[str]) -> CategoryMap:
        """The label space of torchvision weights whose meta["categories"] is `names`
        (index = label = COCO category id; index 0 is background)."""
        return cls(tuple(range(1, len(names))), tuple(names[1:]))

    def covers(self, other: CategoryMap) -> bool:
        """Whether every (id, name) category of `other` is one of ours."""
        ours = set(zip(self.category_ids, self.names, strict=True))
        return set(zip(other.category_ids, other.names, strict=True)) <= ours

    @property
    def num_classes(self) -> int:
        """Number of model outputs: the categories plus background."""
        return len(self.category_ids) + 1

    def to_labels(self, category_ids: Sequence[int]) -> torch.Tensor:
        """COCO category ids -> contiguous int64 labels in 1..K."""
        index = {cat: label for label, cat in enumerate(self.category_ids, start=1)}
        return torch.tensor([index[int(c)] for c in category_ids], dtype=torch.int64)

    def to_category_ids(self, labels: torch.Tensor | Sequence[int]) -> list[int]:
        """Contiguous labels in 1..K -> COCO category ids."""
        return [self.category_ids[int(label) - 1] for label in labels]
