"""ExactIndex, the reference every approximate index is tested against."""

from __future__ import annotations

import numpy as np
import pytest

from semcache.errors import ConfigError, IndexStateError
from semcache.index import INDEXES, ExactIndex, Index, make_index
from tests._index_data import THRESHOLDS, corpus, exact_of


def test_matches_brute_force_on_real_embeddings() -> None:
    c = corpus()
    ex = exact_of(c)
    assert len(ex) == len(c.ids)
    for t in THRESHOLDS:
        for i in range(0, len(c.q_full), 7):
            got = ex.candidates(c.q_low[i], c.q_full[i], t)
            scores = c.full @ c.q_full[i]
            want = c.ids[scores >= t]
            assert set(got.tolist()) == set(want.tolist())
            # Best first.
            s = scores[np.searchsorted(c.ids, got)]
            assert np.all(np.diff(s) <= 1e-6)


def test_remove_swaps_rows_and_keeps_lookups_right() -> None:
    c = corpus()
    ex = exact_of(c)
    gone = c.ids[::3]
    ex.remove(gone)
    ex.remove(np.array([10**12], dtype=np.int64))  # absent: ignored
    assert len(ex) == len(c.ids) - len(gone)
    left = np.setdiff1d(c.ids, gone)
    ids, vecs = ex.vectors()
    assert set(ids.tolist()) == set(left.tolist())
    rows = np.searchsorted(c.ids, ids)
    assert np.array_equal(vecs, c.full[rows])
    for i in range(0, len(c.q_full), 11):
        got = set(ex.candidates(c.q_low[i], c.q_full[i], 0.85).tolist())
        assert not got & set(gone.tolist())


def test_empty_and_one_item() -> None:
    ex = ExactIndex()
    q = np.ones(4, dtype=np.float32) / 2
    assert len(ex.candidates(q, q, 0.5)) == 0
    ex.add(np.array([5]), q[None, :2], q[None, :])
    assert ex.candidates(q[:2], q, 0.99).tolist() == [5]
    assert 5 in ex


def test_rejects_bad_batches() -> None:
    ex = ExactIndex()
    v = np.eye(3, dtype=np.float32)
    with pytest.raises(IndexStateError):
        ex.add(np.array([1, 1, 2]), v, v)
    with pytest.raises(IndexStateError):
        ex.add(np.array([1, 2]), v, v)
    ex.add(np.array([1, 2, 3]), v, v)
    with pytest.raises(IndexStateError):
        ex.add(np.array([3]), v[:1], v[:1])
    with pytest.raises(IndexStateError):
        ex.add(np.array([4]), v[:1, :2], v[:1, :2])


def test_registry() -> None:
    assert {"exact", "grid", "multigrid", "thermal"} <= set(INDEXES)
    for kind in INDEXES:
        assert isinstance(make_index(kind), Index)
    with pytest.raises(ConfigError):
        make_index("nope")
    with pytest.raises(ConfigError):
        make_index("exact", bogus=1)
