"""Fault injection at the store boundary, removed/truncated databases, compaction and vacuum."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from semcache import MISS, Hit
from semcache.errors import SerializationError, StoreError
from semcache.snapshot import FILENAME
from semcache.stores.sqlite import MARKER_FILENAME, SQLiteStore
from tests.reliability.store_tools import db, open_cache

BOUND_S = 5.0  # a failure must turn into MISS / None well within this


def _raiser(exc: Exception) -> Callable[..., Any]:
    def fail(*_a: object, **_k: object) -> Any:
        raise exc

    return fail


BOUNDARIES = {
    # boundary -> (store method, exception, operation that crosses it)
    "read: changes": ("changes", StoreError("injected read failure"), "get"),
    "read: completion": ("get_completion", StoreError("injected read failure"), "get"),
    "decode: completion": ("get_completion", SerializationError("injected decode failure"), "get"),
    "write: put": ("put_many", StoreError("injected write failure"), "put"),
    "write: delete": ("delete", StoreError("injected write failure"), "delete"),
    "read: head during put": ("changes", StoreError("injected read failure"), "put"),
}


@pytest.mark.parametrize("fail_open", [True, False])
@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_fault_at_the_store_boundary(tmp_path: Path, boundary: str, fail_open: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    method, exc, op = BOUNDARIES[boundary]
    cache = open_cache(tmp_path / "c", fail_open=fail_open)
    entry = cache.put("stored question", "stored answer", scope="s")
    assert entry is not None
    monkeypatch.setattr(cache._store, method, _raiser(exc))
    t0 = time.monotonic()
    if fail_open:
        if op == "get":
            assert cache.get("stored question", scope="s") is MISS
        elif op == "put":
            got = cache.put("new question", "new answer", scope="s")
            if method == "put_many":
                assert got is None
            else:  # the write committed before the sync failed: acknowledged, and durable
                assert got is not None
                monkeypatch.undo()
                assert cache.get("new question", scope="s").completion == "new answer"  # type: ignore[union-attr]
        else:
            with pytest.raises(type(exc)):  # delete is an explicit admin call: never silent
                cache.delete(entry)
    else:
        with pytest.raises(type(exc)):
            if op == "get":
                cache.get("stored question", scope="s")
            elif op == "put":
                cache.put("new question", "new answer", scope="s")
            else:
                cache.delete(entry)
    assert time.monotonic() - t0 < BOUND_S
    if op != "delete":
        assert cache.stats().errors == 1
    monkeypatch.undo()
    hit = cache.get("stored question", scope="s")
    if boundary != "decode: completion" or not fail_open:
        assert isinstance(hit, Hit) and hit.completion == "stored answer"  # the store is fine again
    cache.close()


def test_snapshot_write_failure_is_logged_never_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    import semcache.snapshot as snap

    cache = open_cache(tmp_path / "c", snapshot_min_entries=1)
    cache.put("q", "a")
    monkeypatch.setattr(snap, "save_snapshot", _raiser(OSError("disk full")))
    cache.close()
    assert not (tmp_path / "c" / FILENAME).exists()
    monkeypatch.undo()
    with open_cache(tmp_path / "c") as again:
        assert again.get("q").completion == "a"  # type: ignore[union-attr]


@pytest.mark.parametrize("fail_open", [True, False])
def test_database_removed_while_open_never_acknowledges_a_lost_put(tmp_path: Path, fail_open: bool) -> None:
    directory = tmp_path / "c"
    cache = open_cache(directory, fail_open=fail_open)
    assert cache.put("before", "kept") is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{directory / 'cache.db'}{suffix}").unlink(missing_ok=True)
    if fail_open:
        assert cache.put("after", "lost?") is None
        assert cache.get("before") is MISS
        assert cache.stats().errors >= 2
    else:
        with pytest.raises(StoreError, match="removed"):
            cache.put("after", "lost?")
        with pytest.raises(StoreError):
            cache.get("before")
    cache.close()
    # Reopening: the marker says a store lived here; an empty cache would hide the loss.
    with pytest.raises(StoreError, match="missing or empty"):
        open_cache(directory)


def test_truncated_database_is_an_error_not_an_empty_cache(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with open_cache(directory) as cache:
        cache.put("q", "a")
    os.truncate(directory / "cache.db", 0)
    Path(f"{directory / 'cache.db'}-wal").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="missing or empty"):
        open_cache(directory)
    # The documented way out: remove the marker to start an empty cache on purpose.
    (directory / MARKER_FILENAME).unlink()
    with open_cache(directory) as cache:
        assert len(cache) == 0


def test_garbage_database_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with open_cache(directory) as cache:
        cache.put("q", "a")
    (directory / "cache.db").write_bytes(b"\x00garbage" * 4096)
    with pytest.raises(StoreError):
        open_cache(directory)


def test_compaction_drops_old_log_and_a_lagging_reader_reloads(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    reader = open_cache(directory)
    writer = open_cache(directory)
    ids = writer.put_many([f"q{i}" for i in range(200)], [f"a{i}" for i in range(200)])
    writer.delete(ids[0])
    reader_seen = reader._seq
    store = SQLiteStore(directory, retention=0.0, keep_log=0)
    assert store.compact() > 0
    floor = db(directory).execute("SELECT value FROM state WHERE name = 'floor'").fetchone()[0]
    assert floor > reader_seen
    assert store.changes(reader_seen).items is None  # the log no longer reaches back
    store.close()
    assert len(reader) == 199  # reloaded everything via load_all
    assert reader.get("q5").completion == "a5"  # type: ignore[union-attr]
    assert not reader.get("q0")
    reader.close()
    writer.close()


def test_deleting_half_gives_disk_space_back(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    n = 3000
    with open_cache(directory) as cache:
        ids = cache.put_many([f"q{i}" for i in range(n)], [{"pad": "x" * 2000, "i": i} for i in range(n)])
    store = SQLiteStore(directory)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = store.file_size()
    store.close()
    with open_cache(directory) as cache:
        for s in range(0, n // 2, 500):
            cache._store.delete(ids[s : min(s + 500, n // 2)])
    store = SQLiteStore(directory)
    store.compact()
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    half = store.file_size()
    store.close()
    assert half < 0.7 * full, (full, half)


def test_store_spec_variants(tmp_path: Path) -> None:
    from semcache.errors import ConfigError
    from semcache.stores.memory import MemoryStore

    store = MemoryStore()
    with open_cache(tmp_path / "x", store=store) as cache:
        cache.put("q", "a")
    assert store.load_all().ids.size == 1  # the cache wrote into the instance it was given
    with pytest.raises(ConfigError):
        open_cache(tmp_path / "y", store="sqlite-please")
    with pytest.raises(ConfigError):
        open_cache(tmp_path / "y", store="nosuchscheme://host/db")


def test_unusable_store_fails_open(tmp_path: Path) -> None:
    from semcache.stores.memory import MemoryStore

    class Stale(MemoryStore):
        ok = True

        def usable(self) -> bool:
            return self.ok

    store = Stale()
    cache = open_cache(tmp_path / "x", store=store)
    cache.put("q", "a")
    store.ok = False
    assert cache.get("q") is MISS
    assert cache.put("q2", "b") is None
    store.ok = True
    assert cache.get("q").completion == "a"  # type: ignore[union-attr]
    cache.close()


def test_delete_and_refill_rounds_do_not_grow_the_database(tmp_path: Path) -> None:
    """Deleting half and refilling, round after round, reuses the freed pages (bounded file)."""
    directory = tmp_path / "c"
    n = 2000
    pad = "x" * 2000

    def size() -> int:
        store = SQLiteStore(directory)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out = store.file_size()
        store.close()
        return out

    with open_cache(directory) as cache:
        ids = cache.put_many([f"q{i}" for i in range(n)], [{"pad": pad, "i": i} for i in range(n)])
    full = size()
    sizes = []
    for r in range(4):
        with open_cache(directory) as cache:
            gone, ids = ids[: n // 2], ids[n // 2 :]
            for s in range(0, len(gone), 500):
                cache._store.delete(gone[s : s + 500])
            ids += cache.put_many([f"r{r}-{i}" for i in range(n // 2)],
                                  [{"pad": pad, "i": i} for i in range(n // 2)])
            assert len(cache) == n
        sizes.append(size())
    # The old diskcache layout grew from 407 to 642 MB in one such round (issue #25).
    assert max(sizes) < 1.15 * full, (full, sizes)
    con = db(directory)
    assert con.execute("SELECT count(*) FROM log").fetchone()[0] == 0  # every reader has seen it
    con.close()
