"""ASGI middleware that puts a semantic cache in front of an OpenAI-compatible server.

>>> from semcache.adapters.middleware import SemanticCacheMiddleware     # doctest: +SKIP
>>> app.add_middleware(SemanticCacheMiddleware, cache=SemanticCache())  # FastAPI / Starlette
>>> app = SemanticCacheMiddleware(app, cache)                           # any ASGI app

Plain ASGI (no framework needed), written in the Starlette style: the object
is stateless between requests and everything about one request lives in the
call. For ``POST .../chat/completions`` and ``POST .../responses`` it

1. reads the request body and replays it, unchanged, to the inner app;
2. builds the cache key (:mod:`semcache.adapters.requests`) and looks it up;
3. serves a hit itself, as JSON or as an SSE stream matching ``stream``;
4. otherwise calls the inner app, passes its response on as it comes (chunk by
   chunk for streams) while capturing it, and stores it if it is a complete,
   successful answer (HTTP 200, identity encoding, JSON or event stream).

Responses carry ``x-semcache: hit|miss|bypass`` and, on hits,
``x-semcache-similarity`` (the cosine score). Every other request passes
through untouched. A ``cache-control: no-cache`` request header skips the
lookup but stores the answer; ``no-store`` bypasses the cache entirely.

Entries are scoped by who may read them: by default the keyed hash of the
caller's ``Authorization`` / ``api-key`` header, so one key's answers never
reach another key, and requests without a credential are not cached unless
``allow_anonymous=True`` (see :mod:`semcache.adapters.requests`,
"Entitlement"); ``scope_from_request`` replaces that rule with the
application's own (e.g. its authenticated user). Cacheable requests reach the
inner app with ``accept-encoding: identity``, so compression inside the
middleware never stops caching. Cache failures never fail a request: it goes
to the inner app.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final

from semcache import SemanticCache
from semcache.cache import ScopeLike

from ._asgi import ASGIApp, ASGIScope, Message, Receive, Send, header_getter
from .requests import (
    DEFAULT_TENANT_HEADER,
    FROM_HEADERS,
    Plan,
    RequestCache,
    endpoint_of,
    hit_headers,
    storable,
)
from .sse import StreamCapture, replay

__all__ = ["CacheMetrics", "SemanticCacheMiddleware"]

log = logging.getLogger("semcache.adapters")

#: Seconds; the upper bounds of the latency histogram buckets.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0, 30.0, 60.0)

#: Largest request body the middleware buffers to key (bigger ones pass through).
MAX_BODY: Final = 16 * 1024 * 1024


class _Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = []
        running = 0
        sep = "," if labels else ""
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {self.sum:.6f}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


class CacheMetrics:
    """Counters and latency histograms of a middleware, in Prometheus text format.

    ``semcache_requests_total{outcome}`` counts requests by outcome (``hit``,
    ``miss``, ``bypass``, ``coalesced``: answered with a concurrent miss's
    upstream answer); ``semcache_request_duration_seconds{outcome}`` is the
    time to the end of the response; ``semcache_lookup_duration_seconds`` the
    time of the cache lookup alone; ``semcache_stored_total`` the answers stored;
    ``semcache_upstream_errors_total`` non-2xx answers from the inner app;
    ``semcache_errors_total`` cache failures (the requests still succeeded);
    ``semcache_entries`` the entries in the cache.
    """

    OUTCOMES: Final = ("hit", "miss", "bypass", "coalesced")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(self.OUTCOMES, 0)
        self.stored = 0
        self.upstream_errors = 0
        self.duration = {o: _Histogram() for o in self.OUTCOMES}
        self.lookup = _Histogram()

    def request(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self.requests[outcome] += 1
            self.duration[outcome].observe(seconds)

    def looked_up(self, seconds: float) -> None:
        with self._lock:
            self.lookup.observe(seconds)

    def add(self, *, stored: int = 0, upstream_errors: int = 0) -> None:
        with self._lock:
            self.stored += stored
            self.upstream_errors += upstream_errors

    def render(self, cache: SemanticCache | None = None, adapter_errors: int = 0) -> str:
        """The metrics as Prometheus text exposition (version 0.0.4)."""
        entries, cache_errors = 0, 0
        if cache is not None:
            try:
                stats = cache.stats()
                entries, cache_errors = stats.entries, stats.errors
            except Exception as exc:  # a broken cache must not break /metrics
                log.warning("semcache: stats unavailable: %r", exc)
        with self._lock:
            lines = [
                "# HELP semcache_requests_total Cacheable-endpoint requests by outcome.",
                "# TYPE semcache_requests_total counter",
                *(f'semcache_requests_total{{outcome="{o}"}} {n}'
                  for o, n in self.requests.items()),
                "# HELP semcache_hits_total Requests answered from the cache.",
                "# TYPE semcache_hits_total counter",
                f"semcache_hits_total {self.requests['hit']}",
                "# HELP semcache_misses_total Requests sent upstream after a lookup.",
                "# TYPE semcache_misses_total counter",
                f"semcache_misses_total {self.requests['miss']}",
                "# HELP semcache_stored_total Answers stored in the cache.",
                "# TYPE semcache_stored_total counter",
                f"semcache_stored_total {self.stored}",
                "# HELP semcache_upstream_errors_total Error answers from upstream (never stored).",
                "# TYPE semcache_upstream_errors_total counter",
                f"semcache_upstream_errors_total {self.upstream_errors}",
                "# HELP semcache_errors_total Cache failures; the requests went upstream.",
                "# TYPE semcache_errors_total counter",
                f"semcache_errors_total {cache_errors + adapter_errors}",
                "# HELP semcache_entries Entries in the cache.",
                "# TYPE semcache_entries gauge",
                f"semcache_entries {entries}",
                "# HELP semcache_request_duration_seconds Time to the end of the response.",
                "# TYPE semcache_request_duration_seconds histogram",
            ]
            for o in self.OUTCOMES:
                lines += self.duration[o].lines("semcache_request_duration_seconds",
                                                f'outcome="{o}"')
            lines += [
                "# HELP semcache_lookup_duration_seconds Time of the cache lookup.",
                "# TYPE semcache_lookup_duration_seconds histogram",
                *self.lookup.lines("semcache_lookup_duration_seconds", ""),
            ]
        return "\n".join(lines) + "\n"


def _identity_encoding(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Request headers asking for an uncompressed answer."""
    out = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
    out.append((b"accept-encoding", b"identity"))
    return out


def _with_headers(headers: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[str, str]]
                  ) -> list[tuple[bytes, bytes]]:
    """Response headers with ``extra`` set (replacing any of the same name)."""
    names = {k.lower().encode("latin-1") for k, _ in extra}
    out = [(k, v) for k, v in headers if k.lower() not in names]
    out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
    return out


@dataclass
class _Outcome:
    """What a leader's upstream call ended with, for the requests waiting on it.

    ``completion`` is the final response when it is a complete, successful answer
    (served to waiters like a hit, as JSON or a stream); otherwise the raw
    ``status``/``headers``/``body`` are passed on as they came (``body`` None:
    too large or cut off, and the waiters call upstream themselves).
    """

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | None = None
    completion: dict[str, Any] | None = None
    stream: bool = False


@dataclass
class _Flight:
    """A miss on its way upstream, which concurrent equal or similar misses wait for."""

    key: tuple[str, str]
    prompt: str
    stream: bool
    future: asyncio.Future[_Outcome | None]
    vector: Any = None  # (d,) unit vector of the prompt (from its lookup), or None


class SemanticCacheMiddleware:
    """Serve OpenAI-compatible chat requests from a semantic cache.

    Parameters
    ----------
    app : ASGI app
        The OpenAI-compatible server (FastAPI, Starlette, a vLLM-style server,
        or :mod:`semcache.adapters.server`'s forwarding app).
    cache : SemanticCache
    scope : Scope, mapping or str, optional
        Base scope of every entry; request fields are added to it.
    threshold : float, optional
        Cosine threshold for lookups (default: the cache's).
    ttl : float, optional
        Lifetime of stored entries (default: the cache's).
    tenant_header : str or None
        Request header naming a tenant; it narrows the caller's scope (or is
        the caller's identity with ``trust_tenant_header``). None: ignored.
    cache_truncated, cache_tool_calls : bool
        Also store ``finish_reason="length"`` / tool-call answers.
    metrics : CacheMetrics, optional
        Where to count requests (the proxy exposes them at ``/metrics``).
    allow_anonymous : bool
        Cache requests without an ``Authorization`` / ``api-key`` header too
        (all in one shared ``anonymous`` tenant). Default: they are passed through.
    trust_tenant_header : bool
        The tenant header is the identity (an authenticating gateway sets it):
        callers naming the same tenant share entries whatever their key.
    scope_from_request : callable, optional
        ``scope_from_request(asgi_scope) -> str | None`` (or an awaitable of it):
        who the caller is, as the tenant its entries are scoped to (e.g. from
        ``asgi_scope["user"]`` set by an authentication middleware); None keeps
        the request out of the cache. Default: the keyed hash of the
        credential, as described in :mod:`semcache.adapters.requests`.
    verify_hit : callable, optional
        ``await verify_hit(asgi_scope, plan) -> bool`` before a hit is served;
        False sends the request to the app instead (the proxy checks a
        credential it has not seen with the upstream this way).
    max_body : int
        Largest request body, in bytes, read to key a request; larger ones are
        passed through uncached.
    coalesce : bool
        Single-flight: a miss whose prompt (normalised) is already on its way
        upstream in the same scope waits for that call and is answered with its
        answer (streamed if it asked for a stream) instead of calling upstream
        too; an error or non-cacheable answer is passed to each waiter as it
        came and stored by nobody. With ``coalesce_similar`` a concurrent
        paraphrase that would hit the in-flight prompt (cosine at or above the
        threshold, and the cache's guards agree) waits as well.
    coalesce_wait : float
        Seconds a waiter waits for the in-flight call before calling upstream itself.
    coalesce_similar : bool
    executor : concurrent.futures.Executor, optional
        Where lookups that may embed run. Default: a pool of this middleware's
        own (``lookup_threads`` threads). Exact repeats of recently seen prompts
        go to a small pool of their own, and stores to another, so neither
        queues behind other requests' embeddings.
    lookup_threads : int, optional
        Default 32 when the cache's embedder is a
        :class:`~semcache.batching.BatchingEmbedder` (threads waiting for a
        batch cost nothing, and more of them make larger batches), else
        ``min(32, cpus + 4)``: without batching every thread runs the model,
        and more of them oversubscribe the cores.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: SemanticCache,
        *,
        scope: ScopeLike = None,
        threshold: float | None = None,
        ttl: float | None = None,
        tenant_header: str | None = DEFAULT_TENANT_HEADER,
        cache_truncated: bool = False,
        cache_tool_calls: bool = False,
        metrics: CacheMetrics | None = None,
        allow_anonymous: bool = False,
        trust_tenant_header: bool = False,
        scope_from_request: Callable[[ASGIScope], str | Awaitable[str | None] | None]
        | None = None,
        verify_hit: Callable[[ASGIScope, Plan], Awaitable[bool]] | None = None,
        max_body: int = MAX_BODY,
        coalesce: bool = True,
        coalesce_wait: float = 60.0,
        coalesce_similar: bool = True,
        executor: Executor | None = None,
        lookup_threads: int | None = None,
    ) -> None:
        self.app = app
        self.rc = RequestCache(
            cache, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
            cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
            allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        )
        self.metrics = metrics if metrics is not None else CacheMetrics()
        self.scope_from_request = scope_from_request
        self.verify_hit = verify_hit
        self.max_body = int(max_body)
        self.coalesce = coalesce
        self.coalesce_wait = float(coalesce_wait)
        self.coalesce_similar = coalesce_similar
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._by_scope: dict[str, list[_Flight]] = {}
        self.rc.use_executors(executor, lookup_threads)

    async def _tenant(self, scope: ASGIScope) -> str | object | None:
        if self.scope_from_request is None:
            return FROM_HEADERS
        got = self.scope_from_request(scope)
        if inspect.isawaitable(got):
            got = await got
        return got

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if endpoint_of(scope.get("path", "")) is None:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        body, complete, first = await self._read_body(receive, self.max_body)
        replay_receive = self._replaying(receive, first)
        if not complete:
            # Too large to key: hand the (partially read) body on and stay out of the way.
            await self._forward(scope, replay_receive, send, Plan(None, reason="body too large"),
                                t0)
            return
        try:
            tenant = await self._tenant(scope)
        except Exception as exc:  # a broken hook must not break the request
            log.warning("semcache: scope_from_request failed; request not cached: %r", exc)
            tenant = None
        plan = self.rc.plan("POST", scope.get("path", ""), header_getter(scope), body, tenant=tenant)
        if plan.key is not None:
            # Ask the inner app for an uncompressed answer: only that can be read and
            # stored (a GZipMiddleware inside would otherwise turn caching off).
            scope = {**scope, "headers": _identity_encoding(scope.get("headers") or [])}
        if plan.key is not None and plan.lookup:
            t_look = time.perf_counter()
            hit = await self.rc.alookup(plan, vector=self.coalesce and self.coalesce_similar)
            self.metrics.looked_up(time.perf_counter() - t_look)
            if hit is not None and not await self._may_serve(scope, plan):
                hit = None
            if hit is not None:
                await self._serve_hit(send, plan, hit)
                self.metrics.request("hit", time.perf_counter() - t0)
                return
            if self.coalesce:
                await self._single_flight(scope, replay_receive, send, plan, t0)
                return
        await self._forward(scope, replay_receive, send, plan, t0)

    async def _may_serve(self, scope: ASGIScope, plan: Plan) -> bool:
        """Whether an answer this request did not fetch itself (a hit, a coalesced
        answer) may be served to it: ``verify_hit``'s say, if there is one."""
        if self.verify_hit is None:
            return True
        try:
            return bool(await self.verify_hit(scope, plan))
        except Exception as exc:
            log.warning("semcache: verifying the caller failed: %r", exc)
            return False

    # -------------------------------------------------------- single-flight
    async def _single_flight(self, scope: ASGIScope, receive: Receive, send: Send, plan: Plan,
                             t0: float) -> None:
        """Wait for an equal (or similar) miss in flight, or be the one that goes upstream."""
        assert plan.key is not None
        key = (plan.key.scope.json, plan.key.prompt)
        flight = self._flights.get(key)
        if flight is None and self.coalesce_similar:
            flight = self._similar_flight(plan)
        if flight is not None:
            try:
                outcome = await asyncio.wait_for(asyncio.shield(flight.future),
                                                 self.coalesce_wait)
            except TimeoutError:
                outcome = None
            if outcome is not None and await self._may_serve(scope, plan) and \
                    await self._serve_outcome(send, plan, outcome):
                self.metrics.request("coalesced", time.perf_counter() - t0)
                return
            # Too slow, failed, or of a shape this request cannot use: call upstream itself.
            await self._forward(scope, receive, send, plan, t0)
            return
        flight = _Flight(key, plan.key.prompt, plan.key.stream,
                         asyncio.get_running_loop().create_future(), plan.vector)
        self._flights[key] = flight
        self._by_scope.setdefault(key[0], []).append(flight)
        result: _Outcome | None = None
        try:
            result = await self._forward(scope, receive, send, plan, t0, record=True)
        finally:
            del self._flights[key]
            peers = self._by_scope[key[0]]
            peers.remove(flight)
            if not peers:
                del self._by_scope[key[0]]
            flight.future.set_result(result)

    def _similar_flight(self, plan: Plan) -> _Flight | None:
        """An in-flight miss in the same scope whose prompt this one would hit, if any.

        Compares the vectors the lookups computed (``plan.vector``; none for a
        prompt longer than the embedder reads), so it costs no embedding and
        no trip through a thread pool: a (d,) dot product per flight in the scope.
        """
        assert plan.key is not None
        query = plan.vector
        if query is None:
            return None
        cache = self.rc.cache
        threshold = cache.threshold if self.rc.threshold is None else self.rc.threshold
        best: tuple[float, _Flight] | None = None
        for f in self._by_scope.get(plan.key.scope.json, ()):
            if f.vector is None or f.prompt == plan.key.prompt or f.future.done():
                continue
            score = float(min(1.0, max(-1.0, float(query @ f.vector))))
            if score >= threshold and (best is None or score > best[0]) and all(
                    guard(plan.key.prompt, f.prompt, score) for guard in cache.guards):
                best = (score, f)
        return None if best is None else best[1]

    async def _serve_outcome(self, send: Send, plan: Plan, outcome: _Outcome) -> bool:
        """Answer a waiter with the leader's outcome; False if it cannot be used."""
        assert plan.key is not None
        key = plan.key
        if outcome.completion is not None:
            headers = [("x-semcache", "coalesced")]
            if key.stream:
                headers += [("content-type", "text/event-stream; charset=utf-8"),
                            ("cache-control", "no-cache")]
                await send({"type": "http.response.start", "status": 200,
                            "headers": _with_headers([], headers)})
                for chunk in replay(key.endpoint, outcome.completion,
                                    include_usage=key.include_usage):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            body = json.dumps(outcome.completion, separators=(",", ":"),
                              ensure_ascii=False).encode()
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
            await send({"type": "http.response.start", "status": 200,
                        "headers": _with_headers([], headers)})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return True
        if outcome.body is None or (outcome.status < 400 and outcome.stream != key.stream):
            return False
        # An error (same for a stream and not) or a non-cacheable answer of the shape
        # this request asked for: passed on as it came, stored by nobody.
        headers_out = _with_headers(outcome.headers, [("x-semcache", "coalesced")])
        await send({"type": "http.response.start", "status": outcome.status,
                    "headers": headers_out})
        await send({"type": "http.response.body", "body": outcome.body, "more_body": False})
        return True

    # ------------------------------------------------------------ request
    @staticmethod
    async def _read_body(receive: Receive, limit: int = MAX_BODY
                         ) -> tuple[bytes, bool, list[Message]]:
        """Read the request body; returns (body, read completely, messages read)."""
        messages: list[Message] = []
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return b"".join(parts), False, messages  # disconnected
            chunk = message.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), True, messages
            if size > limit:
                return b"".join(parts), False, messages

    @staticmethod
    def _replaying(receive: Receive, messages: list[Message]) -> Receive:
        """A ``receive`` that first hands out what was already read, then the rest."""
        pending = list(messages)

        async def replayed() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return replayed

    # ---------------------------------------------------------------- hits
    async def _serve_hit(self, send: Send, plan: Plan, hit: Any) -> None:
        assert plan.key is not None
        key = plan.key
        headers = hit_headers(hit, key.stream)
        if key.stream:
            await send({"type": "http.response.start", "status": 200,
                        "headers": _with_headers([], headers)})
            for chunk in replay(key.endpoint, hit.completion, include_usage=key.include_usage):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = json.dumps(hit.completion, separators=(",", ":"), ensure_ascii=False).encode()
        headers.append(("content-length", str(len(body))))
        await send({"type": "http.response.start", "status": 200,
                    "headers": _with_headers([], headers)})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # -------------------------------------------------------------- misses
    async def _forward(self, scope: ASGIScope, receive: Receive, send: Send, plan: Plan,
                       t0: float, *, record: bool = False) -> _Outcome | None:
        """Call the inner app; pass its response on, capture and store it.

        With ``record``, returns what the response was (for waiting requests):
        None if it did not complete.
        """
        outcome = "bypass" if plan.key is None else "miss"
        state: dict[str, Any] = {"capture": None, "buffer": None, "done": False, "length": None}
        rec = _Outcome(stream=plan.key.stream if plan.key is not None else False)
        raw: bytearray | None = bytearray() if record else None
        complete = False

        async def finish(final: Any) -> None:
            if state["done"]:
                return
            state["done"] = True
            if record and plan.key is not None and isinstance(final, dict) and storable(
                    plan.key.endpoint, final, cache_truncated=self.rc.cache_truncated,
                    cache_tool_calls=self.rc.cache_tool_calls)[0]:
                rec.completion = final
            if final is not None and await self.rc.astore(plan, final):
                self.metrics.add(stored=1)

        async def wrapped_send(message: Message) -> None:
            nonlocal raw, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status >= 400:
                    self.metrics.add(upstream_errors=1)
                raw_headers = list(message.get("headers") or [])
                rec.status, rec.headers = status, raw_headers
                names = {k.lower(): v.lower() for k, v in raw_headers}
                ctype = names.get(b"content-type", b"")
                encoding = names.get(b"content-encoding", b"identity")
                if plan.key is not None and plan.store and status == 200 and encoding in (
                    b"", b"identity"
                ):
                    if ctype.startswith(b"text/event-stream"):
                        state["capture"] = StreamCapture(plan.key.endpoint)
                    elif ctype.startswith(b"application/json"):
                        state["buffer"] = bytearray()
                        length = names.get(b"content-length", b"")
                        state["length"] = int(length) if length.isdigit() else None
                message = {**message,
                           "headers": _with_headers(raw_headers, [("x-semcache", outcome)])}
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if raw is not None:
                    raw += chunk
                    if len(raw) > MAX_BODY:
                        raw = None
                capture: StreamCapture | None = state["capture"]
                buffer: bytearray | None = state["buffer"]
                if capture is not None:
                    # Store before passing on the terminal event, so a client that sends
                    # its next request right away already finds the entry.
                    if capture.feed(chunk) or not more:
                        await finish(capture.finish())
                elif buffer is not None and not state["done"]:
                    buffer += chunk
                    if len(buffer) > MAX_BODY:
                        state["buffer"] = None
                    elif not more or (state["length"] is not None
                                      and len(buffer) >= state["length"]):
                        # Store before the client has the last byte (a forwarding app
                        # may end with an empty message), so its next request finds it.
                        try:
                            final = json.loads(bytes(buffer))
                        except (ValueError, RecursionError):
                            final = None
                        await finish(final)
                if not more:
                    complete = True
            await send(message)

        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            self.metrics.request(outcome, time.perf_counter() - t0)
        if not record or not complete:
            return None
        rec.body = None if raw is None else bytes(raw)
        return rec

    def render_metrics(self) -> str:
        """This middleware's metrics (and its cache's size) in Prometheus text format."""
        return self.metrics.render(self.rc.cache, self.rc.errors)
