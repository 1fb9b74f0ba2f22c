"""Helpers of the store reliability tests (tests/reliability/test_store_*.py)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from semcache import SemanticCache
from tests.conftest import HashEmbedder

DIM = 16


class Exploit:
    """Pickles to a payload that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` if anything ever unpickles it (protocol 2..5 alike)."""
    data = pickle.dumps(Exploit(marker), protocol=pickle.HIGHEST_PROTOCOL)
    # Sanity: the payload really works when unpickled (so "the marker is absent" proves something).
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(Exploit(probe)))
    assert probe.exists()
    probe.unlink()
    return data


def open_cache(directory: Path, **kw: Any) -> SemanticCache:
    kw.setdefault("embedder", HashEmbedder(DIM))
    kw.setdefault("index", "exact")
    return SemanticCache(directory, **kw)


def db(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / "cache.db", isolation_level=None)


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
