"""Aspect-ratio grouping: batches of images that are all landscape or all portrait, so that
the model pads each batch less (detectron2's and torchvision's reference trick).

`GroupedBatchSampler(sampler, group_ids, batch_size)` draws indices from `sampler` (random,
or Lightning's DistributedSampler under DDP, which it injects through the `sampler`
argument) and yields a batch as soon as `batch_size` indices of one group have arrived. At
the end of the sampler's epoch the incomplete groups' indices are yielded together, in
arrival order: every index of the sampler's partition exactly once per epoch (unlike
torchvision's reference sampler, which repeats indices to fill the last batches).

Exact resume (single process): `EpochSampler` orders an epoch by (seed, epoch) alone and lets
the dataset seed each sample's augmentation; `ResumableBatchSampler` can start its next
iteration at a saved position (the epoch, and the batches of it already trained on, which are
not loaded). `ResumableDataLoader` reports that position to Lightning's checkpoints and takes
it back from them; the datamodule keeps a copy in its own state too (see
CocoDataModule.state_dict: Lightning drops the loader's when the loader was built before the
restore). Under DDP Lightning substitutes its DistributedSampler (same order for a given seed
and epoch, augmentation from the global RNG).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

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
    """A BatchSampler whose iteration can start at `start` = {"epoch": e, "batches_done": n}
    (from a checkpoint): the sampler's epoch e, after its first n batches, which are not
    loaded. `start` is an __init__ argument so that it survives Lightning re-instantiating the
    batch sampler (to inject a DistributedSampler).

    `start` holds for every iteration created until one of them is asked for a batch: a
    DataLoader with workers iterates its batch sampler twice when it creates its iterator
    (_BaseDataLoaderIter.__init__, then _reset) and draws only from the second; the next
    epoch's iteration starts from the beginning again.

    The sampler's iterator is created with the iteration (EpochSampler and DistributedSampler
    draw their order then), not at its first batch (which a DataLoader without workers asks
    for later), so that the epoch set here or by Lightning's set_epoch before iter() is the one
    used, whatever the number of workers."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool,
                 start: dict | None = None) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.start = dict(start) if start else None

    def resume_at(self, start: dict | None) -> None:
        """Make the next iteration start at `start` (see the class)."""
        self.start = dict(start) if start else None

    def __iter__(self) -> Iterator[list]:
        start = self.start or {}
        if start.get("epoch") is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(start["epoch"])
        batches = self._batches(iter(self.sampler))
        return self._started(itertools.islice(batches, start.get("batches_done", 0), None))

    def _started(self, batches: Iterator[list]) -> Iterator[list]:
        self.start = None  # runs at the first batch asked for
        yield from batches

    def _batches(self, indices: Iterator) -> Iterator[list]:
        batch: list = []
        for index in indices:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch


def _index(key) -> int:
    return key[1] if isinstance(key, tuple) else key


class GroupedBatchSampler(ResumableBatchSampler):
    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int,
                 start: dict | None = None) -> None:
        super().__init__(sampler, batch_size, drop_last=False, start=start)
        self.group_ids = list(group_ids)

    def _batches(self, indices: Iterator) -> Iterator[list]:
        waiting: dict[int, list] = {}
        arrival: dict = {}
        for position, index in enumerate(indices):
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
    load_state_dict): the state is where the next batch comes from, the sampler's epoch and how
    many batches of it were trained on, read from `progress` (the trainer's: () -> (batches of
    this epoch trained on, batches in the epoch)); after an epoch's last batch, the next
    epoch's start. Restoring makes the next iteration start there. The batch sampler must be a
    ResumableBatchSampler."""

    def __init__(self, *args, progress: Callable[[], tuple[int, int]] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        epoch = getattr(self.batch_sampler.sampler, "epoch", None)
        done, total = self.progress() if self.progress else (0, len(self))
        if done >= total:
            # Lightning resumes from a checkpoint of an epoch's last batch (or its end) in the
            # next epoch, with the iterator it creates before the restore.
            epoch, done = (None if epoch is None else epoch + 1), 0
        return {"epoch": epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Idempotent: the datamodule may have set the same position already."""
        self.batch_sampler.resume_at(state)
