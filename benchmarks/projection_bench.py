"""PCA vs learned projections: candidates an index must verify for 99% recall (issue #3).

Run::

    python benchmarks/projection_bench.py [--quantile 0.99] [--threshold 0.9]

Data: MiniLM embeddings of the distinct QQP dev questions (cached by
``index_bench.py``); 2,000 random questions are held-out queries, the rest the
cache. Projections are fitted on the cache only. For each query whose exact
best match has cosine >= threshold, the projected distance to that match is
measured; the radius is its ``quantile``; the score is the mean number of cache
rows within that radius of a query, i.e. the rows any index over the projection
must verify to keep that share of hits. Methods: PCA; the baseline of the issue
notes (pairs at cosine >= 0.85, ``eigh(Sx, Sd + 1e-4 I)``); the shipped
:class:`~semcache.projection.LearnedProjection` (pairs at 0.8, identity shrinkage
chosen on held-out pairs).
"""

from __future__ import annotations

import single_thread  # noqa: F401  (before numpy: see its docstring)

# isort: split

import argparse
import time

import numpy as np
import scipy.linalg
from common import print_table
from index_bench import load_real_corpus

from semcache.projection import LearnedProjection, PCAProjection
from semcache.projection.learned import mine_pairs

WIDTHS = (2, 3, 8, 16, 32)


class Baseline:
    """The generalized-eigenvector baseline of the issue notes."""

    def fit(self, X: np.ndarray) -> Baseline:
        rng = np.random.default_rng(0)
        s = X[rng.choice(len(X), min(len(X), 20_000), replace=False)]
        self.mean_ = s.mean(0)
        Xc = (s - self.mean_).astype(np.float64)
        Sx = Xc.T @ Xc / len(Xc)
        a, b, _ = mine_pairs(s, 0.85)
        D = (s[a] - s[b]).astype(np.float64)
        Sd = D.T @ D / len(D) + 1e-4 * np.eye(X.shape[1])
        d = X.shape[1]
        _, W = scipy.linalg.eigh(Sx, Sd, subset_by_index=[d - 32, d - 1])
        self.W = W[:, ::-1].astype(np.float32)
        self.n_pairs_ = len(a)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) @ self.W).astype(np.float32)


def ball_counts(Z: np.ndarray, Zq: np.ndarray, best: np.ndarray, quantile: float) -> list[float]:
    out = []
    for m in WIDTHS:
        z, zq = Z[:, :m], Zq[:, :m]
        dh = np.sum((zq - z[best]) ** 2, axis=1)
        r2 = np.quantile(dh, quantile)
        zz = np.sum(z * z, axis=1)
        cnt = 0.0
        for i in range(0, len(zq), 256):
            d2 = np.sum(zq[i : i + 256] ** 2, 1)[:, None] + zz[None, :] - 2 * zq[i : i + 256] @ z.T
            cnt += float(np.sum(d2 <= r2))
        out.append(cnt / len(zq))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args()
    X = load_real_corpus()["qqp"]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(X))
    Q, C = X[perm[:2000]], X[perm[2000:]]
    S = Q @ C.T
    best = S.argmax(1)
    hit = S[np.arange(len(Q)), best] >= args.threshold
    print(f"{len(C)} cache rows, {hit.sum()} of {len(Q)} queries have a match >= {args.threshold}")
    rows = []
    for name, proj in (("pca", PCAProjection(32)), ("baseline (notes)", Baseline()),
                       ("learned", LearnedProjection(32))):
        t0 = time.perf_counter()
        proj.fit(C)
        fit_s = time.perf_counter() - t0
        counts = ball_counts(proj.transform(C), proj.transform(Q[hit]), best[hit], args.quantile)
        rows.append([name, fit_s, *[round(c) for c in counts]])
    pca = rows[0]
    for r in rows[1:]:
        rows.append([f"  pca / {r[0]}", "", *[f"{p / max(c, 1):.2f}x" for p, c in
                                               zip(pca[2:], r[2:], strict=True)]])
    print(f"\nrows within the radius keeping {args.quantile:.0%} of cos>={args.threshold} hits "
          f"(N={len(C)}):")
    print_table(["projection", "fit s", *[f"m={m}" for m in WIDTHS]], rows)


if __name__ == "__main__":
    main()
