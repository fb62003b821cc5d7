"""instseg.utils.memory: after reuse_freed_memory, the large tensors of a repeated
computation cost no new page faults once the heap has grown to hold them (glibc keeps the
freed memory); without it, every repetition faults them in again.

The heap's layout is not fully settled after a few repetitions: now and then a small
allocation is carved out of a freed large block, and the next large block grows the heap
once more (seen: one repetition of 20 MiB here, one of 96 MiB on CI). So the faults are
counted per repetition and the median is compared, which such a stray growth cannot move."""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    from instseg.utils.memory import reuse_freed_memory
    if sys.argv[1] == "reuse":
        assert reuse_freed_memory()
    def forward():  # like a layer's activations: several large tensors alive at once
        a, b = torch.ones(56 * 2**20 // 4), torch.ones(40 * 2**20 // 4)
        c = a[:10] + b[:10]
        return torch.ones(20 * 2**20 // 4).sum() + c.sum()
    for _ in range(3):  # the heap grows to the computation's peak
        forward()
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        forward()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    def median_faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                             text=True, check=True)
        return statistics.median_low(int(n) for n in run.stdout.split())

    pages = 116 * 2**20 // 4096  # one repetition's large tensors
    default, reuse = median_faults("default"), median_faults("reuse")
    # glibc maps blocks over 32 MiB afresh each time (the 56 and 40 MiB ones at least);
    # transparent huge pages would make that fewer, larger faults, hence the ratio
    assert default > 0 and reuse * 8 < default
    assert reuse < pages // 8
