"""How many rows must a grid lookup scan for recall >= 0.995? One grid against two.

This is the measurement behind the defaults of :class:`semcache.index.MultiGridIndex`
(two binary grids, cells of ~96 rows, a scan budget of ``24 * sqrt(N)`` rows) and of
the single :class:`semcache.index.GridIndex` (``m=6, grid=3, max_scan=0.15``).

For each configuration and scan budget it reports the recall of threshold hits at
0.85 / 0.9 / 0.95 (the exact best match with cosine >= t is among the candidates),
the share of the entries scanned per lookup, candidates per lookup and the lookup
p50 (candidates only: projection and re-rank are the same for every grid). Data and
queries are those of ``index_bench.py`` (same seed): the real corpus (92k QQP
questions and real prompts), optionally grown to 1M rows with synthetic paraphrase
structure (``--sizes full,1M``).

Small indexes (``--sizes 5k,10k,20k``, random real rows) also try lower floors
of the budget, which is what sets it below ~29k entries.

Run: ``python benchmarks/lab/grid_budget_bench.py [--sizes full,1M] [--queries 2000] [--out NAME]``
"""

from __future__ import annotations

import _here  # noqa: F401  (benchmarks/ on the path, one thread: see its docstring)

# isort: split

import argparse
import time
from typing import Any

import numpy as np
from common import RESULTS_DIR, print_table, save_text
from index_bench import ground_truth, rows_over_sizes, threshold_recall
from tqdm import tqdm

from semcache.index import GridIndex, MultiGridIndex
from semcache.projection import LearnedProjection


def configs(n: int) -> list[tuple[str, Any]]:
    """(label, factory) per configuration and budget; budgets in rows over all tables."""
    out: list[tuple[str, Any]] = []
    for share in (0.05, 0.1, 0.15, 0.25):
        out.append((f"grid m=6 G=3, {share:.0%} of N",
                    lambda s=share: GridIndex(m=6, grid=3, max_scan=s)))
    for share in (0.02, 0.05, 0.1):
        out.append((f"grid binary m=10, {share:.0%} of N",
                    lambda s=share: GridIndex(m=10, grid=2, max_scan=s)))
    for scale in (8.0, 16.0, 24.0, 32.0):
        rows = max(4096, int(scale * np.sqrt(n)))
        out.append((f"multigrid 2 tables, {scale:g}*sqrt(N) = {rows} rows",
                    lambda s=scale: MultiGridIndex(scan_scale=s, min_scan=4096)))
    if 24.0 * np.sqrt(n) < 4096:
        # Small indexes: where the floor, not 24*sqrt(N), sets the budget.
        for floor in (1024, 2048):
            rows = max(floor, int(24.0 * np.sqrt(n)))
            out.append((f"multigrid 2 tables, 24*sqrt(N), floor {floor} = {rows} rows",
                        lambda f=floor: MultiGridIndex(scan_scale=24.0, min_scan=f)))
    return out


def run(label: str, X: np.ndarray, Q: np.ndarray, rows: list[list[Any]]) -> None:
    proj = LearnedProjection(32).fit(X)
    low = proj.transform(X)
    q_low = proj.transform(Q)
    best, score = ground_truth(X, Q)
    for name, make in tqdm(configs(len(X)), desc=f"N={label}", unit="config"):
        idx = make()
        idx.add(np.arange(len(X), dtype=np.int64), low, X)
        rec = threshold_recall(lambda i, t, g=idx: g.candidates(q_low[i], Q[i], t), best, score)
        ts, scanned, cands = [], [], []
        for i in range(len(Q)):
            t0 = time.perf_counter()
            c = idx.candidates(q_low[i], Q[i], 0.9)
            ts.append(time.perf_counter() - t0)
            scanned.append(int(idx.last_stats[1]))
            cands.append(len(c))
        rows.append([label, name, *rec.values(), float(np.mean(scanned)) / len(X), float(np.mean(cands)),
                     1e3 * float(np.median(ts)), idx.stats()["bytes_per_entry"]])
        del idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="full",
                    help="comma list of 5k,10k,20k (random real rows), full, 1M")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", default="grid_budget_bench",
                    help="name of the result files in benchmarks/results (.txt, .png)")
    args = ap.parse_args()
    rows = rows_over_sizes(args.sizes, args.queries, run)
    headers = ["N", "index, scan budget", "R@.85", "R@.9", "R@.95", "scanned / N", "cands",
               "p50 ms", "B/entry"]
    print()
    text = print_table(headers, rows)
    out = save_text(f"{args.out}.txt", f"python benchmarks/lab/grid_budget_bench.py --sizes "
                    f"{args.sizes} --queries {args.queries} --out {args.out}", text)
    plot(rows, args.out)
    print(f"\nsaved {out} and {args.out}.png")


def plot(rows: list[list[Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    families: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        fam = f"{r[1].split(',')[0]} (N={r[0]})"
        families.setdefault(fam, []).append((r[5], r[2]))
    for fam, pts in families.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
    ax.axhline(0.995, color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="share of entries scanned per lookup",
           ylabel="recall of cos >= 0.85 hits", title="Scan budget vs recall")
    ax.legend(fontsize=7)
    fig.savefig(RESULTS_DIR / f"{name}.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
