"""Distance-sensitive Bloom filter as a local fast negative: rates, memory and cost.

Data (real MiniLM embeddings, cached under ``benchmarks/.cache/``):

* **10k**: the distinct ``text_a`` questions of the first QQP ``pairs_dev``
  pairs are stored (10,000 rows); the queries are the ``text_b`` questions of
  the same pairs (so many have a real paraphrase stored) plus ``text_a``
  questions of later pairs (never stored).
* **100k (synthetic)**: the 10k real rows plus 9 copies of each, every copy the
  row turned by a random angle to a cosine drawn in [0.55, 0.85] (distinct
  entries, none a near duplicate of its origin), so the set keeps real
  directions but is not 100k real texts (embedding 100k texts takes too long
  on this machine). The same real queries.

Ground truth is exact search: a query is a *true hit* when a stored vector
has cosine >= 0.9, a *miss* otherwise. For each (m, L, log_bits, probes)
the filter is built, ``t`` is calibrated on the stored vectors only (target
0.5% of near pairs rejected), and the table reports the share of misses
answered locally, the share of true hits rejected, bits per entry, insert and
query cost per vector; ``oracle`` columns give the best the same filter could
do with ``t`` chosen on the queries' own ground truth (the frontier, not a
usable setting). A second table splits the misses answered locally by their
nearest neighbour's cosine. The PNG plots, against ``t``, the measured near
acceptance and far report rates beside Theorem 1's bounds.

The in-process replica mode is measured too: the filter's single-query cost
against an :class:`~semcache.index.exact.ExactIndex` lookup and a
:class:`~semcache.index.grid.GridIndex` lookup on the same rows.

Run (heavy: under the shared lock)::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/dsbf_bench.py
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
from common import RESULTS_DIR, Timer, embed_cached, print_table, save_text
from tqdm import tqdm

from semcache.datasets import load_qqp_pairs
from semcache.index.dsbf import DistanceSensitiveBloomFilter, theorem1_bounds
from semcache.index.exact import ExactIndex
from semcache.index.grid import GridIndex
from semcache.projection import PCAProjection

THRESHOLD = 0.9
TARGET = 0.005

#: (m, L, bits per entry the arrays are sized for, probes); log_bits follows n.
CONFIGS = [
    (1, 20, 32, 0),
    (2, 20, 32, 0),
    (2, 24, 64, 4),
    (4, 16, 64, 0),
    (4, 20, 64, 2),
    (8, 12, 64, 0),
    (16, 10, 32, 0),
    (32, 12, 64, 1),
    (8, 18, 256, 0),
    (16, 18, 1024, 0),
    (32, 16, 1024, 0),
]


def qqp_sets(n_store: int, n_partners: int, n_new: int) -> tuple[np.ndarray, np.ndarray]:
    """Real stored rows (n_store) and queries (paraphrase sides + unseen questions)."""
    stored: dict[str, None] = {}
    partners: list[str] = []
    later: list[str] = []
    for p in load_qqp_pairs():
        if len(stored) < n_store:
            if p.text_a not in stored:
                stored[p.text_a] = None
                partners.append(p.text_b)
        elif p.text_a not in stored and len(later) < n_new:
            later.append(p.text_a)
        if len(stored) >= n_store and len(later) >= n_new:
            break
    s_texts = list(stored)
    x = embed_cached(s_texts, f"dsbf_qqp_store{n_store}")
    q_texts = partners[:n_partners] + later
    q = embed_cached(q_texts, f"dsbf_qqp_query{n_store}")
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(q, np.float32)


def synthetic(x: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """``x`` plus ``copies`` rotated copies of each row at cosine in [0.55, 0.85]."""
    rng = np.random.default_rng(seed)
    out = [x]
    for _ in range(copies):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        noise -= (noise * x).sum(axis=1, keepdims=True) * x
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        c = rng.uniform(0.55, 0.85, size=(len(x), 1)).astype(np.float32)
        out.append(c * x + np.sqrt(1 - c * c) * noise)
    return np.ascontiguousarray(np.concatenate(out), np.float32)


def nearest(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Best cosine of each query against ``x`` (exact)."""
    best = np.full(len(q), -1.0, dtype=np.float32)
    for s in range(0, len(x), 20000):
        best = np.maximum(best, (q @ x[s : s + 20000].T).max(axis=1))
    return best


def per_vector_us(fn: object, arg: np.ndarray, reps: int = 1) -> float:
    """Wall time of ``fn(arg)`` per row, microseconds (best of ``reps``)."""
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(arg)  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best / len(arg) * 1e6


def single_query_us(fn: object, q: np.ndarray, k: int = 500) -> tuple[float, float]:
    """p50 / p99 of one-vector calls, microseconds."""
    ts = []
    for i in range(min(k, len(q))):
        row = q[i : i + 1]
        t0 = time.perf_counter()
        fn(row)  # type: ignore[operator]
        ts.append(time.perf_counter() - t0)
    a = np.asarray(ts) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def run_size(
    name: str,
    x: np.ndarray,
    q: np.ndarray,
    rows: list[list[object]],
    bins_rows: list[list[object]],
    curves: dict[str, dict[str, np.ndarray]],
) -> None:
    n = len(x)
    best = nearest(q, x)
    near = best >= THRESHOLD
    miss = ~near
    edges = [-1.0, 0.5, 0.7, 0.8, THRESHOLD]
    for m, L, bpe, probes in tqdm(CONFIGS, desc=f"configs {name}"):
        log_bits = max(6, round(math.log2(bpe * n / m)))
        f = DistanceSensitiveBloomFilter(x.shape[1], m=m, L=L, log_bits=log_bits, probes=probes)
        with Timer() as t_ins:
            f.add(x)
        ins_us = t_ins.seconds / n * 1e6
        with Timer() as t_cal:
            f.calibrate(x, target_loss=TARGET)
        batch_us = per_vector_us(f.scores, q, reps=3)
        p50, _ = single_query_us(f.might_contain, q)
        sc = f.scores(q)
        local = sc < f.t
        oracle_t = 0
        for t in range(1, m + 1):
            if np.mean(sc[near] < t) <= TARGET:
                oracle_t = t
        o_local = float(np.mean(sc[miss] < oracle_t)) if oracle_t else 0.0
        label = f"m={m} L={L} 2^{log_bits} p={probes}"
        rows.append(
            [
                name,
                label,
                f.t,
                f.theorem_t,
                f"{f.calibrated_loss:.4f}",
                f"{f.bits_per_entry:.1f}",
                f"{np.mean(local[miss]):.3f}",
                f"{np.mean(local[near]):.4f}",
                oracle_t,
                f"{o_local:.3f}",
                f"{ins_us:.2f}",
                f"{batch_us:.2f}",
                f"{p50:.1f}",
                f"{t_cal.seconds:.1f}",
            ]
        )
        bins_rows.append(
            [name, label]
            + [f"{np.mean(local[miss & (best >= a) & (best < b)]):.3f}" for a, b in itertools.pairwise(edges)]
        )
        if not name.endswith("-syn") and (m, L) in ((8, 12), (32, 12), (16, 18)):
            ts = np.arange(1, m + 1)
            curves[label] = {
                "t": ts,
                "near_acc": np.array([np.mean(sc[near] >= t) for t in ts]),
                "far_rep": np.array([np.mean(sc[miss] >= t) for t in ts]),
                "p_lower": np.array([theorem1_bounds(m, L, int(t), THRESHOLD, 0.5, n)[0] for t in ts]),
                "q_upper": np.array([theorem1_bounds(m, L, int(t), THRESHOLD, 0.5, n)[1] for t in ts]),
                "t_cal": np.array([f.t]),
            }
    rows.append(
        [name, f"(queries: {int(near.sum())} true hits, {int(miss.sum())} misses, n={n})"] + [""] * 12
    )


def replica_mode(x: np.ndarray, q: np.ndarray) -> list[list[object]]:
    """Single-query cost of the filter next to in-memory index lookups on the same rows."""
    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    proj = PCAProjection(n_components=32).fit(x)
    low, q_low = proj.transform(x), proj.transform(q)
    exact = ExactIndex()
    exact.add(ids, low, x)
    grid = GridIndex()
    grid.add(ids, low, x)
    f = DistanceSensitiveBloomFilter(x.shape[1], m=8, L=12, log_bits=max(6, round(math.log2(64 * n / 8))))
    f.add(x)
    out = []
    for label, fn in [
        ("dsbf might_contain (m=8 L=12)", lambda r: f.might_contain(r)),
        ("ExactIndex.candidates", None),
        ("GridIndex.candidates", None),
    ]:
        if fn is None:
            idx = exact if label.startswith("Exact") else grid
            ts = []
            for i in range(min(500, len(q))):
                t0 = time.perf_counter()
                idx.candidates(q_low[i], q[i], THRESHOLD)
                ts.append(time.perf_counter() - t0)
            a = np.asarray(ts) * 1e6
            p50, p99 = float(np.percentile(a, 50)), float(np.percentile(a, 99))
        else:
            p50, p99 = single_query_us(fn, q)
        out.append([f"{n // 1000}k", label, f"{p50:.1f}", f"{p99:.1f}"])
    return out


def plot(curves: dict[str, dict[str, np.ndarray]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (label, c) in zip(axes[0], curves.items(), strict=True):
        ax.plot(c["t"], c["near_acc"], "o-", label="measured: true hits reported near")
        ax.plot(c["t"], c["p_lower"], "--", label="Thm 1 lower bound p (cos 0.9)")
        ax.plot(c["t"], c["far_rep"], "s-", label="measured: misses reported near")
        ax.plot(c["t"], c["q_upper"], ":", label="Thm 1 upper bound q (cos 0.5, N=n)")
        ax.axvline(float(c["t_cal"][0]), color="grey", lw=0.8, label="calibrated t")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("t (score threshold)")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share reported near")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="real stored rows")
    ap.add_argument("--copies", type=int, default=9, help="synthetic copies per row for the large set")
    ap.add_argument("--partners", type=int, default=2000, help="paraphrase-side query questions")
    ap.add_argument("--new", type=int, default=2000, help="unseen query questions")
    ap.add_argument("--out", default="dsbf_bench", help="results file stem under results/")
    ap.add_argument(
        "--vectors",
        nargs=2,
        metavar=("STORED.npy", "QUERIES.npy"),
        help="use these precomputed unit embeddings instead of embedding QQP texts",
    )
    args = ap.parse_args()
    if args.vectors:
        x = np.ascontiguousarray(np.load(args.vectors[0]), np.float32)
        q = np.ascontiguousarray(np.load(args.vectors[1]), np.float32)
        source = f"--vectors {args.vectors[0]} {args.vectors[1]}"
    else:
        x, q = qqp_sets(args.n, args.partners, args.new)
        source = f"--n {args.n} --partners {args.partners} --new {args.new}"
    rows: list[list[object]] = []
    bins_rows: list[list[object]] = []
    curves: dict[str, dict[str, np.ndarray]] = {}
    run_size(f"{len(x) // 1000}k", x, q, rows, bins_rows, curves)
    replica = replica_mode(x, q)
    if args.copies:
        big = synthetic(x, args.copies)
        run_size(f"{len(big) // 1000}k-syn", big, q, rows, bins_rows, curves)
        replica += replica_mode(big, q)
    headers = [
        "set",
        "filter",
        "t",
        "thm1 t",
        "cal loss",
        "bits/entry",
        "miss local",
        "hits lost",
        "oracle t",
        "oracle miss local",
        "insert us/vec",
        "query us/vec (batch)",
        "query p50 us (1 vec)",
        "calib s",
    ]
    text = print_table(headers, rows)
    text += "\n\nShare of misses answered locally, by the miss's nearest stored cosine:\n"
    text += print_table(["set", "filter", "<0.5", "0.5-0.7", "0.7-0.8", "0.8-0.9"], bins_rows)
    text += "\n\nIn-process replica mode, one query (microseconds):\n"
    text += print_table(["set", "what", "p50 us", "p99 us"], replica)
    save_text(
        args.out + ".txt",
        "flock /work/coord/heavy.lock .venv/bin/python benchmarks/dsbf_bench.py "
        f"{source} --copies {args.copies}",
        text,
    )
    plot(curves, str(RESULTS_DIR / (args.out + ".png")))


if __name__ == "__main__":
    main()
