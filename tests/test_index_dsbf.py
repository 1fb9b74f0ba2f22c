"""DistanceSensitiveBloomFilter against exact search on real QQP embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semcache.errors import ConfigError, IndexStateError, SemcacheError
from semcache.index.dsbf import (
    DistanceSensitiveBloomFilter,
    simhash_collision,
    theorem1_bounds,
    theorem1_t,
)
from tests._index_data import qqp_embeddings

THRESHOLD = 0.9
TARGET = 0.005


def split() -> tuple[np.ndarray, np.ndarray]:
    """Stored rows and held-out queries of the shared real test embeddings."""
    x = qqp_embeddings()
    perm = np.random.default_rng(1).permutation(len(x))
    return np.ascontiguousarray(x[perm[600:]]), np.ascontiguousarray(x[perm[:600]])


def at_cosine(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    """Each row of ``x`` turned in a random direction to exactly cosine ``c``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape)
    noise -= (noise * x).sum(axis=1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (c * x + math.sqrt(1 - c * c) * noise).astype(np.float32)


def test_real_vectors_against_exact_search() -> None:
    stored, queries = split()
    f = DistanceSensitiveBloomFilter(384, m=32, L=14, log_bits=14, probes=2)
    f.add(stored)
    t = f.calibrate(stored, target_loss=TARGET)
    assert 1 <= t <= f.m
    assert f.calibrated_loss is not None and f.calibrated_loss <= TARGET
    # Every stored vector is its own neighbour at cosine 1: never rejected.
    assert f.might_contain(stored).all()
    # Real held-out queries and copies of stored rows at cosines 0.9-1.0,
    # with the truth from exact search.
    near_copies = np.concatenate([at_cosine(stored[:400], c, i) for i, c in enumerate((0.92, 0.95, 0.98))])
    q = np.concatenate([queries, near_copies])
    best = (q @ stored.T).max(axis=1)
    near = best >= THRESHOLD
    assert near.sum() >= 1000
    said = f.might_contain(q)
    lost = float(np.mean(~said[near]))
    # Calibration targets 0.5%; a sample of ~1300 near queries gets a
    # binomial allowance of ~3 standard deviations on top.
    assert lost <= TARGET + 3 * math.sqrt(TARGET / near.sum())
    miss = ~near
    assert miss.sum() >= 200
    local = float(np.mean(~said[miss]))
    # The filter must answer some misses locally, else it is only a cost.
    assert local > 0.02, local


def test_scores_match_a_python_reference() -> None:
    stored, queries = split()
    f = DistanceSensitiveBloomFilter(384, m=4, L=10, log_bits=12, seed=3)
    f.add(stored[:300])
    sc = f.scores(queries[:50])
    proj = queries[:50] @ f.planes
    sproj = stored[:300] @ f.planes
    for i in range(50):
        want = 0
        for j in range(f.m):
            code = lambda row, j=j: tuple(row[j * f.L : (j + 1) * f.L] >= 0)  # noqa: E731
            # Direct layout (L <= log_bits): a bit is set iff some stored code equals the query's.
            want += any(code(sproj[k]) == code(proj[i]) for k in range(300))
        assert sc[i] == want


def test_counting_deletes_restore_the_filter() -> None:
    stored, _ = split()
    a, b = stored[:500], stored[500:900]
    f = DistanceSensitiveBloomFilter(384, m=8, L=14, log_bits=14, deletes="counting")
    f.add(a)
    f.add(b)
    f.remove(b)
    fresh = DistanceSensitiveBloomFilter(384, m=8, L=14, log_bits=14, deletes="counting")
    fresh.add(a)
    assert np.array_equal(f.scores(stored), fresh.scores(stored))
    assert f.n == 500
    before = f.scores(stored).copy()
    with pytest.raises(IndexStateError):
        f.remove(at_cosine(stored[1000:1001], 0.0, 0))  # never added
    assert np.array_equal(f.scores(stored), before)  # a refused remove changes nothing


def test_rebuild_deletes_are_safe_until_rebuilt() -> None:
    stored, _ = split()
    a, b = stored[:500], stored[500:900]
    f = DistanceSensitiveBloomFilter(384, m=8, L=14, log_bits=14, deletes="rebuild")
    f.add(np.concatenate([a, b]))
    f.remove(b)
    # Stale bits only send more queries to the engine: everything still found.
    assert f.might_contain(np.concatenate([a, b])).all()
    assert f.stale_fraction == pytest.approx(400 / 900)
    f.rebuild(a)
    fresh = DistanceSensitiveBloomFilter(384, m=8, L=14, log_bits=14, deletes="rebuild")
    fresh.add(a)
    assert np.array_equal(f.scores(stored), fresh.scores(stored))
    assert f.stale_fraction == 0.0
    assert f.bits_per_entry == pytest.approx(8 * 2**14 / 500)
    counting = DistanceSensitiveBloomFilter(384, m=8, L=14, log_bits=14, deletes="counting")
    counting.add(a)
    assert counting.bits_per_entry == pytest.approx(8 * f.bits_per_entry)


def test_theorem1_t_and_bound_hold_on_threshold_pairs() -> None:
    m, L = 256, 4
    t = theorem1_t(m, L, THRESHOLD, TARGET)
    assert t >= 1
    p, _ = theorem1_bounds(m, L, t, THRESHOLD, 0.0, 1)
    assert p >= 1 - TARGET
    assert theorem1_bounds(m, L, t + 1, THRESHOLD, 0.0, 1)[0] < 1 - TARGET
    assert simhash_collision(1.0) == 1.0 and simhash_collision(-1.0) == 0.0
    stored, _ = split()
    base = stored[:1000]
    rejected = 0
    # Theorem 1 is about one near vector: each copy against a filter of its origin alone.
    f = DistanceSensitiveBloomFilter(384, m=m, L=L, log_bits=6, t=t, seed=5)
    copies = at_cosine(base, THRESHOLD, 7)
    for i in range(0, 1000, 10):
        f.rebuild(base[i : i + 1])
        rejected += int((~f.might_contain(copies[i : i + 1])).sum())
    assert rejected / 100 <= TARGET + 0.02
    # Calibration on data never settles below Theorem 1's t on the hardest pairs.
    f.rebuild(base)
    f.calibrate(base, target_loss=TARGET, perturbed=2000)
    assert f.theorem_t == t
    assert f.t >= t


@pytest.mark.parametrize(
    "kwargs",
    [
        {"m": 0},
        {"m": 2.5},
        {"L": 65},
        {"L": True},
        {"log_bits": 5},
        {"log_bits": 31},
        {"L": 4},  # log_bits defaults to L, which must then be >= 6
        {"threshold": 1.5},
        {"threshold": "0.9"},
        {"probes": 99},
        {"deletes": "never"},
        {"t": 0},
        {"t": 17},
        {"planes": np.zeros((384, 3), dtype=np.float32)},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DistanceSensitiveBloomFilter(384, **kwargs)  # type: ignore[arg-type]


def test_bad_input_is_typed() -> None:
    f = DistanceSensitiveBloomFilter(8, m=4, L=8)
    good = np.eye(8, dtype=np.float32)
    f.add(good)
    assert f.might_contain(good).all()
    assert f.might_contain(np.zeros((0, 8), dtype=np.float32)).shape == (0,)
    for bad in (np.ones((2, 7), np.float32), np.ones((2, 2, 8), np.float32), np.ones((2, 8), np.int64)):
        with pytest.raises(IndexStateError):
            f.might_contain(bad)
        with pytest.raises(IndexStateError):
            f.add(bad)
    nan = good.copy()
    nan[0, 0] = np.nan
    with pytest.raises(IndexStateError):
        f.add(nan)
    with pytest.raises(SemcacheError):
        f.calibrate(good, target_loss=0.0)
    with pytest.raises(ConfigError):
        f.set_t(5)
    assert DistanceSensitiveBloomFilter(8, m=4, L=8).might_contain(good).sum() == 0  # empty filter


def test_learned_family_hashes_signs_of_rotated_projection() -> None:
    from semcache.projection import LearnedProjection

    stored, queries = split()
    proj = LearnedProjection(n_components=16).fit(stored)
    f = DistanceSensitiveBloomFilter.from_projection(proj, m=4, L=10, log_bits=12, seed=2)
    assert f.family == "learned" and f.planes.shape == (384, 40)
    f.add(stored[:300])
    # Reference: SimHash codes in the projection's output space, by hand.
    g = np.random.default_rng(2).standard_normal((16, 40))
    ps, pq = proj.transform(stored[:300]) @ g, proj.transform(queries[:50]) @ g
    want = np.zeros(50, dtype=np.int32)
    for j in range(4):
        codes = {tuple(r[j * 10 : (j + 1) * 10] >= 0) for r in ps}
        want += np.array([tuple(r[j * 10 : (j + 1) * 10] >= 0) in codes for r in pq], dtype=np.int32)
    got = f.scores(queries[:50])
    # float32 folding may flip a sign that sits within rounding of zero.
    assert np.mean(got == want) >= 0.96
    with pytest.raises(ConfigError):
        DistanceSensitiveBloomFilter.from_projection(LearnedProjection(n_components=4), m=2, L=8)


def test_scope_filters_against_exact_search() -> None:
    from semcache.index.dsbf import ScopeFilters

    stored, queries = split()
    sf = ScopeFilters(384, m=32, L=12, bits_per_entry=64, min_calibrate=256)
    ids = np.arange(len(stored))
    for i in ids[:300]:
        sf.add("a", int(i), stored[i])
    # Entries but no calibration yet: always ask the engine.
    assert sf.maybe_near("a", queries[0]) is True
    assert sf.needs_rebuild("a")
    sf.rebuild("a", ids, stored)
    st = sf.stats("a")
    assert st["calibrated"] and st["entries"] == len(stored)
    assert 32 <= st["bits_per_entry"] <= 64
    # Every stored vector is found (its own bits are set in every array).
    assert all(sf.maybe_near("a", v) for v in stored[::7])
    # Held-out real queries and near copies, truth by exact search.
    near_copies = np.concatenate([at_cosine(stored[:300], c, i) for i, c in enumerate((0.92, 0.96))])
    q = np.concatenate([queries, near_copies])
    best = (q @ stored.T).max(axis=1)
    near = best >= THRESHOLD
    said = np.array([sf.maybe_near("a", v) for v in q])
    assert float(np.mean(~said[near])) <= TARGET + 3 * math.sqrt(TARGET / near.sum())
    # Another scope never sees scope "a"'s entries: exactly nothing there.
    assert sf.maybe_near("b", stored[0]) is False
    sf.add("b", 0, stored[0])
    assert sf.maybe_near("b", stored[0]) is True  # uncalibrated, non-empty: engine
    sf.remove("b", 0)
    assert sf.maybe_near("b", stored[0]) is False  # nothing live
    with pytest.raises(IndexStateError):
        sf.remove("b", 0)
    with pytest.raises(IndexStateError):
        sf.add("a", 0, stored[0])  # already live
    with pytest.raises(IndexStateError):
        sf.add("a", 10**9, stored[:2])  # one vector per entry
    with pytest.raises(IndexStateError):
        sf.maybe_near("a", np.ones(7, np.float32))
    with pytest.raises(IndexStateError):
        sf.maybe_near("zzz", np.ones(7, np.float32))
    # Deletes leave bits (never hide a live entry) until a rebuild.
    for i in ids[: len(ids) // 2]:
        sf.remove("a", int(i))
    assert sf.needs_rebuild("a")
    assert all(sf.maybe_near("a", v) for v in stored[len(ids) // 2 :: 5])
    sf.rebuild("a", ids[len(ids) // 2 :], stored[len(ids) // 2 :])
    assert not sf.needs_rebuild("a")
    assert all(sf.maybe_near("a", v) for v in stored[len(ids) // 2 :: 5])
    sf.rebuild("a", [], np.zeros((0, 384), np.float32))
    assert sf.maybe_near("a", stored[0]) is False and "a" not in sf.scopes()
    with pytest.raises(ConfigError):
        ScopeFilters(384, target_loss=0.5 * 2)
    with pytest.raises(ConfigError):
        ScopeFilters(384, m=0)
