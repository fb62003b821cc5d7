"""Repeat-factor sampling under DDP: a real 2-process Lightning run (trainer=ddp_sim: gloo on
CPU) in which Lightning injects its DistributedSampler into the train loader's batch sampler,
as it does on GPUs, and each rank still trains on its share of the repeat-factor epoch."""

import json
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate

from instseg.data.samplers import RepeatFactorSampler, repeat_factors
from instseg.tasks.train import train
from tests.conftest import compose_config, tiny_train_overrides

# The tiny set's classes are each in 4 to 9 of its 12 images: t = 1 gives every image a factor
# of 1.15 to 1.73, an epoch of 19 (odd: the shares need a padding key).
THRESHOLD = 1.0
BATCHES = 2


class ShareProbe(pl.Callback):
    """Writes, in each rank's process, what its train loader (the one Lightning built for
    DDP) draws this epoch and what the rank trained on, to `out_dir`/rank<r>.json."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.record: dict = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.batch_sampler.sampler
        share = [list(key) for batch in trainer.train_dataloader.batch_sampler for key in batch]
        self.record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "sampler": type(sampler).__name__, "num_replicas": sampler.num_replicas,
            "sampler_rank": sampler.rank, "epoch": sampler.epoch,
            "seed": trainer.datamodule._train_seed, "share": share,
            "batches": len(trainer.train_dataloader), "trained": [],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["trained"].append([t["image_id"] for t in batch.targets])

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record))


def test_each_ddp_rank_trains_on_its_share_of_the_repeat_factor_epoch(tiny_shapes, tmp_path):
    base = [o for o in tiny_train_overrides(tiny_shapes) if "max_epochs" not in o]
    cfg = compose_config("train", [
        *base, "trainer=ddp_sim", "trainer.max_epochs=1", f"trainer.limit_train_batches={BATCHES}",
        "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1", "data.val_batch_size=2",
        f"+data.repeat_factor_threshold={THRESHOLD}", "+data.group_aspect_ratio=true",
        "+callbacks.share_probe._target_=tests.data.test_repeat_factor_ddp.ShareProbe",
        f"+callbacks.share_probe.out_dir={tmp_path}",
    ], tmp_path / "run")
    train(cfg)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # the single-process epoch 0 of the run's seed
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    dataset = datamodule.train_set
    factors = repeat_factors([[a["category_id"] for a in dataset.annotations[i]]
                              for i in dataset.image_ids], THRESHOLD)
    assert ranks[0]["seed"] == ranks[1]["seed"]
    whole = [list(key) for key in RepeatFactorSampler(factors, seed=ranks[0]["seed"])]
    assert len(whole) > len(dataset) and len(whole) % 2 == 1  # repeats, and a padding key

    shares = []
    for rank, record in enumerate(ranks):
        assert record["rank"] == record["sampler_rank"] == rank
        assert record["world_size"] == record["num_replicas"] == 2
        assert record["sampler"] == "EpochShard" and record["epoch"] == 0
        shares.append(record["share"])
        # what the rank trained on: its share's first batches
        trained = [i for batch in record["trained"] for i in batch]
        assert len(record["trained"]) == BATCHES
        assert trained == [dataset.image_ids[i] for _, i in record["share"][:len(trained)]]
    length = -(-len(whole) // 2)
    assert len(shares[0]) == len(shares[1]) == length
    assert ranks[0]["batches"] == ranks[1]["batches"]
    padded = whole + whole[:2 * length - len(whole)]
    assert Counter(tuple(k) for s in shares for k in s) == Counter(tuple(k) for k in padded)
    assert [s[i] for i in range(length) for s in shares] == padded  # DistributedSampler's layout
