"""Aspect-ratio grouping: batches of images that are all landscape or all portrait, so that
the model pads each batch less (detectron2's and torchvision's reference trick).

`GroupedBatchSampler(sampler, group_ids, batch_size)` draws indices from `sampler` (random,
or Lightning's DistributedSampler under DDP, which it injects through the `sampler`
argument) and yields a batch as soon as `batch_size` indices of one group have arrived. At
the end of the sampler's epoch the incomplete groups' indices are yielded together, in
arrival order: every index of the sampler's partition exactly once per epoch (unlike
torchvision's reference sampler, which repeats indices to fill the last batches).

Exact resume (single process): `EpochSampler` orders an epoch by (seed, epoch) alone and lets
the dataset seed each sample's augmentation; `ResumableBatchSampler` starts an epoch after the
batches already trained on, which `ResumableDataLoader` takes from and gives to Lightning's
checkpoints. Under DDP Lightning substitutes its DistributedSampler (same order for a given
seed and epoch, augmentation from the global RNG).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


class EpochSampler(Sampler):
    """A random order of range(n) that is a function of (seed, epoch) alone, yielding
    (draw seed, index) so that the dataset can seed each sample's augmentation too (see
    CocoInstances.__getitem__). Lightning calls set_epoch at every epoch start."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw_seed = (self.seed * 100_003 + self.epoch) % 2**63  # seeds are 64-bit
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(draw_seed))
        return ((draw_seed, index) for index in order.tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler whose next epoch can start after `skip_batches` batches (set from a
    checkpoint by ResumableDataLoader), without loading the skipped ones."""

    skip_batches = 0

    def __iter__(self) -> Iterator[list]:
        skip, self.skip_batches = self.skip_batches, 0
        return itertools.islice(self._batches(), skip, None)

    def _batches(self) -> Iterator[list]:
        return super().__iter__()


def _index(key) -> int:
    return key[1] if isinstance(key, tuple) else key


class GroupedBatchSampler(ResumableBatchSampler):
    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.group_ids = list(group_ids)

    def _batches(self) -> Iterator[list]:
        waiting: dict[int, list] = {}
        arrival: dict = {}
        for position, index in enumerate(self.sampler):
            arrival[index] = position
            group = waiting.setdefault(self.group_ids[_index(index)], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield group[:]
                group.clear()
        leftovers = sorted((i for g in waiting.values() for i in g), key=arrival.__getitem__)
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        """Exact for the sampler's current epoch: full batches per group plus the leftovers."""
        counts = Counter(self.group_ids[_index(i)] for i in self.sampler)
        full = sum(n // self.batch_size for n in counts.values())
        return full + math.ceil(sum(n % self.batch_size for n in counts.values())
                                / self.batch_size)


def aspect_ratio_groups(image_infos: Sequence[dict]) -> list[int]:
    """0 for landscape (width > height), 1 otherwise, from COCO image records (no decoding)."""
    return [0 if info["width"] > info["height"] else 1 for info in image_infos]


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning saves and restores mid-epoch (it has state_dict and
    load_state_dict): the state is how many batches of the epoch were trained on, read from
    `batches_done` (the trainer's progress); restoring makes the next epoch's iteration start
    after them. The batch sampler must be a ResumableBatchSampler."""

    def __init__(self, *args, batches_done=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        return {"batches_done": int(self.batches_done()) if self.batches_done else 0}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.skip_batches = state["batches_done"]
