"""Projections from the embedding space to the low-dimensional space indexes hash.

Both follow the scikit-learn estimator contract (see :mod:`semcache.projection.base`).
"""

from __future__ import annotations

import io

import numpy as np

from semcache.errors import ProjectionError
from semcache.projection.base import (
    BaseProjection,
    Projection,
    dump_projection,
)
from semcache.projection.identity import IdentityProjection
from semcache.projection.learned import LearnedProjection
from semcache.projection.pca import PCAProjection

#: Registry used to rebuild a stored projection by its ``kind``.
PROJECTIONS: dict[str, type[BaseProjection]] = {
    IdentityProjection.kind: IdentityProjection,
    PCAProjection.kind: PCAProjection,
    LearnedProjection.kind: LearnedProjection,
}


def load_projection(data: bytes) -> BaseProjection:
    """Inverse of :func:`dump_projection`.

    Raises
    ------
    ProjectionError
        The bytes are not a projection this version knows.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # numpy raises several types for corrupt files
        raise ProjectionError(f"stored projection is unreadable: {exc}") from exc
    kind = str(arrays.pop("__kind__", ""))
    cls = PROJECTIONS.get(kind)
    if cls is None:
        raise ProjectionError(f"unknown stored projection kind {kind!r}")
    return cls.from_arrays(arrays)


__all__ = [
    "PROJECTIONS",
    "BaseProjection",
    "IdentityProjection",
    "LearnedProjection",
    "PCAProjection",
    "Projection",
    "dump_projection",
    "load_projection",
]
