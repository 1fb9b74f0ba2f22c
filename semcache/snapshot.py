"""Snapshots of the entry vectors, so reopening a large cache reads less from the store.

A snapshot is an ``.npz`` file (read with ``allow_pickle=False``) holding the
ids and vectors of every live entry as of change-log position ``head``, the id
of the store it was taken from, and a BLAKE2b checksum over all of it. It is an
accelerator, never a source of truth:

* metadata (scope ids, keys, fingerprints, expiry) always come from the store;
  the snapshot holds none, so a tampered snapshot cannot move an entry to
  another scope;
* every vector taken from the snapshot is checked against the digest the store
  keeps for that id (:attr:`~semcache.stores.base.Digests.vhash`), so shifted
  ids or swapped rows are caught row by row;
* a checksum, shape, dtype or store-id mismatch, or any row that disagrees with
  the store, means the snapshot is deleted and the cache rebuilds from the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcache._types import FloatArray, IdArray

__all__ = ["FILENAME", "Snapshot", "delete_snapshot", "load_snapshot", "save_snapshot"]

log = logging.getLogger("semcache")

FILENAME = "index-snapshot.npz"
#: Snapshot layout version (checked like the checksum).
VERSION = 2


@dataclass(frozen=True)
class Snapshot:
    """Entry vectors as of change-log position ``head``.

    ``ids`` int64 (n,) strictly ascending; ``vectors`` float32 (n, d).
    """

    head: int
    ids: IdArray
    vectors: FloatArray


def _checksum(store_id: str, head: int, ids: IdArray, vectors: FloatArray) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(f"semcache-snapshot/{VERSION}/{store_id}/{head}/{vectors.shape}".encode())
    h.update(np.ascontiguousarray(ids, "<i8").tobytes())
    h.update(np.ascontiguousarray(vectors, "<f4").tobytes())
    return h.hexdigest()


def save_snapshot(directory: Path, store_id: str, head: int, ids: IdArray, vectors: FloatArray) -> None:
    """Write a snapshot atomically (temporary file, fsync, rename).

    Raises
    ------
    OSError
        The file cannot be written (the caller logs it: the store has everything).
    """
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(np.asarray(ids, np.int64)[order])
    vectors = np.ascontiguousarray(np.asarray(vectors, np.float32)[order])
    arrays = {
        "version": np.array(VERSION, dtype=np.int64),
        "store_id": np.array(store_id),
        "head": np.array(head, dtype=np.int64),
        "ids": ids,
        "vectors": vectors,
        "checksum": np.array(_checksum(store_id, head, ids, vectors)),
    }
    tmp = directory / f"{FILENAME}.{os.getpid()}.tmp"
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / FILENAME)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def delete_snapshot(directory: Path) -> None:
    """Remove the snapshot (stale after a purge/clear, or found bad)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / FILENAME).unlink()


def load_snapshot(directory: Path, store_id: str) -> Snapshot | None:
    """The snapshot in ``directory`` if it is intact and belongs to store ``store_id``, else None.

    A snapshot that is torn, fails its checksum or is malformed is deleted (and
    logged); one from another store is left alone (it may be the other store's).
    """
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        # Our own file handle: np.load leaks its own when the zip is corrupt.
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                raise ValueError(f"version {int(z['version'])}")
            if str(z["store_id"]) != store_id:
                log.info("semcache: snapshot %s belongs to another store; not used", path)
                return None
            head = int(z["head"])
            ids = z["ids"]
            vectors = z["vectors"]
            checksum = str(z["checksum"])
        if ids.dtype != np.int64 or ids.ndim != 1 or vectors.dtype != np.float32 or vectors.ndim != 2 \
                or vectors.shape[0] != ids.shape[0]:
            raise ValueError("arrays of the wrong type or shape")
        if checksum != _checksum(store_id, head, ids, vectors):
            raise ValueError("checksum mismatch")
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            raise ValueError("ids not strictly ascending")
        return Snapshot(head, ids, vectors)
    except Exception as exc:  # any malformed file (zip, npy or content): rebuild from the store
        log.warning("semcache: deleting bad snapshot %s (%s); rebuilding from the store", path, exc)
        delete_snapshot(directory)
        return None
