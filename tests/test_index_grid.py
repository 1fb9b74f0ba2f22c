"""GridIndex against ExactIndex on real MiniLM embeddings of QQP questions."""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import subprocess
import sys

import numba as nb
import numpy as np
import pytest

from semcache.errors import ConfigError, IndexStateError
from semcache.index import GridIndex, MultiGridIndex, make_index
from semcache.index import _kernels_common as KC
from semcache.index import grid_kernels as K
from semcache.index.grid import END_ROOM, fit_linear_map, stored_vectors
from tests._index_data import THRESHOLDS, Corpus, corpus, exact_of, recall

# Both grids: the single one and the two-table MultiGridIndex built from it.
GRIDS = [GridIndex, MultiGridIndex]


@pytest.fixture(scope="module")
def built() -> GridIndex:
    c = corpus()
    g = GridIndex()
    g.add(c.ids, c.low, c.full)
    return g


@pytest.fixture(scope="module", params=GRIDS, ids=lambda cls: cls.__name__)
def built_any(request: pytest.FixtureRequest) -> GridIndex:
    c = corpus()
    g: GridIndex = request.param()
    g.add(c.ids, c.low, c.full)
    return g


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_recall_at_default_settings(built_any: GridIndex, threshold: float) -> None:
    c = corpus()
    r, hits, n_cand = recall(built_any, exact_of(c), c.q_low, c.q_full, threshold)
    assert hits >= 20, "the test corpus must contain real threshold hits"
    assert r >= 0.995, f"recall {r:.4f} at {threshold} over {hits} hits"
    # The filter is what makes the grid worth having: a handful of candidates.
    assert n_cand < 0.05 * len(c.ids)


def test_calibration_learned_from_data(built: GridIndex) -> None:
    st = built.stats()
    assert built.calibrated
    assert st["pairs"] >= 50
    # PCA is a contraction, so the recovered map's exact stretch is 1 and the
    # calibrated ratios of near pairs are below it.
    assert st["rho_exact"] == pytest.approx(1.0, abs=0.02)
    assert 0 < st["rho"] < 1 and 0 < st["rho_filter"] < 1


@pytest.mark.parametrize("make", GRIDS)
def test_exact_filter_never_drops_a_match(make: type[GridIndex]) -> None:
    """With the lossless radii and no budget, the walk (general or bit-vector) misses nothing."""
    c = corpus()
    g = make(probe="exact", filter="exact", max_scan=1.0)
    g.add(c.ids, c.low, c.full)
    ex = exact_of(c)
    for t in THRESHOLDS:
        for i in range(len(c.q_low)):
            want = set(ex.candidates(c.q_low[i], c.q_full[i], t).tolist())
            got = g.candidates(c.q_low[i], c.q_full[i], t)
            assert want <= set(got.tolist())
            assert len(np.unique(got)) == len(got)


def test_stored_vector_distance_bounds_embedding_distance() -> None:
    c = corpus()
    lmap = fit_linear_map(c.full, c.low)
    assert lmap is not None
    v = stored_vectors(c.low, lmap, lmap.T.shape[1] + 1)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, len(v), 2000), rng.integers(0, len(v), 2000)
    dv = np.linalg.norm(v[a] - v[b], axis=1)
    dx = np.linalg.norm(c.full[a] - c.full[b], axis=1)
    assert np.all(dv <= dx + np.sqrt(lmap.tol2))


def test_kernel_stored_vector_matches_numpy() -> None:
    """The insert and query kernels' stored vector (one row at a time) is
    :func:`stored_vectors`'s (NumPy, whole batches), with a recovered map and
    without one (the row itself, zero-padded)."""
    c = corpus()
    lmap = fit_linear_map(c.full, c.low)
    assert lmap is not None
    rows = np.ascontiguousarray(c.low[:200])
    for mapped, b, T, width in ((1, lmap.b, lmap.T, lmap.T.shape[1] + 1),
                                (0, np.zeros(rows.shape[1], np.float32),
                                 np.zeros((rows.shape[1], 1), np.float32), rows.shape[1] + 3)):
        want = stored_vectors(rows, lmap if mapped else None, width)
        out = np.empty(width, dtype=np.float32)
        acc = np.empty(T.shape[1], dtype=np.float64)
        got = np.empty_like(want)
        for i, row in enumerate(rows):
            K.filter_vec(row, b, T, mapped, out, acc)
            got[i] = out
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("width", [16, 24, 32, 64])
def test_integer_prefilter_keeps_exactly_the_rows_the_float_scan_keeps(width: int) -> None:
    """The scan's integer pre-filter (query rounded to ints, bound by the
    triangle inequality) rejects most rows yet keeps every row the float
    distance alone keeps, for queries inside and far outside the int8 range
    and radii that put rows right on the ball's edge; widths without an
    integer path scan in float only."""
    rng = np.random.default_rng(width)
    pvec = rng.integers(-128, 128, (3000, width)).astype(np.int8)
    pids = np.arange(3000, dtype=np.int64) * 7
    out_a = np.empty(3000, dtype=np.int64)
    out_b = np.empty(3000, dtype=np.int64)
    q_int = np.empty(width, dtype=np.int16)
    dist_int = nb.njit(lambda pv, p, q: K._int_sq_dist(pv, p, q))
    rejected = []
    for trial in range(60):
        q = (rng.normal(0.0, 60.0 if trial % 3 else 400.0, width)).astype(np.float32)
        if trial % 4 == 0:
            q = np.ascontiguousarray(pvec[trial] + rng.uniform(-0.5, 0.5, width)).astype(np.float32)
        d2 = ((pvec.astype(np.float64) - q) ** 2).sum(axis=1)
        # Radii from a handful of rows inside to exactly a row's own distance.
        r2 = np.float32(np.sort(d2)[[1, 5, 30, 300][trial % 4]])
        bound = K._query_int(q, r2, q_int)
        if width not in K._INT_WIDTHS:
            assert bound == -1
            # Even given a bound, a width without an integer path rejects nothing.
            assert dist_int(pvec, trial, q_int) == -1
            bound = 0
        elif bound >= 0:
            assert np.array_equal(q_int, np.clip(np.round(q), -128, 127))
            for p in rng.choice(3000, 20, replace=False):
                diff = pvec[p].astype(np.int64) - q_int
                assert dist_int(pvec, p, q_int) == diff @ diff
            exact_int = ((pvec.astype(np.int64) - q_int) ** 2).sum(axis=1)
            rejected.append(float(np.mean(exact_int > bound)))
        for start, count in ((0, 3000), (17, 1000)):
            n_a = K._scan_rows(pvec, pids, start, count, q, r2, out_a, 0, 0, q_int, bound)
            n_b = K._scan_rows(pvec, pids, start, count, q, r2, out_b, 0, 0, q_int, -1)
            assert n_a == n_b
            assert np.array_equal(out_a[:n_a], out_b[:n_b])
            assert n_b >= 1 or start
    if width in K._INT_WIDTHS:
        # Only queries far outside the int8 range (a third of them) get no bound.
        assert len(rejected) >= 35
        assert np.median(rejected) > 0.9
    # No pre-filter for a radius or a query that is not finite.
    assert K._query_int(np.zeros(width, np.float32), np.float32(np.inf), q_int) == -1
    q = np.zeros(width, np.float32)
    q[3] = np.nan
    assert K._query_int(q, np.float32(1.0), q_int) == -1


def test_nonlinear_projection_is_detected() -> None:
    c = corpus()
    assert fit_linear_map(c.full, np.tanh(4 * c.low)) is None
    g = GridIndex()
    g.add(c.ids, np.ascontiguousarray(np.tanh(4 * c.low)), c.full)
    # Still an index: no exact filter, but the calibrated radii still apply.
    q = np.ascontiguousarray(np.tanh(4 * c.q_low))
    r, hits, _ = recall(g, exact_of(c), q, c.q_full, 0.9)
    assert hits >= 20 and r >= 0.99


@pytest.mark.parametrize("make", GRIDS)
def test_streaming_inserts_and_deletes_match_exact(make: type[GridIndex]) -> None:
    c = corpus()
    n = len(c.ids)
    g = make(min_calibration=512)
    ex = exact_of(c)
    # One at a time from empty: flat scan, calibration at 512 rows, then
    # recalibration at 4x growth.
    for i in range(n):
        g.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
    assert len(g) == n and g.calibrated
    r, hits, _ = recall(g, ex, c.q_low, c.q_full, 0.9)
    assert hits >= 20 and r >= 0.995
    gone = c.ids[::2]
    g.remove(gone)
    ex.remove(gone)
    g.remove(gone[:10])  # twice: ignored
    assert len(g) == len(ex)
    # Every table holds every row, but those still in a multi-table insert buffer.
    buffered = int(g.stats().get("buffered", 0))
    assert all(len(t) + buffered == len(ex) for t in getattr(g, "_grids", [g]))
    dead = set(gone.tolist())
    for i in range(len(c.q_low)):
        assert not dead & set(g.candidates(c.q_low[i], c.q_full[i], 0.85).tolist())
    r, hits, _ = recall(g, ex, c.q_low, c.q_full, 0.9)
    assert r >= 0.995
    # Re-adding removed ids works and they are found again.
    back = np.searchsorted(c.ids, gone[:300])
    g.add(c.ids[back], c.low[back], c.full[back])
    ex.add(c.ids[back], c.low[back], c.full[back])
    assert len(g) == len(ex)
    for j in back[:50]:
        assert c.ids[j] in g.candidates(c.low[j], c.full[j], 0.95)


@pytest.mark.parametrize("make", GRIDS)
def test_lookups_between_inserts_see_every_row_as_the_arrays_grow(make: type[GridIndex]) -> None:
    """Lookups read the grid's arrays through a plan of their addresses: growth and recalibration refresh it.

    Every insert below may replace an array (pool, cells, cell table, id
    table) or, at 4x growth, the whole calibration; a lookup right after it
    must search the new ones, so each row is found by its own vector.
    """
    c = corpus()
    n = len(c.ids)
    g = make(min_calibration=512)
    g.add(c.ids[:600], c.low[:600], c.full[:600])
    assert g.calibrated
    grids = getattr(g, "_grids", [g])
    # The arrays themselves, not their id()s, which a new array may reuse.
    before = [(t._pvec, t._edges) for t in grids]
    for i in range(600, n):
        g.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
        if i % 7 == 0 or i == n - 1:
            assert c.ids[i] in g.candidates(c.low[i], c.full[i], 0.95)
        if i % 97 == 0:
            # Rows that have left the insert buffer too.
            j = i - 300
            assert c.ids[j] in g.candidates(c.low[j], c.full[j], 0.95)
    # The loop did replace the arrays and recalibrate (600 -> n >= 4 x 600 rows).
    assert n >= 2400
    for t, (pvec, edges) in zip(grids, before, strict=True):
        assert t._pvec is not pvec and t._edges is not edges
    ex = exact_of(c)
    r, hits, _ = recall(g, ex, c.q_low, c.q_full, 0.9)
    assert hits >= 20 and r >= 0.995


@pytest.mark.parametrize("make", GRIDS)
def test_a_setting_changed_after_lookups_applies_to_the_next_lookup(make: type[GridIndex]) -> None:
    """Lookups keep their radii per threshold; rebinding a setting must drop them.

    The same rows indexed with ``probe_margin=0.6`` from the start give the
    reference; the index under test is looked up with the default margin
    first, so stale radii would show as different candidates.
    """
    c = corpus()
    ref = make(probe_margin=0.6)
    g = make()
    for idx in (ref, g):
        idx.add(c.ids, c.low, c.full)
    before = [g.candidates(c.q_low[i], c.q_full[i], 0.85) for i in range(100)]
    for t in getattr(g, "_grids", [g]):
        t.probe_margin = 0.6
    changed = 0
    for i in range(100):
        got = g.candidates(c.q_low[i], c.q_full[i], 0.85)
        assert sorted(got.tolist()) == sorted(ref.candidates(c.q_low[i], c.q_full[i], 0.85).tolist())
        changed += len(got) != len(before[i])
    assert changed > 0  # the margin does change candidates on this corpus


@pytest.mark.parametrize("make", GRIDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_index_looks_up_its_own_arrays(make: type[GridIndex], how: str) -> None:
    """Lookup plans hold raw addresses: a copy must not keep reading (or writing) the original's."""
    c = corpus()
    g = make()
    g.add(c.ids, c.low, c.full)
    before = [sorted(g.candidates(c.q_low[i], c.q_full[i], 0.9).tolist()) for i in range(50)]
    twin = copy.deepcopy(g) if how == "deepcopy" else pickle.loads(pickle.dumps(g))
    del g
    gc.collect()
    # Overwrite freed memory with new allocations before the copy looks anything up.
    junk = [np.full(len(c.ids) * 32, -1, dtype=np.int64) for _ in range(8)]
    assert [sorted(twin.candidates(c.q_low[i], c.q_full[i], 0.9).tolist())
            for i in range(50)] == before
    twin.remove(c.ids[:100])
    assert not set(c.ids[:100].tolist()) & set(twin.candidates(c.low[0], c.full[0], 0.5).tolist())
    assert c.ids[200] in twin.candidates(c.low[200], c.full[200], 0.95)
    del junk


def _walk_by_sorting(g: GridIndex, q_low: np.ndarray, threshold: float
                     ) -> tuple[list[int], float, float, np.ndarray]:
    """The binary walk of a :class:`GridIndex`, recomputed by sorting every occupied cell.

    A best-first walk that scans each cell as it pops it visits the occupied
    cells in increasing wall distance from the query, within the probe
    radius, until the scan budget is spent. Returns the cells it scans, the
    squared filter radius and the query's vector (both in stored units), and
    the stored vectors of the pool.
    """
    q = q_low[g._perm] if g._perm is not None else q_low
    m = g._m_eff
    edge = g._edges[:m, 0].astype(np.float64)
    q64 = q[:m].astype(np.float64)
    home = int(sum(1 << j for j in range(m) if q64[j] >= edge[j]))
    gap2 = (q64 - edge) ** 2
    n_cells = int(g._meta[1])
    cells = g._cells[:n_cells]
    occupied = [c for c in range(n_cells) if cells[c, 1] > 0]
    cost = {c: sum(gap2[j] for j in range(m) if (int(cells[c, 3]) ^ home) >> j & 1) for c in occupied}
    probe_r2, _ = g.radii(threshold)
    budget = g._budget(g.max_scan)
    scanned, rows = [], 0
    for c in sorted(occupied, key=cost.__getitem__):
        if cost[c] > probe_r2:
            break
        scanned.append(c)
        rows += int(cells[c, 1])
        if rows >= budget or len(scanned) >= g.n_probe:
            break
    qinv, _, filt_r2 = g._lookup_params(threshold)
    q_vec = np.empty(g._width, dtype=np.float32)
    K._query_vec(np.ascontiguousarray(q, dtype=np.float32), g._b, g._T, g._mapped,
                 np.float32(qinv), q_vec)
    return scanned, filt_r2, q_vec, g._pvec.astype(np.float64)


def _noisy_copies(c: Corpus, copies: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The corpus rows, then ``copies - 1`` copies moved by noise (renormalised), and their projections.

    Twelve copies make a grid of over 1 MB of stored vectors and id table,
    which the kernels prefetch (``kernels._PREFETCH_BYTES``).
    """
    full = np.concatenate([c.full + rng.normal(0, 0.01 * (k > 0), c.full.shape)
                           for k in range(copies)]).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    return full, c.proj.transform(full)


@pytest.mark.parametrize("copies", [1, 12], ids=["cached-pool", "prefetched-pool"])
@pytest.mark.parametrize("max_scan", [0.02, 1.0])
def test_binary_walk_scans_the_cells_a_sorted_walk_scans(copies: int, max_scan: float) -> None:
    """The walk looks one cell ahead (and prefetches its rows): the cells scanned stay the same.

    Twelve noisy copies of the corpus make a pool of over 1 MB, which the walk
    prefetches (kernels._PREFETCH_BYTES); a budget of 2% stops walks midway.
    """
    c = corpus()
    full, low = _noisy_copies(c, copies, np.random.default_rng(5))
    g = GridIndex(m=10, grid=2, max_scan=max_scan, min_scan=1)
    g.add(np.arange(len(full), dtype=np.int64), low, full)
    assert (g._pvec.nbytes >= 1 << 20) == (copies > 1)
    for i in range(40):
        got = set(g.candidates(c.q_low[i], c.q_full[i], 0.85).tolist())
        scanned, filt_r2, q_vec, pvec = _walk_by_sorting(g, c.q_low[i], 0.85)
        cells = g._cells
        assert g.last_stats[0] == len(scanned)
        assert g.last_stats[1] == sum(int(cells[s, 1]) for s in scanned)
        rows = np.concatenate([np.arange(cells[s, 0], cells[s, 0] + cells[s, 1]) for s in scanned])
        d2 = ((pvec[rows] - q_vec) ** 2).sum(axis=1)
        ids = g._pids[rows]
        # Rows at the radius itself may round either way in float32.
        assert set(ids[d2 < 0.999 * filt_r2].tolist()) <= got
        assert got <= set(ids[d2 <= 1.001 * filt_r2].tolist())


def test_batches_into_a_large_table_land_in_the_cells_their_rows_hash_to() -> None:
    """Batch inserts into a table whose id table passes 1 MB, where the insert
    kernel first prefetches every row's id slot and block end
    (kernels._prefetch_insert): each row is in the cell it hashes to and a
    lookup with its own coordinates finds it."""
    c = corpus()
    rng = np.random.default_rng(7)
    full, low = _noisy_copies(c, 12, rng)
    ids = np.arange(len(full), dtype=np.int64) * 5 + 3
    n0 = 30_000
    g = GridIndex(m=10, grid=2)
    g.add(ids[:n0], low[:n0], full[:n0])
    assert 8 * len(g._itab) >= KC._PREFETCH_BYTES
    for b in range(n0, len(full), 64):
        g.add(ids[b : b + 64], low[b : b + 64], full[b : b + 64])
    assert len(g) == len(ids) and g._calibrated_at == n0
    ordered = low if g._perm is None else low[:, g._perm]
    want = K.grid_codes(np.ascontiguousarray(ordered), g._edges, g.grid)
    assert np.array_equal(K.codes_of_ids(ids, g._itab, g._cells), want)
    for i in rng.choice(np.arange(n0, len(full)), 50, replace=False):
        assert ids[i] in g.candidates(low[i], full[i], 0.95)


def test_plan_rows_refuse_arrays_of_another_type_or_layout() -> None:
    """A plan row's addresses are read as PLAN_ARRAYS says: anything else is refused up front."""
    good = tuple(
        np.zeros((4, 3) if ndim == 2 else 4, dtype=dtype) for _, dtype, ndim in K.PLAN_ARRAYS
    )
    row = K.plan_row((1, 0, 2, 0, 8), good)
    assert row.shape == (K.PLAN_WIDTH,) and row[5] == good[0].ctypes.data
    bad_dtype = (good[0].astype(np.float64), *good[1:])
    bad_layout = (good[0], np.zeros((3, 4), dtype=np.float32).T, *good[2:])
    bad_ndim = (good[0], np.zeros(4, dtype=np.float32), *good[2:])
    for arrays in (bad_dtype, bad_layout, bad_ndim, good[:-1]):
        with pytest.raises(ValueError):
            K.plan_row((1, 0, 2, 0, 8), arrays)


def test_lookups_without_the_jit_find_what_compiled_lookups_find() -> None:
    """Under ``NUMBA_DISABLE_JIT`` the plan's addresses become ctypes pointers: same candidates."""
    script = """
import json
import numpy as np
from semcache.index import GridIndex, MultiGridIndex
rng = np.random.default_rng(0)
base = rng.standard_normal((300, 384)).astype(np.float32)
X = np.vstack([base, base + 0.15 * rng.standard_normal((300, 384)).astype(np.float32),
               rng.standard_normal((300, 384)).astype(np.float32)])
X /= np.linalg.norm(X, axis=1, keepdims=True)
L = np.ascontiguousarray(X @ np.linalg.qr(rng.standard_normal((384, 32)))[0].astype(np.float32))
out = {}
for name, g in (("grid", GridIndex(m=4, min_calibration=512)),
                ("multigrid", MultiGridIndex(min_calibration=512))):
    g.add(np.arange(len(X)), L, X)
    out[name] = [sorted(g.candidates(L[i], X[i], 0.9).tolist()) for i in range(0, 900, 97)]
print(json.dumps(out))
"""
    runs = []
    for jit_off in (False, True):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
        if jit_off:
            env["NUMBA_DISABLE_JIT"] = "1"
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=300, check=True)
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1]
    # Each query row's near copy (row +- 300) is among its candidates.
    assert all(len(c) >= 1 for c in runs[0]["grid"])
    assert [c[1] for c in runs[0]["grid"][:4]] == [300, 397, 494, 591]


def test_hash_table_kernels_match_a_dict() -> None:
    """Puts, backward-shift deletes and a rehash of the interleaved key/value table.

    Eight slots and keys drawn from a small range: probe runs are long and
    wrap past the last slot, which is where a slip between a key and its
    value would show.
    """
    rng = np.random.default_rng(0)
    table = np.full(2 * 8, -1, dtype=np.int64)
    ref: dict[int, int] = {}
    for step in range(4000):
        key = int(rng.integers(0, 40))
        slot = KC.table_find(table, key)
        assert (slot >= 0) == (key in ref)
        if slot >= 0 and rng.random() < 0.5:
            KC._table_delete_slot(table, slot)
            del ref[key]
        elif slot >= 0 or len(ref) < 6:
            val = int(rng.integers(0, 1 << 40))
            KC._table_put(table, key, val)
            ref[key] = val
        assert int((table[0::2] >= 0).sum()) == len(ref)
        for k, v in ref.items():
            s = KC.table_find(table, k)
            assert s >= 0 and table[2 * s] == k and table[2 * s + 1] == v, step
    assert KC.table_slots(table) == 8
    # -1 marks an empty slot: a negative key must not find one.
    assert KC.table_find(table, -1) == KC.table_find(table, -7) == -1
    grown = np.full(2 * 32, -1, dtype=np.int64)
    KC.table_rehash(table, grown)
    assert KC.table_slots(grown) == 32
    assert {int(k): int(v) for k, v in zip(grown[0::2], grown[1::2], strict=True) if k >= 0} == ref


@pytest.mark.parametrize("grid", [2, 3, 5])
def test_cell_codes_match_searchsorted(grid: int) -> None:
    """A row's cell coordinate along a dimension is the number of edges at or below it.

    Values on an edge, between repeated edges and beyond both ends are where
    counting edges and scanning them could part.
    """
    rng = np.random.default_rng(grid)
    m = 6
    edges = np.sort(rng.choice(np.linspace(-1, 1, 9), (m, grid - 1)), axis=1).astype(np.float32)
    low = rng.choice(np.concatenate([edges.ravel(), rng.uniform(-1.5, 1.5, 40)]), (300, m + 2))
    low = low.astype(np.float32)
    coords = np.stack([np.searchsorted(edges[j], low[:, j], side="right") for j in range(m)], 1)
    want = coords @ (grid ** np.arange(m))
    got = K.grid_codes(low, edges, grid)
    np.testing.assert_array_equal(got, want)
    assert [K.cell_code(row, edges, grid) for row in low] == want.tolist()


def test_take_columns_matches_numpy_indexing() -> None:
    a = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    cols = np.roll(np.arange(7, dtype=np.int64), -3)
    got = K.take_columns(a, cols)
    np.testing.assert_array_equal(got, a[:, cols])
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(K.take_columns(a[:1], cols), a[:1, cols])


@pytest.mark.parametrize("params", [{}, {"m": 10, "grid": 2}], ids=["G3", "G2"])
def test_id_table_follows_rows_through_relocations_and_removes(params: dict[str, int]) -> None:
    """After single inserts (full blocks relocate), removes (last rows fill the
    holes), a compaction and more of both, every id's entry in the id table
    names the cell and the offset in its block its row is really at (offsets
    count from the block's start, so moving a block re-indexes nothing), and
    lookups return what an index built from the live rows in one batch returns."""
    c = corpus()
    rng = np.random.default_rng(3)
    n0 = 1500
    g = GridIndex(**params)  # type: ignore[arg-type]
    g.add(c.ids[:n0], c.low[:n0], c.full[:n0])
    live = set(c.ids[:n0].tolist())
    rest = list(range(n0, len(c.ids)))
    half = len(rest) // 2
    for phase, todo in enumerate((rest[:half], rest[half:])):
        relocated = False
        for j in todo:
            dead_before = int(g._meta[3])
            g.add(c.ids[j : j + 1], c.low[j : j + 1], c.full[j : j + 1])
            # A relocation leaves its old block dead (a compaction resets the count).
            relocated |= int(g._meta[3]) > dead_before
            live.add(int(c.ids[j]))
            if rng.random() < 0.3:
                gone = int(rng.choice(sorted(live)))
                g.remove(np.array([gone], dtype=np.int64))
                live.discard(gone)
        assert relocated, "no block was relocated"
        if phase == 0:
            g._repack()
            assert int(g._meta[3]) == 0
    assert g._calibrated_at == n0  # no recalibration: the reference below shares its cells

    # Every row of every cell block maps back to (that cell, that offset).
    ids = np.array(sorted(live), dtype=np.int64)
    assert len(g) == len(ids)
    n_cells = int(g._meta[1])
    seen = []
    for cell, (start, count, _, code) in enumerate(g._cells[:n_cells].tolist()):
        for p in range(start, start + count):
            pid = int(g._pids[p])
            s = KC.table_find(g._itab, pid)
            assert s >= 0
            assert int(g._itab[2 * s + 1]) == (cell << 32) | (p - start)
            assert K.codes_of_ids(np.array([pid], dtype=np.int64), g._itab, g._cells)[0] == code
            seen.append(pid)
    assert sorted(seen) == ids.tolist()
    # ... and that cell is the one the row's coordinates hash to.
    rows = np.searchsorted(c.ids, ids)
    low = c.low[rows] if g._perm is None else c.low[rows][:, g._perm]
    want = K.grid_codes(np.ascontiguousarray(low), g._edges, g.grid)
    assert np.array_equal(K.codes_of_ids(ids, g._itab, g._cells), want)
    assert K.codes_of_ids(np.setdiff1d(c.ids, ids), g._itab, g._cells).max() == -1

    # The same calibration (same first batch), then the live rows in one bulk load.
    ref = GridIndex(**params)  # type: ignore[arg-type]
    ref.add(c.ids[:n0], c.low[:n0], c.full[:n0])
    assert np.array_equal(ref._edges, g._edges) and ref._qinv == g._qinv
    ref._bulk_build(ids, np.ascontiguousarray(low))
    for t in THRESHOLDS:
        for i in range(len(c.q_low)):
            got = g.candidates(c.q_low[i], c.q_full[i], t)
            assert sorted(got.tolist()) == sorted(ref.candidates(c.q_low[i], c.q_full[i], t).tolist())


@pytest.mark.parametrize("params", [{}, {"m": 10, "grid": 2}], ids=["G3", "G2"])
def test_streamed_inserts_keep_the_pool_within_a_compacted_one(params: dict[str, int]) -> None:
    """A cache inserts one row after another for as long as it runs: the
    blocks that full cells leave behind must not pile up. The pool never
    holds more rows than a compaction gives it (``1 + slack + END_ROOM`` an
    entry, 2 a cell and 64), every growth drops the dead blocks, and every
    row is still where the id table says (the relocation test above checks
    lookups after a compaction)."""
    c = corpus()
    n0 = 1100  # past min_calibration: rows go to their cells from the start
    g = GridIndex(**params)  # type: ignore[arg-type]
    g.add(c.ids[:n0], c.low[:n0], c.full[:n0])
    assert g.calibrated
    growths = 0
    for j in range(n0, len(c.ids)):
        pool = len(g._pids)
        g.add(c.ids[j : j + 1], c.low[j : j + 1], c.full[j : j + 1])
        if len(g._pids) != pool:
            growths += 1
            assert int(g._meta[3]) == 0, "dead blocks survived a growth"
        bound = (1 + g.slack + END_ROOM) * len(g) + 2 * int(g._meta[1]) + 64
        assert len(g._pids) <= bound, (j, len(g._pids), bound)
    assert growths >= 2  # the corpus is three times the first batch
    assert g._calibrated_at == n0 and len(g) == len(c.ids)
    cell_of = K.codes_of_ids(c.ids, g._itab, g._cells)
    assert cell_of.min() >= 0
    n_cells = int(g._meta[1])
    stored = np.concatenate([g._pids[s : s + n] for s, n, _, _ in g._cells[:n_cells].tolist()])
    assert sorted(stored.tolist()) == sorted(c.ids.tolist())


@pytest.mark.parametrize("params", [{}, {"m": 10, "grid": 2}], ids=["G3", "G2"])
def test_removing_most_entries_gives_their_memory_back(params: dict[str, int]) -> None:
    """A cache that expires most of its entries does not keep their memory: the
    pool and the id table shrink once the entries left would fit twice over,
    and the index then answers as one built from those entries does."""
    c = corpus()
    g = GridIndex(**params)  # type: ignore[arg-type]
    g.add(c.ids, c.low, c.full)
    pool, slots = len(g._pids), len(g._itab) // 2
    keep = np.arange(0, len(c.ids), 10)
    gone = np.setdiff1d(np.arange(len(c.ids)), keep)
    for j in gone:  # one at a time, as a cache expires entries
        g.remove(c.ids[j : j + 1])
    live = len(keep)
    assert len(g) == live and all(int(i) in g for i in c.ids[keep])
    bound = (1 + g.slack + END_ROOM) * live + 2 * int(g._meta[1]) + 64
    assert len(g._pids) <= 2 * bound < pool
    assert len(g._itab) // 2 < slots and 16 * live >= 3 * (len(g._itab) // 2)
    ref = GridIndex(**params)  # type: ignore[arg-type]
    ref.add(c.ids, c.low, c.full)  # the same calibration, then only the kept rows
    low = c.low[keep] if ref._perm is None else c.low[keep][:, ref._perm]
    ref._bulk_build(c.ids[keep], np.ascontiguousarray(low))
    for i in range(len(c.q_low)):
        got = g.candidates(c.q_low[i], c.q_full[i], 0.85)
        assert sorted(got.tolist()) == sorted(ref.candidates(c.q_low[i], c.q_full[i], 0.85).tolist())


def test_compaction_refuses_a_pool_too_short_and_changes_nothing() -> None:
    c = corpus()
    g = GridIndex()
    g.add(c.ids[:800], c.low[:800], c.full[:800])
    need = K.grid_packed_rows(g._cells, g._meta, g.slack)
    cells, meta = g._cells.copy(), g._meta.copy()
    short = (np.zeros((need - 1, g._pvec.shape[1]), dtype=np.int8), np.zeros(need - 1, dtype=np.int64))
    assert K.grid_compact(g._cells, g._meta, g._pvec, g._pids, *short, g.slack) == -1
    assert np.array_equal(g._cells, cells) and np.array_equal(g._meta, meta)
    fits = (np.zeros((need, g._pvec.shape[1]), dtype=np.int8), np.zeros(need, dtype=np.int64))
    assert K.grid_compact(g._cells, g._meta, g._pvec, g._pids, *fits, g.slack) == need


@pytest.mark.parametrize("make", GRIDS)
def test_rebuild_from_bulk_agrees_with_streamed(make: type[GridIndex]) -> None:
    """The cache reopens a partition by one bulk add of its live entries."""
    c = corpus()
    streamed = make()
    streamed.add(c.ids[:2000], c.low[:2000], c.full[:2000])
    for i in range(2000, len(c.ids)):
        streamed.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
    streamed.remove(c.ids[::5])
    keep = np.setdiff1d(np.arange(len(c.ids)), np.arange(0, len(c.ids), 5))
    reopened = make()
    reopened.add(c.ids[keep], c.low[keep], c.full[keep])
    ex = exact_of(c)
    ex.remove(c.ids[::5])
    assert len(streamed) == len(reopened) == len(ex)
    for g in (streamed, reopened):
        assert recall(g, ex, c.q_low, c.q_full, 0.9)[0] >= 0.995


@pytest.mark.parametrize("make", GRIDS)
def test_empty_index(make: type[GridIndex]) -> None:
    g = make()
    q = np.ones(8, dtype=np.float32)
    assert len(g) == 0
    assert len(g.candidates(q, q, 0.9)) == 0
    g.remove(np.array([1, 2], dtype=np.int64))
    assert len(g) == 0


@pytest.mark.parametrize("make", GRIDS)
def test_removing_negative_or_absent_ids_changes_nothing(make: type[GridIndex]) -> None:
    """-1 is also the id table's empty-slot key: removing it must not take a slot for an entry."""
    c = corpus()
    g = make()
    g.add(c.ids[:600], c.low[:600], c.full[:600])
    g.add(int(c.ids[600]), c.low[600:601], c.full[600:601])  # buffered in a two-table grid
    queries = range(0, 601, 20)
    before = [sorted(g.candidates(c.low[i], c.full[i], 0.9).tolist()) for i in queries]
    g.remove(np.array([-1, -2, -1, 10**12], dtype=np.int64))
    g.remove([-1])  # type: ignore[arg-type]
    assert len(g) == 601
    assert [sorted(g.candidates(c.low[i], c.full[i], 0.9).tolist()) for i in queries] == before
    g.remove(np.array([-1, c.ids[0], c.ids[600]], dtype=np.int64))
    assert len(g) == 599 and c.ids[0] not in g and c.ids[600] not in g and c.ids[1] in g


@pytest.mark.parametrize("make", GRIDS)
def test_one_item_then_more(make: type[GridIndex]) -> None:
    c = corpus()
    g = make()
    g.add(c.ids[:1], c.low[:1], c.full[:1])
    assert len(g) == 1 and c.ids[0] in g
    assert g.candidates(c.low[0], c.full[0], 0.95).tolist() == [c.ids[0]]
    g.remove(c.ids[:1])
    assert len(g) == 0 and len(g.candidates(c.low[0], c.full[0], 0.95)) == 0
    g.add(c.ids[:3], c.low[:3], c.full[:3])
    assert set(g.candidates(c.low[1], c.full[1], -1.0).tolist()) == set(c.ids[:3].tolist())


def test_all_in_one_cell() -> None:
    """Identical rows: every quantile boundary coincides, one cell holds all."""
    c = corpus()
    n = 3000
    low = np.repeat(c.low[:1], n, axis=0)
    full = np.repeat(c.full[:1], n, axis=0)
    ids = np.arange(n, dtype=np.int64)
    g = GridIndex()
    g.add(ids, low, full)
    assert g.stats()["cells"] == 1
    got = g.candidates(c.low[0], c.full[0], 0.95)
    assert set(got.tolist()) == set(ids.tolist())
    far = np.flatnonzero(c.full @ c.full[0] < 0.2)[0]
    assert len(g.candidates(c.low[far], c.full[far], 0.9)) == 0
    g.remove(ids[: n // 2])
    assert len(g.candidates(c.low[0], c.full[0], 0.95)) == n - n // 2


def test_query_in_empty_region_walks_to_occupied_cells() -> None:
    c = corpus()
    g = GridIndex(probe="orthant", n_probe=4)
    g.add(c.ids, c.low, c.full)
    # A query far outside the data: its home and orthant cells are empty or
    # sparse; the walk goes on to occupied cells instead of returning nothing.
    q_low = np.ascontiguousarray(c.low[0] * 0 + 5.0)
    g.candidates(q_low, c.full[0], -1.0)
    assert g.last_stats[0] >= 1


def test_bad_input_is_rejected() -> None:
    c = corpus()
    g = GridIndex()
    g.add(c.ids[:10], c.low[:10], c.full[:10])
    with pytest.raises(IndexStateError):
        g.add(c.ids[5:15], c.low[5:15], c.full[5:15])  # ids present
    with pytest.raises(IndexStateError):
        g.add(np.array([1, 1]), c.low[:2], c.full[:2])  # ids repeat
    with pytest.raises(IndexStateError):
        g.add(c.ids[20:22] + 10**6, c.low[20:22, :8], c.full[20:22])  # width
    with pytest.raises(IndexStateError):
        g.candidates(c.low[0, :8], c.full[0], 0.9)
    assert len(g) == 10


@pytest.mark.parametrize(
    "params",
    [{"m": 0}, {"grid": 1}, {"m": 40, "grid": 8}, {"probe": "x"}, {"filter": "x"},
     {"probe_quantile": 0.0}, {"n_probe": 0}, {"recalibrate_growth": 1.0}],
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_index("grid", **params)


@pytest.mark.parametrize("make", GRIDS)
def test_row_beyond_the_int8_range_rescales_and_keeps_every_row(make: type[GridIndex]) -> None:
    """Stored vectors are int8 with headroom for twice the largest coordinate seen;
    a row beyond it widens the scale (a rebuild) instead of being clipped."""
    c = corpus()
    g = make()
    g.add(c.ids[:-2], c.low[:-2], c.full[:-2])
    far = np.ascontiguousarray(c.low[-2:] * 5.0)
    g.add(c.ids[-2:-1], far[:1], c.full[-2:-1])  # the single-row path
    g.add(c.ids[-1:], far[1:], c.full[-1:])
    for j in (0, 1):
        assert c.ids[-2 + j] in g.candidates(far[j], c.full[-2 + j], 0.99)
    ex = exact_of(c)
    ex.remove(c.ids[-2:])
    assert recall(g, ex, c.q_low, c.q_full, 0.9)[0] >= 0.995
