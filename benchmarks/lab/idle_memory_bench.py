"""What the first touch of memory left idle costs on this machine (not semcache's code).

On the benchmark machines (small virtual machines) memory that no code has
touched for a while becomes slow to touch again, in 2 MB stretches: the first
write into such a stretch takes tens of microseconds, later writes into the same
stretch take a normal cache miss. It is the host's doing, not the guest's:
no page fault is counted in the process (``getrusage``) while it happens.

It matters to the timings of an index built a while earlier: an insert
writes a few rows at random places of the index arrays, and while the
stretches are still cold, each first touch adds its cost to one insert. So
``index_bench.py`` writes every resident page of its process before each timed
phase (``idle_pages.py``, which has the measurements at 1M rows).

For each idle time it allocates two 64 MB arrays, writes every page of both,
waits, and then times

* writes to 1,000 random pages of the first array ("cold pages");
* one write per 2 MB stretch of the second ("first touch of a stretch"), then
  writes to the same 1,000 random pages of it ("after the stretches");
* the 1,000 writes to the first array again ("warm pages", the baseline).

Run: ``python benchmarks/lab/idle_memory_bench.py [--idle 0,10,30,60]``
"""

from __future__ import annotations

import _here  # noqa: F401  (benchmarks/ on the path, one thread: see its docstring)

# isort: split

import argparse
import time

import numba as nb
import numpy as np
from common import print_table, save_text
from tqdm import tqdm

PAGE = 4096
STRETCH = 2 << 20
SIZE = 64 << 20


@nb.njit("void(uint8[::1], int64[::1])", cache=True)
def write_at(a: np.ndarray, offsets: np.ndarray) -> None:
    for off in offsets:
        a[off] = np.uint8(1)


def timed_writes(a: np.ndarray, offsets: np.ndarray) -> float:
    """Microseconds per write of one byte at each offset."""
    t0 = time.perf_counter()
    write_at(a, offsets)
    return 1e6 * (time.perf_counter() - t0) / len(offsets)


def fresh_array() -> np.ndarray:
    a = np.empty(SIZE, dtype=np.uint8)
    a.fill(0)  # every page written now
    return a


def stretch_starts(a: np.ndarray) -> np.ndarray:
    """Offsets of the first byte of each whole 2 MB-aligned stretch of ``a``."""
    first = (-a.ctypes.data) % STRETCH
    return np.arange(first, len(a) - STRETCH + 1, STRETCH, dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", default="0,10,30,60", help="comma list of idle times in seconds")
    ap.add_argument("--pages", type=int, default=1000, help="random pages written per array")
    args = ap.parse_args()
    idle = [float(x) for x in args.idle.split(",")]
    rng = np.random.default_rng(0)
    pages = rng.choice(SIZE // PAGE, args.pages, replace=False).astype(np.int64) * PAGE + 64
    # The first call of the compiled function pays a one-off setup (~0.2 ms): keep it out
    # of the timings.
    write_at(np.zeros(PAGE, dtype=np.uint8), np.zeros(1, dtype=np.int64))
    rows = []
    for t in tqdm(idle, desc="idle times", unit="wait"):
        a, b = fresh_array(), fresh_array()
        time.sleep(t)
        cold = timed_writes(a, pages)
        starts = stretch_starts(b)
        stretch = timed_writes(b, starts)
        after = timed_writes(b, pages)
        warm = timed_writes(a, pages)
        rows.append([t, cold, stretch, after, warm, cold / warm])
        del a, b
    headers = ["idle s", "cold pages us/page", "first touch of a 2 MB stretch us",
               "after the stretches us/page", "warm pages us/page", "cold / warm"]
    text = print_table(headers, rows)
    out = save_text("idle_memory_bench.txt", f"python benchmarks/lab/idle_memory_bench.py --idle {args.idle}",
                    text)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
