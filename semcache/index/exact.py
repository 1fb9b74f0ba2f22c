"""Exact (brute-force) index: the reference every approximate index is tested against.

It keeps the full embeddings in one contiguous matrix (rows swapped on delete
so the matrix never has holes) and answers a query with one matrix-vector
product. Up to a few tens of thousands of entries this is also the fastest
index there is, so small caches use it.
"""

from __future__ import annotations

import numpy as np

from semcache._types import FloatArray, IdArray
from semcache.errors import IndexStateError
from semcache.index.base import check_batch

__all__ = ["ExactIndex"]


class ExactIndex:
    """Brute-force cosine search over full-dimension embeddings.

    Parameters
    ----------
    dim : int or None
        Embedding width ``d``; taken from the first :meth:`add` when None.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim or 0), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._row: dict[int, int] = {}
        self._n = 0

    @classmethod
    def adopt(cls, ids: IdArray, full: FloatArray) -> ExactIndex:
        """An index over ``full`` without copying it (a bulk load's own arrays).

        The index takes ownership: ``full`` (C-contiguous float32, shape (n, d), writable)
        and ``ids`` (int64, shape (n,), distinct) must not be used by the caller afterwards,
        except as disjoint row slices of one array given to separate indexes.
        """
        ids_a, _, full_a = check_batch(ids, full[:, :0], full)
        if not full_a.flags.writeable:
            full_a = full_a.copy()  # remove() moves rows in place
        index = cls(full_a.shape[1])
        index._vectors, index._ids = full_a, ids_a.copy()
        index._row = dict(zip(ids_a.tolist(), range(len(ids_a)), strict=True))
        index._n = len(ids_a)
        return index

    def __len__(self) -> int:
        return self._n

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._row

    def _reserve(self, extra: int, dim: int) -> None:
        need = self._n + extra
        if need <= self._vectors.shape[0]:
            return
        cap = max(need, 2 * self._vectors.shape[0], 64)
        grown = np.zeros((cap, dim), dtype=np.float32)
        ids = np.zeros(cap, dtype=np.int64)
        if self._n:
            grown[: self._n] = self._vectors[: self._n]
            ids[: self._n] = self._ids[: self._n]
        self._vectors, self._ids = grown, ids

    def add(self, ids: IdArray | int, low: FloatArray, full: FloatArray) -> None:
        """Insert entries (``low`` is ignored: exact search uses ``full``)."""
        ids_a, _, full_a = check_batch(ids, low, full)
        if self.dim is None:
            self.dim = full_a.shape[1]
        if full_a.shape[1] != self.dim:
            raise IndexStateError(f"expected {self.dim}-d embeddings, got {full_a.shape[1]}-d")
        id_list = ids_a.tolist()
        if self._row and not self._row.keys().isdisjoint(id_list):
            clash = [i for i in id_list if i in self._row]
            raise IndexStateError(f"ids already in the index: {clash[:5]}")
        self._reserve(len(ids_a), self.dim)
        start = self._n
        self._vectors[start : start + len(ids_a)] = full_a
        self._ids[start : start + len(ids_a)] = ids_a
        # C-level loops: a 200k-entry reopen adds everything at once.
        self._row.update(zip(id_list, range(start, start + len(id_list)), strict=True))
        self._n += len(ids_a)

    def remove(self, ids: IdArray) -> None:
        """Remove entries by id; absent ids are ignored."""
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            row = self._row.pop(i, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                # Move the last row into the hole so the live rows stay contiguous.
                moved = int(self._ids[last])
                self._vectors[row] = self._vectors[last]
                self._ids[row] = moved
                self._row[moved] = row
            self._n = last

    def scores(self, q_full: FloatArray) -> tuple[IdArray, FloatArray]:
        """Cosine similarity of ``q_full`` (shape (d,)) with every entry.

        Returns
        -------
        ids : ndarray of int64, shape (n,)
        scores : ndarray of float32, shape (n,)
        """
        if self._n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.asarray(q_full, dtype=np.float32).reshape(-1)
        return self._ids[: self._n].copy(), self._vectors[: self._n] @ q

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        """Ids with ``cos >= threshold``, best first."""
        ids, scores = self.scores(q_full)
        keep = np.flatnonzero(scores >= threshold)
        order = keep[np.argsort(-scores[keep], kind="stable")]
        return ids[order]

    def take(self, ids: IdArray) -> FloatArray:
        """Embeddings of the given ids, shape (k, d), in the order given.

        Raises
        ------
        IndexStateError
            An id is not in the index.
        """
        try:
            rows = np.fromiter((self._row[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise IndexStateError(f"id {exc.args[0]} is not in the index") from None
        return self._vectors[rows]

    def vectors(self) -> tuple[IdArray, FloatArray]:
        """All ids and their embeddings (copies), shapes (n,) and (n, d)."""
        return self._ids[: self._n].copy(), self._vectors[: self._n].copy()
