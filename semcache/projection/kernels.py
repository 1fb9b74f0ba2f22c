"""Numba kernel of the projections: projecting a few rows (a lookup's query, an insert after a miss)."""

from __future__ import annotations

import numpy as np

from semcache.index._kernels_common import (
    F32,
    _kernel,
)

__all__ = [
    "project_rows",
]

# ---------------------------------------------------------------------------
# Projection of a few rows (a lookup's query, an insert after a miss).
# ---------------------------------------------------------------------------


@_kernel("void(float32[:, ::1], float32[::1], float32[:, ::1], float32[:, ::1])", reassoc=True)
def _project_into(X: F32, mean: F32, components: F32, out: F32) -> None:
    n, d = X.shape
    centred = np.empty(d, dtype=np.float32)
    for r in range(n):
        for i in range(d):
            centred[i] = X[r, i] - mean[i]
        for j in range(components.shape[0]):
            s = np.float32(0.0)
            for i in range(d):
                s += centred[i] * components[j, i]
            out[r, j] = s


@_kernel("boolean(float32[:, ::1], float32[::1], float32[:, ::1], float32[:, ::1])")
def project_rows(X: F32, mean: F32, components: F32, out: F32) -> bool:
    """``out = (X - mean) @ components.T``, and whether every output is finite.

    For one or a few rows, where NumPy's two operations and BLAS call cost
    more than the arithmetic (2.4 us for one 384-d row to 32 dimensions,
    against 0.7 us here). The finiteness of the output stands for that of the
    input: a NaN or infinite coordinate makes every output it reaches NaN or
    infinite, since ``inf * 0`` is NaN too. The check runs here, outside the
    reassociating sums: compiled inside them it let NaN outputs through.

    Parameters
    ----------
    X : ndarray of float32, shape (n, d)
    mean : ndarray of float32, shape (d,)
    components : ndarray of float32, shape (m, d)
    out : ndarray of float32, shape (n, m)

    Returns
    -------
    bool
        False if an output is NaN or infinite.
    """
    _project_into(X, mean, components, out)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            if not np.isfinite(out[r, j]):
                return False
    return True


