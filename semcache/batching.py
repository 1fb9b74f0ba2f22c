"""Micro-batching of concurrent ``encode`` calls (:class:`BatchingEmbedder`).

The cache calls its embedder outside its lock, from many threads at once (the
async API and the proxy run lookups in ``asyncio.to_thread`` workers, WSGI/ASGI
servers in their own threads). One model call for 8 texts costs far less than 8
calls for one text each, so concurrent callers are served together:

* a caller that finds the embedder idle becomes the *leader* and embeds its
  texts at once; nobody ever waits for a time window to fill;
* callers arriving while a batch runs queue up; when the running batch ends,
  the first of them becomes the next leader and embeds everything queued
  (up to ``max_batch`` texts) in one call, then hands each caller its rows;
* an exception in a batch reaches every caller whose texts were in it, and the
  queue goes on with the next leader.

Under no concurrency it is a passthrough (one lock acquire more); under load
the number of model calls drops with the queue length.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from semcache._types import FloatArray
from semcache.embedding import Embedder
from semcache.errors import ConfigError, EmbeddingError

__all__ = ["BatchingEmbedder"]


@dataclass(eq=False)
class _Request:
    texts: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: FloatArray | None = None
    error: BaseException | None = None
    lead: bool = False


class BatchingEmbedder:
    """Wrap an :class:`~semcache.embedding.Embedder` so concurrent ``encode`` calls share model calls.

    Parameters
    ----------
    inner : Embedder
        The embedder doing the work; its fingerprint is this one's (the vectors
        are the same).
    max_batch : int
        Most texts one model call gets; a single request larger than this is
        still embedded whole (the inner embedder batches it itself).

    Attributes
    ----------
    calls : int
        Model calls made so far.
    requests : int
        ``encode`` calls served so far.
    """

    def __init__(self, inner: Embedder, *, max_batch: int = 32) -> None:
        if not isinstance(inner, Embedder):
            raise ConfigError("BatchingEmbedder wraps an Embedder (an object with encode and fingerprint)")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.inner = inner
        self.max_batch = max_batch
        self.calls = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._busy = False

    @property
    def fingerprint(self) -> str:
        """The inner embedder's fingerprint (batching does not change the vectors)."""
        return self.inner.fingerprint

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts`` (float32, shape (n, d)), together with whatever else is queued.

        Raises
        ------
        Exception
            Whatever the inner embedder raised for the batch holding these texts.
        """
        req = _Request(list(texts))
        with self._lock:
            self.requests += 1
            self._queue.append(req)
            lead = not self._busy
            if lead:
                self._busy = True
        if not lead:
            req.done.wait()
            if req.lead:
                # Woken to lead: the previous leader left the queue, us at its head, to us.
                self._lead()
        else:
            self._lead()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _take(self) -> list[_Request]:
        """Pop queued requests up to ``max_batch`` texts (at least one request). Lock held."""
        batch = [self._queue.popleft()]
        size = len(batch[0].texts)
        while self._queue and size + len(self._queue[0].texts) <= self.max_batch:
            size += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        return batch

    def _lead(self) -> None:
        """Run one batch from the head of the queue, then pass the lead on (or go idle)."""
        with self._lock:
            batch = self._take()
            self.calls += 1
        texts = [t for r in batch for t in r.texts]
        try:
            out = self.inner.encode(texts)
            vecs = np.asarray(out, dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(texts):
                raise EmbeddingError(f"embedder returned shape {vecs.shape} for {len(texts)} texts")
        except BaseException as exc:  # every caller of this batch gets the failure
            for r in batch:
                r.error = exc
        else:
            start = 0
            for r in batch:
                r.result = vecs[start : start + len(r.texts)]
                start += len(r.texts)
        with self._lock:
            nxt = self._queue[0] if self._queue else None
            if nxt is None:
                self._busy = False
        for r in batch:
            r.done.set()
        if nxt is not None:
            # The waiting head becomes the leader: its event fires with no result yet.
            nxt.lead = True
            nxt.done.set()

    def __repr__(self) -> str:
        return f"BatchingEmbedder({self.inner!r}, max_batch={self.max_batch})"
