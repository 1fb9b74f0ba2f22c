"""Fault injection at the embedder boundary (issue 25, item 3).

An :class:`~semcache.embedding.Embedder` object is user code: whatever it raises,
returns or however long it hangs, ``get`` must give MISS and ``put`` None under
``fail_open=True`` (counted in ``stats().errors`` and logged), and a typed
:class:`~semcache.errors.EmbeddingError` carrying the cause under ``fail_open=False``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from semcache import MISS, SemanticCache
from semcache._deadline import Deadline, DeadlineExceeded
from semcache.errors import ConfigError, EmbeddingError
from tests.helpers import hash_vectors

DIM = 16


class FaultyEmbedder:
    """A hash embedder whose ``encode`` can be switched to a fault."""

    def __init__(self) -> None:
        self.fault: Callable[[list[str]], Any] | None = None

    @property
    def fingerprint(self) -> str:
        return f"test:faulty/{DIM}"

    def encode(self, texts: list[str]) -> Any:
        if self.fault is not None:
            return self.fault(list(texts))
        return hash_vectors(list(texts), DIM)


def _raise(exc: BaseException) -> Callable[[list[str]], Any]:
    def f(texts: list[str]) -> Any:
        raise exc

    return f


class _ArrayThatRaises:
    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("lazy tensor could not be materialised")


#: name -> (fault, what the cause must be an instance of, or None when semcache's own check fires)
FAULTS: dict[str, tuple[Callable[[list[str]], Any], type[BaseException] | None]] = {
    "runtime_error": (_raise(RuntimeError("CUDA error: device-side assert")), RuntimeError),
    "memory_error": (_raise(MemoryError()), MemoryError),
    "os_error": (_raise(OSError("model file vanished")), OSError),
    "key_error": (_raise(KeyError("input_ids")), KeyError),
    "nan": (lambda t: np.full((len(t), DIM), np.nan, np.float32), None),
    "inf": (lambda t: np.full((len(t), DIM), np.inf, np.float32), None),
    "zero": (lambda t: np.zeros((len(t), DIM), np.float32), None),
    "too_few_rows": (lambda t: hash_vectors(list(t), DIM)[:0], None),
    "one_dim": (lambda t: hash_vectors(list(t), DIM)[0], None),
    "wrong_width": (lambda t: hash_vectors(list(t), DIM + 3), None),
    "none": (lambda t: None, None),
    "strings": (lambda t: [["a"] * DIM for _ in t], None),
    "array_raises": (lambda t: _ArrayThatRaises(), RuntimeError),
}


@pytest.fixture
def emb() -> FaultyEmbedder:
    return FaultyEmbedder()


@pytest.fixture
def seeded(emb: FaultyEmbedder) -> Iterator[SemanticCache]:
    """A fail-open cache holding one entry (so width checks have a width to check against)."""
    c = SemanticCache(store="memory", embedder=emb, guards=())
    assert c.put("what is the capital of france", "Paris") is not None
    yield c
    c.close()


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fail_open_turns_every_fault_into_a_miss(
    name: str, emb: FaultyEmbedder, seeded: SemanticCache, caplog: pytest.LogCaptureFixture
) -> None:
    emb.fault = FAULTS[name][0]
    errors = seeded.stats().errors
    with caplog.at_level(logging.WARNING, logger="semcache"):
        assert seeded.get("how tall is the eiffel tower") is MISS
        assert seeded.put("how tall is the eiffel tower", "330 m") is None
        assert seeded.put_many(["a new prompt", "another one"], ["x", "y"]) == []
    assert seeded.stats().errors == errors + 3
    assert sum("embedder" in r.getMessage() for r in caplog.records) >= 3
    # The exact fast path needs no embedding: stored prompts are still served.
    hit = seeded.get("what is the capital of france")
    assert hit and hit.completion == "Paris" and hit.exact
    # Nothing half-written: the failed puts left no entry, and the cache recovers.
    assert len(seeded) == 1
    emb.fault = None
    assert seeded.put("how tall is the eiffel tower", "330 m") is not None
    hit = seeded.get("how tall is the eiffel tower")
    assert hit and hit.completion == "330 m"


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fail_closed_raises_a_typed_error_with_the_cause(name: str, emb: FaultyEmbedder) -> None:
    fault, cause = FAULTS[name]
    with SemanticCache(store="memory", embedder=emb, guards=(), fail_open=False) as cache:
        cache.put("what is the capital of france", "Paris")
        emb.fault = fault
        for call in (lambda: cache.get("how tall is the eiffel tower"),
                     lambda: cache.put("how tall is the eiffel tower", "330 m")):
            with pytest.raises(EmbeddingError) as info:
                call()
            if cause is not None:
                assert isinstance(info.value.__cause__, cause)
        assert cache.stats().errors == 2
        assert len(cache) == 1


def test_first_put_fault_on_an_empty_cache(emb: FaultyEmbedder) -> None:
    """The very first vector has no width to compare with; bad output is still refused."""
    emb.fault = FAULTS["nan"][0]
    with SemanticCache(store="memory", embedder=emb) as cache:
        assert cache.put("hello there", "hi") is None
        assert len(cache) == 0 and cache.stats().errors == 1


def test_intermittent_faults_under_threads(emb: FaultyEmbedder) -> None:
    """Every third call fails, from 4 threads: no exception escapes, no wrong answer."""
    calls = {"n": 0}
    lock = threading.Lock()

    def sometimes(texts: list[str]) -> Any:
        with lock:
            calls["n"] += 1
            bad = calls["n"] % 3 == 0
        if bad:
            raise RuntimeError("transient")
        return hash_vectors(texts, DIM)

    emb.fault = sometimes
    failures: list[BaseException] = []
    with SemanticCache(store="memory", embedder=emb, guards=()) as cache:

        def work(t: int) -> None:
            try:
                for i in range(30):
                    p = f"thread {t} prompt {i}"
                    cache.put(p, p)
                    hit = cache.get(p + " ?")  # never stored: must miss, embedder or not
                    assert hit is MISS
                    hit = cache.get(p)
                    assert hit is MISS or hit.completion == p
            except BaseException as exc:  # collected and re-raised in the main thread
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not failures, failures
        assert cache.stats().errors > 0


def test_hanging_embedder_is_bounded_by_embed_timeout(emb: FaultyEmbedder) -> None:
    release = threading.Event()

    def hang(texts: list[str]) -> Any:
        release.wait(30)
        return hash_vectors(texts, DIM)

    with SemanticCache(store="memory", embedder=emb, embed_timeout=0.2, guards=()) as cache:
        cache.put("stored prompt", "answer")
        emb.fault = hang
        t0 = time.perf_counter()
        for i in range(6):
            assert cache.get(f"new prompt {i}") is MISS
        elapsed = time.perf_counter() - t0
        # 4 calls wait out their 0.2 s deadline; then 4 are stuck and the next fail at once.
        assert elapsed < 0.2 * 4 + 1.0, elapsed
        assert cache.stats().errors == 6
        assert cache._deadline is not None and cache._deadline.stuck == 4
        release.set()  # the stuck calls return; their threads end and the cache recovers
        for _ in range(100):
            if cache._deadline.stuck == 0:
                break
            time.sleep(0.02)
        assert cache._deadline.stuck == 0
        emb.fault = None
        assert cache.get("stored prompt") and cache.put("new prompt 0", "a") is not None

    with SemanticCache(store="memory", embedder=emb, embed_timeout=0.2, fail_open=False) as cache:
        emb.fault = None
        cache.put("stored prompt", "answer")  # an empty scope misses without embedding
        release.clear()
        emb.fault = hang
        with pytest.raises(EmbeddingError, match="timed out") as info:
            cache.get("anything")
        assert isinstance(info.value.__cause__, DeadlineExceeded)
        release.set()


def test_embed_timeout_passes_results_and_errors_through(emb: FaultyEmbedder) -> None:
    with SemanticCache(store="memory", embedder=emb, embed_timeout=5, guards=()) as cache:
        cache.put("what is the capital of france", "Paris")
        hit = cache.get("what is the capital of france ?")  # not exact: goes through the embedder
        assert hit is MISS or hit.completion == "Paris"
        emb.fault = FAULTS["memory_error"][0]
        assert cache.get("something else") is MISS
        assert cache.stats().errors == 1


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "1"])
def test_bad_embed_timeout(bad: Any) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(store="memory", embedder=FaultyEmbedder(), embed_timeout=bad)


def test_deadline_counts_stuck_calls_exactly() -> None:
    d = Deadline(0.05, max_stuck=2)
    assert d.call(lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):
        d.call(lambda: 1 // 0)
    gate = threading.Event()
    for _ in range(2):
        with pytest.raises(DeadlineExceeded):
            d.call(lambda: gate.wait(10))
    t0 = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="still running"):
        d.call(lambda: 1)
    assert time.perf_counter() - t0 < 0.05
    gate.set()
    for _ in range(100):
        if d.stuck == 0:
            break
        time.sleep(0.01)
    assert d.stuck == 0 and d.call(lambda: 4) == 4


def test_real_model_failure_fails_open(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled model itself failing inside sentence-transformers (e.g. out of memory)."""
    with SemanticCache(store="memory", embedder=embedder) as cache:
        cache.put("How do I reset my password?", "Use the reset link.")

        def oom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(embedder.model, "encode", oom)
        assert cache.get("how can I reset my password") is MISS
        assert cache.stats().errors == 1
        monkeypatch.undo()
        hit = cache.get("how can I reset my password")
        assert hit and hit.completion == "Use the reset link."
