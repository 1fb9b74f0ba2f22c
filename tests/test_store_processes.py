"""Durability and sharing: a writer killed mid-writes, and processes sharing one directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from semcache import Hit, SemanticCache
from tests.conftest import HashEmbedder

ROOT = Path(__file__).resolve().parent.parent

# A writer process: puts entries as fast as it can and prints each id once put()
# has returned (that is, once the write is acknowledged).
WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from semcache import FunctionEmbedder, SemanticCache
    from tests.helpers import hash_vectors
    emb = FunctionEmbedder(lambda t: hash_vectors(t), name="hash")
    cache = SemanticCache({directory!r}, embedder=emb)
    for i in range({count}):
        entry = cache.put(f"{prefix}-{{i}}", {{"i": i, "pad": "x" * 2000}})
        print(i, entry, flush=True)
    cache.close()
    """
)


def _writer(directory: Path, count: int, prefix: str) -> subprocess.Popen[str]:
    code = WRITER.format(root=str(ROOT), directory=str(directory), count=count, prefix=prefix)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _hash_cache(directory: Path) -> SemanticCache:
    from semcache import FunctionEmbedder
    from tests.helpers import hash_vectors

    return SemanticCache(directory, embedder=FunctionEmbedder(lambda t: hash_vectors(t), name="hash"))


def test_kill_9_mid_writes_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    proc = _writer(directory, 100_000, "k")
    acked: list[tuple[int, int]] = []
    assert proc.stdout is not None
    try:
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            i, entry = line.split()
            acked.append((int(i), int(entry)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with _hash_cache(directory) as cache:
        # Every acknowledged entry is readable and intact; at most the one in flight is extra.
        assert len(acked) <= len(cache) <= len(acked) + 1
        for i, entry in acked:
            hit = cache.get(f"k-{i}")
            assert isinstance(hit, Hit) and hit.entry_id == entry
            assert hit.completion == {"i": i, "pad": "x" * 2000}
        # And the store still takes writes.
        assert cache.put("after the crash", 1) is not None


def test_two_writers_share_one_directory(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with _hash_cache(directory) as reader:
        assert len(reader) == 0
        writers = [_writer(directory, 150, p) for p in ("a", "b")]
        for w in writers:
            out, _ = w.communicate(timeout=120)
            assert w.returncode == 0
            assert len(out.splitlines()) == 150
        # A cache opened before the writes sees them through the store's journal.
        assert len(reader) == 300
        for p in ("a", "b"):
            for i in (0, 77, 149):
                hit = reader.get(f"{p}-{i}")
                assert isinstance(hit, Hit) and hit.completion["i"] == i  # type: ignore[index]
        # Deletes propagate the other way too.
        victim = reader.get("a-5")
        assert isinstance(victim, Hit)
        assert reader.delete(victim.entry_id)
    with _hash_cache(directory) as other:
        assert len(other) == 299 and not other.get("a-5")


def test_delete_and_clear_seen_by_another_open_cache(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    directory = tmp_path / "c"
    one = SemanticCache(directory, embedder=hash_embedder)
    two = SemanticCache(directory, embedder=hash_embedder)
    try:
        entry = one.put("x", 1)
        assert two.get("x")
        assert entry is not None and one.delete(entry)
        assert not two.get("x") and len(two) == 0
        one.put("y", 2)
        assert two.get("y")
        two.clear()
        assert len(one) == 0 and not one.get("y")
        one.put("z", 3)
        assert two.get("z") and len(two) == 1
    finally:
        one.close()
        two.close()


def test_reopen_after_many_writes_and_deletes(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    directory = tmp_path / "c"
    with SemanticCache(directory, embedder=hash_embedder) as cache:
        ids = cache.put_many([f"p{i}" for i in range(500)], list(range(500)))
        for entry in ids[::3]:
            cache.delete(entry)
        live = len(cache)
    with SemanticCache(directory, embedder=hash_embedder) as cache:
        assert len(cache) == live == 500 - len(ids[::3])
        assert not cache.get("p0") and cache.get("p1")


def test_snapshot_speeds_reopen_and_never_disagrees_with_the_store(
    tmp_path: Path, hash_embedder: HashEmbedder
) -> None:
    from semcache.snapshot import FILENAME

    directory = tmp_path / "c"
    with SemanticCache(directory, embedder=hash_embedder, snapshot_min_entries=1) as cache:
        ids = cache.put_many([f"p{i}" for i in range(50)], list(range(50)))
        cache.feedback(cache.get("p0"), correct=True)  # type: ignore[arg-type]
    assert (directory / FILENAME).is_file()
    # Changes after the snapshot, then a crash (no close, so no new snapshot).
    crashed = SemanticCache(directory, embedder=hash_embedder, snapshot_min_entries=1)
    assert crashed._snapshot_seq > 0  # the snapshot was used
    crashed.delete(ids[1])
    crashed.put("late", "entry")
    crashed._store.close()
    with SemanticCache(directory, embedder=hash_embedder) as cache:
        assert len(cache) == 50
        assert not cache.get("p1") and cache.get("late") and cache.get("p2")
        assert cache._meta[ids[0]].right == 1
    # A snapshot copied from another store is ignored, not trusted.
    other = tmp_path / "other"
    with SemanticCache(other, embedder=hash_embedder) as cache:
        cache.put("only here", 1)
    (other / FILENAME).write_bytes((directory / FILENAME).read_bytes())
    with SemanticCache(other, embedder=hash_embedder) as cache:
        assert len(cache) == 1 and not cache.get("p2")
    # A torn snapshot is ignored too.
    (directory / FILENAME).write_bytes(b"torn")
    with SemanticCache(directory, embedder=hash_embedder) as cache:
        assert len(cache) == 50


def test_locked_store_fails_open_then_recovers(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    import sqlite3

    import pytest

    from semcache import StoreLockedError

    directory = tmp_path / "c"
    with SemanticCache(directory, embedder=hash_embedder, timeout=0.2) as cache:
        cache.put("before", 1)
        other = sqlite3.connect(directory / "cache.db", timeout=0)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            assert cache.put("during", 2) is None  # logged, counted, not raised
            assert cache.stats().errors == 1
            cache.fail_open = False
            with pytest.raises(StoreLockedError):
                cache.put("during", 2)
            cache.fail_open = True
            assert cache.get("before")  # readers still read
        finally:
            other.rollback()
            other.close()
        assert cache.put("after", 3) is not None
        assert cache.get("before") and cache.get("after") and not cache.get("during")


def test_threads_share_one_cache(hash_embedder: HashEmbedder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with SemanticCache(store="memory", embedder=hash_embedder, max_entries=500) as cache:
        def work(t: int) -> int:
            served = 0
            for i in range(200):
                cache.put(f"t{t}-{i}", i)
                hit = cache.get(f"t{t}-{i}")
                served += int(isinstance(hit, Hit) and hit.completion == i)
            return served

        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(work, range(4)))
        assert served == [200] * 4
        assert len(cache) == 500
        part = next(iter(cache._parts.values()))
        assert len(part.index) == len(cache._table) == 500
