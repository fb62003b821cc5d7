"""GroupedBatchSampler: every index of a rank's partition once per epoch, batches by group."""

from collections import Counter

import pytest
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from instseg.data.samplers import GroupedBatchSampler, aspect_ratio_groups


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_every_index_once_per_epoch_in_each_rank_partition(batch_size):
    groups = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0]  # 17 images, odd split
    dataset = list(range(len(groups)))
    for epoch in range(3):
        for rank in range(2):
            sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=7)
            sampler.set_epoch(epoch)
            batches = list(GroupedBatchSampler(sampler, groups, batch_size))
            assert Counter(i for b in batches for i in b) == Counter(sampler)
            assert len(batches) == len(GroupedBatchSampler(sampler, groups, batch_size))
            assert all(len(b) <= batch_size for b in batches)
            mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
            assert len(mixed) <= 1  # only the leftovers of an epoch mix the groups


def test_full_batches_come_first_and_are_single_group():
    groups = [0] * 5 + [1] * 5
    batches = list(GroupedBatchSampler(RandomSampler(range(10)), groups, 2))
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:4])


def test_aspect_ratio_groups_from_image_records():
    infos = [{"width": 640, "height": 480}, {"width": 480, "height": 640},
             {"width": 500, "height": 500}]
    assert aspect_ratio_groups(infos) == [0, 1, 1]


def test_epoch_sampler_takes_any_64_bit_seed_and_depends_on_seed_and_epoch_only():
    from instseg.data.samplers import EpochSampler

    sampler = EpochSampler(10, seed=2**64 - 1)  # torch.initial_seed() without seeding
    sampler.set_epoch(3)
    first, again = list(sampler), list(sampler)
    assert first == again and sorted(i for _, i in first) == list(range(10))
    sampler.set_epoch(4)
    assert list(sampler) != first


def test_repeat_factors_on_a_known_case():
    from instseg.data.samplers import repeat_factors

    # 5 images: category 1 in 3 of them (f = 0.6), categories 2 and 3 in one each (f = 0.2)
    images = [[1], [1, 2, 2], [1], [3], []]
    factors = repeat_factors(images, threshold=0.8)
    r1, r_rare = max(1.0, (0.8 / 0.6) ** 0.5), (0.8 / 0.2) ** 0.5  # 1.1547, 2.0
    assert factors == pytest.approx([r1, r_rare, r1, r_rare, 1.0], abs=1e-15)
    assert repeat_factors(images, threshold=0.001) == [1.0] * 5  # every category common
    with pytest.raises(ValueError, match="> 0"):
        repeat_factors(images, threshold=0)


def test_repeat_factor_sampler_is_a_function_of_seed_and_epoch_with_a_fixed_length():
    from instseg.data.samplers import RepeatFactorSampler

    factors = [1.0, 2.5, 1.3, 4.0, 1.0, 1.7]
    sampler = RepeatFactorSampler(factors, seed=2**64 - 1)
    orders = {}
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders[epoch] = list(sampler)
        assert orders[epoch] == list(sampler)  # again: the same
        assert len(orders[epoch]) == len(sampler) == round(sum(factors))
        assert len(set(orders[epoch])) == len(orders[epoch])  # repeats: own draw seeds
        counts = Counter(i for _, i in orders[epoch])
        assert counts[3] >= 3  # r = 4: 4 copies, give or take the length fix
    assert len({tuple(o) for o in orders.values()}) == 6
    other = RepeatFactorSampler(factors, seed=1)
    other.set_epoch(0)
    assert list(other) != orders[0]


def test_repeat_factor_sampling_shows_rare_category_images_more():
    from instseg.data.samplers import RepeatFactorSampler, repeat_factors

    # 100 images: 90 of a frequent category, 10 with a rare one as well
    images = [[1]] * 90 + [[1, 2]] * 10
    factors = repeat_factors(images, threshold=0.4)  # rare: sqrt(0.4 / 0.1) = 2
    sampler = RepeatFactorSampler(factors, seed=3)
    counts: Counter = Counter()
    epochs = 200
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts.update(i for _, i in sampler)
    rare = sum(counts[i] for i in range(90, 100)) / (10 * epochs)
    frequent = sum(counts[i] for i in range(90)) / (90 * epochs)
    assert rare == pytest.approx(2.0, abs=0.05) and frequent == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("grouped", [False, True])
def test_repeat_factor_epochs_resume_exactly(grouped):
    from instseg.data.samplers import RepeatFactorSampler, ResumableBatchSampler

    factors = [1.0, 2.5, 1.3, 4.0, 1.0, 1.7, 1.2, 3.1]
    groups = [0, 1, 0, 0, 1, 1, 0, 1]

    def batches(start=None):
        sampler = RepeatFactorSampler(factors, seed=11)
        if grouped:
            return GroupedBatchSampler(sampler, groups, 3, start=start)
        return ResumableBatchSampler(sampler, 3, drop_last=False, start=start)

    full = batches()
    full.sampler.set_epoch(2)
    epoch = list(full)
    assert len(epoch) == len(full)
    assert Counter(k for b in epoch for k in b) == Counter(full.sampler)
    assert list(batches({"epoch": 2, "batches_done": 2})) == epoch[2:]


FACTORS = [1.0, 2.5, 1.3, 4.0, 1.0, 1.7, 1.2, 3.1, 1.0, 1.9, 1.4]  # an epoch of round(20.1)


def _epoch(seed, epoch):
    from instseg.data.samplers import RepeatFactorSampler

    sampler = RepeatFactorSampler(FACTORS, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def _shares(world_size, seed, epoch):
    from instseg.data.samplers import EpochShard, RepeatFactorSampler

    shares = []
    for rank in range(world_size):
        shard = EpochShard(RepeatFactorSampler(FACTORS, seed=seed), world_size, rank)
        shard.set_epoch(epoch)
        assert shard.epoch == epoch
        shares.append(list(shard))
        assert len(shares[-1]) == len(shard)
    return shares


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_shares_cover_the_single_process_repeat_factor_epoch(world_size):
    for epoch in range(3):
        whole = _epoch(5, epoch)
        shares = _shares(world_size, 5, epoch)
        length = -(-len(whole) // world_size)
        assert [len(s) for s in shares] == [length] * world_size
        padding = whole[:length * world_size - len(whole)]
        assert Counter(k for s in shares for k in s) == Counter(whole + padding)
        # DistributedSampler's layout: the shares interleave back into the padded epoch
        assert [s[i] for i in range(length) for s in shares] == whole + padding
        assert _shares(world_size, 5, epoch) == shares  # a function of (seed, epoch)
    assert _shares(world_size, 5, 0) != _shares(world_size, 5, 1)
    assert _shares(world_size, 5, 0) != _shares(world_size, 6, 0)


def test_a_share_pads_an_epoch_shorter_than_the_world_size():
    from instseg.data.samplers import EpochSampler, EpochShard

    shares = [list(EpochShard(EpochSampler(2, seed=0), 5, rank)) for rank in range(5)]
    keys = list(EpochSampler(2, seed=0))
    assert shares == [[keys[0]], [keys[1]], [keys[0]], [keys[1]], [keys[0]]]
    with pytest.raises(ValueError, match="rank 2"):
        EpochShard(EpochSampler(2, seed=0), 2, 2)


class _Keys(Dataset):
    """A dataset of FACTORS' images whose samples are the keys they are read with."""

    def __len__(self) -> int:
        return len(FACTORS)

    def __getitem__(self, key):
        return key


def _lightning_loader(grouped, world_size, rank, batch_size, start=None):
    """A train loader built as the datamodule builds one, in the hook's re-instantiation
    context, then re-instantiated as Lightning does under DDP (_update_dataloader with its
    DistributedSampler over the dataset)."""
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    from instseg.data.samplers import (
        RepeatFactorSampler,
        ResumableBatchSampler,
        ResumableDataLoader,
    )

    dataset = _Keys()
    sampler = RepeatFactorSampler(FACTORS, seed=5)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        if grouped:
            groups = [i % 2 for i in range(len(dataset))]
            batches = GroupedBatchSampler(sampler, groups, batch_size, start=start,
                                          ddp_order=sampler)
        else:
            batches = ResumableBatchSampler(sampler, batch_size, drop_last=False, start=start,
                                            ddp_order=sampler)
        # the batches as lists of keys
        single = ResumableDataLoader(dataset, batch_sampler=batches, collate_fn=list)
    assert single.batch_sampler.sampler is sampler  # one process: as given
    injected = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                  seed=0)
    return _update_dataloader(single, injected)


@pytest.mark.parametrize("grouped", [False, True])
def test_lightning_re_instantiation_under_ddp_shards_the_repeat_factor_order(grouped):
    """Under DDP the batches are the rank's share of the repeat-factor epoch, not
    Lightning's DistributedSampler's order; set_epoch reaches it; a saved position resumes
    it."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    from instseg.data.samplers import EpochShard, ResumableBatchSampler

    world_size, batch_size = 2, 3
    for rank in range(world_size):
        distributed = _lightning_loader(grouped, world_size, rank, batch_size)
        assert type(distributed.batch_sampler) is (GroupedBatchSampler if grouped
                                                   else ResumableBatchSampler)
        assert isinstance(distributed.batch_sampler.sampler, EpochShard)
        _set_sampler_epoch(distributed, 2)
        assert distributed.batch_sampler.sampler.sampler.epoch == 2
        epoch = list(distributed.batch_sampler)
        share = _shares(world_size, 5, 2)[rank]
        if grouped:
            assert Counter(k for b in epoch for k in b) == Counter(share)
        else:
            assert [k for b in epoch for k in b] == share
        # every rank the same number of batches, grouped or not
        assert len(epoch) == len(distributed.batch_sampler) == -(-len(share) // batch_size)
        assert list(distributed) == epoch
        assert distributed.state_dict()["epoch"] == 2
        resumed = _lightning_loader(grouped, world_size, rank, batch_size,
                                    start={"epoch": 2, "batches_done": 2})
        assert list(resumed.batch_sampler) == epoch[2:]
