"""ThermalIndex against ExactIndex on real MiniLM embeddings of QQP questions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from semcache.errors import ConfigError
from semcache.index import ThermalIndex, make_index
from semcache.index import thermal_kernels as K
from semcache.index.thermal import gaussian_weights
from tests._index_data import THRESHOLDS, corpus, exact_of, recall


@pytest.fixture(scope="module")
def built() -> ThermalIndex:
    c = corpus()
    t = ThermalIndex()
    t.add(c.ids, c.low, c.full)
    return t


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_recall_at_default_settings(built: ThermalIndex, threshold: float) -> None:
    c = corpus()
    r, hits, _ = recall(built, exact_of(c), c.q_low, c.q_full, threshold)
    assert hits >= 20
    assert r >= 0.995, f"recall {r:.4f} at {threshold} over {hits} hits"


def test_field_is_the_blurred_occupancy(built: ThermalIndex) -> None:
    occ = (built._occ > 0).astype(np.float64).reshape((built.grid,) * built.m)
    want = gaussian_filter(occ, sigma=built.sigma, mode="constant", truncate=built.truncate)
    assert np.allclose(built.field(), want, atol=1e-12)


def test_streaming_updates_equal_a_full_reblur() -> None:
    c = corpus()
    t = ThermalIndex(min_calibration=512, recalibrate_growth=100.0)
    t.add(c.ids[:600], c.low[:600], c.full[:600])
    for i in range(600, 1600):
        t.add(c.ids[i : i + 1], c.low[i : i + 1], c.full[i : i + 1])
    t.remove(c.ids[100:900])
    occ = (t._occ > 0).astype(np.float64).reshape((t.grid,) * t.m)
    want = gaussian_filter(occ, sigma=t.sigma, mode="constant", truncate=t.truncate)
    assert np.allclose(t.field(), want, atol=1e-9)
    # Occupancy agrees with the stored rows.
    assert int(t._occ.sum()) == len(t) == 800
    ex = ExactSubset(c, np.r_[0:100, 900:1600])
    assert recall(t, ex, c.q_low, c.q_full, 0.9)[0] >= 0.995


def test_removing_repeated_negative_or_absent_ids_counts_each_row_out_once() -> None:
    """An id listed twice is one row: its cell's count drops by one, not two."""
    c = corpus()
    t = ThermalIndex(min_calibration=512)
    t.add(c.ids[:1200], c.low[:1200], c.full[:1200])
    gone = c.ids[:300]
    t.remove(np.concatenate([gone, gone[::-1], [-1, -5, 10**12]]))
    assert len(t) == 900
    # Occupancy agrees with the stored rows, and the field with the occupancy.
    assert int(t._occ.sum()) == 900
    assert int(t._occ.min()) >= 0
    occ = (t._occ > 0).astype(np.float64).reshape((t.grid,) * t.m)
    want = gaussian_filter(occ, sigma=t.sigma, mode="constant", truncate=t.truncate)
    assert np.allclose(t.field(), want, atol=1e-9)
    ex = ExactSubset(c, np.r_[300:1200])
    assert recall(t, ex, c.q_low, c.q_full, 0.9)[0] >= 0.995


def ExactSubset(c: object, rows: np.ndarray) -> object:
    from semcache.index.exact import ExactIndex

    ex = ExactIndex()
    ex.add(c.ids[rows], c.low[rows], c.full[rows])  # type: ignore[attr-defined]
    return ex


def test_climb_is_strictly_uphill_and_stops_at_a_local_maximum(built: ThermalIndex) -> None:
    f = built._field
    G, m = built.grid, built.m
    rng = np.random.default_rng(0)
    for start in rng.integers(0, G**m, 200):
        end = int(K.thermal_climb(f, int(start), G, m, 10_000))
        assert f[end] >= f[start]
        if end != start:
            assert f[end] > f[start]
        # No neighbour of the end cell is higher.
        i0, i1 = end % G, end // G
        for d1 in (-1, 0, 1):
            for d0 in (-1, 0, 1):
                a, b = i0 + d0, i1 + d1
                if 0 <= a < G and 0 <= b < G:
                    assert f[b * G + a] <= f[end]


def test_fast_negative_is_provable() -> None:
    """With the lossless radii a fast negative never hides a real match."""
    c = corpus()
    # Coarse cells and a wide kernel, so the lossless ball stays within its reach.
    t = ThermalIndex(grid=24, sigma=2.0, probe="exact", filter="exact", min_calibration=512)
    t.add(c.ids[:800], c.low[:800], c.full[:800])
    ex = ExactSubset(c, np.arange(800))
    fired = 0
    for i in range(len(c.q_low)):
        for th in (0.95, 0.99):
            before = t.fast_negatives
            got = t.candidates(c.q_low[i], c.q_full[i], th)
            if t.fast_negatives > before:
                fired += 1
                assert len(got) == 0
                assert len(ex.candidates(c.q_low[i], c.q_full[i], th)) == 0  # type: ignore[attr-defined]
    assert t.fast_negative_reach(0.99) > 0


def test_climb_search_mode_returns_neighbours(built: ThermalIndex) -> None:
    c = corpus()
    t = ThermalIndex(search="climb", radius=1)
    t.add(c.ids, c.low, c.full)
    q = np.ascontiguousarray(c.low[0] + 0.0)
    got = t.candidates(q, c.full[0], 0.9)
    assert c.ids[0] in got


def test_empty_one_item_and_one_cell() -> None:
    c = corpus()
    t = ThermalIndex()
    assert len(t.candidates(c.low[0], c.full[0], 0.9)) == 0
    t.add(c.ids[:1], c.low[:1], c.full[:1])
    assert t.candidates(c.low[0], c.full[0], 0.9).tolist() == [c.ids[0]]
    t.remove(c.ids[:1])
    assert len(t) == 0
    n = 2000
    same = ThermalIndex()
    same.add(np.arange(n), np.repeat(c.low[:1], n, 0), np.repeat(c.full[:1], n, 0))
    assert len(same.candidates(c.low[0], c.full[0], 0.95)) == n


def test_weights_match_scipy() -> None:
    w = gaussian_weights(1.5, 4.0)
    impulse = np.zeros(41)
    impulse[20] = 1.0
    blurred = gaussian_filter(impulse, 1.5, mode="constant", truncate=4.0)
    r = (len(w) - 1) // 2
    assert np.allclose(blurred[20 - r : 21 + r], w)


@pytest.mark.parametrize(
    "params", [{"m": 4}, {"m": 0}, {"sigma": 0}, {"search": "x"}, {"grid": 1},
               {"probe": "orthant"}]
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_index("thermal", **params)
