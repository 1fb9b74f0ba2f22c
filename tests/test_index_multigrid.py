"""MultiGridIndex and the binary-grid probe against exact search on real MiniLM embeddings."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from semcache.errors import ConfigError, IndexStateError
from semcache.index import ExactIndex, GridIndex, Index, MultiGridIndex, make_index
from semcache.index import grid_kernels as K
from tests._index_data import corpus, exact_of, recall


@pytest.fixture(scope="module")
def built() -> MultiGridIndex:
    c = corpus()
    g = MultiGridIndex()
    g.add(c.ids, c.low, c.full)
    return g


def test_tables_hash_disjoint_coordinates(built: MultiGridIndex) -> None:
    c = corpus()
    assert built.calibrated and len(built) == len(c.ids)
    a, b = built._grids
    # cell_rows picks how many coordinates are hashed (cells of ~96 rows), and
    # table 1 hashes the next block: it sees the columns rotated to put them first.
    m = a._m_eff
    assert a._m_eff == b._m_eff and 48 <= len(c.ids) / 2**m <= 192
    assert (a.block, b.block) == (0, 1) and a._perm is None
    assert b._perm is not None and b._perm[:m].tolist() == list(range(m, 2 * m))
    assert built.stats()["tables"] == 2
    # The insert buffer (64 rows of 32 floats and their ids) is counted too.
    buffer_bytes = 64 * (32 * 4 + 8)
    assert built.stats()["bytes"] == a.stats()["bytes"] + b.stats()["bytes"] + buffer_bytes


def test_binary_walk_visits_cells_in_the_same_order_as_the_general_walk() -> None:
    """On a two-slice grid both kernels are best-first by wall distance: same cells, same rows."""
    c = corpus()
    g = GridIndex(m=10, grid=2, max_scan=0.05)
    g.add(c.ids, c.low, c.full)
    probe_r2, filt_r2 = g.radii(0.85)
    filt_q = g._stored_r2(filt_r2)
    budget = g._budget(g.max_scan)
    # The general walk stores a step vector per node, the binary one two words.
    work_general = np.empty(len(g._work_f) * (g._m_eff + 2), dtype=np.int64)
    no_rows, no_ids = np.zeros((0, 1), dtype=np.float32), np.zeros(0, dtype=np.int64)
    assert g._perm is None  # block 0: the query needs no reordering
    for i in range(100):
        q = g._query_row(c.q_low[i])
        out_a = np.empty(len(c.ids), dtype=np.int64)
        out_b = np.empty(len(c.ids), dtype=np.int64)
        stats_a = np.zeros(3, dtype=np.int64)
        stats_b = np.zeros(3, dtype=np.int64)
        na = K.grid_query_binary(
            q, g._b, g._T, g._mapped, g._qinv, g._edges, probe_r2, filt_q, g.n_probe, budget,
            g._cells, g._pvec, g._pids, g._ctab, out_a, g._work_f,
            g._work_i, stats_a, g._heap, g._vec_f, g._order, g._gap2, 0,
            no_rows, no_ids, 0, g._ident,
        )
        nb = K.grid_query(
            q, g._b, g._T, g._mapped, g._qinv, g._edges, 2, probe_r2, filt_q, g.n_probe, budget,
            0, g._cells, g._meta, g._pvec, g._pids, g._ctab, out_b, g._work_f,
            work_general, stats_b, g._heap, g._vec_f, g._hs, 0,
            no_rows, no_ids, 0, g._ident,
        )
        assert stats_a[:2].tolist() == stats_b[:2].tolist()
        assert sorted(out_a[:na].tolist()) == sorted(out_b[:nb].tolist())


def test_one_table_is_a_binary_grid() -> None:
    c = corpus()
    one = MultiGridIndex(tables=1, m=10, cell_rows=None, max_scan=0.05, min_scan=2048)
    plain = GridIndex(m=10, grid=2, max_scan=0.05, min_scan=2048)
    for g in (one, plain):
        g.add(c.ids, c.low, c.full)
    for i in range(len(c.q_low)):
        a = one.candidates(c.q_low[i], c.q_full[i], 0.85)
        b = plain.candidates(c.q_low[i], c.q_full[i], 0.85)
        assert sorted(a.tolist()) == sorted(b.tolist())


def test_refused_add_leaves_every_table_unchanged() -> None:
    c = corpus()
    g = MultiGridIndex()
    g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    with pytest.raises(IndexStateError):
        g.add(c.ids[1990:2010], c.low[1990:2010], c.full[1990:2010])
    with pytest.raises(IndexStateError):
        g.add(c.ids[5:6], c.low[5:6], c.full[5:6])  # the single-row path
    assert [len(t) for t in g._grids] == [2000, 2000]
    assert c.ids[2005] not in g


def test_output_buffer_grows_for_many_candidates() -> None:
    """Identical rows all pass the filter: more candidates than the initial buffer holds."""
    c = corpus()
    n = 3000
    g = MultiGridIndex()
    g.add(np.arange(n, dtype=np.int64), np.repeat(c.low[:1], n, axis=0),
          np.repeat(c.full[:1], n, axis=0))
    got = g.candidates(c.low[0], c.full[0], 0.95)
    assert sorted(got.tolist()) == list(range(n))


def test_blocks_wrap_and_follow_m() -> None:
    c = corpus()
    g = GridIndex(m=12, grid=2, block=3)  # coordinates 36.. wrap to 4..15 of 32
    g.add(c.ids, c.low, c.full)
    assert g._perm is not None and g._perm[:12].tolist() == list(range(4, 16))
    r, hits, _ = recall(g, exact_of(c), c.q_low, c.q_full, 0.9)
    assert hits >= 20 and r >= 0.99
    # A recalibration that changes m moves the block and re-permutes every row.
    small = GridIndex(m=16, grid=2, block=1, cell_rows=64, min_calibration=512)
    ex = exact_of(c)
    small.add(c.ids[:600], c.low[:600], c.full[:600])
    m0 = small._m_eff
    for i in range(600, len(c.ids)):
        small.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
    assert small._m_eff > m0
    assert small._perm is not None and small._perm[0] == small._m_eff
    assert recall(small, ex, c.q_low, c.q_full, 0.9)[0] >= 0.99
    with pytest.raises(ConfigError):
        GridIndex(block=-1)


@pytest.mark.parametrize(
    "params", [{"tables": 0}, {"tables": 1.5}, {"max_scan": 0.0}, {"min_scan": 0}, {"scan_scale": -1},
               {"block": 3}, {"m": 0}, {"buffer": -1}, {"buffer": 2.5}],
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_index("multigrid", **params)


def test_scan_budget_grows_like_the_square_root_of_n() -> None:
    c = corpus()
    g = MultiGridIndex(min_scan=1)
    share = MultiGridIndex(max_scan=0.5, min_scan=1)
    floor = MultiGridIndex()
    for idx in (g, share):
        idx.add(c.ids, c.low, c.full)
    floor.add(c.ids[:3000], c.low[:3000], c.full[:3000])
    assert g._budget(len(g)) == int(24.0 * np.sqrt(len(c.ids)))
    assert share._budget(len(share)) == int(0.5 * len(c.ids))
    assert floor._budget(len(floor)) == 2048  # small indexes: the floor, over 24 * sqrt(3000) = 1314
    with pytest.raises(ConfigError):
        MultiGridIndex(scan_scale=0.0)


def _single(g: MultiGridIndex, c_ids: np.ndarray, low: np.ndarray, full: np.ndarray) -> None:
    for i in range(len(c_ids)):
        g.add(c_ids[i : i + 1], low[i : i + 1], full[i : i + 1])


@pytest.mark.parametrize("filter_kind", ["calibrated", "exact"])
def test_buffered_rows_are_found_before_they_reach_the_tables(filter_kind: str) -> None:
    """Single rows wait in the buffer, and lookups find them as if they were in the tables.

    ``filter="exact"`` stores rows through the recovered linear map, the other
    branch of the buffer's filter.
    """
    c = corpus()
    n0 = 3000
    g = MultiGridIndex(buffer=64, filter=filter_kind)
    direct = MultiGridIndex(buffer=0, filter=filter_kind)
    for idx in (g, direct):
        idx.add(c.ids[:n0], c.low[:n0], c.full[:n0])
    assert g._grids[0]._mapped == (filter_kind == "exact")
    _single(g, c.ids[n0 : n0 + 40], c.low[n0 : n0 + 40], c.full[n0 : n0 + 40])
    _single(direct, c.ids[n0 : n0 + 40], c.low[n0 : n0 + 40], c.full[n0 : n0 + 40])
    assert g.stats()["buffered"] == 40 and [len(t) for t in g._grids] == [n0, n0]
    assert len(g) == len(direct) == n0 + 40
    assert all(int(i) in g for i in c.ids[n0 : n0 + 40])
    for i in range(n0, n0 + 40):
        # Each buffered row is its own best match...
        assert c.ids[i] in g.candidates(c.low[i], c.full[i], 0.95)
    # ...and lookups verify to the same matches as with every row in the tables (the
    # buffer's filter skips the int8 rounding, so the unverified candidates may differ
    # by rows near the filter radius).
    full_of = dict(zip(c.ids.tolist(), c.full, strict=True))
    for i in range(len(c.q_low)):
        verified = []
        for idx in (g, direct):
            cand = idx.candidates(c.q_low[i], c.q_full[i], 0.85).tolist()
            verified.append(sorted(j for j in cand if full_of[j] @ c.q_full[i] >= 0.85))
        assert verified[0] == verified[1]


def test_buffer_empties_into_every_table_when_full_and_before_a_batch() -> None:
    c = corpus()
    g = MultiGridIndex(buffer=16)
    g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    _single(g, c.ids[2000:2020], c.low[2000:2020], c.full[2000:2020])
    # 16 rows filled the buffer and went into both tables; 4 wait.
    assert [len(t) for t in g._grids] == [2016, 2016] and g.stats()["buffered"] == 4
    assert c.ids[2010] in g._grids[0] and c.ids[2010] in g._grids[1]
    # A batch that repeats a buffered id is refused by the tables once the buffer is in them.
    with pytest.raises(IndexStateError):
        g.add(c.ids[2018:2030], c.low[2018:2030], c.full[2018:2030])
    assert [len(t) for t in g._grids] == [2020, 2020] and g.stats()["buffered"] == 0
    g.add(c.ids[2020:2030], c.low[2020:2030], c.full[2020:2030])
    assert len(g) == 2030
    ex = ExactIndex()
    ex.add(c.ids[:2030], c.low[:2030], c.full[:2030])
    r, hits, _ = recall(g, ex, c.q_low, c.q_full, 0.9)
    assert hits >= 10 and r >= 0.99


def test_buffered_rows_are_refused_and_removed_like_stored_ones() -> None:
    c = corpus()
    g = MultiGridIndex(buffer=64)
    g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    _single(g, c.ids[2000:2030], c.low[2000:2030], c.full[2000:2030])
    nan_row = c.low[2040:2041].copy()
    nan_row[0, 3] = np.nan
    refused = [
        (c.ids[2005:2006], c.low[2040:2041]),  # buffered id
        (c.ids[10:11], c.low[2040:2041]),  # stored id
        (np.array([-4], dtype=np.int64), c.low[2040:2041]),
        (c.ids[2040:2041], nan_row),
    ]
    for ids, low in refused:
        with pytest.raises(IndexStateError):
            g.add(ids, low, c.full[2040:2041])
    assert len(g) == 2030 and g.stats()["buffered"] == 30
    # One id, then a batch mixing buffered, stored and absent ids.
    g.remove(c.ids[2005:2006])
    assert c.ids[2005] not in g and len(g) == 2029
    assert c.ids[2005] not in g.candidates(c.low[2005], c.full[2005], 0.95)
    gone = np.concatenate([c.ids[2010:2020], c.ids[100:110], np.array([10**9])])
    g.remove(gone)
    assert len(g) == 2009 and g.stats()["buffered"] == 19
    kept = [i for i in range(2000, 2030) if not 2010 <= i < 2020 and i != 2005]
    for i in range(2000, 2030):
        found = c.ids[i] in g.candidates(c.low[i], c.full[i], 0.95)
        assert found == (i in kept) == (c.ids[i] in g)
    # The buffer keeps working after the removals: fill it past capacity.
    _single(g, c.ids[2030:2100], c.low[2030:2100], c.full[2030:2100])
    assert len(g) == 2079 and len(g._grids[0]) + g.stats()["buffered"] == 2079
    for i in (*kept, *range(2030, 2100)):
        assert c.ids[i] in g.candidates(c.low[i], c.full[i], 0.95)


def test_rows_the_buffer_cannot_take_go_the_checked_way() -> None:
    """Other dtypes or layouts, and wrong widths, take the checked path, which empties the buffer first."""
    c = corpus()
    g = MultiGridIndex(buffer=64)
    g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    _single(g, c.ids[2000:2010], c.low[2000:2010], c.full[2000:2010])
    with pytest.raises(IndexStateError):
        g.add(c.ids[2010:2011], c.low[2010:2011], np.zeros((1, 385), dtype=np.float32))
    assert len(g) == 2010 and g.stats()["buffered"] == 0
    assert all(c.ids[i] in g._grids[1] for i in range(2000, 2010))
    with pytest.raises(IndexStateError):  # the id is in the tables now
        g.add(c.ids[2005:2006].astype(np.int32), c.low[2005:2006], c.full[2005:2006])
    g.add(c.ids[2010:2011].astype(np.int32), c.low[2010:2011].astype(np.float64),
          np.asfortranarray(c.full[2010:2011]))
    assert len(g) == 2011 and c.ids[2010] in g._grids[1]
    assert c.ids[2010] in g.candidates(c.low[2010], c.full[2010], 0.95)


def _stored_rows(g: GridIndex) -> dict[int, tuple[int, bytes]]:
    """Every live row of a table: id -> (cell code, stored vector bytes)."""
    out: dict[int, tuple[int, bytes]] = {}
    cells, meta = g._cells, g._meta
    for c in range(int(meta[1])):
        start, count = int(cells[c, K._START]), int(cells[c, K._COUNT])
        for p in range(start, start + count):
            out[int(g._pids[p])] = (int(cells[c, K._CODE]), g._pvec[p].tobytes())
    return out


@pytest.mark.parametrize(
    "make", [ExactIndex, GridIndex, MultiGridIndex, functools.partial(MultiGridIndex, buffer=0)],
    ids=["exact", "grid", "multigrid", "multigrid-unbuffered"],
)
def test_an_int_id_inserts_one_row_as_an_array_of_one_does(make: Callable[[], Index]) -> None:
    c = corpus()
    by_int, by_array = make(), make()
    for g in (by_int, by_array):
        g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    for i in range(2000, 2200):  # three buffer flushes and a partly filled buffer
        by_int.add(int(c.ids[i]), c.low[i : i + 1], c.full[i : i + 1])
        by_array.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
    if isinstance(by_int, MultiGridIndex):
        assert isinstance(by_array, MultiGridIndex)
        waiting = 200 % by_int.buffer if by_int.buffer else 0
        assert by_int.stats()["buffered"] == by_array.stats()["buffered"] == waiting
    # A NumPy integer takes the checked path (which empties the buffer first).
    by_int.add(np.int64(c.ids[2200]), c.low[2200:2201], c.full[2200:2201])
    by_array.add(c.ids[2200:2201], c.low[2200:2201], c.full[2200:2201])
    assert len(by_int) == len(by_array) == 2201
    if isinstance(by_int, MultiGridIndex):
        assert isinstance(by_array, MultiGridIndex)
        by_array.flush()
        for a, b in zip(by_int._grids, by_array._grids, strict=True):
            assert _stored_rows(a) == _stored_rows(b)
    for i in range(1900, 2201, 7):
        got = by_int.candidates(c.low[i], c.full[i], 0.95)
        assert c.ids[i] in got
        assert sorted(got.tolist()) == sorted(by_array.candidates(c.low[i], c.full[i], 0.95).tolist())


@pytest.mark.parametrize("make", [ExactIndex, GridIndex, MultiGridIndex])
def test_an_int_id_is_refused_as_an_array_of_one_is(make: type) -> None:
    c = corpus()
    g = make()
    g.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    for i in range(2000, 2010):
        g.add(int(c.ids[i]), c.low[i : i + 1], c.full[i : i + 1])
    nan_row = c.low[2040:2041].copy()
    nan_row[0, 3] = np.nan
    refused: list[tuple[int, np.ndarray, np.ndarray]] = [
        (int(c.ids[2005]), c.low[2040:2041], c.full[2040:2041]),  # just inserted (buffered)
        (int(c.ids[10]), c.low[2040:2041], c.full[2040:2041]),  # stored
        (2**70, c.low[2040:2041], c.full[2040:2041]),  # beyond int64
        (-4, c.low[2040:2041], c.full[2040:2041]),
        (int(c.ids[2040]), c.low[2040:2042], c.full[2040:2042]),  # one id, two rows
        (int(c.ids[2040]), c.low[2040:2041], c.full[2040:2041, :100]),  # another width
    ]
    if not isinstance(g, ExactIndex):  # exact search takes any projected coordinates
        refused.append((int(c.ids[2040]), nan_row, c.full[2040:2041]))
    for key, low, full in refused:
        with pytest.raises(IndexStateError):
            g.add(key, low, full)
    assert len(g) == 2010
    assert all(c.ids[i] in g.candidates(c.low[i], c.full[i], 0.95) for i in range(2000, 2010))
