"""The cache over an approximate index: same answers as exact search, through growth, deletes, reopen."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from semcache import FunctionEmbedder, Hit, SemanticCache
from semcache.datasets import load_qqp_pairs
from semcache.prompts import normalize_prompt
from tests._index_data import qqp_embeddings


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], FunctionEmbedder]:
    """Real MiniLM vectors of ~3.3k distinct QQP questions, served by a lookup table."""
    texts = list(dict.fromkeys(t for p in load_qqp_pairs(limit=1800) for t in (p.text_a, p.text_b)))
    vectors = qqp_embeddings()
    assert len(texts) == len(vectors)
    table = {normalize_prompt(t): v for t, v in zip(texts, vectors, strict=True)}
    emb = FunctionEmbedder(lambda ts: np.stack([table[t] for t in ts]), name="minilm-table")
    return texts, emb


def _split(texts: list[str]) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    queries = [texts[i] for i in order[:300]]
    stored = [texts[i] for i in order[300:]]
    return stored, queries


@pytest.mark.parametrize("threshold", [0.85, 0.9])
def test_grid_cache_agrees_with_exact_cache(corpus: tuple[list[str], FunctionEmbedder],
                                            threshold: float) -> None:
    texts, emb = corpus
    stored, queries = _split(texts)
    approx = SemanticCache(store="memory", embedder=emb, threshold=threshold, approx_min_entries=1500)
    exact = SemanticCache(store="memory", embedder=emb, threshold=threshold, index="exact")
    for c in (approx, exact):
        c.put_many(stored, stored)
    st = approx.stats()
    assert st.index_kinds == {"multigrid": 1} and st.projection is not None
    assert exact.stats().index_kinds == {"exact": 1}
    found = possible = 0
    for q in queries:
        want, got = exact.get(q), approx.get(q)
        if isinstance(want, Hit):
            possible += 1
            found += int(isinstance(got, Hit) and got.entry_id == want.entry_id)
        if isinstance(got, Hit):
            assert got.score >= threshold  # every served hit is verified in full dimension
    assert possible >= 10
    assert found / possible >= 0.99


def test_grid_cache_survives_deletes_and_reopen(tmp_path: Path,
                                               corpus: tuple[list[str], FunctionEmbedder]) -> None:
    texts, emb = corpus
    stored, _ = _split(texts)
    with SemanticCache(tmp_path / "c", embedder=emb, approx_min_entries=1500) as cache:
        ids = cache.put_many(stored, stored)
        projection = cache.stats().projection
        for entry in ids[:500]:
            cache.delete(entry)
        assert cache.stats().index_kinds == {"multigrid": 1}
        assert all(not cache.get(t) or cache.get(t).entry_id != e  # type: ignore[union-attr]
                   for t, e in zip(stored[:50], ids[:50], strict=True))
    with SemanticCache(tmp_path / "c", embedder=emb, approx_min_entries=1500) as cache:
        # The projection is loaded, not refitted, and the grid is rebuilt from the store.
        assert cache.stats().projection == projection
        assert cache.stats().index_kinds == {"multigrid": 1}
        assert len(cache) == len(stored) - 500
        for t, e in zip(stored[500:700], ids[500:700], strict=True):
            hit = cache.get(t)
            assert isinstance(hit, Hit) and hit.entry_id == e
        part = next(iter(cache._parts.values()))
        assert len(part.index) == len(cache)


def test_small_scopes_stay_exact_next_to_a_large_one(corpus: tuple[list[str], FunctionEmbedder]) -> None:
    texts, emb = corpus
    stored, _ = _split(texts)
    with SemanticCache(store="memory", embedder=emb, approx_min_entries=1500) as cache:
        cache.put_many(stored, stored, scope="big")
        cache.put_many(stored[:20], stored[:20], scope="small")
        assert cache.stats().index_kinds == {"multigrid": 1, "exact": 1}
        hit = cache.get(stored[3], scope="small")
        assert isinstance(hit, Hit) and hit.exact
        assert not cache.get(stored[100], scope="small", threshold=0.999)


def test_single_puts_on_the_grid_are_found_at_once(corpus: tuple[list[str], FunctionEmbedder]) -> None:
    """A put after the switch to the grid waits in its insert buffer and is still served at once."""
    texts, emb = corpus
    stored, queries = _split(texts)
    base, fresh = stored[:2600], stored[2600:]
    # Queries whose best match in the whole cache is a fresh text, a paraphrase at
    # cos >= 0.92 with the same numbers (the numbers guard refuses "2012" for "2016").
    q_vec = emb.encode([normalize_prompt(t) for t in queries])
    a_vec = emb.encode([normalize_prompt(t) for t in base + fresh])
    sims = q_vec @ a_vec.T
    pairs = [
        (q, fresh[int(j) - len(base)])
        for q, j, s in zip(queries, sims.argmax(1), sims.max(1), strict=True)
        if j >= len(base) and s >= 0.92 and q != (f := fresh[int(j) - len(base)])
        and re.findall(r"\d+", q) == re.findall(r"\d+", f)
    ]
    pairs = list({f: (q, f) for q, f in pairs}.values())  # one query per fresh text
    assert len(pairs) >= 5
    with SemanticCache(store="memory", embedder=emb, approx_min_entries=1500, threshold=0.9) as cache:
        cache.put_many(base, base)
        part = next(iter(cache._parts.values()))
        assert cache.stats().index_kinds == {"multigrid": 1}
        for q, f in pairs:
            entry = cache.put(f, f"answer to {f}")
            assert part.index.stats()["buffered"] >= 1  # not in the grid's tables yet
            hit = cache.get(q)
            assert isinstance(hit, Hit) and not hit.exact and hit.entry_id == entry
            assert hit.completion == f"answer to {f}" and hit.score >= 0.9
            assert cache.delete(entry)
            hit = cache.get(q)
            assert not isinstance(hit, Hit) or hit.entry_id != entry
