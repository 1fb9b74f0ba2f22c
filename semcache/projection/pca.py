"""PCA projection (scikit-learn), the default for approximate indexes."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from semcache._types import FloatArray
from semcache.errors import ConfigError, ProjectionError
from semcache.projection.base import BaseProjection

__all__ = ["PCAProjection"]


class PCAProjection(BaseProjection):
    """Project onto the top principal components of the cache's own embeddings.

    Parameters
    ----------
    n_components : int
        Output width ``m``. Components come out ordered by explained variance, so
        the first ``k < m`` columns of the output are the ``k``-d PCA projection:
        a grid can hash a prefix while a filter uses all ``m``.
    max_samples : int
        Fit on at most this many rows (a random sample), which keeps refits cheap
        on large caches; the top components of MiniLM embeddings are stable well
        below this size.
    random_state : int
        Seed of the sample and of the randomized SVD.

    Attributes
    ----------
    mean_ : ndarray of float32, shape (d,)
    components_ : ndarray of float32, shape (m, d)
    explained_variance_ratio_ : ndarray of float32, shape (m,)
    """

    kind = "pca"

    def __init__(self, n_components: int = 32, max_samples: int = 50_000, random_state: int = 0):
        self.n_components = n_components
        self.max_samples = max_samples
        self.random_state = random_state

    def _fit(self, X: FloatArray) -> None:
        if not isinstance(self.n_components, int) or self.n_components < 1:
            raise ConfigError(f"n_components must be a positive int, got {self.n_components!r}")
        n, d = X.shape
        m = self.n_components
        if m > d:
            raise ConfigError(f"n_components={m} exceeds the input width {d}")
        if n < 2:
            raise ProjectionError("PCA needs at least 2 rows to fit")
        rng = np.random.default_rng(self.random_state)
        sample = X if n <= self.max_samples else X[rng.choice(n, self.max_samples, replace=False)]
        k = min(m, sample.shape[0])
        pca = PCA(n_components=k, random_state=self.random_state, svd_solver="auto")
        pca.fit(sample)
        comps = np.zeros((m, d), dtype=np.float32)
        comps[:k] = pca.components_
        ratio = np.zeros(m, dtype=np.float32)
        ratio[:k] = pca.explained_variance_ratio_
        self.mean_ = pca.mean_.astype(np.float32)
        self.components_ = comps
        self.explained_variance_ratio_ = ratio

    def residual(self, X: FloatArray) -> float:
        """Mean squared reconstruction error of ``X`` (shape (n, d)).

        The cache compares this on new entries against its value at fit time to
        decide when the data has drifted enough to refit.
        """
        Z = self.transform(X)
        Xc = np.asarray(X, dtype=np.float32) - self.mean_
        recon = Z @ self.components_
        return float(np.mean(np.sum((Xc - recon) ** 2, axis=1)))
