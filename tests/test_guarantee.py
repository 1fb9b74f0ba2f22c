"""The online wrong-hit guarantee (issue 24): the learner's statistics and the cache's probing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from semcache import SemanticCache
from semcache.cache import MISS, Hit
from semcache.decorator import semantic_cache
from semcache.errors import ConfigError
from semcache.guarantee import (
    AnswerMatcher,
    WrongRateLearner,
    clopper_pearson_upper,
    normalize_answer,
)

# ----------------------------------------------------------------------------- learner


def test_clopper_pearson_matches_the_binomial_tail() -> None:
    from scipy.stats import binom

    for k, n in [(0, 10), (3, 50), (20, 400)]:
        u = clopper_pearson_upper(k, n, 0.05)
        # At the bound, seeing k or fewer wrong has probability exactly alpha.
        assert binom.cdf(k, n, u) == pytest.approx(0.05, rel=1e-6)
        assert k / n < u < 1
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0


def _wrong_prob(s: np.ndarray | float, level: float, slope: float) -> np.ndarray | float:
    """Chance that a would-be hit at cosine s is wrong: falls with the score."""
    return np.clip(level - slope * (np.asarray(s) - 0.5), 0.0, 1.0)


def _true_rate_above(cut: float, level: float, slope: float) -> float:
    """E[wrong | score >= cut] for scores uniform on [0.5, 1)."""
    grid = np.linspace(cut, 1.0, 2001)
    return float(np.mean(_wrong_prob(grid, level, slope)))


def _simulate(seed: int, r: float, level: float, slope: float, n: int
              ) -> tuple[list[float], int, int, list[int]]:
    """Stream n would-be hits through a learner; returns the cuts served at,
    served, served wrong, and per 500-request window the probes of would-be hits
    the learner could have served (uncertified, or at or above the cut: audits)."""
    rng = np.random.default_rng(seed)
    learner = WrongRateLearner(r, confidence=0.95, seed=seed)
    cuts: set[float] = set()
    served = wrong = 0
    probes = [0] * (n // 500)
    scores = rng.uniform(0.5, 1.0, n)
    bad = rng.random(n) < _wrong_prob(scores, level, slope)
    for i in range(n):
        d = learner.decide(float(scores[i]))
        if d.action == "serve":
            assert d.cut is not None and d.bound <= r
            cuts.add(d.cut)
            served += 1
            wrong += int(bad[i])
        else:
            if d.cut is None or scores[i] >= d.cut:
                probes[i // 500] += 1
            learner.add(float(scores[i]), not bad[i])
    return sorted(cuts), served, wrong, probes


@pytest.mark.parametrize(("r", "level", "slope", "n"), [
    (0.05, 0.6, 1.4, 3000),   # the safe cut sits high (about 0.9)
    (0.1, 0.3, 0.7, 3000),    # a wide safe region
    (0.02, 0.06, 0.12, 6000),  # a strict target needs more evidence
])
def test_served_cuts_meet_the_target_at_the_stated_confidence(r: float, level: float,
                                                              slope: float, n: int) -> None:
    seeds = 40
    violated = 0
    served_total = wrong_total = 0
    for seed in range(seeds):
        cuts, served, wrong, _ = _simulate(seed, r, level, slope, n)
        # The promise: every cut the learner served at has a true wrong rate <= r.
        violated += any(_true_rate_above(c, level, slope) > r for c in cuts)
        served_total += served
        wrong_total += wrong
    assert violated <= math.ceil(0.05 * seeds)  # 95% confidence (in fact far stricter)
    assert served_total > 0  # the learner does serve
    assert wrong_total / served_total <= r


def test_a_domain_where_nothing_is_safe_serves_nothing() -> None:
    # Half of all would-be hits are wrong at every score: no cut can be certified.
    cuts, served, _, _ = _simulate(0, 0.05, 0.5, 0.0, 3000)
    assert cuts == [] and served == 0


def test_probes_grow_rarer_as_evidence_grows() -> None:
    _, _, _, probes = _simulate(1, 0.1, 0.3, 0.7, 6000)
    # Early on every would-be hit is probed; once a cut is certified, only audits above
    # it (those below it would be misses anyway), fewer and fewer.
    assert probes[0] == 500
    assert probes[1] < probes[0] / 2
    assert max(probes[4:]) < 0.1 * 500 and sum(probes[6:]) < probes[1]
    learner = WrongRateLearner(0.1, seed=0)
    for _ in range(200):
        learner.add(0.95, True)
    early = learner.audit_rate()
    for _ in range(2000):
        learner.add(0.95, True)
    assert learner.cut is not None and learner.audit_rate() < early


def test_learner_checks_its_arguments() -> None:
    for bad in (0, 1, -0.1, float("nan"), True):
        with pytest.raises(ConfigError):
            WrongRateLearner(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        WrongRateLearner(0.05, confidence=1.0)


def test_counts_round_trip_and_reject_other_binning() -> None:
    a = WrongRateLearner(0.1)
    for s in (0.6, 0.9, 0.99):
        a.add(s, True)
    a.add(0.7, False)
    counts = WrongRateLearner.counts_from_bytes(a.to_bytes(), a.floor, a.bin_width)
    assert counts is not None
    b = WrongRateLearner(0.1)
    b.load_counts(*counts)
    assert b.n == 4 and b.counts_above(0.65) == (3, 1)
    assert WrongRateLearner.counts_from_bytes(a.to_bytes(), 0.6, a.bin_width) is None
    assert WrongRateLearner.counts_from_bytes(b"not json", a.floor, a.bin_width) is None


def test_answer_matcher() -> None:
    assert normalize_answer("  Paris. ") == normalize_answer("paris")
    m = AnswerMatcher()
    assert m("Paris.", "paris")
    assert not m("Paris", "Lyon")
    assert m({"choices": [{"message": {"content": "Yes!"}}]}, "yes")
    assert not m({"a": 1}, {"a": 2}) and m({"a": 1, "b": 2}, {"b": 2, "a": 1})

    def embed(texts: list[str]) -> np.ndarray:
        # Long answers about the same thing point the same way; others do not.
        return np.array([[1.0, 0.0] if "tower" in t else [0.0, 1.0] for t in texts])

    long_a = "the eiffel tower is three hundred and thirty metres tall including its antennas"
    long_b = "including antennas the tower is about three hundred thirty metres high in total"
    long_c = "the louvre is the most visited museum in the world with millions of visitors"
    m2 = AnswerMatcher(embed)
    assert m2(long_a, long_b) and not m2(long_a, long_c)
    assert not m2("tower", "tower one")  # short answers: exact only


# ----------------------------------------------------------------------------- the cache

D = 64


class TableEmbedder:
    """Vectors looked up by text: lets a test place each query at a chosen cosine."""

    fingerprint = "test-table/64"

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(7)

    def _unit(self, v: np.ndarray) -> np.ndarray:
        out: np.ndarray = v / np.linalg.norm(v)
        return out

    def new(self, text: str) -> np.ndarray:
        self.table[text] = self._unit(self.rng.normal(size=D))
        return self.table[text]

    def near(self, text: str, base: str, cos: float) -> None:
        u = self.table[base]
        v = self.rng.normal(size=D)
        v = self._unit(v - (v @ u) * u)
        self.table[text] = cos * u + math.sqrt(1 - cos * cos) * v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _world(n: int, seed: int = 0) -> tuple[TableEmbedder, list[tuple[str, str, str, bool]]]:
    """n stored prompts; one query each at cosine in [0.8, 1): right (same answer)
    above 0.9, wrong below (another answer): a domain where the safe cut is 0.9."""
    emb = TableEmbedder()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        emb.new(f"stored {i}")
        cos = float(rng.uniform(0.8, 0.999))
        emb.near(f"query {i}", f"stored {i}", cos)
        rows.append((f"stored {i}", f"query {i}", f"answer {i}", cos >= 0.9))
    return emb, rows


def _learner(cache: SemanticCache, scope: object = None) -> WrongRateLearner:
    learner: WrongRateLearner = cache._guarantee_learner(cache.scope_id(scope))  # type: ignore[arg-type]
    return learner


def test_decorator_probes_labels_and_then_serves_with_no_extra_argument() -> None:
    emb, rows = _world(600)
    cache = SemanticCache(store="memory", embedder=emb, target_wrong_hit_rate=0.1)
    cache.put_many([s for s, _, _, _ in rows], [a for _, _, a, _ in rows])
    calls: list[str] = []
    truth = {q: (a if ok else f"other {a}") for _, q, a, ok in rows}

    @semantic_cache(cache)
    def llm(prompt: str) -> str:
        calls.append(prompt)
        return truth[prompt]

    served = wrong = 0
    for _, q, _, _ in rows:
        before = len(calls)
        out = llm(q)
        if len(calls) == before:  # served from the cache
            served += 1
            wrong += out != truth[q]
    st = cache.stats()
    learner = _learner(cache)
    # Every probe was answered by the function, compared and labelled.
    assert st.probes > 0 and learner.n == st.probes
    assert learner.counts_above(0.8)[1] > 0  # wrong pairs were seen and labelled wrong
    assert learner.cut is not None and learner.cut >= 0.85
    assert served > 100 and wrong / served <= 0.1
    hit = cache.get("query 0")
    assert isinstance(hit, Hit) and hit.exact and hit.bound is None  # the put stored it


def test_plain_get_then_put_resolves_a_probe(tmp_path: Path) -> None:
    emb, _ = _world(0)
    emb.new("capital of france")
    emb.near("france's capital city", "capital of france", 0.95)
    emb.near("capital of germany", "capital of france", 0.93)
    with SemanticCache(tmp_path / "c", embedder=emb, target_wrong_hit_rate=0.05) as cache:
        cache.put("capital of france", "Paris")
        assert cache.get("france's capital city") is MISS  # nothing certified: a probe
        assert cache.stats().probes == 1
        cache.put("france's capital city", "paris.")  # same answer after normalisation
        assert _learner(cache).counts_above(0.9) == (1, 0)
        assert cache.get("capital of germany") is MISS
        fid = cache.get("capital of france")
        assert isinstance(fid, Hit)
        cache.put("capital of germany", "Berlin")  # another answer: labelled wrong
        assert _learner(cache).counts_above(0.9) == (2, 1)
        # Per-entry evidence: the entry that answered wrong at 0.93 raised its own bar.
        meta = cache._meta[fid.entry_id]
        assert meta.threshold is not None and meta.threshold > 0.93
        # A put with no pending probe labels nothing.
        emb.new("something else entirely")
        cache.put("something else entirely", "x")
        assert _learner(cache).n == 2


def test_evidence_persists_and_is_shared_through_the_store(tmp_path: Path) -> None:
    emb, rows = _world(300, seed=3)
    path = tmp_path / "shared"
    with SemanticCache(path, embedder=emb, target_wrong_hit_rate=0.1) as a:
        a.put_many([s for s, _, _, _ in rows], [a_ for _, _, a_, _ in rows])
        # A second cache object on the same directory stands for another process.
        with SemanticCache(path, embedder=emb, target_wrong_hit_rate=0.1) as b:
            for i, (_, q, ans, ok) in enumerate(rows):
                c = a if i % 2 else b
                if c.get(q) is MISS:
                    c.put(q, ans if ok else "wrong")
            total = a.stats().probes + b.stats().probes
            b._g_learners.clear()  # force a re-read instead of waiting for the refresh
            assert _learner(b).n == total
            cut = _learner(b).cut
    with SemanticCache(path, embedder=emb, target_wrong_hit_rate=0.1) as again:
        assert _learner(again).n == total and _learner(again).cut == cut
    # Another target on the same store reads the same evidence with its own bound.
    with SemanticCache(path, embedder=emb, target_wrong_hit_rate=0.3) as loose:
        assert _learner(loose).n == total
        assert cut is not None and (_learner(loose).cut or 1.0) <= cut


def test_feedback_feeds_the_same_learner() -> None:
    emb, rows = _world(400, seed=5)
    cache = SemanticCache(store="memory", embedder=emb, target_wrong_hit_rate=0.1)
    cache.put_many([s for s, _, _, _ in rows], [a for _, _, a, _ in rows])
    hit: Hit | None = None
    for _, q, ans, ok in rows:
        got = cache.get(q)
        if isinstance(got, Hit):
            hit = got
            break
        cache.put(q, ans if ok else "wrong")
    assert hit is not None and hit.bound is not None and hit.bound <= 0.1
    n, k = _learner(cache).counts_above(cache._g_floor)
    cache.feedback(hit, False)
    assert _learner(cache).counts_above(cache._g_floor) == (n + 1, k + 1)
    cache.feedback(hit, True)  # one wrong report < max_wrong: the entry is still there
    assert _learner(cache).counts_above(cache._g_floor) == (n + 2, k + 1)


def test_a_failing_comparator_never_breaks_a_put() -> None:
    emb, _ = _world(0)
    emb.new("a")
    emb.near("b", "a", 0.95)

    def boom(cached: object, fresh: object) -> bool:
        raise RuntimeError("comparator bug")

    cache = SemanticCache(store="memory", embedder=emb, target_wrong_hit_rate=0.1,
                          answers_match=boom)
    cache.put("a", "x")
    assert cache.get("b") is MISS
    assert cache.put("b", "y") is not None
    assert _learner(cache).n == 0
    with pytest.raises(ConfigError):
        SemanticCache(store="memory", embedder=emb, target_wrong_hit_rate=0.1,
                      answers_match="exact")  # type: ignore[arg-type]


def test_async_decorator_probes_and_labels() -> None:
    import asyncio

    emb, rows = _world(200, seed=9)
    cache = SemanticCache(store="memory", embedder=emb, target_wrong_hit_rate=0.1)
    cache.put_many([s for s, _, _, _ in rows], [a for _, _, a, _ in rows])

    @semantic_cache(cache)
    async def llm(prompt: str) -> str:
        return dict((q, a if ok else "wrong") for _, q, a, ok in rows)[prompt]

    async def main() -> None:
        for _, q, _, _ in rows:
            await llm(q)

    asyncio.run(main())
    assert cache.stats().probes > 0
    assert _learner(cache).n == cache.stats().probes
