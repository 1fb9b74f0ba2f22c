"""Writing back every resident page of this process, so no index is timed on memory left idle.

On the benchmark machines memory that no code touched for a while is slow to
write again (``idle_memory_bench.py``: 81 us for the first write into a 2 MB
stretch idle for 60 s, 2.5 us a 4 KB page). An index benchmark builds every
method before it times any, so at 1M rows the first-built indexes sat idle for
minutes while the others were built. Measured on the two-table grid at 1M rows
(single inserts, cold pass / steady pass, and lookup p50):

* right after its build: 2.5 / 2.2 us, 214 us;
* after 240 s asleep: 12.6 / 7.4 us; after 240 s of random writes into
  another 3 GB array (like a peer's build): 21.8 / 9.9 us;
* after 180 s asleep and :func:`rewrite_resident_pages` (1.1 s for 2 GB):
  2.5 / 2.1 us, 190 us. Reading the pages instead of writing them left
  3.7 / 3.5 us, 240 us.

So ``index_bench.py`` calls :func:`rewrite_resident_pages` before each timed
phase: every method starts it on memory written a second or two earlier,
whatever the order the methods were built in. Linux only (``/proc/self/maps``
and ``mincore``); elsewhere it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

from semcache.index._kernels_common import _address  # int -> pointer in compiled code

PAGE = mmap.PAGESIZE


@intrinsic
def _rewrite_byte(typingctx: Any, addr: Any) -> Any:
    """Load the byte at ``addr`` and store it back (atomic accesses: LLVM drops a plain pair)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        value = builder.load_atomic(ptr, "monotonic", 1)
        builder.store_atomic(value, ptr, "monotonic", 1)
        return context.get_dummy_value()

    return nb.types.void(nb.types.int64), codegen


def _mincore() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = libc.mincore
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _compile() -> Any:
    mincore = _mincore()

    # Not nogil: the kernel holds the GIL, so no Python thread runs between a
    # byte's load and its store. It allocates nothing either: freeing memory
    # could shrink a region listed before the loop.
    @nb.njit("int64(int64[:, ::1], uint8[::1], int64)")
    def rewrite(regions: np.ndarray, resident: np.ndarray, page: int) -> int:
        pages = 0
        for r in range(regions.shape[0]):
            lo = regions[r, 0]
            size = regions[r, 1] - lo
            if mincore(_address(lo), size, _address(resident.ctypes.data)) != 0:
                continue
            for i in range(size // page):
                if resident[i] & 1:
                    _rewrite_byte(lo + i * page)
                    pages += 1
        return pages

    return rewrite


_KERNEL: list[Any] = []


def private_writable_regions() -> np.ndarray:
    """``(start, end)`` of this process's private writable mappings, shape (r, 2)."""
    regions = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            perms = parts[1]
            name = parts[5] if len(parts) > 5 else ""
            if perms[:2] != "rw" or perms[3] != "p" or name.startswith("[stack"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            regions.append((lo, hi))
    return np.array(regions, dtype=np.int64).reshape(-1, 2)


def rewrite_resident_pages() -> int:
    """Write every resident page of the process's private writable memory with its own first byte.

    Returns the number of pages written (0 off Linux, where it does nothing).
    Pages never touched stay untouched (``mincore`` says which are resident),
    so the process does not grow.
    """
    if not sys.platform.startswith("linux"):
        print("rewrite_resident_pages: not on Linux, memory left as it is", file=sys.stderr)
        return 0
    if not _KERNEL:
        _KERNEL.append(_compile())
    regions = private_writable_regions()
    resident = np.zeros(int(((regions[:, 1] - regions[:, 0]) // PAGE).max()) + 1, dtype=np.uint8)
    return int(_KERNEL[0](regions, resident, PAGE))
