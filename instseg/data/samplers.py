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
restore). Under DDP Lightning substitutes its DistributedSampler for the EpochSampler (same
order for a given seed and epoch, augmentation from the global RNG).

Repeat-factor sampling (LVIS recipes; detectron2's RepeatFactorTrainingSampler):
`RepeatFactorSampler` is an EpochSampler whose epochs show each image about its repeat factor
(`repeat_factors`) times, images of rare categories more often; still a function of (seed,
epoch) alone, so resume stays exact. Under DDP it is not replaced but split, as detectron2
does: the datamodule passes it to the batch sampler as `ddp_order` too, and when Lightning
re-instantiates the batch sampler with its DistributedSampler, the batch sampler draws that
DistributedSampler's rank's share of the repeat-factor epoch (`EpochShard`: every rank draws
the same epoch from the same seed, which the datamodule takes from rank 0, pads it to a
multiple of the world size by wrapping and takes every world-size-th key from its rank on).
The ranks together cover the epoch once, each with the same number of samples (and so of
batches, grouped or not: ceil(share / batch size) either way). A share is a function of
(seed, epoch, rank, world size), and each key keeps its draw seed, so a rank resumes its
share where it stopped.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler


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


def repeat_factors(image_categories: Sequence[Iterable[int]], threshold: float) -> list[float]:
    """Each image's repeat factor, as detectron2's
    RepeatFactorTrainingSampler.repeat_factors_from_category_frequency computes it: per
    category, f_c = the fraction of the images that contain it and r_c = max(1, sqrt(t / f_c))
    (t = `threshold`, 0.001 in the LVIS recipes); an image's factor is the largest r_c of its
    categories (1 for an image without any). `image_categories`: the category ids of each
    image's annotations."""
    if not threshold > 0:
        raise ValueError(f"repeat-factor threshold must be > 0, got {threshold!r}")
    per_image = [set(categories) for categories in image_categories]
    images_with: Counter = Counter(c for categories in per_image for c in categories)
    count = len(per_image)
    category_factor = {c: max(1.0, math.sqrt(threshold / (n / count)))
                       for c, n in images_with.items()}
    return [max((category_factor[c] for c in categories), default=1.0)
            for categories in per_image]


class RepeatFactorSampler(EpochSampler):
    """An EpochSampler over images with repeat factors r_i >= 1 (`repeat_factors`): each
    epoch holds image i floor(r_i) times and once more with probability r_i - floor(r_i)
    (detectron2's stochastic rounding, drawn anew each epoch), in a random order, all a
    function of (seed, epoch) alone.

    Every epoch has the same length, round(sum r_i), since Lightning counts an epoch's
    batches once (its progress, the LR schedule's estimated steps and exact resume rely on
    it): the rounded draw, whose size differs from that by a few draws' worth (about
    sqrt(sum of p(1 - p)) over the fractional parts p), is cut at that length or continued
    from its beginning, so each image's expected count is r_i up to that small fraction.
    The k-th occurrence of an image in an epoch gets a draw seed of its own, so repeats are
    augmented differently."""

    def __init__(self, factors: Sequence[float], seed: int) -> None:
        factors_t = torch.as_tensor(list(factors), dtype=torch.float64)
        if len(factors_t) and not bool((factors_t >= 1).all()):
            raise ValueError("repeat factors must be >= 1")
        super().__init__(len(factors_t), seed)
        self.factors = factors_t
        self.length = int(torch.round(factors_t.sum()).item())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw_seed = (self.seed * 100_003 + self.epoch) % 2**63
        generator = torch.Generator().manual_seed(draw_seed)
        whole = torch.floor(self.factors)
        extra = torch.rand(len(self.factors), generator=generator, dtype=torch.float64)
        counts = (whole + (extra < self.factors - whole)).long()
        drawn = torch.repeat_interleave(torch.arange(len(counts)), counts)
        order = drawn[torch.randperm(len(drawn), generator=generator)]
        if len(order) < self.length:  # at most len(order) short: sum floor(r) >= n
            order = torch.cat([order, order[:self.length - len(order)]])
        return self._keys(draw_seed, order[:self.length].tolist())

    @staticmethod
    def _keys(draw_seed: int, order: list[int]) -> Iterator[tuple[int, int]]:
        occurrences: Counter = Counter()
        for index in order:
            yield (draw_seed + occurrences[index] * 7_919) % 2**63, index
            occurrences[index] += 1

    def __len__(self) -> int:
        return self.length


class EpochShard(Sampler):
    """Process `rank`'s share of `sampler`'s epochs among `num_replicas` processes, as
    DistributedSampler shares a dataset: the epoch (the same in every process for the same
    seed and epoch), padded to a multiple of `num_replicas` by continuing from its beginning,
    then every `num_replicas`-th key from position `rank` on. The shares of ranks 0 to
    num_replicas - 1 interleave back into the padded epoch, and each holds
    ceil(len(sampler) / num_replicas) keys. A padding key repeats its original, draw seed
    included. set_epoch and epoch are the sampler's."""

    def __init__(self, sampler: Sampler, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} processes")
        self.sampler = sampler
        self.num_replicas = num_replicas
        self.rank = rank

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        # Drawn here, not at the first key: see ResumableBatchSampler on when the epoch is set.
        keys = list(self.sampler)
        padded = itertools.islice(itertools.cycle(keys), len(self) * self.num_replicas)
        return itertools.islice(padded, self.rank, None, self.num_replicas)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.num_replicas)


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
    used, whatever the number of workers.

    `ddp_order`: an epoch order that DDP must keep (the repeat-factor sampler; the datamodule
    passes it as `sampler` too). It is also an __init__ argument for Lightning's
    re-instantiation: when `sampler` is a DistributedSampler (Lightning's, injected under
    DDP), the batches come from `EpochShard(ddp_order, sampler.num_replicas, sampler.rank)`,
    which takes Lightning's set_epoch, instead of from the DistributedSampler's permutation
    of the dataset. Otherwise `sampler` is used as given."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool,
                 start: dict | None = None, ddp_order: Sampler | None = None) -> None:
        if ddp_order is not None and isinstance(sampler, DistributedSampler):
            sampler = EpochShard(ddp_order, sampler.num_replicas, sampler.rank)
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
                 start: dict | None = None, ddp_order: Sampler | None = None) -> None:
        super().__init__(sampler, batch_size, drop_last=False, start=start,
                         ddp_order=ddp_order)
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
