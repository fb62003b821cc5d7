"""GroupedBatchSampler: every index of a rank's partition once per epoch, batches by group."""

from collections import Counter

import pytest
from torch.utils.data import DistributedSampler, RandomSampler

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
