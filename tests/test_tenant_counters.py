"""Per-tenant purge and store-wide hit counters, on every store (memory, SQLite, PostgreSQL).

A scope is stored as a hash, so a tenant's entries can be found again only because
each store keeps the tenant of each scope id; these tests check that a purge by
tenant removes every scope of that tenant and nothing else, seen from a second
handle (another process's view of the same store), and that the hit counts of
several handles add up in the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from semcache import ConfigError, Scope, SemanticCache
from semcache.cli import main
from semcache.embedding import SentenceTransformerEmbedder
from semcache.maintain import tenant_matches
from tests.conftest import HashEmbedder
from tests.pg_server import PgServer, pg_server_fixture, pg_url_fixture  # noqa: F401

#: (tenant, model, prompt): two tenants, several scopes each, one scope without a tenant.
ROWS = [
    ("acme", "m1", "acme question one"),
    ("acme", "m1", "acme question two"),
    ("acme", "m2", "acme question on another model"),
    ("beta", "m1", "acme question one"),  # the same prompt, another tenant
    ("beta", "m2", "beta question"),
    (None, "m1", "untenanted question"),
]


def _fill(cache: SemanticCache) -> None:
    for tenant, model, prompt in ROWS:
        assert cache.put(prompt, f"{tenant}:{prompt}", scope=Scope(model=model, tenant=tenant)) is not None


def _served(cache: SemanticCache) -> set[tuple[str | None, str, str]]:
    return {(t, m, p) for t, m, p in ROWS if cache.get(p, scope=Scope(model=m, tenant=t))}


@pytest.fixture(params=["memory", "disk", "postgresql"])
def two_handles(request: pytest.FixtureRequest, tmp_path: Path,
                hash_embedder: HashEmbedder) -> Iterator[tuple[SemanticCache, SemanticCache]]:
    """Two caches on one store: the writer and another handle (memory: the same one)."""
    if request.param == "memory":
        c = SemanticCache(store="memory", embedder=hash_embedder)
        yield c, c
        c.close()
        return
    if request.param == "disk":
        kw: dict[str, object] = {"directory": tmp_path / "c"}
    else:
        kw = {"store": request.getfixturevalue("pg_url")}
    a = SemanticCache(embedder=hash_embedder, **kw)  # type: ignore[arg-type]
    b = SemanticCache(embedder=hash_embedder, **kw)  # type: ignore[arg-type]
    yield a, b
    a.close()
    b.close()


def test_purge_by_tenant_removes_every_scope_of_that_tenant_only(
    two_handles: tuple[SemanticCache, SemanticCache],
) -> None:
    writer, other = two_handles
    _fill(writer)
    assert _served(other) == set(ROWS)
    # The other handle never wrote acme's scopes: it finds them through the store.
    assert other.purge(tenant="acme") == 3
    left = {r for r in ROWS if r[0] != "acme"}
    assert _served(other) == left
    assert _served(writer) == left
    assert {e.tenant for e in writer.entries()} == {"beta", None}
    assert all(e.tenant_known for e in writer.entries())
    # A callable selects too; nothing of acme is left to find.
    assert writer.purge(tenant=lambda t: t.startswith("be")) == 2
    assert _served(other) == {r for r in ROWS if r[0] is None}
    assert writer.purge(tenant="acme") == 0
    with pytest.raises(ConfigError):
        writer.purge(tenant="")


def test_counters_of_every_handle_add_up_in_the_store(
    two_handles: tuple[SemanticCache, SemanticCache],
) -> None:
    writer, other = two_handles
    _fill(writer)
    for _ in range(3):
        assert other.get("acme question one", scope=Scope(model="m1", tenant="acme"))
    assert not other.get("never stored", scope=Scope(model="m1", tenant="acme"))
    assert writer.get("beta question", scope=Scope(model="m2", tenant="beta"))
    totals, since = writer.store_counters()  # flushes the writer's own counts
    if other is not writer:
        other.close()  # closing flushes too
        totals, since = writer.store_counters()
    assert since is not None
    assert (totals["hits"], totals["exact_hits"], totals["misses"], totals["puts"]) == (4, 4, 1, len(ROWS))
    # Nothing is counted twice by a second flush.
    assert writer.store_counters()[0] == totals


def test_counters_flush_during_writes_not_only_at_close(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache, \
            SemanticCache(tmp_path / "c", embedder=hash_embedder) as reader:
        cache.counter_flush_interval = 0.0
        cache.put("p", "A")
        assert cache.get("p")
        cache.put("q", "B")  # a write adds what was counted so far
        totals, _ = reader.store_counters()
        assert (totals["hits"], totals["puts"]) == (1, 2)


def test_store_of_an_older_semcache_gains_the_side_tables(
    tmp_path: Path, hash_embedder: HashEmbedder,
) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache.put("old entry", "A", scope=Scope(tenant="acme"))
    con = sqlite3.connect(tmp_path / "c" / "cache.db")
    con.execute("DROP TABLE scopes")
    con.execute("DROP TABLE counters")
    con.commit()
    con.close()
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        assert cache.get("old entry", scope=Scope(tenant="acme"))
        (entry,) = cache.entries()
        assert not entry.tenant_known  # written before tenants were kept: never matched
        assert cache.purge(tenant="acme") == 0
        cache.put("new entry", "B", scope=Scope(model="m2", tenant="acme"))
        assert cache.purge(tenant="acme") == 1
        assert cache.get("old entry", scope=Scope(tenant="acme"))
        # A write into the old scope names its tenant: its older entries are found too.
        cache.put("newer entry", "C", scope=Scope(tenant="acme"))
        assert cache.purge(tenant="acme") == 2


def test_a_crafted_scope_row_is_never_matched(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache.put("p", "A", scope=Scope(tenant="beta"))
        sid = cache.scope_id(Scope(tenant="beta"))
    con = sqlite3.connect(tmp_path / "c" / "cache.db")
    con.execute("INSERT OR REPLACE INTO scopes VALUES ('not-hex', 'acme')")
    con.execute("UPDATE scopes SET tenant = CAST(x'61ff' AS TEXT) WHERE scope = ?", (sid,))
    con.commit()
    con.close()
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        assert cache.scope_tenants() == {sid: None}
        assert cache.purge(tenant="acme") == 0
        assert cache.get("p", scope=Scope(tenant="beta"))


@pytest.mark.parametrize(("stored", "name", "expected"), [
    ("acme", "acme", True),
    ("tenant:acme", "acme", True),            # a trusted tenant header
    ("acme|tenant:team-1", "acme", True),     # a --keys tenant narrowed by a header
    ("key:0f3a|tenant:acme", "acme", True),   # a credential narrowed to acme
    ("key:0f3a", "acme", False),
    ("acme-corp", "acme", False),
    ("beta|tenant:acme-corp", "acme", False),
])
def test_tenant_matches_the_adapters_tenants(stored: str, name: str, expected: bool) -> None:
    assert tenant_matches(stored, name) is expected


def test_cli_purge_tenant_and_stats_hit_rate(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``semcache stats`` and ``semcache purge --tenant`` as a user runs them on a directory
    two caches wrote to (the commands open it with the default embedder, as these caches do)."""
    directory = str(tmp_path / "c")
    for tenant in ("acme", "tenant:acme", "key:0f3a|tenant:acme", "beta"):
        with SemanticCache(directory, embedder=embedder) as c:
            for model in ("m1", "m2"):
                c.put(f"question of {tenant}", "answer", scope=Scope(model=model, tenant=tenant))
                assert c.get(f"question of {tenant}", scope=Scope(model=model, tenant=tenant))
            assert not c.get("an unrelated prompt about gardening", scope=Scope(model="m1", tenant=tenant))
    capsys.readouterr()
    assert main(["stats", directory, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["hits"], report["exact_hits"], report["misses"], report["puts"]) == (8, 8, 4, 8)
    assert report["hit_rate"] == pytest.approx(8 / 12, abs=1e-4)
    assert report["largest_tenants"] == {"acme": 2, "tenant:acme": 2, "key:0f3a|tenant:acme": 2, "beta": 2}
    assert main(["stats", directory]) == 0
    assert "hit rate: 66.7%" in capsys.readouterr().out
    assert main(["purge", directory, "--tenant", "acme", "--dry-run"]) == 0
    assert "would delete 6 entries" in capsys.readouterr().out
    assert main(["purge", directory, "--tenant", "acme"]) == 0
    assert "deleted 6 entries" in capsys.readouterr().out
    with SemanticCache(directory, embedder=embedder) as c:
        assert {e.tenant for e in c.entries()} == {"beta"}
        assert c.get("question of beta", scope=Scope(model="m2", tenant="beta"))
