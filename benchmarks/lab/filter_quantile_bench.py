"""How tight can the grid's candidate filter be? Recall and re-rank work against its quantile.

This is the measurement behind ``GridIndex(filter_quantile=0.995)``, the default of
every grid table. The filter keeps a row when its stored 32-d vector lies within
``quantile(rho, q) * sqrt(2 - 2t)`` of the query's, where ``rho`` is the ratio of
projected to full distance over the index's own near-duplicate pairs and ``q`` is
``filter_quantile`` plus its standard error over those pairs.
Every row it keeps is verified by an exact 384-d cosine, a random read of 1.5 kB
from the stored vectors, so a loose quantile costs re-rank time while a tight one
loses hits.

For each quantile it reports the recall of threshold hits at 0.85 / 0.9 / 0.95 (the
exact best match with cosine >= t is among the candidates), candidates per lookup
at 0.85 and 0.9, and the mean and p50 lookup time at 0.9 including the exact
re-rank, as the cache pays it. Data and queries are those of ``index_bench.py``
(same seed): random real rows (``10k``), the real corpus (``full``, 92k QQP
questions and real prompts), or the corpus grown to 1M rows with synthetic
paraphrase structure (``1M``).

Run: ``python benchmarks/lab/filter_quantile_bench.py [--sizes 10k,full,1M] [--queries 2000]``
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

from semcache.index import MultiGridIndex
from semcache.projection import LearnedProjection

QUANTILES = (0.999, 0.995, 0.99, 0.98)


def run(label: str, X: np.ndarray, Q: np.ndarray, rows: list[list[Any]]) -> None:
    proj = LearnedProjection(32).fit(X)
    low = proj.transform(X)
    q_low = proj.transform(Q)
    best, score = ground_truth(X, Q)
    for fq in tqdm(QUANTILES, desc=f"N={label}", unit="quantile"):
        idx = MultiGridIndex(filter_quantile=fq)
        idx.add(np.arange(len(X), dtype=np.int64), low, X)
        rec = threshold_recall(lambda i, t, g=idx: g.candidates(q_low[i], Q[i], t), best, score)
        cands = [float(np.mean([len(idx.candidates(q_low[i], Q[i], t)) for i in range(len(Q))]))
                 for t in (0.85, 0.9)]
        ts = []
        for i in range(len(Q)):
            t0 = time.perf_counter()
            c = idx.candidates(q_low[i], Q[i], 0.9)
            _ = c[X[c] @ Q[i] >= 0.9]  # the exact re-rank, timed with the lookup
            ts.append(time.perf_counter() - t0)
        rows.append([label, fq, *rec.values(), *cands, 1e3 * float(np.mean(ts)), 1e3 * float(np.median(ts))])
        del idx


def plot(rows: list[list[Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label in dict.fromkeys(r[0] for r in rows):
        sub = [r for r in rows if r[0] == label]
        qs = [1.0 - r[1] for r in sub]
        a1.plot(qs, [r[2] for r in sub], marker="o", label=f"N={label}")
        a2.plot(qs, [r[5] for r in sub], marker="o", label=f"N={label}")
    a1.axhline(0.995, color="grey", lw=0.8, ls="--")
    a1.set(xscale="log", xlabel="1 - filter_quantile", ylabel="recall of cos >= 0.85 hits",
           title="Recall against the filter quantile")
    a2.set(xscale="log", yscale="log", xlabel="1 - filter_quantile",
           ylabel="candidates per lookup at 0.85", title="Rows to re-rank")
    for ax in (a1, a2):
        ax.legend(fontsize=8)
    fig.savefig(RESULTS_DIR / "filter_quantile_bench.png", dpi=120, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,full,1M", help="comma list of 10k, full, 1M")
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()
    rows = rows_over_sizes(args.sizes, args.queries, run)
    headers = ["N", "filter_quantile", "R@.85", "R@.9", "R@.95", "cands@.85", "cands@.9",
               "mean ms @.9", "p50 ms @.9"]
    print()
    text = print_table(headers, rows)
    out = save_text("filter_quantile_bench.txt", f"python benchmarks/lab/filter_quantile_bench.py "
                    f"--sizes {args.sizes} --queries {args.queries}", text)
    plot(rows)
    print(f"\nsaved {out} and filter_quantile_bench.png")


if __name__ == "__main__":
    main()
