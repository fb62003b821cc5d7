"""instseg.utils.memory: after reuse_freed_memory, the large tensors of a repeated
computation cost no new page faults once the heap has grown to hold them (glibc keeps the
freed memory); without it, every repetition faults them in again."""

from __future__ import annotations

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
    for _ in range(5):  # the heap grows to the computation's peak
        forward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        forward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                             text=True, check=True)
        return int(run.stdout.split()[-1])

    pages = 5 * 116 * 2**20 // 4096
    assert faults("default") > pages // 2  # fresh pages every time (huge pages: fewer)
    assert faults("reuse") < pages // 8  # at most a stray block re-faulted
