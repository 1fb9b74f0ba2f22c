"""SemanticCache behaviour users rely on: hits, misses, scopes, TTL, eviction, reopen, errors."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from semcache import (
    DEFAULT_THRESHOLD,
    MISS,
    ConfigError,
    EmbeddingError,
    FunctionEmbedder,
    Hit,
    InvalidPromptError,
    Scope,
    SemanticCache,
    SerializationError,
    StoreError,
)
from semcache.datasets import load_qqp_pairs
from tests.conftest import HashEmbedder

# --------------------------------------------------------------- semantics (real model)


def test_paraphrase_hits_and_reports_cosine(cache: SemanticCache, embedder: object) -> None:
    cache.put("What is the capital of France?", "Paris")
    hit = cache.get("what's France's capital city?")
    assert isinstance(hit, Hit)
    assert hit.completion == "Paris"
    assert hit.prompt == "What is the capital of France?"
    assert not hit.exact
    # The score is the cosine of the two real embeddings.
    a, b = cache.embedder.encode(["What is the capital of France?", "what's France's capital city?"])
    assert hit.score == pytest.approx(float(a @ b), abs=1e-5)
    assert cache.threshold <= hit.score <= 1.0


def test_different_question_misses(cache: SemanticCache) -> None:
    cache.put("What is the capital of France?", "Paris")
    assert cache.get("How tall is Mount Everest?") is MISS
    assert cache.get("What is the capital of Germany?") is MISS


def test_qqp_dev_paraphrases_hit_and_hard_negatives_mostly_miss(embedder: object) -> None:
    """On real labelled pairs: the best-scoring duplicates hit, and most hard negatives miss."""
    pairs = load_qqp_pairs(limit=400)
    # No guards: this checks the cosine rule itself against exact search.
    with SemanticCache(store="memory", embedder=embedder, guards=()) as cache:
        vec_a = embedder.encode([p.text_a for p in pairs])  # type: ignore[attr-defined]
        vec_b = embedder.encode([p.text_b for p in pairs])  # type: ignore[attr-defined]
        cos = np.sum(vec_a * vec_b, axis=1)
        for i, p in enumerate(pairs):
            cache.put(p.text_a, i, scope=str(i))  # one scope per pair: judge each pair alone
        dup_hits = neg_hits = dups_above = 0
        for i, p in enumerate(pairs):
            hit = cache.get(p.text_b, scope=str(i))
            expected = cos[i] >= cache.threshold - 1e-6
            # Exact search: a hit happens exactly when the pair's cosine clears the bar.
            assert bool(hit) == bool(expected) or abs(cos[i] - cache.threshold) < 1e-4
            if hit:
                assert hit.completion == i
            if p.label == 1:
                dups_above += int(expected)
                dup_hits += int(bool(hit))
            else:
                neg_hits += int(bool(hit))
        negatives = sum(1 for p in pairs if p.label == 0)
        assert dup_hits >= 0.3 * sum(1 for p in pairs if p.label == 1)
        assert neg_hits <= 0.1 * negatives


# -------------------------------------------------------------------- exact fast path


def test_exact_fast_path_skips_embedding(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache.put("Hello   world", {"text": "hi"})
        calls = hash_embedder.calls
        hit = cache.get("  Hello world ")  # same after white-space normalisation
        assert isinstance(hit, Hit) and hit.exact and hit.score == 1.0
        assert hit.completion == {"text": "hi"}
        assert hash_embedder.calls == calls  # nothing embedded
        assert cache.get("hello world") is MISS  # case is kept


def test_none_completion_is_a_hit(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        cache.put("q", None)
        hit = cache.get("q")
        assert hit is not MISS and isinstance(hit, Hit) and hit.completion is None


def test_put_same_prompt_replaces(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        first = cache.put("q", "old")
        second = cache.put("q", "new")
        assert first != second
        assert len(cache) == 1
        hit = cache.get("q")
        assert isinstance(hit, Hit) and hit.completion == "new" and hit.entry_id == second


def test_json_completions_round_trip(hash_embedder: HashEmbedder) -> None:
    response = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "é ✓"},
                                        "finish_reason": "stop"}], "usage": {"total_tokens": 3}}
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        cache.put("q", response)
        hit = cache.get("q")
        assert isinstance(hit, Hit) and hit.completion == response
        with pytest.raises(SerializationError):
            cache.put("r", {"bad": object()})
        with pytest.raises(SerializationError):
            cache.put("r", math.nan)
        assert cache.get("r") is MISS and len(cache) == 1


# -------------------------------------------------------------------------- scopes


def test_scope_isolation_never_hits_across_scopes(cache: SemanticCache) -> None:
    prompt = "What is the capital of France?"
    base = Scope(model="gpt-4o", params={"temperature": 0}, system="Be brief.", tenant="acme")
    cache.put(prompt, "Paris", scope=base)
    assert cache.get(prompt, scope=base)
    assert cache.get("what's France's capital city?", scope=base)
    others = [
        None,
        base.replace(model="gpt-4o-mini"),
        base.replace(params={"temperature": 0.7}),
        base.replace(params={"tools": [{"type": "function", "function": {"name": "f"}}]}),
        base.replace(system="Answer in French."),
        base.replace(tenant="globex"),
        base.replace(context="another conversation"),
    ]
    for other in others:
        assert cache.get(prompt, scope=other) is MISS, other
        assert cache.get("what's France's capital city?", scope=other) is MISS, other
    # Integral floats and ints are the same setting; dict order does not matter.
    assert cache.get(prompt, scope={"tenant": "acme", "system": "Be brief.", "temperature": 0.0,
                                    "model": "gpt-4o"})


def test_other_embedder_never_served(tmp_path: Path, embedder: object) -> None:
    directory = tmp_path / "c"
    with SemanticCache(directory, embedder=embedder) as cache:
        cache.put("What is the capital of France?", "Paris")
    # Same vectors, different fingerprint: the entries are not ours to serve.
    other = FunctionEmbedder(lambda texts: embedder.encode(texts), name="other-model")  # type: ignore[attr-defined]
    with SemanticCache(directory, embedder=other) as cache:
        assert cache.get("What is the capital of France?") is MISS
        assert len(cache) == 0
        assert cache.stats().foreign_entries == 1
        assert cache.purge(foreign=True) == 1
    with SemanticCache(directory, embedder=embedder) as cache:
        assert len(cache) == 0


# ----------------------------------------------------------------------------- TTL


def test_ttl_expiry_per_cache_and_per_entry(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder, ttl=0.3) as cache:
        cache.put("short", 1)
        cache.put("long", 2, ttl=60)
        hit = cache.get("short")
        assert isinstance(hit, Hit) and hit.expires_at is not None
        assert hit.expires_at == pytest.approx(hit.created_at + 0.3)
        time.sleep(0.35)
        assert cache.get("short") is MISS
        assert cache.get("long")
        # Reclaimed from store and index together.
        assert len(cache) == 1
        assert cache.stats().expirations == 1


def test_expired_entries_are_reclaimed_on_reopen(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache.put("a", 1, ttl=0.2)
        cache.put("b", 2)
    time.sleep(0.25)
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        assert len(cache) == 2  # still stored until something reclaims it
        assert cache.expire() == 1
        assert len(cache) == 1 and cache.get("a") is MISS and cache.get("b")


# ------------------------------------------------------------------------ eviction


def test_lru_eviction_keeps_store_and_index_in_step(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder, max_entries=3) as cache:
        for p in ("a", "b", "c"):
            cache.put(p, p)
        assert cache.get("a")  # a becomes most recently used
        cache.put("d", "d")  # evicts b, the least recently used
        assert len(cache) == 3
        assert cache.get("b") is MISS
        assert all(cache.get(p) for p in ("a", "c", "d"))
        assert cache.stats().evictions == 1
        # Index and store agree: the index's partition holds exactly the live ids.
        part = next(iter(cache._parts.values()))
        assert len(part.index) == 3
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        assert len(cache) == 3 and cache.get("b") is MISS


# ---------------------------------------------------------- delete / purge / clear


def test_delete_purge_clear(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        a = cache.put("a", 1, scope="s1")
        cache.put("b", 2, scope="s1")
        cache.put("c", 3, scope="s2")
        assert a is not None and cache.delete(a) and not cache.delete(a)
        assert cache.get("a", scope="s1") is MISS
        assert cache.purge("s1") == 1
        assert len(cache) == 1
        assert cache.purge(predicate=lambda i, m: True) == 1
        cache.put("d", 4)
        cache.clear()
        assert len(cache) == 0 and cache.get("d") is MISS
        with pytest.raises(ConfigError):
            cache.purge()


# ---------------------------------------------------------------------- persistence


def test_reopen_serves_what_was_stored(tmp_path: Path, embedder: object) -> None:
    prompts = [f"How do I cook {food}?" for food in ("rice", "pasta", "quinoa", "lentils")]
    with SemanticCache(tmp_path / "c", embedder=embedder) as cache:
        ids = [cache.put(p, p.upper()) for p in prompts]
    with SemanticCache(tmp_path / "c", embedder=embedder) as cache:
        assert len(cache) == len(prompts)
        for p, i in zip(prompts, ids, strict=True):
            hit = cache.get(p)
            assert isinstance(hit, Hit) and hit.entry_id == i and hit.completion == p.upper()
        hit = cache.get("how should I cook rice")
        assert isinstance(hit, Hit) and hit.completion == "HOW DO I COOK RICE?"


def test_settings_of_another_format_are_refused(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache._store.save_settings({"format": 999})
    with pytest.raises(ConfigError, match="format"):
        SemanticCache(tmp_path / "c", embedder=hash_embedder)


# ------------------------------------------------------------------ feedback


def _controlled_embedder() -> FunctionEmbedder:
    """'stored' = e0; 'near' has cosine 0.8 with it, 'closer' 0.95, 'far' 0."""
    table = {
        "stored": [1.0, 0.0, 0.0],
        "near": [0.8, 0.6, 0.0],
        "closer": [0.95, math.sqrt(1 - 0.95**2), 0.0],
        "far": [0.0, 0.0, 1.0],
    }
    return FunctionEmbedder(lambda texts: np.array([table[t] for t in texts]), name="controlled")


def test_feedback_demotes_then_removes_a_wrong_entry(tmp_path: Path) -> None:
    emb = _controlled_embedder()
    with SemanticCache(tmp_path / "c", embedder=emb, threshold=0.7) as cache:
        cache.put("stored", "answer")
        assert cache.get("far") is MISS
        near = cache.get("near")
        assert isinstance(near, Hit) and near.score == pytest.approx(0.8)
        cache.feedback(near, correct=False)
        assert cache.get("near") is MISS  # its own bar is now just above 0.8
        closer = cache.get("closer")  # closer paraphrases are still served
        assert isinstance(closer, Hit) and closer.score == pytest.approx(0.95)
    with SemanticCache(tmp_path / "c", embedder=emb, threshold=0.7) as cache:
        assert cache.get("near") is MISS  # the learned bar survives reopening
        closer = cache.get("closer")
        assert isinstance(closer, Hit)
        cache.feedback(closer, correct=False)  # second wrong report (max_wrong=2) removes it
        assert len(cache) == 0 and cache.get("stored") is MISS


def test_feedback_on_a_wrong_exact_hit_removes_the_entry() -> None:
    with SemanticCache(store="memory", embedder=_controlled_embedder()) as cache:
        cache.put("stored", "bad answer")
        hit = cache.get("stored")
        assert isinstance(hit, Hit) and hit.exact
        cache.feedback(hit, correct=True)
        assert cache.get("stored")
        cache.feedback(hit, correct=False)
        assert cache.get("stored") is MISS


# -------------------------------------------------------------- errors and bad input


@pytest.mark.parametrize("bad", ["", "   \n\t", None, 42, b"bytes", ["list"]])
def test_bad_prompts_raise_typed_errors(bad: object, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        with pytest.raises(InvalidPromptError):
            cache.get(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidPromptError):
            cache.put(bad, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [1.5, -1.01, math.nan, "0.9", True])
def test_threshold_is_validated(threshold: object, hash_embedder: HashEmbedder) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(store="memory", embedder=hash_embedder, threshold=threshold)  # type: ignore[arg-type]
    with SemanticCache(store="memory", embedder=hash_embedder) as cache, pytest.raises(ConfigError):
        cache.get("q", threshold=threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl": 0}, {"ttl": -1}, {"max_entries": 0}, {"index": "nope"}, {"store": "cloud"},
     {"projection": "nope"}],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object], hash_embedder: HashEmbedder) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(**{"store": "memory", **kwargs}, embedder=hash_embedder)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "vectors",
    [
        lambda n: np.full((n, 8), np.nan),
        lambda n: np.zeros((n, 8)),
        lambda n: np.ones((n + 1, 8)),
        lambda n: np.ones(n),
    ],
)
def test_bad_embeddings_fail_open_or_raise(vectors: object) -> None:
    state = {"broken": False}

    def fn(texts: list[str]) -> object:
        if state["broken"]:
            return vectors(len(texts))  # type: ignore[operator]
        return np.eye(8)[: len(texts)] + 0.1

    emb = FunctionEmbedder(fn, name="sometimes-broken")
    with SemanticCache(store="memory", embedder=emb) as cache:
        assert cache.put("good", "a") is not None
        state["broken"] = True
        assert cache.put("q", "b") is None  # fail open: logged, nothing stored
        assert cache.get("q") is MISS  # the lookup embeds, fails, and is a logged miss
        assert cache.stats().errors == 2
        assert len(cache) == 1 and cache.get("good")  # what was stored is intact
    with (
        SemanticCache(store="memory", embedder=emb, fail_open=False) as cache,
        pytest.raises(EmbeddingError),
    ):
        cache.put("q", "a")


def test_wrong_dimension_after_first_entry_is_refused() -> None:
    dims = iter([8, 8, 5, 5])  # the first call is the fingerprint's probe

    def fn(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), next(dims)))

    with SemanticCache(store="memory", embedder=FunctionEmbedder(fn, "shifty"), fail_open=False) as cache:
        cache.put("a", 1)
        with pytest.raises(EmbeddingError, match="expected 8-d"):
            cache.put("b", 2)
        assert len(cache) == 1


def test_one_megabyte_prompt(cache: SemanticCache) -> None:
    big = "The quick brown fox jumps over the lazy dog. " * 23_000  # ~1 MB
    cache.put(big + "What is the capital of France?", "long answer")
    hit = cache.get(big + "What is the capital of France?")
    assert isinstance(hit, Hit) and hit.exact
    # The embedder reads a window, not a megabyte: what differs at the end decides
    # (tests/reliability/test_long_prompts.py), a paraphrase hits and another question not.
    other = cache.get(big + "What's the capital city of France?")
    assert isinstance(other, Hit) and not other.exact
    assert cache.get(big + "How do I bake sourdough bread?") is MISS


def test_corrupt_store_directory_is_a_store_error(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(StoreError):
        SemanticCache(directory, embedder=hash_embedder)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError):
        SemanticCache(not_a_dir, embedder=hash_embedder)


def test_store_removed_under_a_live_cache_fails_open(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    import shutil

    directory = tmp_path / "c"
    cache = SemanticCache(directory, embedder=hash_embedder)
    cache.put("a", 1)
    cache._store.close()
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")
    assert cache.get("b") is MISS  # logged, not raised
    assert cache.put("b", 2) is None
    assert cache.stats().errors >= 1
    cache.close()


def test_closed_cache_refuses_calls(hash_embedder: HashEmbedder) -> None:
    cache = SemanticCache(store="memory", embedder=hash_embedder)
    cache.close()
    cache.close()  # twice is fine
    with pytest.raises(ConfigError, match="closed"):
        cache.get("q")


# ------------------------------------------------------------------------------ async


async def test_async_twins(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        assert await cache.aget("q") is MISS
        entry = await cache.aput("q", "a")
        hit = await cache.aget("q")
        assert isinstance(hit, Hit) and hit.entry_id == entry and hit.completion == "a"


def test_stats_report_latency_stages(cache: SemanticCache) -> None:
    cache.put("What is the capital of France?", "Paris")
    cache.get("what's France's capital city?")
    cache.get("What is the capital of France?")
    cache.get("How tall is Mount Everest?")
    st = cache.stats()
    assert (st.hits, st.exact_hits, st.misses) == (2, 1, 1)
    assert st.hit_rate == pytest.approx(2 / 3)
    assert {"embed", "index", "verify", "total"} <= set(st.latency_ms)
    assert all(p50 <= p99 for p50, p99 in st.latency_ms.values())


def test_target_wrong_hit_rate_sets_a_calibrated_threshold(embedder: object,
                                                           hash_embedder: HashEmbedder) -> None:
    from semcache.thresholds import threshold_for

    with SemanticCache(store="memory", embedder=embedder, target_wrong_hit_rate=0.1) as cache:  # type: ignore[arg-type]
        assert cache.threshold == threshold_for(cache.fingerprint, 0.1)
        with SemanticCache(store="memory", embedder=embedder, target_wrong_hit_rate=0.05) as strict:  # type: ignore[arg-type]
            assert strict.threshold > cache.threshold  # fewer wrong hits allowed: a higher bar
    with pytest.raises(ConfigError, match="not both"):
        SemanticCache(store="memory", embedder=hash_embedder, threshold=0.9, target_wrong_hit_rate=0.1)
    # The target is kept online (semcache.guarantee), so it needs no calibration: an
    # uncalibrated embedder or a target outside the calibrated range only loses the prior.
    with SemanticCache(store="memory", embedder=hash_embedder, target_wrong_hit_rate=0.1) as c:
        assert c.threshold == DEFAULT_THRESHOLD
    with SemanticCache(store="memory", embedder=embedder, target_wrong_hit_rate=0.001) as c:  # type: ignore[arg-type]
        assert c.threshold == threshold_for(c.fingerprint, 0.05)  # the nearest calibrated end
    for bad in (0, 1.5, "0.1"):
        with pytest.raises(ConfigError):
            SemanticCache(store="memory", embedder=hash_embedder, target_wrong_hit_rate=bad)  # type: ignore[arg-type]


def test_default_guards_veto_a_number_mismatch(cache: SemanticCache) -> None:
    cache.put("How do I convert 5 miles to kilometers?", "8.05 km")
    hit = cache.get("How do I convert 5 miles to kilometres?")
    assert isinstance(hit, Hit)
    wrong = cache.get("How do I convert 50 miles to kilometers?", threshold=0.5)
    assert wrong is MISS  # cosine clears 0.5 easily; the numbers guard vetoes it
    with SemanticCache(store="memory", embedder=cache.embedder, guards=()) as unguarded:
        unguarded.put("How do I convert 5 miles to kilometers?", "8.05 km")
        assert unguarded.get("How do I convert 50 miles to kilometers?", threshold=0.5)


def test_home_relative_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 hash_embedder: HashEmbedder) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with SemanticCache("~/caches/faq", embedder=hash_embedder) as cache:
        assert cache.put("q", "a") is not None and cache.get("q")
        assert cache.directory == tmp_path / "caches" / "faq"
    assert (tmp_path / "caches" / "faq" / "cache.db").is_file()


def test_default_directory_from_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     hash_embedder: HashEmbedder) -> None:
    monkeypatch.setenv("SEMCACHE_HOME", str(tmp_path / "home"))
    with SemanticCache(name="bot", embedder=hash_embedder) as cache:
        cache.put("q", "a")
        assert cache.directory == tmp_path / "home" / "bot"
    with SemanticCache(name="bot", embedder=hash_embedder) as cache:
        assert cache.get("q")
