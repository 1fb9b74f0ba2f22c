"""Snapshots of the cache's entries, so reopening a large cache reads almost nothing from the store.

A snapshot is an ``.npz`` file (read with ``allow_pickle=False``) holding, as of
change-log position ``head``, the ids, vectors and metadata (as columns, see
:func:`~semcache.stores.base.meta_columns`) of every live entry, the id of the
store it was taken from, and a BLAKE2b checksum over all of it but the vectors.
It is an accelerator, never a source of truth. On open (``SemanticCache._load_snapshot``):

* with a store that keeps a *seal* (:meth:`~semcache.stores.Store.sealed_changes`:
  the sum of a digest of every row — id, every metadata field, vector digest —
  kept by the store in the same transaction as each write), the changes logged
  after ``head`` are applied to the snapshot's rows, every row's digest is
  recomputed from the snapshot's own content (vectorised), and the snapshot is
  used only when the row count and the sum equal the store's seal: a swapped
  scope column, shifted ids, changed vectors or a store changed behind the
  snapshot all change the sum;
* with a store without a seal, metadata come from the store and every vector is
  checked against the digest the store keeps for that id
  (:attr:`~semcache.stores.base.Digests.vhash`);
* a checksum, shape, dtype or store-id mismatch, or any disagreement with the
  store, means the snapshot is deleted, the cache rebuilds from the store and
  writes a new one at close.

The checksum leaves the vectors out (hashing 300 MB costs more than the whole
verified open); they are covered by the seal or the per-row digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from semcache._types import FloatArray, IdArray
from semcache.stores.base import META_KINDS

__all__ = ["FILENAME", "Snapshot", "delete_snapshot", "load_snapshot", "save_snapshot"]

log = logging.getLogger("semcache")

FILENAME = "index-snapshot.npz"
#: Snapshot layout version (checked like the checksum).
VERSION = 3
#: Prefix of the metadata columns' names in the file.
_META = "meta:"


@dataclass(frozen=True)
class Snapshot:
    """Entry vectors as of change-log position ``head``.

    ``ids`` int64 (n,) strictly ascending; ``vectors`` float32 (n, d); ``columns``
    the metadata of the same rows (:func:`~semcache.stores.base.meta_columns`), not
    yet validated (:func:`~semcache.stores.base.check_columns`).
    """

    head: int
    ids: IdArray
    vectors: FloatArray
    columns: dict[str, np.ndarray]


def _checksum(store_id: str, head: int, ids: IdArray, vectors: FloatArray,
              columns: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=32)
    h.update(f"semcache-snapshot/{VERSION}/{store_id}/{head}/{vectors.shape}/{vectors.dtype}".encode())
    h.update(np.ascontiguousarray(ids, "<i8").tobytes())
    for name in sorted(columns):
        col = np.ascontiguousarray(columns[name])
        h.update(f"/{name}/{col.dtype.str}/{col.shape}/".encode())
        h.update(col.tobytes())
    return h.hexdigest()


def save_snapshot(directory: Path, store_id: str, head: int, ids: IdArray, vectors: FloatArray,
                  columns: dict[str, np.ndarray]) -> None:
    """Write a snapshot atomically (temporary file, fsync, rename).

    Parameters
    ----------
    ids : int64 array, shape (n,)
    vectors : float32 array, shape (n, d)
    columns : :func:`~semcache.stores.base.meta_columns` of the same n rows, same order

    Raises
    ------
    OSError
        The file cannot be written (the caller logs it: the store has everything).
    """
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(np.asarray(ids, np.int64)[order])
    vectors = np.ascontiguousarray(np.asarray(vectors, np.float32)[order])
    # Per-row columns follow the ids' order; the distinct-value tables ("/u") do not.
    columns = {k: (v if k.endswith("/u") else np.ascontiguousarray(v[order])) for k, v in columns.items()}
    arrays = {
        "version": np.array(VERSION, dtype=np.int64),
        "store_id": np.array(store_id),
        "head": np.array(head, dtype=np.int64),
        "ids": ids,
        "vectors": vectors,
        "checksum": np.array(_checksum(store_id, head, ids, vectors, columns)),
        **{_META + k: v for k, v in columns.items()},
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


def _read_vectors(fh: BinaryIO) -> FloatArray | None:
    """The ``vectors`` member of an uncompressed ``.npz``, read straight into one array.

    ``np.load`` reads a zip member through ``zipfile`` in 256 kB pieces, copying each
    twice and computing a CRC: for 300 MB that costs more than everything else a
    verified open does. None when the member is not stored plainly (then ``np.load``
    reads it). The content is verified afterwards like any other (seal or digests).
    """
    with zipfile.ZipFile(fh) as zf:
        try:
            info = zf.getinfo("vectors.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    fh.seek(start)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    if fortran or dtype != np.dtype("<f4") or len(shape) != 2:
        return None
    count = int(shape[0]) * int(shape[1])
    if fh.tell() + 4 * count > start + info.file_size:
        raise ValueError("vectors member is shorter than its header says")
    data = np.fromfile(fh, dtype="<f4", count=count)
    if data.size != count:
        raise ValueError("vectors member is truncated")
    return data.reshape(shape).astype(np.float32, copy=False)


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
            fast = _read_vectors(fh)
            vectors = z["vectors"] if fast is None else fast
            checksum = str(z["checksum"])
            columns = {k[len(_META):]: z[k] for k in z.files if k.startswith(_META)}
        wanted = {f"{f}/{p}" for f, kind in META_KINDS.items() for p in ("u", "c")
                  if kind == "str"} | {f for f, kind in META_KINDS.items() if kind != "str"}
        if set(columns) != wanted:
            raise ValueError(f"metadata columns {sorted(columns)}, expected {sorted(wanted)}")
        if ids.dtype != np.int64 or ids.ndim != 1 or vectors.dtype != np.float32 or vectors.ndim != 2 \
                or vectors.shape[0] != ids.shape[0]:
            raise ValueError("arrays of the wrong type or shape")
        if checksum != _checksum(store_id, head, ids, vectors, columns):
            raise ValueError("checksum mismatch")
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            raise ValueError("ids not strictly ascending")
        return Snapshot(head, ids, vectors, columns)
    except Exception as exc:  # any malformed file (zip, npy or content): rebuild from the store
        log.warning("semcache: deleting bad snapshot %s (%s); rebuilding from the store", path, exc)
        delete_snapshot(directory)
        return None
