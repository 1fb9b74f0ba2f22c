"""The identity projection: indexes see the full embedding."""

from __future__ import annotations

import numpy as np

from semcache._types import FloatArray
from semcache.projection.base import BaseProjection

__all__ = ["IdentityProjection"]


class IdentityProjection(BaseProjection):
    """Leaves embeddings unchanged (``m = d``); used with the exact index."""

    kind = "identity"

    def _fit(self, X: FloatArray) -> None:
        d = X.shape[1]
        self.mean_ = np.zeros(d, dtype=np.float32)
        self.components_ = np.eye(d, dtype=np.float32)

    def transform(self, X: FloatArray) -> FloatArray:
        """Return ``X`` as float32 after the width check (no matrix product)."""
        self._check_fitted()
        arr = np.ascontiguousarray(X, dtype=np.float32)
        width = arr.shape[-1] if arr.ndim else 0
        if width != self.n_features_in_:
            # Reuse the base class error message and checks.
            return super().transform(X)
        return arr
