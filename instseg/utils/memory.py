"""The C allocator's settings for inference on CPU.

PyTorch allocates CPU tensors with the C library's malloc. glibc serves each block above its
mmap threshold (32 MiB at most) with fresh pages from the kernel and hands them back when the
block is freed, so every large activation of a forward pass (one 256-channel map at 800 px
is 56 MB) is page-faulted and zeroed again on every image. `reuse_freed_memory()` has glibc
serve every block from its heap and keep freed memory there for the next image (mallopt
M_MMAP_MAX=0 and a 2 GiB M_TRIM_THRESHOLD). The process then holds on to its peak memory
between images instead of returning it. It acts on the whole process, and it is what the
Predictor, the demo and evaluate.py do on CPU (benchmarks/bench_inference.py measures it
apart from the other optimisations). Without glibc (macOS, Windows, musl) it does nothing and
returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int


@cache
def reuse_freed_memory() -> bool:
    """True when glibc took the settings (once per process; later calls repeat the answer)."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.info("not glibc: the C allocator's settings are left as they are")
        return False
    taken = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
    if not taken:
        log.warning("glibc refused mallopt(M_MMAP_MAX / M_TRIM_THRESHOLD); allocator unchanged")
    return taken


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
