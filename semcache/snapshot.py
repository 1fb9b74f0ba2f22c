"""Snapshots of the in-memory entry table, so reopening a large cache skips the journal.

A snapshot is an ``.npz`` file (no pickle) holding every live entry's id,
metadata and embedding as of a journal position ``seq``, plus the id of the
store it was taken from. On open, a snapshot is used only when it belongs to
the same store and its ``seq`` is not ahead of the store's; the journal after
``seq`` is then replayed as usual, so a snapshot that is old (a crash since it
was written) costs time, never correctness.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcache._types import FloatArray, IdArray
from semcache.store import EntryMeta

__all__ = ["Snapshot", "load_snapshot", "save_snapshot"]

log = logging.getLogger("semcache")

FILENAME = "index-snapshot.npz"


@dataclass(frozen=True)
class Snapshot:
    """Entries as of journal position ``seq``."""

    seq: int
    ids: IdArray
    vectors: FloatArray
    metas: list[EntryMeta]


def save_snapshot(directory: Path, store_id: str, seq: int, ids: IdArray, vectors: FloatArray,
                  metas: list[EntryMeta]) -> None:
    """Write a snapshot atomically (temporary file, then rename)."""
    fps = sorted({m.fingerprint for m in metas})
    fp_index = {fp: i for i, fp in enumerate(fps)}
    nan = float("nan")
    arrays = {
        "store_id": np.array(store_id),
        "seq": np.array(seq, dtype=np.int64),
        "ids": np.asarray(ids, dtype=np.int64),
        "vectors": np.asarray(vectors, dtype=np.float32),
        "scope": np.array([m.scope for m in metas], dtype="U32"),
        "key": np.array([m.key for m in metas], dtype="U32"),
        "fingerprints": np.array(fps, dtype=str) if fps else np.zeros(0, dtype="U1"),
        "fp": np.array([fp_index[m.fingerprint] for m in metas], dtype=np.int32),
        "created": np.array([m.created for m in metas], dtype=np.float64),
        "expires": np.array([nan if m.expires is None else m.expires for m in metas], dtype=np.float64),
        "threshold": np.array([nan if m.threshold is None else m.threshold for m in metas],
                              dtype=np.float64),
        "wrong": np.array([m.wrong for m in metas], dtype=np.int32),
        "right": np.array([m.right for m in metas], dtype=np.int32),
    }
    tmp = directory / (FILENAME + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, directory / FILENAME)


def load_snapshot(directory: Path, store_id: str) -> Snapshot | None:
    """The snapshot in ``directory`` if it belongs to store ``store_id``, else None."""
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["store_id"]) != store_id:
                return None
            fps = [str(f) for f in z["fingerprints"]]
            scope, key, fp = z["scope"], z["key"], z["fp"]
            created, expires, thr = z["created"], z["expires"], z["threshold"]
            wrong, right = z["wrong"], z["right"]
            metas = [
                EntryMeta(
                    scope=str(scope[i]), key=str(key[i]), fingerprint=fps[int(fp[i])],
                    created=float(created[i]),
                    expires=None if np.isnan(expires[i]) else float(expires[i]),
                    threshold=None if np.isnan(thr[i]) else float(thr[i]),
                    wrong=int(wrong[i]), right=int(right[i]),
                )
                for i in range(len(scope))
            ]
            return Snapshot(int(z["seq"]), z["ids"].astype(np.int64), z["vectors"].astype(np.float32),
                            metas)
    except Exception as exc:  # a torn or foreign file: fall back to the journal
        log.warning("semcache: ignoring unreadable snapshot %s: %s", path, exc)
        return None
