"""SemanticCache.entries() and add_entries(): what export and import are built on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from semcache import CacheEntry, ConfigError, Scope, SemanticCache
from tests.conftest import HashEmbedder


def test_entries_per_scope_and_without_expired(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        a = cache.put("a", {"x": 1}, scope=Scope(tenant="t1"))
        b = cache.put("b", "B", scope=Scope(tenant="t2"), ttl=3600)
        gone = cache.put("c", "C", scope=Scope(tenant="t2"))
        assert gone is not None
        cache.delete(gone)
        every = list(cache.entries())
        assert [e.entry_id for e in every] == [a, b]
        assert every[0] == CacheEntry(a, "a", {"x": 1}, cache.scope_id(Scope(tenant="t1")),
                                      every[0].created, None, tenant_known=True, tenant="t1")
        assert every[1].expires is not None and every[1].expires > time.time()
        assert [e.prompt for e in cache.entries(Scope(tenant="t2"))] == ["b"]
        assert list(cache.entries("nothing-here")) == []


def test_add_entries_keeps_scope_ids_and_refuses_another_embedder(
    tmp_path: Path, hash_embedder: HashEmbedder,
) -> None:
    with SemanticCache(tmp_path / "a", embedder=hash_embedder) as src:
        src.put("q1", "A1", scope=Scope(model="m", tenant="t1"))
        src.put("q2", "A2", scope=Scope(model="m", tenant="t2"), ttl=3600)
        exported = list(src.entries())
    expired = CacheEntry(-1, "old", "O", exported[0].scope_id, 1.0, 2.0)
    with SemanticCache(tmp_path / "b", embedder=hash_embedder, max_entries=10) as dst:
        with pytest.raises(ConfigError, match="stored with embedder"):
            dst.add_entries(exported, fingerprint="other-model@0/16/l2")
        assert len(dst) == 0
        ids = dst.add_entries([*exported, expired], fingerprint=src.fingerprint, batch_size=1)
        assert len(ids) == 2  # the expired one is skipped
        hit = dst.get("q1", scope=Scope(model="m", tenant="t1"))
        assert hit and hit.completion == "A1"
        assert not dst.get("q1", scope=Scope(model="m", tenant="t2"))
        got = {e.prompt: e for e in dst.entries()}
        for e in exported:
            assert (got[e.prompt].scope_id, got[e.prompt].created, got[e.prompt].expires) == (
                e.scope_id, e.created, e.expires)
            assert (got[e.prompt].tenant_known, got[e.prompt].tenant) == (True, e.tenant)  # kept too
