"""What the multigrid's insert buffer buys: single inserts and lookups against buffer size.

This is the measurement behind ``MultiGridIndex(buffer=64)``. On the real corpus of
``index_bench.py`` (same seed and split: 92k QQP questions and real prompts, learned
projection of width 32) it reports, per buffer size:

* the cost of one single-row insert given its projected row, as the cache pays it
  after a miss (mean over ``--ops`` inserts, so the batch flushes are included, and
  the median, which is the buffered path alone);
* the lookup p50 (candidates only) with the buffer empty and with it one row short
  of full, which is what every lookup pays to filter the waiting rows.

A first table splits the cost of one insert kernel call into entering it and
inserting one row, from single-row calls and from one call on ``--ops`` rows.

Run: ``python benchmarks/lab/insert_buffer_bench.py [--ops 2000] [--queries 1000]``
"""

from __future__ import annotations

import _here  # noqa: F401  (benchmarks/ on the path, one thread: see its docstring)

# isort: split

import argparse
import time
from typing import Any

import numpy as np
from common import RESULTS_DIR, print_table, save_text
from index_bench import load_real_corpus, split_corpus
from tqdm import tqdm

from semcache.index import GridIndex, MultiGridIndex
from semcache.index import grid_kernels as K
from semcache.projection import LearnedProjection

BUFFERS = (0, 16, 64, 256)


def kernel_costs(X: np.ndarray, low: np.ndarray, new_low: np.ndarray) -> list[list[Any]]:
    """Microseconds of one ``grid_insert`` call on one row, and per row of one call on all."""
    g = GridIndex(m=10, grid=2)
    g.add(np.arange(len(X), dtype=np.int64), low, X)
    rows = np.ascontiguousarray(new_low if g._perm is None else new_low[:, g._perm])
    base = len(X)

    def call(r: np.ndarray, ids: np.ndarray) -> int:
        return int(K.grid_insert(
            r, ids, g._edges, g.grid, g._b, g._T, g._mapped, g._qinv, g._cells, g._meta,
            g._pvec, g._pids, g._ctab, g._itab, g._vec_f, g._vec_q,
        ))

    ids = np.arange(base, base + len(rows), dtype=np.int64)
    ts = []
    for i in range(len(rows)):
        one_id, one_row = ids[i : i + 1], rows[i : i + 1]
        t0 = time.perf_counter()
        call(one_row, one_id)
        ts.append(time.perf_counter() - t0)
    g.remove(ids)
    ids = ids + len(rows)
    t0 = time.perf_counter()
    done = call(rows, ids)
    batch = (time.perf_counter() - t0) / len(rows)
    assert done == len(rows)
    return [["grid_insert, one row per call", 1e6 * float(np.median(ts))],
            [f"grid_insert, {len(rows)} rows in one call, per row", 1e6 * batch]]


def run(buffer: int, X: np.ndarray, low: np.ndarray, new_low: np.ndarray, new_full: np.ndarray,
        q_low: np.ndarray) -> list[Any]:
    idx = MultiGridIndex(buffer=buffer)
    idx.add(np.arange(len(X), dtype=np.int64), low, X)
    for q in q_low[:200]:  # warm the lookup path
        idx.candidates(q, q, 0.9)
    ts = []
    for i in range(len(new_low)):
        ids = np.array([len(X) + i], dtype=np.int64)
        row, full = new_low[i : i + 1], new_full[i : i + 1]
        t0 = time.perf_counter()
        idx.add(ids, row, full)
        ts.append(time.perf_counter() - t0)
    look = []
    for fill in (0, max(0, buffer - 1)):
        idx.flush()
        for j in range(fill):  # ids past the inserts above; rows reused if --ops < buffer
            k, r = len(X) + len(new_low) + j, j % len(new_low)
            idx.add(np.array([k], dtype=np.int64), new_low[r : r + 1], new_full[r : r + 1])
        assert idx.stats()["buffered"] == fill
        lt = []
        for q in q_low:
            t0 = time.perf_counter()
            idx.candidates(q, q, 0.9)
            lt.append(time.perf_counter() - t0)
        look.append(1e3 * float(np.median(lt)))
    a = np.asarray(ts) * 1e6
    return [buffer, float(a.mean()), float(np.median(a)), float(np.percentile(a, 99)), *look]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="single inserts timed per buffer size")
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    data = load_real_corpus()
    _, Q, real, p_stream = split_corpus(data, args.queries)
    # New rows: the prompts kept out of the cache (the mixed workload's stream).
    new = np.ascontiguousarray(data["prompts"][p_stream][: args.ops])
    proj = LearnedProjection(32).fit(real)
    low, new_low, q_low = (np.ascontiguousarray(proj.transform(a)) for a in (real, new, Q))
    kc = kernel_costs(real, low, new_low)
    rows = [run(b, real, low, new_low, new, q_low) for b in tqdm(BUFFERS, desc="buffer sizes")]
    print(f"\nN = {len(real)} real rows, {len(new)} single inserts, {len(Q)} lookups\n")
    t1 = print_table(["kernel call", "us"], kc)
    print()
    headers = ["buffer", "insert mean us", "insert p50 us", "insert p99 us",
               "lookup p50 ms (empty)", "lookup p50 ms (buffer - 1 rows)"]
    t2 = print_table(headers, rows)
    out = save_text("insert_buffer_bench.txt", f"python benchmarks/lab/insert_buffer_bench.py --ops "
                    f"{args.ops} --queries {args.queries}", f"# N = {len(real)}\n{t1}\n\n{t2}")
    plot(rows)
    print(f"\nsaved {out} and insert_buffer_bench.png")


def plot(rows: list[list[Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [str(r[0]) for r in rows]
    a1.bar(labels, [r[1] for r in rows], label="mean (flushes included)")
    a1.plot(labels, [r[2] for r in rows], "ko-", label="median")
    a1.set(xlabel="buffer rows", ylabel="single insert, us", title="Insert cost")
    a1.legend(fontsize=8)
    a2.plot(labels, [r[4] for r in rows], "o-", label="buffer empty")
    a2.plot(labels, [r[5] for r in rows], "s-", label="buffer one row short of full")
    a2.set(xlabel="buffer rows", ylabel="lookup p50, ms (candidates only)", title="Lookup cost",
           ylim=(0, None))
    a2.legend(fontsize=8)
    fig.savefig(RESULTS_DIR / "insert_buffer_bench.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
