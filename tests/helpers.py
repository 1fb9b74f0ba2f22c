"""Test helpers importable from tests and from subprocesses the tests start."""

from __future__ import annotations

import hashlib

import numpy as np


def hash_vectors(texts: list[str], dim: int = 16) -> np.ndarray:
    """Deterministic unit vectors: equal texts equal, different texts nearly orthogonal."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out
