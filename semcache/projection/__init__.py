"""Projections from the embedding space to the low-dimensional space indexes hash.

Both follow the scikit-learn estimator contract (see :mod:`semcache.projection.base`).
"""

from __future__ import annotations

from semcache.projection.base import (
    BaseProjection,
    Projection,
    dump_projection,
    load_projection,
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
