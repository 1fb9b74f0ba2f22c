"""BatchingEmbedder under real threads: same vectors, fewer model calls, no added wait, shared errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from semcache import SemanticCache
from semcache.batching import BatchingEmbedder
from semcache.embedding import Embedder
from semcache.errors import ConfigError, EmbeddingError
from tests.helpers import hash_vectors


class SlowEmbedder:
    """Hash vectors after a fixed delay per call (a model's fixed cost), counting calls and batch sizes."""

    def __init__(self, delay: float = 0.02, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return "test:slow/16"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.batches.append(len(texts))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise EmbeddingError(f"cannot embed {self.fail_on!r}")
        return hash_vectors(list(texts), 16)


def run_threads(emb: Embedder, requests: list[list[str]], workers: int) -> list[np.ndarray | BaseException]:
    barrier = threading.Barrier(workers)

    def one(texts: list[str]) -> np.ndarray | BaseException:
        barrier.wait(timeout=10) if workers > 1 else None
        try:
            return emb.encode(texts)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, requests))


def test_concurrent_results_equal_unbatched_with_fewer_calls() -> None:
    inner = SlowEmbedder()
    emb = BatchingEmbedder(inner, max_batch=64)
    requests = [[f"prompt {i}"] if i % 3 else [f"prompt {i}", f"other {i}"] for i in range(16)]
    out = run_threads(emb, requests, workers=16)
    for texts, got in zip(requests, out, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, hash_vectors(texts, 16))
    assert emb.requests == 16
    assert len(inner.batches) == emb.calls < 16 / 2  # queued callers were served together
    assert sum(inner.batches) == sum(len(r) for r in requests)


def test_max_batch_is_respected_and_large_requests_go_whole() -> None:
    inner = SlowEmbedder()
    emb = BatchingEmbedder(inner, max_batch=4)
    out = run_threads(emb, [[f"t{i}"] for i in range(12)] + [[f"big{i}" for i in range(9)]], workers=13)
    assert all(isinstance(o, np.ndarray) for o in out)
    assert max(inner.batches) == 9 and all(b <= 4 for b in inner.batches if b != 9)


def test_single_caller_does_not_wait() -> None:
    inner = SlowEmbedder(delay=0.0)
    emb = BatchingEmbedder(inner)
    texts = ["hello"]
    for _ in range(50):  # warm both paths
        emb.encode(texts)
        inner.encode(texts)
    t0 = time.perf_counter()
    for _ in range(500):
        emb.encode(texts)
    wrapped = (time.perf_counter() - t0) / 500
    t0 = time.perf_counter()
    for _ in range(500):
        inner.encode(texts)
    bare = (time.perf_counter() - t0) / 500
    # No window: the only overhead is a lock and an object, microseconds.
    assert wrapped - bare < 200e-6, (wrapped, bare)
    assert emb.calls == emb.requests == 550


def test_an_error_reaches_every_caller_of_its_batch_and_the_queue_goes_on() -> None:
    inner = SlowEmbedder(delay=0.05, fail_on="poison")
    emb = BatchingEmbedder(inner, max_batch=64)
    gate = threading.Event()
    first: list[object] = []

    def leader() -> None:
        gate.set()
        first.append(emb.encode(["lead"]))

    t = threading.Thread(target=leader)
    t.start()
    gate.wait()
    time.sleep(0.01)  # the leader is inside the slow call: the next ones queue as one batch
    out = run_threads(emb, [["a"], ["poison"], ["b"]], workers=3)
    t.join()
    assert isinstance(first[0], np.ndarray)
    batched_together = inner.batches[1] == 3
    if batched_together:
        assert all(isinstance(o, EmbeddingError) for o in out), out
    else:  # the scheduler split them: then only the poisoned batch fails
        assert isinstance(out[1], EmbeddingError)
    # Still usable afterwards.
    np.testing.assert_array_equal(emb.encode(["c"]), hash_vectors(["c"], 16))


def test_real_model_batched_equals_unbatched(embedder: Embedder) -> None:
    emb = BatchingEmbedder(embedder, max_batch=16)
    texts = [f"How do I cook rice number {i}?" for i in range(8)] + ["What is the capital of France?"]
    out = run_threads(emb, [[t] for t in texts], workers=len(texts))
    ref = embedder.encode(texts)
    for i, got in enumerate(out):
        assert isinstance(got, np.ndarray)
        assert float(got[0] @ ref[i]) > 0.9999
    assert emb.fingerprint == embedder.fingerprint


def test_in_a_cache_from_threads() -> None:
    inner = SlowEmbedder(delay=0.01)
    emb = BatchingEmbedder(inner)
    with SemanticCache(store="memory", embedder=emb) as cache:
        cache.put("stored", "answer")
        out = run_threads_get(cache, 12)
    assert out[0] == "answer" and not any(out[1:])  # hash vectors: other prompts are unrelated
    assert emb.calls < emb.requests


def run_threads_get(cache: SemanticCache, n: int) -> list[object]:
    barrier = threading.Barrier(n)

    def one(i: int) -> object:
        barrier.wait(timeout=10)
        hit = cache.get("stored" if i == 0 else f"another prompt {i}")
        return hit.completion if hit else None

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        BatchingEmbedder(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BatchingEmbedder(SlowEmbedder(), max_batch=0)
