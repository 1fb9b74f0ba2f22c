"""Cache the OpenAI SDK through an httpx transport: no SDK class is touched.

>>> from openai import OpenAI                                   # doctest: +SKIP
>>> from semcache import SemanticCache
>>> from semcache.adapters.openai import caching_client
>>> client = OpenAI(http_client=caching_client(SemanticCache()))  # doctest: +SKIP

Every ``POST .../chat/completions`` and ``POST .../responses`` goes through
:class:`CachingTransport` (or :class:`AsyncCachingTransport`), which wraps the
transport that really talks to the API:

- a **hit** is answered without any network call: the stored response as JSON,
  or, for ``stream=True``, replayed as a valid SSE stream (see
  :mod:`semcache.adapters.sse`), with headers ``x-semcache: hit`` and
  ``x-semcache-similarity`` (visible through ``with_raw_response``);
- a **miss** goes upstream; a streamed answer reaches the caller chunk by chunk
  while it is assembled, and only a complete, successful answer is stored
  (see :func:`semcache.adapters.requests.storable`);
- anything else (other endpoints, ``cache-control: no-store``, bodies that
  cannot be keyed) passes through untouched, marked ``x-semcache: bypass``.

**Single-flight**: concurrent misses for the same prompt in the same scope
(threads sharing a :func:`caching_client`, tasks sharing an
:func:`async_caching_client`) make one upstream call. The others wait for it
(at most ``coalesce_wait`` seconds) and are answered with its answer, marked
``x-semcache: coalesced``: as JSON or as a replayed stream, whichever each
asked for. An error answer (HTTP 4xx/5xx) reaches every waiter as it came, an
answer that may not be stored (cut off by ``max_tokens``, a tool call) reaches
the waiters that asked for the same shape, and neither is stored. A waiter
whose leader failed outright (a network error) or whose answer it cannot use
calls upstream itself.

The key is built by :mod:`semcache.adapters.requests`; entries are scoped by
the keyed hash of the request's API key, so a client shared by several keys
never serves one key's answer to another, and a request without a key is not
cached unless ``allow_anonymous=True``. Cache failures never
fail a request: the request goes upstream and the failure is logged.

The transports are plain ``httpx`` transports, which the OpenAI SDK accepts as
``http_client`` (``httpx.Client`` / ``httpx.AsyncClient``), from openai 1.x on.
"""

from __future__ import annotations

import abc
import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from semcache import Hit, SemanticCache
from semcache.cache import ScopeLike

from .requests import DEFAULT_TENANT_HEADER, Plan, RequestCache, hit_headers
from .sse import StreamCapture, replay

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "semcache.adapters.openai needs httpx: pip install 'semcache-llm[openai]'"
    ) from exc

#: The inner transport of a caching transport (sync or async).
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)

__all__ = [
    "AsyncCachingTransport",
    "CachingTransport",
    "async_caching_client",
    "caching_client",
]

#: The OpenAI SDK's own default: generous read timeout (long generations), quick connect.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)

#: Largest answer a leader keeps for its waiters (bigger: they call upstream themselves).
_MAX_SHARED: Final = 16 * 1024 * 1024

#: Response headers not copied onto an answer rebuilt for a waiter.
_PER_RESPONSE: Final = frozenset({"content-length", "transfer-encoding", "content-encoding",
                                  "x-semcache", "x-semcache-similarity"})


@dataclass
class _Outcome:
    """What a leader's upstream call ended with, for the requests waiting on it.

    ``completion``: the final answer when it may be stored (served to waiters
    like a hit); otherwise ``status``/``headers``/``body`` as they came.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None
    completion: dict[str, Any] | None
    stream: bool


def _waiter_response(plan: Plan, outcome: _Outcome | None) -> httpx.Response | None:
    """A waiter's answer from its leader's outcome; None: it calls upstream itself."""
    if outcome is None or plan.key is None:
        return None
    key = plan.key
    if outcome.completion is not None:
        headers = [("x-semcache", "coalesced")]
        if key.stream:
            body = b"".join(replay(key.endpoint, outcome.completion,
                                   include_usage=key.include_usage))
            headers += [("content-type", "text/event-stream; charset=utf-8"),
                        ("cache-control", "no-cache")]
        else:
            body = json.dumps(outcome.completion, separators=(",", ":"),
                              ensure_ascii=False).encode()
            headers.append(("content-type", "application/json"))
        return httpx.Response(200, headers=headers, content=body)
    if outcome.body is None or (outcome.status < 400 and outcome.stream != key.stream):
        return None
    # An error (the same for a stream and not), or an answer that may not be stored,
    # of the shape this request asked for: passed on as it came, stored by nobody.
    headers = [(k, v) for k, v in outcome.headers if k.lower() not in _PER_RESPONSE]
    return httpx.Response(outcome.status, headers=[*headers, ("x-semcache", "coalesced")],
                          content=outcome.body)


class _SyncFlight:
    """A miss on its way upstream that threads with the same key wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: _Outcome | None = None


class _Flights:
    """The misses in flight of one transport, by (scope, normalised prompt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sync: dict[tuple[str, str], _SyncFlight] = {}
        self._async: dict[tuple[str, str], asyncio.Future[_Outcome | None]] = {}

    @staticmethod
    def key(plan: Plan) -> tuple[str, str]:
        assert plan.key is not None
        return plan.key.scope.json, plan.key.prompt

    def join_sync(self, key: tuple[str, str]) -> tuple[_SyncFlight, bool]:
        """The flight for ``key`` and whether this caller leads it (calls upstream)."""
        with self._lock:
            flight = self._sync.get(key)
            if flight is not None:
                return flight, False
            flight = self._sync[key] = _SyncFlight()
            return flight, True

    def land_sync(self, key: tuple[str, str], flight: _SyncFlight, outcome: _Outcome | None
                  ) -> None:
        with self._lock:
            if self._sync.get(key) is flight:
                del self._sync[key]
        if not flight.done.is_set():
            flight.outcome = outcome
            flight.done.set()

    def join_async(self, key: tuple[str, str]
                   ) -> tuple[asyncio.Future[_Outcome | None], bool]:
        loop = asyncio.get_running_loop()
        with self._lock:
            future = self._async.get(key)
            # A future of another event loop cannot be awaited here: lead a flight of our own.
            if future is not None and not future.done() and future.get_loop() is loop:
                return future, False
            future = self._async[key] = loop.create_future()
            return future, True

    def land_async(self, key: tuple[str, str], future: asyncio.Future[_Outcome | None],
                   outcome: _Outcome | None) -> None:
        with self._lock:
            if self._async.get(key) is future:
                del self._async[key]
        if not future.done():
            future.set_result(outcome)


def _header_getter(request: httpx.Request) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        value = request.headers.get(name)
        return None if value is None else str(value)

    return get


def _hit_response(rc: RequestCache, plan: Plan, hit: Hit) -> httpx.Response:
    """A response made from a stored completion, streamed or not as the request asked."""
    assert plan.key is not None and isinstance(hit.completion, dict)
    key = plan.key
    if key.stream:
        body = b"".join(replay(key.endpoint, hit.completion, include_usage=key.include_usage))
    else:
        body = json.dumps(hit.completion, separators=(",", ":"), ensure_ascii=False).encode()
    return httpx.Response(200, headers=hit_headers(hit, key.stream), content=body)


def _capturing(plan: Plan, response: httpx.Response) -> bool:
    """Whether a miss's response can be followed and stored at all."""
    if plan.key is None or not plan.store or response.status_code != 200:
        return False
    encoding = response.headers.get("content-encoding", "identity").lower()
    # We ask for identity; an upstream that compresses anyway is passed on, not stored.
    return encoding in ("", "identity")


def _identity(response: httpx.Response) -> bool:
    return response.headers.get("content-encoding", "identity").lower() in ("", "identity")


def _keep(rc: RequestCache, plan: Plan, final: Any) -> dict[str, Any] | None:
    """Store ``final`` if it may be stored; returns it then (what waiters are served)."""
    if not rc.should_store(plan, final):
        return None
    rc.store(plan, final)  # a failed put still leaves an answer for the waiters
    assert isinstance(final, dict)
    return final


async def _akeep(rc: RequestCache, plan: Plan, final: Any) -> dict[str, Any] | None:
    """:func:`_keep` without blocking the event loop."""
    if not rc.should_store(plan, final):
        return None
    await rc.astore(plan, final)
    assert isinstance(final, dict)
    return final


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class _TeeStream(httpx.SyncByteStream):
    """Passes a streamed body on while assembling it; stores it once it is complete.

    ``on_end(final, raw)`` is called exactly once: at the terminal event, at the
    end of the body, or when the caller closes the stream early (then ``final``
    is None: the answer was not seen whole). ``raw`` is the body so far (None
    past :data:`_MAX_SHARED`).
    """

    def __init__(self, inner: Any, capture: StreamCapture,
                 on_end: Callable[[Any, bytes | None], object]) -> None:
        self._inner = inner
        self._capture = capture
        self._on_end = on_end
        self._raw: bytearray | None = bytearray()
        self._finished = False

    def _keep(self, chunk: bytes) -> None:
        if self._raw is not None:
            self._raw += chunk
            if len(self._raw) > _MAX_SHARED:
                self._raw = None

    def _finish(self, seen: bool) -> None:
        if not self._finished:
            self._finished = True
            result = self._capture.finish() if seen else None
            # Closed early: the answer was not seen whole, the waiters call upstream.
            raw = None if self._raw is None or not seen else bytes(self._raw)
            self._on_end(result, raw)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._keep(chunk)
            # Store before handing over the chunk holding the terminal event: the SDK
            # stops reading at [DONE] and may never ask for the rest.
            if self._capture.feed(chunk):
                self._finish(True)
            yield chunk
        self._finish(True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish(False)


class _AsyncTeeStream(httpx.AsyncByteStream):
    """The async twin of :class:`_TeeStream`."""

    def __init__(self, inner: Any, capture: StreamCapture,
                 on_end: Callable[[Any, bytes | None], Awaitable[object]]) -> None:
        self._inner = inner
        self._capture = capture
        self._on_end = on_end
        self._raw: bytearray | None = bytearray()
        self._finished = False

    async def _finish(self, seen: bool) -> None:
        if not self._finished:
            self._finished = True
            result = self._capture.finish() if seen else None
            raw = None if self._raw is None or not seen else bytes(self._raw)
            await self._on_end(result, raw)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if self._raw is not None:
                self._raw += chunk
                if len(self._raw) > _MAX_SHARED:
                    self._raw = None
            if self._capture.feed(chunk):
                await self._finish(True)
            yield chunk
        await self._finish(True)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._finish(False)


class _Caching(abc.ABC, Generic[TransportT]):
    """What both transports hold: the request cache, the flights in progress, the inner transport."""

    def __init__(
        self,
        cache: SemanticCache,
        transport: TransportT | None = None,
        *,
        scope: ScopeLike = None,
        threshold: float | None = None,
        ttl: float | None = None,
        tenant_header: str | None = DEFAULT_TENANT_HEADER,
        cache_truncated: bool = False,
        cache_tool_calls: bool = False,
        allow_anonymous: bool = False,
        trust_tenant_header: bool = False,
        coalesce: bool = True,
        coalesce_wait: float = 60.0,
    ) -> None:
        self.rc = RequestCache(
            cache, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
            cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
            allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        )
        self.coalesce = coalesce
        self.coalesce_wait = float(coalesce_wait)
        self._flights = _Flights()
        self.inner: TransportT = transport if transport is not None else self._new_transport()

    @abc.abstractmethod
    def _new_transport(self) -> TransportT:
        """The inner transport used when none is given (each transport names its default)."""


class CachingTransport(_Caching[httpx.BaseTransport], httpx.BaseTransport):
    """An httpx transport that answers OpenAI API requests from a semantic cache.

    Parameters
    ----------
    cache : SemanticCache
    transport : httpx.BaseTransport, optional
        The transport that reaches the API; default ``httpx.HTTPTransport()``.
    scope : Scope, mapping or str, optional
        Base scope of every entry (e.g. ``"my-app"``); request fields are added.
    threshold : float, optional
        Cosine threshold for lookups (default: the cache's).
    ttl : float, optional
        Lifetime of stored entries (default: the cache's).
    tenant_header : str or None
        Request header naming the tenant (set it with ``extra_headers``): it
        splits one API key's entries further (see ``trust_tenant_header``).
    cache_truncated, cache_tool_calls : bool
        Also store ``finish_reason="length"`` / tool-call answers.
    allow_anonymous : bool
        Also cache requests without an ``Authorization`` / ``api-key`` header
        (an upstream without auth); by default they are passed through.
    trust_tenant_header : bool
        Entries are scoped by the tenant header alone, shared by every API key
        naming that tenant. By default they are scoped by the keyed hash of the
        API key (see :mod:`semcache.adapters.requests`, "Entitlement").
    coalesce : bool
        Single-flight of concurrent misses for the same prompt in the same
        scope (see the module docstring). A ``cache-control: no-cache`` request
        never waits for another.
    coalesce_wait : float
        Seconds a waiter waits for the call in flight before calling upstream itself.
    """

    def _new_transport(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Serve a hit, or forward the request and store a complete answer."""
        plan = self.rc.plan(request.method, request.url.path, _header_getter(request),
                            request.read())
        if plan.key is None:
            response = self.inner.handle_request(request)
            response.headers["x-semcache"] = "bypass"
            return response
        hit = self.rc.lookup(plan)
        if hit is not None:
            return _hit_response(self.rc, plan, hit)
        if not (self.coalesce and plan.lookup):
            return self._forward(request, plan, None)
        key = _Flights.key(plan)
        flight, lead = self._flights.join_sync(key)
        if not lead:
            if flight.done.wait(self.coalesce_wait):
                answer = _waiter_response(plan, flight.outcome)
                if answer is not None:
                    return answer
            return self._forward(request, plan, None)  # too slow, failed, or unusable

        def land(outcome: _Outcome | None) -> None:
            self._flights.land_sync(key, flight, outcome)

        try:
            return self._forward(request, plan, land)
        except BaseException:
            land(None)
            raise

    def _forward(self, request: httpx.Request, plan: Plan,
                 land: Callable[[_Outcome | None], None] | None) -> httpx.Response:
        """Send a miss upstream and store a complete answer; ``land`` gets the outcome."""
        assert plan.key is not None
        key = plan.key
        request.headers["accept-encoding"] = "identity"
        response = self.inner.handle_request(request)
        response.headers["x-semcache"] = "miss"
        if not _capturing(plan, response):
            if land is not None:
                if response.status_code >= 400 and _identity(response):
                    raw = response.read()
                    land(_Outcome(response.status_code, list(response.headers.multi_items()),
                                  raw, None, key.stream))
                else:
                    land(None)
            return response
        headers = list(response.headers.multi_items())
        if key.stream:
            def on_end(final: Any, raw: bytes | None) -> None:
                completion = None if final is None else _keep(self.rc, plan, final)
                if land is not None:
                    land(_Outcome(200, headers, raw, completion, True))

            response.stream = _TeeStream(response.stream, StreamCapture(key.endpoint), on_end)
            return response
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            raw = b"".join(stream)
        finally:
            stream.close()
        completion = _keep(self.rc, plan, _json_or_none(raw))
        if land is not None:
            land(_Outcome(200, headers, raw, completion, False))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the inner transport (the cache belongs to the caller)."""
        self.inner.close()


class AsyncCachingTransport(_Caching[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """The async twin of :class:`CachingTransport` (lookups run off the event loop).

    Parameters are those of :class:`CachingTransport`, with an
    ``httpx.AsyncBaseTransport`` (default ``httpx.AsyncHTTPTransport()``).
    """

    def _new_transport(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Serve a hit, or forward the request and store a complete answer."""
        plan = self.rc.plan(request.method, request.url.path, _header_getter(request),
                            await request.aread())
        if plan.key is None:
            response = await self.inner.handle_async_request(request)
            response.headers["x-semcache"] = "bypass"
            return response
        hit = await self.rc.alookup(plan)
        if hit is not None:
            return _hit_response(self.rc, plan, hit)
        if not (self.coalesce and plan.lookup):
            return await self._forward(request, plan, None)
        key = _Flights.key(plan)
        future, lead = self._flights.join_async(key)
        if not lead:
            try:
                outcome = await asyncio.wait_for(asyncio.shield(future), self.coalesce_wait)
            except TimeoutError:
                outcome = None
            answer = _waiter_response(plan, outcome)
            if answer is not None:
                return answer
            return await self._forward(request, plan, None)  # too slow, failed, or unusable

        def land(outcome: _Outcome | None) -> None:
            self._flights.land_async(key, future, outcome)

        try:
            return await self._forward(request, plan, land)
        except BaseException:
            land(None)
            raise

    async def _forward(self, request: httpx.Request, plan: Plan,
                       land: Callable[[_Outcome | None], None] | None) -> httpx.Response:
        """Send a miss upstream and store a complete answer; ``land`` gets the outcome."""
        assert plan.key is not None
        key = plan.key
        request.headers["accept-encoding"] = "identity"
        response = await self.inner.handle_async_request(request)
        response.headers["x-semcache"] = "miss"
        if not _capturing(plan, response):
            if land is not None:
                if response.status_code >= 400 and _identity(response):
                    raw = await response.aread()
                    land(_Outcome(response.status_code, list(response.headers.multi_items()),
                                  raw, None, key.stream))
                else:
                    land(None)
            return response
        headers = list(response.headers.multi_items())
        if key.stream:
            async def on_end(final: Any, raw: bytes | None) -> None:
                completion = None if final is None else await _akeep(self.rc, plan, final)
                if land is not None:
                    land(_Outcome(200, headers, raw, completion, True))

            response.stream = _AsyncTeeStream(response.stream, StreamCapture(key.endpoint),
                                              on_end)
            return response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        try:
            raw = b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        completion = await _akeep(self.rc, plan, _json_or_none(raw))
        if land is not None:
            land(_Outcome(200, headers, raw, completion, False))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close the inner transport (the cache belongs to the caller)."""
        await self.inner.aclose()


def caching_client(
    cache: SemanticCache,
    *,
    transport: httpx.BaseTransport | None = None,
    scope: ScopeLike = None,
    threshold: float | None = None,
    ttl: float | None = None,
    tenant_header: str | None = DEFAULT_TENANT_HEADER,
    cache_truncated: bool = False,
    cache_tool_calls: bool = False,
    allow_anonymous: bool = False,
    trust_tenant_header: bool = False,
    coalesce: bool = True,
    coalesce_wait: float = 60.0,
    **client_kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` for ``OpenAI(http_client=...)`` that caches through ``cache``.

    Parameters
    ----------
    cache : SemanticCache
    transport : httpx.BaseTransport, optional
        What reaches the API (proxies, retries, TLS settings); default
        ``httpx.HTTPTransport()``.
    scope, threshold, ttl, tenant_header, cache_truncated, cache_tool_calls
    allow_anonymous, trust_tenant_header, coalesce, coalesce_wait
        See :class:`CachingTransport`.
    **client_kwargs
        Passed to ``httpx.Client`` (default timeout: the SDK's, 600 s read, 5 s connect).

    Examples
    --------
    >>> client = OpenAI(http_client=caching_client(SemanticCache()))   # doctest: +SKIP
    >>> client.chat.completions.create(model="gpt-4o-mini", messages=[
    ...     {"role": "user", "content": "What is the capital of France?"}])  # doctest: +SKIP
    """
    client_kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    client_kwargs.setdefault("follow_redirects", True)
    wrapped = CachingTransport(
        cache, transport, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
        cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
        allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        coalesce=coalesce, coalesce_wait=coalesce_wait,
    )
    client: httpx.Client = httpx.Client(transport=wrapped, **client_kwargs)
    return client


def async_caching_client(
    cache: SemanticCache,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    scope: ScopeLike = None,
    threshold: float | None = None,
    ttl: float | None = None,
    tenant_header: str | None = DEFAULT_TENANT_HEADER,
    cache_truncated: bool = False,
    cache_tool_calls: bool = False,
    allow_anonymous: bool = False,
    trust_tenant_header: bool = False,
    coalesce: bool = True,
    coalesce_wait: float = 60.0,
    **client_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``AsyncOpenAI(http_client=...)``; see :func:`caching_client`."""
    client_kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    client_kwargs.setdefault("follow_redirects", True)
    wrapped = AsyncCachingTransport(
        cache, transport, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
        cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
        allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        coalesce=coalesce, coalesce_wait=coalesce_wait,
    )
    client: httpx.AsyncClient = httpx.AsyncClient(transport=wrapped, **client_kwargs)
    return client
