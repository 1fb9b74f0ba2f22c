"""Approximate index recall on a cache's own kind of entries (issue 25, item 9).

A cache stores mostly *distinct* prompts: a paraphrase of a stored prompt hits
instead of being stored. An approximate index calibrated on near-duplicate pairs
among its rows has few such pairs to learn from, and with ``index="multigrid"``
at 5.9k entries it missed 28 of 448 exact hits at 0.85. The cache now checks an
approximate partition's misses by exact search of the scope until its served
hits bound the miss rate under 0.5% (then a sample of them).

The store here: QQP dev ``text_a`` questions, deduplicated and thinned so no two
stored questions are within cosine 0.9 of each other (what a cache at threshold
0.9 would have kept); the queries: ``text_b`` of the duplicate pairs. Reference:
exact search over the stored vectors.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semcache import MISS, SemanticCache
from semcache.datasets import load_qqp_pairs
from semcache.embedding import check_embeddings, default_embedder
from semcache.prompts import normalize_prompt

N_PAIRS = 6500


class TableEmbedder:
    """Real MiniLM vectors looked up by text (computed once per machine), so the test is cheap."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._row = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    @property
    def fingerprint(self) -> str:
        return "test:qqp-minilm-table/384"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._row[t] for t in texts]]


@functools.cache
def distinct_store(n_pairs: int = N_PAIRS, keep_below: float = 0.9) -> dict[str, Any]:
    """Stored texts (pairwise cosine < ``keep_below``) and duplicate-pair queries, with vectors."""
    pairs = load_qqp_pairs(limit=n_pairs)
    texts = sorted({normalize_prompt(p.text_a) for p in pairs}
                   | {normalize_prompt(p.text_b) for p in pairs if p.label == 1})
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"semcache-test-qqp-{key}.npy"
    if path.is_file():
        vectors = np.load(path, allow_pickle=False)
    else:
        vectors = default_embedder().encode(texts)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
    vectors = check_embeddings(vectors, len(texts), 384)
    row = {t: i for i, t in enumerate(texts)}
    # Greedy thinning in file order: keep a question unless a kept one is within keep_below.
    order = dict.fromkeys(row[normalize_prompt(p.text_a)] for p in pairs)
    cand = np.array(list(order), dtype=np.int64)
    sims = vectors[cand] @ vectors[cand].T
    blocked = np.zeros(len(cand), dtype=bool)
    kept: list[int] = []
    for j in range(len(cand)):
        if blocked[j]:
            continue
        kept.append(int(cand[j]))
        blocked |= sims[j] >= keep_below
    stored = set(kept)
    queries = sorted({row[normalize_prompt(p.text_b)] for p in pairs if p.label == 1} - stored)
    return {
        "texts": texts,
        "vectors": vectors,
        "stored": np.array(kept, dtype=np.int64),
        "queries": np.array(queries, dtype=np.int64),
    }


def _reference(data: dict[str, Any], threshold: float) -> np.ndarray:
    """Whether exact search finds a stored prompt at or above ``threshold``, per query."""
    v = data["vectors"]
    best = (v[data["queries"]] @ v[data["stored"]].T).max(axis=1)
    return np.asarray(best >= threshold)


def _cache_hits(cache: SemanticCache, data: dict[str, Any], threshold: float) -> np.ndarray:
    texts = data["texts"]
    return np.array([cache.get(texts[q], threshold=threshold) is not MISS for q in data["queries"]])


def _build(data: dict[str, Any], audit: bool = True) -> SemanticCache:
    texts = data["texts"]
    cache = SemanticCache(store="memory", embedder=TableEmbedder(texts, data["vectors"]),
                          index="multigrid", guards=())
    if not audit:
        cache._audit = lambda sid, part, hit, *a: hit  # type: ignore[method-assign]
    stored = [texts[i] for i in data["stored"]]
    cache.put_many(stored, list(range(len(stored))))
    assert cache.stats().index_kinds == {"multigrid": 1}
    return cache


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    d = distinct_store()
    assert len(d["stored"]) >= 5000, len(d["stored"])
    return d


@pytest.fixture(scope="module")
def built(data: dict[str, Any]) -> Iterator[SemanticCache]:
    with _build(data) as cache:
        yield cache


@pytest.mark.parametrize("threshold", [0.85, 0.9])
def test_recall_on_a_distinct_prompt_store(data: dict[str, Any], built: SemanticCache,
                                           threshold: float) -> None:
    ref = _reference(data, threshold)
    assert ref.sum() >= 300  # enough exact hits to measure recall
    got = _cache_hits(built, data, threshold)
    recall = float((got & ref).sum() / ref.sum())
    assert not (got & ~ref).any(), "a hit exact search would not give"
    assert recall >= 0.995, f"recall {recall:.4f} ({(got & ref).sum()} of {ref.sum()})"


def test_audit_withdraws_trust_when_the_index_starts_missing(data: dict[str, Any]) -> None:
    """Trusted after enough clean evidence; a sampled miss found by exact search ends the trust."""
    threshold = 0.85
    ref = _reference(data, threshold)
    hit_queries = data["queries"][ref]
    texts = data["texts"]
    with _build(data) as cache:
        sid = cache.scope_id()
        part = cache._parts[sid]
        part.found, part.missed = 700, 0  # as if 700 audited hits had been served cleanly
        cache._audit_due(part)
        assert part.trusted
        # Now the index finds nothing (a bad calibration): 1 in 32 misses is still checked,
        # finds the hit exact search has, and the partition goes back to checking every miss.
        real = part.index.candidates
        part.index.candidates = lambda *a: np.zeros(0, np.int64)  # type: ignore[method-assign]
        served = [cache.get(texts[q], threshold=threshold) is not MISS for q in hit_queries[:64]]
        assert not part.trusted
        assert sum(served) >= 32  # after the first sampled audit, every miss is checked
        assert all(served[-16:])
        part.index.candidates = real  # type: ignore[method-assign]
