"""Corrupted, swapped and stale snapshots: never another scope's answer; rebuilt from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcache import Hit
from semcache.snapshot import _META, FILENAME, _checksum
from tests.reliability.store_tools import db, open_cache

N = 300


def _build(directory: Path) -> None:
    with open_cache(directory, snapshot_min_entries=1) as cache:
        for scope in ("a", "b"):
            cache.put_many([f"{scope} question {i}" for i in range(N)], [f"{scope}-{i}" for i in range(N)],
                           scope=scope)
    assert (directory / FILENAME).is_file()


def _rewrite(directory: Path, change: str) -> None:
    """Tamper with the snapshot and re-sign it (a checksum alone cannot catch a planted file)."""
    path = directory / FILENAME
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    ids, vecs = arrays["ids"].copy(), arrays["vectors"].copy()
    half = len(ids) // 2
    meta = {k[len(_META):]: v.copy() for k, v in arrays.items() if k.startswith(_META)}
    if change == "swap halves":  # scope a's rows carry scope b's vectors
        vecs = np.concatenate([vecs[half:], vecs[:half]])
    elif change == "shift ids":
        ids = ids + 1
    elif change == "wrong dimension":
        vecs = np.concatenate([vecs, vecs], axis=1) / np.sqrt(2)
        vecs = vecs.astype(np.float32)
    elif change == "drop rows":
        ids, vecs = ids[:half], vecs[:half]
        meta = {k: (v if k.endswith("/u") else v[:half]) for k, v in meta.items()}
    elif change == "scaled vectors":
        vecs = vecs * 1000
    elif change == "swap scope arrays":  # scope a's rows labelled scope b and back
        meta["scope/c"] = np.concatenate([meta["scope/c"][half:], meta["scope/c"][:half]])
    elif change == "rename scopes":  # the table of distinct scopes reversed
        meta["scope/u"] = meta["scope/u"][::-1].copy()
    elif change == "swap keys":
        meta["key/c"] = meta["key/c"][::-1].copy()
    elif change == "change expiry":
        meta["expires"] = np.full(len(ids), 4e9)
    elif change == "lower thresholds":
        meta["threshold"] = np.full(len(ids), -1.0)
    arrays["ids"], arrays["vectors"] = ids.astype(np.int64), vecs.astype(np.float32)
    for k, v in meta.items():
        arrays[_META + k] = v
    arrays["checksum"] = np.array(_checksum(str(arrays["store_id"]), int(arrays["head"]),
                                            arrays["ids"], arrays["vectors"], meta))
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _check_all(directory: Path) -> None:
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert len(cache) >= 2 * N
        for scope in ("a", "b"):
            for i in range(0, N, 3):
                hit = cache.get(f"{scope} question {i}", scope=scope)
                assert isinstance(hit, Hit) and hit.completion == f"{scope}-{i}"
        # the table holds the vector of each entry's own prompt (what the semantic path scores)
        for entry_id in list(cache._meta)[:40]:
            prompt = cache._store.get_completion(entry_id)[0]  # type: ignore[index]
            emb = cache.embedder.encode([prompt])[0]
            assert float(cache._table.take(np.array([entry_id]))[0] @ emb) > 0.999
        cache.put("one more", "x", scope="a")  # puts still work


@pytest.mark.parametrize("change", ["swap halves", "shift ids", "wrong dimension", "drop rows",
                                    "scaled vectors", "swap scope arrays", "rename scopes", "swap keys",
                                    "change expiry", "lower thresholds"])
def test_tampered_snapshot_is_rejected_and_rewritten(tmp_path: Path, change: str) -> None:
    directory = tmp_path / "c"
    _build(directory)
    _rewrite(directory, change)
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq == -1  # not used
        for scope, other in (("a", "b"), ("b", "a")):
            for i in range(N):
                hit = cache.get(f"{scope} question {i}", scope=scope)
                assert isinstance(hit, Hit) and hit.completion == f"{scope}-{i}", (scope, other, i)
        # vectors in the table equal what embedding the stored prompts gives
        emb = cache.embedder.encode([f"a question {i}" for i in range(N)])
        sid = cache.scope_id("a")
        for entry_id, meta in list(cache._meta.items())[:50]:
            if meta.scope == sid:
                i = int(cache._store.get_completion(entry_id)[1].split("-")[1])  # type: ignore[index,union-attr]
                assert float(cache._table.take(np.array([entry_id]))[0] @ emb[i]) > 0.999
    # a good snapshot was written at close and is used next time
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq > 0
    _check_all(directory)


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "garbage", "empty"])
def test_corrupt_snapshot_file_is_deleted_and_the_store_used(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "c"
    _build(directory)
    path = directory / FILENAME
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 definitely not a snapshot" * 10)
    else:
        path.write_bytes(b"")
    with open_cache(directory, snapshot_min_entries=10**9) as cache:
        assert cache._snapshot_seq == -1
        assert not path.exists()  # a bad snapshot is removed, not re-read every open
    _check_all(directory)


def test_snapshot_of_another_store_is_ignored(tmp_path: Path) -> None:
    _build(tmp_path / "one")
    with open_cache(tmp_path / "two", snapshot_min_entries=1) as cache:
        cache.put("question 1", "two-1", scope="a")
    (tmp_path / "two" / FILENAME).unlink(missing_ok=True)
    (tmp_path / "two" / FILENAME).write_bytes((tmp_path / "one" / FILENAME).read_bytes())
    with open_cache(tmp_path / "two") as cache:
        assert len(cache) == 1
        assert cache.get("question 1", scope="a").completion == "two-1"  # type: ignore[union-attr]
        assert not cache.get("a question 2", scope="a")


def test_stale_snapshot_removed_after_purge_and_clear(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    _build(directory)
    with open_cache(directory, snapshot_min_entries=N + 1) as cache:
        assert cache.purge(scope="a") == N
    assert not (directory / FILENAME).exists()
    _build(directory)
    with open_cache(directory, snapshot_min_entries=1) as cache:
        cache.clear()
        assert not (directory / FILENAME).exists()


def test_snapshot_plus_changes_after_it(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    _build(directory)
    crashed = open_cache(directory, snapshot_min_entries=1)
    assert crashed._snapshot_seq > 0
    crashed.put("after the snapshot", "late", scope="b")
    crashed.delete(crashed.get("a question 0", scope="a").entry_id)  # type: ignore[union-attr]
    crashed._store.close()  # no close(): the snapshot is now behind the store
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq > 0  # still used: the new row came from the change log
        assert cache.get("after the snapshot", scope="b").completion == "late"  # type: ignore[union-attr]
        assert not cache.get("a question 0", scope="a")
        assert len(cache) == 2 * N


def _other_scope_row(directory: Path) -> tuple[int, str]:
    con = db(directory)
    a_id, a_scope = con.execute("SELECT id, scope FROM entries ORDER BY id LIMIT 1").fetchone()
    b_scope = con.execute("SELECT scope FROM entries WHERE scope != ? LIMIT 1", (a_scope,)).fetchone()[0]
    con.close()
    return int(a_id), str(b_scope)


@pytest.mark.parametrize("edit", ["move a row to another scope", "delete a row", "rewrite a vector",
                                  "insert a row"])
def test_store_edited_behind_the_snapshot(tmp_path: Path, edit: str) -> None:
    """The database changed without semcache (no log record): the seal tells, the store wins."""
    directory = tmp_path / "c"
    _build(directory)
    entry_id, other = _other_scope_row(directory)
    con = db(directory)
    if edit == "move a row to another scope":
        con.execute("UPDATE entries SET scope = ? WHERE id = ?", (other, entry_id))
    elif edit == "delete a row":
        con.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
    elif edit == "rewrite a vector":
        vec = np.zeros(16, np.float32)
        vec[0] = 1.0
        con.execute("UPDATE vectors SET vector = ? WHERE id = ?", (vec.tobytes(), entry_id))
    else:
        row = con.execute("SELECT scope, key, fingerprint, created, vhash FROM entries WHERE id = ?",
                          (entry_id,)).fetchone()
        con.execute("INSERT INTO entries (scope, key, fingerprint, created, vhash) VALUES (?, ?, ?, ?, ?)",
                    (row[0], "f" * 32, row[2], row[3], row[4]))
        new_id = con.execute("SELECT max(id) FROM entries").fetchone()[0]
        blob = con.execute("SELECT vector FROM vectors WHERE id = ?", (entry_id,)).fetchone()[0]
        con.execute("INSERT INTO vectors (id, vector) VALUES (?, ?)", (new_id, blob))
    con.close()
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq == -1  # the snapshot was not trusted
        meta = cache._meta.get(entry_id)
        if edit == "move a row to another scope":
            assert meta is not None and meta.scope == other  # what the store says now
        elif edit == "delete a row":
            assert meta is None
        elif edit == "rewrite a vector":
            assert meta is not None
            assert float(cache._table.take(np.array([entry_id]))[0][0]) == 1.0
        else:
            assert len(cache) == 2 * N + 1
    # Loading resealed the store; the snapshot written at close is trusted again.
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq > 0
        assert (cache._meta.get(entry_id) is None) == (edit == "delete a row")


def test_store_of_an_older_semcache_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database without the seal (written by semcache before it): sealed on first load."""
    directory = tmp_path / "c"
    _build(directory)
    con = db(directory)
    for name in [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]:
        con.execute(f"DROP TRIGGER {name}")
    con.execute("DROP TABLE seal")
    con.execute("DROP TABLE readers")
    con.execute("ALTER TABLE entries DROP COLUMN rhash")
    con.close()
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq == -1 and len(cache) == 2 * N
        cache.put("new one", "n", scope="a")
    with open_cache(directory, snapshot_min_entries=1) as cache:
        assert cache._snapshot_seq > 0 and len(cache) == 2 * N + 1
        assert cache.get("new one", scope="a").completion == "n"  # type: ignore[union-attr]
    _check_all(directory)
