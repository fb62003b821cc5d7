"""Aspect-ratio grouping: batches of images that are all landscape or all portrait, so that
the model pads each batch less (detectron2's and torchvision's reference trick).

`GroupedBatchSampler(sampler, group_ids, batch_size)` draws indices from `sampler` (random,
or Lightning's DistributedSampler under DDP, which it injects through the `sampler`
argument) and yields a batch as soon as `batch_size` indices of one group have arrived. At
the end of the sampler's epoch the incomplete groups' indices are yielded together, in
arrival order: every index of the sampler's partition exactly once per epoch (unlike
torchvision's reference sampler, which repeats indices to fill the last batches).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


class GroupedBatchSampler(BatchSampler):
    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.group_ids = list(group_ids)

    def __iter__(self) -> Iterator[list[int]]:
        waiting: dict[int, list[int]] = {}
        for index in self.sampler:
            group = waiting.setdefault(self.group_ids[index], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield group[:]
                group.clear()
        leftovers = sorted((i for g in waiting.values() for i in g), key=self._arrival())
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        """Exact for the sampler's current epoch: full batches per group plus the leftovers."""
        counts = Counter(self.group_ids[i] for i in self.sampler)
        full = sum(n // self.batch_size for n in counts.values())
        return full + math.ceil(sum(n % self.batch_size for n in counts.values())
                                / self.batch_size)

    def _arrival(self):
        order = {index: position for position, index in enumerate(self.sampler)}
        return order.__getitem__


def aspect_ratio_groups(image_infos: Sequence[dict]) -> list[int]:
    """0 for landscape (width > height), 1 otherwise, from COCO image records (no decoding)."""
    return [0 if info["width"] > info["height"] else 1 for info in image_infos]
