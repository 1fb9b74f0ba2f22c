"""Change-log compaction waits for every live reader, across processes.

A second process opens the same cache and is driven over a pipe; it answers
lookups as the reference for what it has applied. Compaction must never drop a
record a live reader has not applied; a reader killed with SIGKILL stops holding
the log back once its heartbeat is older than ``retention``; a reader that was
frozen (SIGSTOP) past that bound and comes back reloads and misses nothing; the
tombstones of an emptied cache are compacted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from semcache.stores.sqlite import SQLiteStore
from tests.reliability.store_tools import db, open_cache

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from tests.reliability.store_tools import open_cache
    from pathlib import Path
    cache = open_cache(Path(sys.argv[1]))
    reloads = 0
    original = cache._reload
    def counting():
        global reloads
        reloads += 1
        original()
    cache._reload = counting
    print(json.dumps({"ready": cache._seq, "reader": cache._store.reader_id}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "sync":
            cache._store._beat_at = -1e18  # report the position now, not within 30 s
            n = len(cache)
            print(json.dumps({"n": n, "seq": cache._seq, "reloads": reloads}), flush=True)
        elif cmd["op"] == "get":
            out = {}
            for q in cmd["prompts"]:
                hit = cache.get(q)
                out[q] = hit.completion if hit else None
            print(json.dumps({"answers": out, "reloads": reloads}), flush=True)
        elif cmd["op"] == "exit":
            cache.close()
            print(json.dumps({"bye": True}), flush=True)
            break
""")


class Reader:
    """A second process holding the cache open, driven line by line."""

    def __init__(self, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory), str(ROOT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        hello = self._read()
        self.id: str = hello["reader"]
        self.loaded_at: int = hello["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"reader process died (rc {self.proc.poll()})"
        return dict(json.loads(line))

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _log_rows(directory: Path) -> tuple[int, int, int]:
    """(records in the log, lowest position kept, floor)."""
    con = db(directory)
    n, low = con.execute("SELECT count(*), min(pos) FROM log").fetchone()
    floor = con.execute("SELECT value FROM state WHERE name = 'floor'").fetchone()[0]
    con.close()
    return int(n), int(low or 0), int(floor)


def _positions(directory: Path) -> dict[str, int]:
    con = db(directory)
    out = dict(con.execute("SELECT reader, pos FROM readers").fetchall())
    con.close()
    return {str(k): int(v) for k, v in out.items()}


def test_compaction_waits_for_a_live_reader_in_another_process(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    writer = open_cache(directory)
    writer.put("seed", "s")
    reader = Reader(directory)
    try:
        assert _positions(directory)[reader.id] == reader.loaded_at
        prompts = [f"q{i}" for i in range(300)]
        ids = writer.put_many(prompts, [f"a{i}" for i in range(300)])
        for entry_id in ids[:100]:
            writer.delete(entry_id)
        compactor = SQLiteStore(directory, retention=600.0)
        compactor.compact()
        n, low, floor = _log_rows(directory)
        # Nothing the reader has not applied was dropped.
        assert floor <= reader.loaded_at and low <= reader.loaded_at + 1 and n >= 400
        # The reader catches up from the log, without reloading, and agrees with the writer.
        got = reader.ask(op="get", prompts=["q0", "q150", "q299", "seed"])
        assert got["answers"] == {"q0": None, "q150": "a150", "q299": "a299", "seed": "s"}
        assert got["reloads"] == 0
        state = reader.ask(op="sync")
        assert state["n"] == len(writer) == 201 and state["reloads"] == 0
        # Now that both have reported their positions, compaction drops everything up to them.
        writer._store._beat_at = -1e18
        len(writer)
        assert compactor.compact() >= 400
        n, _, floor = _log_rows(directory)
        assert floor >= state["seq"] and n <= writer._seq - floor
        writer.put("after", "x")
        got = reader.ask(op="get", prompts=["after", "q200"])
        assert got["answers"] == {"after": "x", "q200": "a200"} and got["reloads"] == 0
        compactor.close()
        assert reader.ask(op="exit")["bye"]
        assert reader.id not in _positions(directory)  # a clean close unregisters
    finally:
        reader.stop()
        writer.close()


def test_killed_reader_stops_holding_the_log_after_retention(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    writer = open_cache(directory)
    reader = Reader(directory)
    try:
        writer.put_many([f"q{i}" for i in range(200)], [f"a{i}" for i in range(200)])
        os.kill(reader.proc.pid, signal.SIGKILL)
        reader.proc.wait(timeout=30)
        assert reader.id in _positions(directory)  # no chance to unregister
        # Within the bound: a dead reader still counts (it cannot be told from a slow one).
        held = SQLiteStore(directory, retention=600.0)
        held.compact()
        assert _log_rows(directory)[2] <= reader.loaded_at
        held.close()
        # Past the bound it is gone: its row is removed and the log compacted.
        time.sleep(1.2)
        writer._store._beat_at = -1e18
        len(writer)  # the writer reports its own position
        gone = SQLiteStore(directory, retention=1.0)
        assert gone.compact() >= 200
        gone.close()
        assert reader.id not in _positions(directory)
        assert _log_rows(directory)[2] >= writer._seq - 1
        # A new process opening now sees everything.
        fresh = Reader(directory)
        got = fresh.ask(op="get", prompts=["q0", "q199"])
        assert got["answers"] == {"q0": "a0", "q199": "a199"}
        fresh.ask(op="exit")
        fresh.stop()
    finally:
        reader.stop()
        writer.close()


def test_frozen_reader_behind_the_compacted_part_reloads_and_misses_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    writer = open_cache(directory)
    ids = writer.put_many([f"q{i}" for i in range(100)], [f"a{i}" for i in range(100)])
    reader = Reader(directory)
    try:
        assert reader.ask(op="get", prompts=["q5"])["answers"] == {"q5": "a5"}
        os.kill(reader.proc.pid, signal.SIGSTOP)
        try:
            writer.delete(ids[5])
            writer.put_many([f"new{i}" for i in range(50)], [f"n{i}" for i in range(50)])
            time.sleep(1.2)
            writer._store._beat_at = -1e18
            len(writer)
            store = SQLiteStore(directory, retention=1.0)
            assert store.compact() > 0
            store.close()
            assert _log_rows(directory)[2] > reader.loaded_at  # compacted past the frozen reader
        finally:
            os.kill(reader.proc.pid, signal.SIGCONT)
        got = reader.ask(op="get", prompts=["q5", "q6", "new0", "new49"])
        # It noticed the log no longer reaches back, reloaded, and missed nothing.
        assert got["answers"] == {"q5": None, "q6": "a6", "new0": "n0", "new49": "n49"}
        assert got["reloads"] == 1
        assert reader.ask(op="sync")["n"] == len(writer) == 149
        reader.ask(op="exit")
    finally:
        reader.stop()
        writer.close()


def test_tombstones_of_an_emptied_cache_are_compacted(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with open_cache(directory) as cache:
        ids = cache.put_many([f"q{i}" for i in range(2000)], [f"a{i}" for i in range(2000)])
        for s in range(0, len(ids), 100):
            cache._store.delete(ids[s : s + 100])
        assert len(cache) == 0
    # The last process closed: nobody needs the tombstones any more.
    n, _, _ = _log_rows(directory)
    assert n == 0
    with open_cache(directory) as cache:
        assert len(cache) == 0
        cache.put("back", "again")
        assert cache.get("back").completion == "again"  # type: ignore[union-attr]
