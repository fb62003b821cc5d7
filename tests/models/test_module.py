"""instseg.models.module: on CPU, fit makes glibc's keep-freed-memory setting
(instseg.utils.memory) unless model.reuse_memory=false. The setting's effect on page faults
is tested in tests/utils/test_memory.py; here, that fit asks for it, and only when told."""

from __future__ import annotations

import pytest

from instseg.pipeline import train
from instseg.utils.memory import reuse_freed_memory
from tests.conftest import compose_config, tiny_train_overrides


@pytest.mark.parametrize("reuse", [True, False])
def test_cpu_fit_asks_for_the_allocator_setting_as_configured(reuse, tiny_shapes, tmp_path):
    cfg = compose_config("train", [*tiny_train_overrides(tiny_shapes), "trainer.max_steps=1",
                                   "trainer.limit_val_batches=0", "logger=none",
                                   "callbacks=none", f"model.reuse_memory={reuse}"], tmp_path)
    reuse_freed_memory.cache_clear()  # forget earlier calls in this process (idempotent)
    train(cfg)
    assert reuse_freed_memory.cache_info().currsize == int(reuse)
