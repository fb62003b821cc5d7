"""instseg.utils.memory: after reuse_freed_memory, a large block that is freed and allocated
again is served from memory the process already holds; without it, glibc maps every block
over 32 MiB afresh and the kernel faults each of its pages in again.

Page faults alone do not tell the two apart reliably: glibc's heap keeps growing for a
while (torch allocates with posix_memalign, and an aligned request does not fit the exact
hole its predecessor left until neighbouring holes merge; seen: 2 to 7 growths of the
block's size in 24 repetitions, then none in 300). Growing the heap faults in new pages,
which is not what the setting is about. So the test counts the faults that the growth of
the process's mappings does not account for: pages it held before and faulted in again.
The growth is read as the process's size (/proc/self/statm), which covers the heap however
glibc extends it (brk, or mmap where brk cannot grow); blocks mapped afresh and unmapped
within the loop leave it unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

REPEATS, BLOCK_PAGES = 24, 56 * 2**20 // 4096
SCRIPT = textwrap.dedent(f"""
    import resource, sys
    from pathlib import Path
    import torch
    from instseg.utils.memory import reuse_freed_memory
    if sys.argv[1] == "reuse":
        assert reuse_freed_memory()
    def faults_and_heap_pages():  # statm's first field: the process's size in pages
        size = int(Path("/proc/self/statm").read_text().split()[0])
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt, size
    def step():  # like a large activation: allocated, filled, used, freed
        return torch.ones({BLOCK_PAGES} * 1024).sum()
    step()
    faults, heap = faults_and_heap_pages()
    for _ in range({REPEATS}):
        step()
    faults_after, heap_after = faults_and_heap_pages()
    print((faults_after - faults) - (heap_after - heap))
""")


def refaulted_pages(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True)
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, reuse = refaulted_pages("default"), refaulted_pages("reuse")
    # default: about REPEATS * BLOCK_PAGES (fewer, larger faults under transparent huge
    # pages, hence a ratio); reuse: about 0 (a few of Python's or OpenMP's own pages)
    assert default > 0 and reuse * 8 < default
    assert reuse < BLOCK_PAGES
