"""Crafted and corrupted records: skipped and counted (or a typed error), never served wrong."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from semcache import MISS, Hit
from semcache.errors import InvalidPromptError, SerializationError
from semcache.stores.memory import MemoryStore
from tests.reliability.store_tools import DIM, db, open_cache

N_OTHER = 50


def _two_scopes(directory: Path) -> dict[str, int]:
    with open_cache(directory) as cache:
        ids = {
            "a": cache.put("the planted question", "answer for scope a", scope="a"),
            "b": cache.put("the honest question", "answer for scope b", scope="b"),
        }
    assert all(v is not None for v in ids.values())
    return ids  # type: ignore[return-value]


def _assert_never_served_wrong(directory: Path, expect_a: bool) -> int:
    """Open, look up everything; returns stats().errors. Never another scope's answer."""
    with open_cache(directory, index="exact", threshold=0.5) as cache:
        for i in range(N_OTHER):  # unrelated queries: nothing may hit
            for scope in ("a", "b"):
                assert cache.get(f"an unrelated question number {i}", scope=scope) is MISS
        assert cache.get("the planted question", scope="b") is MISS
        hit = cache.get("the honest question", scope="b")
        assert isinstance(hit, Hit) and hit.completion == "answer for scope b"
        got_a = cache.get("the planted question", scope="a")
        if expect_a:
            assert isinstance(got_a, Hit) and got_a.completion == "answer for scope a"
        else:
            assert got_a is MISS
        return cache.stats().errors


_CRAFTED = {
    "vector scaled x1000": "UPDATE vectors SET vector = ? WHERE id = {a}",
    "vector with NaN": "UPDATE vectors SET vector = ? WHERE id = {a}",
    "vector of the wrong width": "UPDATE vectors SET vector = ? WHERE id = {a}",
    "vector of odd byte length": "UPDATE vectors SET vector = ? WHERE id = {a}",
    "vector as text": "UPDATE vectors SET vector = ? WHERE id = {a}",
    "scope id not hex": "UPDATE entries SET scope = ? WHERE id = {a}",
    "scope id of another length": "UPDATE entries SET scope = ? WHERE id = {a}",
    "scope id invalid UTF-8": "UPDATE entries SET scope = CAST(? AS TEXT) WHERE id = {a}",
    "key as a number": "UPDATE entries SET key = ? WHERE id = {a}",
    "created as text": "UPDATE entries SET created = ? WHERE id = {a}",
    "expires NaN-like text": "UPDATE entries SET expires = ? WHERE id = {a}",
    "threshold out of range": "UPDATE entries SET threshold = ? WHERE id = {a}",
    "negative wrong count": "UPDATE entries SET wrong = ? WHERE id = {a}",
    "fingerprint with a control char": "UPDATE entries SET fingerprint = ? WHERE id = {a}",
    "vector row missing": "DELETE FROM vectors WHERE id = {a} AND ? IS NOT NULL",
}


def _value(what: str, directory: Path, a: int) -> object:
    conn = db(directory)
    vec = np.frombuffer(conn.execute("SELECT vector FROM vectors WHERE id = ?", (a,)).fetchone()[0],
                        dtype=np.float32)
    conn.close()
    return {
        "vector scaled x1000": (vec * 1000).astype(np.float32).tobytes(),
        "vector with NaN": np.where(np.arange(DIM) == 3, np.nan, vec).astype(np.float32).tobytes(),
        "vector of the wrong width": np.r_[vec, vec].astype(np.float32).tobytes() and
        (np.r_[vec, vec] / np.sqrt(2)).astype(np.float32).tobytes(),
        "vector of odd byte length": vec.tobytes()[:-1],
        "vector as text": "0.25," * DIM,
        "scope id not hex": "z" * 32,
        "scope id of another length": "ab" * 20,
        "scope id invalid UTF-8": b"\xff" * 32,
        "key as a number": 12345,
        "created as text": "yesterday",
        "expires NaN-like text": "NaN",
        "threshold out of range": 7.5,
        "negative wrong count": -3,
        "fingerprint with a control char": "test:hash/16\x00evil",
        "vector row missing": 1,
    }[what]


@pytest.mark.parametrize("what", list(_CRAFTED))
def test_crafted_record_is_skipped_and_counted_never_served(tmp_path: Path, what: str) -> None:
    directory = tmp_path / "c"
    ids = _two_scopes(directory)
    value = _value(what, directory, ids["a"])
    conn = db(directory)
    conn.execute(_CRAFTED[what].format(a=ids["a"]), (value,))
    conn.close()
    errors = _assert_never_served_wrong(directory, expect_a=False)
    assert errors >= 1, "a skipped record must be counted in stats().errors"


def test_crafted_record_arriving_through_the_change_log_is_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    ids = _two_scopes(directory)
    with open_cache(directory) as reader:
        # Another writer plants a scaled vector under a fresh put (seen through changes()).
        with open_cache(directory) as writer:
            new = writer.put("a third question", "third", scope="a")
        conn = db(directory)
        conn.execute("UPDATE vectors SET vector = ? WHERE id = ?",
                     (np.full(DIM, 1000.0, np.float32).tobytes(), new))
        conn.close()
        for i in range(N_OTHER):
            assert reader.get(f"unrelated {i}", scope="a") is MISS
        assert reader.stats().errors >= 1
        assert reader.get("the honest question", scope="b").completion == "answer for scope b"  # type: ignore[union-attr]
        assert ids["a"] in reader._meta


@pytest.mark.parametrize("fail_open", [True, False])
def test_invalid_byte_in_a_stored_completion_is_a_typed_counted_error(tmp_path: Path, fail_open: bool
                                                                       ) -> None:
    directory = tmp_path / "c"
    ids = _two_scopes(directory)
    conn = db(directory)
    raw = conn.execute("SELECT CAST(record AS BLOB) FROM completions WHERE id = ?", (ids["a"],)).fetchone()[0]
    conn.execute("UPDATE completions SET record = CAST(? AS TEXT) WHERE id = ?",
                 (raw.replace(b"scope a", b"scope \xff"), ids["a"]))
    conn.close()
    for _ in range(2):  # also after reopening
        with open_cache(directory, fail_open=fail_open) as cache:
            if fail_open:
                assert cache.get("the planted question", scope="a") is MISS
            else:
                with pytest.raises(SerializationError):
                    cache.get("the planted question", scope="a")
            assert cache.stats().errors == 1
            assert cache.get("the honest question", scope="b").completion == "answer for scope b"  # type: ignore[union-attr]


@pytest.mark.parametrize("record", [
    '{"prompt": "the planted question"}',
    '{"prompt": 5, "completion": "x"}',
    "[" * 100_000 + "]" * 100_000,
    '{"prompt": "the planted question", "completion": "\\ud800"}',
    "not json",
])
def test_malformed_completion_records_are_typed_errors(tmp_path: Path, record: str) -> None:
    directory = tmp_path / "c"
    ids = _two_scopes(directory)
    conn = db(directory)
    conn.execute("UPDATE completions SET record = ? WHERE id = ?", (record, ids["a"]))
    conn.close()
    with open_cache(directory, fail_open=False) as cache, pytest.raises(SerializationError):
        cache.get("the planted question", scope="a")


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_bad_input_at_put_is_a_typed_error(tmp_path: Path, store: str) -> None:
    with open_cache(tmp_path / "c", store=store) as cache:
        with pytest.raises(InvalidPromptError):
            cache.put("lone \ud800 surrogate", "x")
        with pytest.raises(SerializationError):
            cache.put("fine prompt", "lone \udfff surrogate")
        with pytest.raises(SerializationError):
            cache.put("fine prompt", {"k": ["\ud800"]})
        deep: object = "leaf"
        for _ in range(5_000):
            deep = [deep]
        with pytest.raises(SerializationError):
            cache.put("fine prompt", deep)  # type: ignore[arg-type]
        with pytest.raises(SerializationError):
            cache.put("fine prompt", float("nan"))
        assert len(cache) == 0  # nothing half-written
        assert cache.get("lone \ud800 surrogate") is MISS


def test_memory_store_validates_like_the_disk_store() -> None:
    from semcache.stores import EntryMeta

    store = MemoryStore()
    meta = EntryMeta("a" * 32, "b" * 32, "fp", 1.0, None)
    with pytest.raises(SerializationError):
        store.put_many([(meta, np.full(4, 1000.0, np.float32), "p", "c")])
    with pytest.raises(SerializationError):
        store.put_many([(EntryMeta("A" * 32, "b" * 32, "fp", 1.0, None), np.ones(4, np.float32) / 2, "p",
                         "c")])
    assert store.head() == 0 and store.load_all().ids.size == 0
    assert struct.calcsize("<f") == 4
