"""A learned linear projection that keeps paraphrases close.

PCA keeps the directions where the cache's embeddings spread most, but a good
part of that spread is also where paraphrases of one prompt differ, so after
PCA to a few dimensions a prompt's paraphrases are no closer to it than many
unrelated prompts. The projection here learns, without labels, from the cache's
own near-duplicates:

1. sample up to ``max_samples`` rows and find each row's exact nearest
   neighbour within the sample; pairs with cosine >= ``pair_threshold`` are
   treated as paraphrases;
2. let ``Sx`` be the covariance of the data and ``Sd`` the second moment of the
   pair differences;
3. keep the top generalized eigenvectors of ``(Sx, Sd + reg)``: directions where
   the data spreads but paraphrases do not (a Fisher / LDA criterion with the
   paraphrase pairs playing the role of classes).

The baseline of the index issue mines pairs at cosine >= 0.85 and regularises
``Sd`` with a fixed ``1e-4 I``. With a few thousand pairs for a 384 x 384
covariance, the directions where ``Sd`` is *under-estimated* then look like
the best ones and the low prefixes (m = 2, 3) come out worse than PCA. Two
changes fix that (measured in ``benchmarks/projection_bench.py``): pairs from
cosine >= 0.8 (half again as many, still paraphrase-like), and Ledoit-Wolf
style shrinkage of ``Sd`` towards ``shrinkage * mean(diag Sd) * I``, with
``shrinkage`` chosen on held-out pairs (the value that puts the fewest
unrelated rows inside the ball that keeps 99% of the held-out pairs together,
averaged over prefixes). Shrinking towards ``Sx`` instead would be a no-op:
``(Sx, Sd + l Sx)`` has the same eigenvectors as ``(Sx, Sd)``.

The output is scaled so that paraphrase differences have unit variance along
every output dimension (``v.T @ Sd @ v = 1``): Euclidean balls in the output are
then the natural neighbourhoods, and components come out ordered by how well they
separate unrelated rows, so a prefix of ``m`` columns is the best ``m``-d map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg

from semcache._types import FloatArray
from semcache.errors import ConfigError, ProjectionError
from semcache.projection.base import BaseProjection

__all__ = ["LearnedProjection", "mine_pairs"]

F64 = npt.NDArray[np.float64]


def mine_pairs(
    X: FloatArray, threshold: float, *, block: int = 2048
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Each row's exact nearest neighbour within ``X``, kept when cosine >= ``threshold``.

    Parameters
    ----------
    X : ndarray of float32, shape (n, d)
        L2-normalised rows.
    threshold : float
        Minimum cosine for a pair.
    block : int
        Rows per matrix product (bounds memory at ``block * n`` floats).

    Returns
    -------
    a, b : ndarray of int64, shape (p,)
        Pair rows, ``a < b``, each unordered pair once.
    cos : ndarray of float32, shape (p,)
        Their cosine.
    """
    n = X.shape[0]
    best = np.full(n, -1, dtype=np.int64)
    best_s = np.full(n, -np.inf, dtype=np.float32)
    for i in range(0, n, block):
        S = X[i : i + block] @ X.T
        rows = np.arange(S.shape[0])
        S[rows, i + rows] = -np.inf  # a row is not its own neighbour
        j = np.argmax(S, axis=1)
        best[i : i + block] = j
        best_s[i : i + block] = S[rows, j]
    keep = best_s >= threshold
    a = np.flatnonzero(keep)
    b = best[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo * n + hi, return_index=True)[1]
    lo, hi = lo[key], hi[key]
    cos = np.einsum("ij,ij->i", X[lo], X[hi]).astype(np.float32)
    return lo.astype(np.int64), hi.astype(np.int64), cos


class LearnedProjection(BaseProjection):
    """Fisher-style linear map learned from the cache's own near-duplicate pairs.

    Parameters
    ----------
    n_components : int
        Output width ``m``.
    pair_threshold : float
        Cosine from which two rows count as paraphrases when mining pairs.
        Set it near the cache's similarity threshold.
    max_samples : int
        Rows sampled for mining pairs and estimating ``Sx`` (mining is a
        ``max_samples``-square matrix product).
    shrinkage : float or "auto"
        Weight of the scaled identity ``mean(diag Sd) * I`` added to the pair
        covariance. ``"auto"`` picks it from ``shrinkage_grid`` on a held-out
        quarter of the pairs.
    shrinkage_grid : tuple of float
        Candidates for ``"auto"``.
    min_pairs : int
        With fewer mined pairs than this, the map falls back to PCA (there is
        nothing to learn from).
    random_state : int
        Seed of the sample and of the held-out split.

    Attributes
    ----------
    mean_ : ndarray of float32, shape (d,)
    components_ : ndarray of float32, shape (m, d)
        Rows are the generalized eigenvectors, best first.
    eigenvalues_ : ndarray of float32, shape (m,)
        Spread of the data relative to paraphrase spread along each component.
    n_pairs_ : int
        Pairs mined (0 when the fit fell back to PCA).
    shrinkage_ : float
        The shrinkage used.
    """

    kind = "learned"

    def __init__(
        self,
        n_components: int = 32,
        pair_threshold: float = 0.8,
        max_samples: int = 10_000,
        shrinkage: float | str = "auto",
        shrinkage_grid: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0),
        min_pairs: int = 20,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.pair_threshold = pair_threshold
        self.max_samples = max_samples
        self.shrinkage = shrinkage
        self.shrinkage_grid = shrinkage_grid
        self.min_pairs = min_pairs
        self.random_state = random_state

    def _check_params(self, d: int) -> None:
        m = self.n_components
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"n_components must be a positive int, got {m!r}")
        if m > d:
            raise ConfigError(f"n_components={m} exceeds the input width {d}")
        if not -1.0 <= float(self.pair_threshold) <= 1.0:
            raise ConfigError(
                f"pair_threshold must be a cosine in [-1, 1], got {self.pair_threshold}"
            )
        if self.shrinkage != "auto" and (
            not isinstance(self.shrinkage, int | float) or self.shrinkage < 0
        ):
            raise ConfigError(f"shrinkage must be 'auto' or a float >= 0, got {self.shrinkage!r}")
        if self.max_samples < 2 or self.min_pairs < 1:
            raise ConfigError("max_samples must be >= 2 and min_pairs >= 1")

    def _fit(self, X: FloatArray) -> None:
        n, d = X.shape
        self._check_params(d)
        if n < 2:
            raise ProjectionError("a learned projection needs at least 2 rows to fit")
        rng = np.random.default_rng(self.random_state)
        sample = X if n <= self.max_samples else X[rng.choice(n, self.max_samples, replace=False)]
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        norms = np.linalg.norm(sample, axis=1, keepdims=True)
        # Pairs are mined by cosine; normalise in case the caller did not.
        unit = sample / np.maximum(norms, 1e-12)
        mean = sample.mean(axis=0, dtype=np.float64)
        centred = (sample - mean).astype(np.float64)
        Sx = centred.T @ centred / max(1, len(sample) - 1)
        a, b, _ = mine_pairs(unit, float(self.pair_threshold))
        self.n_pairs_ = len(a)
        m = self.n_components
        if len(a) < self.min_pairs:
            # Nothing to learn from: with Sd = I the generalized problem is PCA.
            vals, vecs = np.linalg.eigh(Sx)
            order = np.argsort(vals)[::-1][:m]
            self.mean_ = mean.astype(np.float32)
            self.components_ = vecs[:, order].T.astype(np.float32)
            self.eigenvalues_ = vals[order].astype(np.float32)
            self.n_pairs_ = 0
            self.shrinkage_ = float("inf")
            return
        diffs = (sample[a] - sample[b]).astype(np.float64)
        if self.shrinkage == "auto":
            shrink = self._choose_shrinkage(sample, Sx, diffs, rng)
        else:
            shrink = float(self.shrinkage)
        vals, vecs = self._solve(Sx, diffs, shrink, m)
        self.mean_ = mean.astype(np.float32)
        self.components_ = vecs.T.astype(np.float32)
        self.eigenvalues_ = vals.astype(np.float32)
        self.shrinkage_ = shrink

    @staticmethod
    def _solve(Sx: F64, diffs: F64, shrink: float, m: int) -> tuple[F64, F64]:
        """Top-``m`` generalized eigenpairs of ``(Sx, Sd + shrink mean(diag Sd) I + eps I)``.

        Returns eigenvalues (m,) descending and eigenvectors (d, m), scaled so
        that ``v.T @ Sd @ v = 1`` (unit paraphrase variance per output).
        """
        d = Sx.shape[0]
        Sd = diffs.T @ diffs / len(diffs)
        # A ridge proportional to the average variance keeps B positive definite
        # when there are fewer pairs than dimensions.
        eps = 1e-4 * float(np.trace(Sx)) / d
        B = Sd + (shrink * float(np.trace(Sd)) / d + eps) * np.eye(d)
        vals, vecs = scipy.linalg.eigh(Sx, B, subset_by_index=[d - m, d - 1])
        vals, vecs = vals[::-1], vecs[:, ::-1]
        # eigh normalises v.T B v = 1; rescale to unit paraphrase variance so
        # distances mean the same thing whatever the shrinkage.
        pair_var = np.sum((diffs @ vecs) ** 2, axis=0) / len(diffs)
        vecs = vecs / np.sqrt(np.maximum(pair_var, 1e-12))
        return vals, vecs

    def _choose_shrinkage(
        self, sample: FloatArray, Sx: F64, diffs: F64, rng: np.random.Generator
    ) -> float:
        """Shrinkage that minimises rows inside the 99% ball of held-out pairs.

        A quarter of the pairs is held out; for each candidate shrinkage the map is
        fitted on the rest, the radius that keeps 99% of the held-out pairs within
        it is measured, and the score is the mean number of sample rows within that
        radius of a held-out pair's first row (what an index must verify).
        """
        p = len(diffs)
        perm = rng.permutation(p)
        n_val = max(1, p // 4)
        val, train = perm[:n_val], perm[n_val:]
        if len(train) < self.min_pairs:
            return float(self.shrinkage_grid[-1])
        m = self.n_components
        probe = sample[rng.choice(len(sample), min(len(sample), 4000), replace=False)]
        prefixes = sorted({p for p in (2, 3, 8, 16, m) if p <= m})
        best, best_score = float(self.shrinkage_grid[-1]), np.inf
        for s in self.shrinkage_grid:
            _, vecs = self._solve(Sx, diffs[train], float(s), m)
            Z = (probe @ vecs).astype(np.float32)
            dv = diffs[val] @ vecs
            score = 0.0
            for p in prefixes:
                r2 = float(np.quantile(np.sum(dv[:, :p] ** 2, axis=1), 0.99))
                # Random sample rows stand in for queries: the ball count only
                # depends on where a query lies in the data distribution.
                Zp = Z[:, :p]
                Zq = Zp[: min(500, len(Zp))]
                d2 = (
                    np.sum(Zq * Zq, axis=1)[:, None]
                    + np.sum(Zp * Zp, axis=1)[None, :]
                    - 2.0 * (Zq @ Zp.T)
                )
                # Geometric mean over prefixes: every prefix width matters.
                score += float(np.log(np.mean(np.sum(d2 <= r2, axis=1))))
            if score < best_score:
                best, best_score = float(s), score
        return best

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Fitted state as plain arrays (mean, components, eigenvalues)."""
        out = super().to_arrays()
        out["eigenvalues_"] = self.eigenvalues_
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]], **params: Any) -> LearnedProjection:
        """Rebuild from :meth:`to_arrays` output."""
        obj = super().from_arrays(arrays, **params)
        obj.n_components = int(obj.components_.shape[0])
        ev = arrays.get("eigenvalues_")
        obj.eigenvalues_ = (
            np.ones(obj.n_components, dtype=np.float32)
            if ev is None
            else np.asarray(ev, dtype=np.float32)
        )
        return obj
