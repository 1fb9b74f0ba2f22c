"""Nothing in a cache directory is ever unpickled: planted pickles never run.

Each test plants a pickle whose payload would create a marker file, in every place
the old diskcache layout read (``seq``, ``m:``, ``c:``, ``settings``,
``blob:projection``) and in every column of the new SQLite layout that holds text
or bytes, then opens the cache, reads, writes and looks up. The marker must not exist.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from semcache import MISS, SemanticCache
from semcache.errors import SemcacheError, StoreFormatError
from tests.conftest import HashEmbedder
from tests.reliability.store_tools import db, open_cache, payload

# diskcache's table layout (semcache <= format 1): mode 4 = pickled value.
_DISKCACHE_SCHEMA = """
CREATE TABLE Settings (key TEXT NOT NULL UNIQUE, value);
CREATE TABLE Cache (rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, store_time REAL,
    expire_time REAL, access_time REAL, access_count INTEGER DEFAULT 0, tag BLOB,
    size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, filename TEXT, value BLOB);
CREATE UNIQUE INDEX Cache_key_raw ON Cache(key, raw);
"""


@pytest.mark.parametrize("key", ["seq", "m:1", "c:1", "settings", "blob:projection"])
def test_old_diskcache_directory_with_a_planted_pickle_is_refused_unread(tmp_path: Path, key: str) -> None:
    directory = tmp_path / "old"
    directory.mkdir()
    marker = tmp_path / "pwned"
    conn = sqlite3.connect(directory / "cache.db")
    conn.executescript(_DISKCACHE_SCHEMA)
    conn.execute("INSERT INTO Settings VALUES ('count', 1)")
    conn.execute(
        "INSERT INTO Cache (key, raw, store_time, mode, value) VALUES (?, 1, ?, 4, ?)",
        (key, time.time(), payload(marker)),
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreFormatError, match="older semcache"):
        open_cache(directory)
    with pytest.raises(StoreFormatError):
        SemanticCache(directory, embedder=HashEmbedder(), store="disk")
    assert not marker.exists()


def _fresh(directory: Path) -> tuple[int, int]:
    """A cache with one entry in each of two scopes; returns their ids."""
    with open_cache(directory) as cache:
        a = cache.put("alpha question", "alpha answer", scope="a")
        b = cache.put("beta question", "beta answer", scope="b")
        cache._store.set_blob("projection", b"not a projection")
    assert a is not None and b is not None
    return a, b


_PLANTS = [
    ("UPDATE completions SET record = ? WHERE id = {a}", "completion record (TEXT)"),
    ("UPDATE completions SET record = CAST(? AS TEXT) WHERE id = {a}", "completion record (bytes as TEXT)"),
    ("UPDATE vectors SET vector = ? WHERE id = {a}", "vector"),
    ("UPDATE entries SET scope = ? WHERE id = {a}", "scope"),
    ("UPDATE entries SET key = ? WHERE id = {a}", "key"),
    ("UPDATE entries SET fingerprint = ? WHERE id = {a}", "fingerprint"),
    ("UPDATE entries SET created = ? WHERE id = {a}", "created"),
    ("UPDATE entries SET vhash = ? WHERE id = {a}", "vector digest"),
    ("UPDATE blobs SET data = ? WHERE name = 'projection'", "projection blob"),
    ("INSERT OR REPLACE INTO blobs (name, data) VALUES ('projection_meta', ?)", "projection meta blob"),
    ("UPDATE settings SET json = ? WHERE id = 1", "settings"),
]


@pytest.mark.parametrize(("sql", "what"), _PLANTS, ids=[w for _, w in _PLANTS])
def test_pickle_planted_in_the_new_format_never_runs(tmp_path: Path, sql: str, what: str) -> None:
    directory = tmp_path / "c"
    a, _ = _fresh(directory)
    marker = tmp_path / "pwned"
    conn = db(directory)
    conn.execute(sql.format(a=a), (payload(marker),))
    conn.close()
    for index in ("exact", "auto"):  # "auto" also loads the projection blob
        try:
            cache = open_cache(directory, index=index)
        except SemcacheError:
            continue  # a typed refusal (corrupt settings) is fine; running code is not
        with cache:
            hit = cache.get("alpha question", scope="a")
            assert hit is MISS or hit.completion == "alpha answer"
            hit_b = cache.get("alpha question", scope="b")
            assert hit_b is MISS
            assert cache.get("beta question", scope="b").completion == "beta answer"  # type: ignore[union-attr]
            cache.put("gamma", "g", scope="a")
            len(cache)
    assert not marker.exists(), f"a pickle planted in the {what} ran"
