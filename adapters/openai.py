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

The key is built by :mod:`semcache.adapters.requests`; entries are scoped by
the keyed hash of the request's API key, so a client shared by several keys
never serves one key's answer to another, and a request without a key is not
cached unless ``allow_anonymous=True``. Cache failures never
fail a request: the request goes upstream and the failure is logged.

The transports are plain ``httpx`` transports, which the OpenAI SDK accepts as
``http_client`` (``httpx.Client`` / ``httpx.AsyncClient``), from openai 1.x on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

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

__all__ = [
    "AsyncCachingTransport",
    "CachingTransport",
    "async_caching_client",
    "caching_client",
]

#: The OpenAI SDK's own default: generous read timeout (long generations), quick connect.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


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


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class _TeeStream(httpx.SyncByteStream):
    """Passes a streamed body on while assembling it; stores it once it is complete."""

    def __init__(self, inner: Any, capture: StreamCapture, on_done: Callable[[Any], object]
                 ) -> None:
        self._inner = inner
        self._capture = capture
        self._on_done = on_done
        self._finished = False

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            result = self._capture.finish()
            if result is not None:
                self._on_done(result)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            # Store before handing over the chunk holding the terminal event: the SDK
            # stops reading at [DONE] and may never ask for the rest.
            if self._capture.feed(chunk):
                self._finish()
            yield chunk
        self._finish()

    def close(self) -> None:
        self._inner.close()


class _AsyncTeeStream(httpx.AsyncByteStream):
    """The async twin of :class:`_TeeStream`."""

    def __init__(self, inner: Any, capture: StreamCapture, on_done: Callable[[Any], Any]
                 ) -> None:
        self._inner = inner
        self._capture = capture
        self._on_done = on_done
        self._finished = False

    async def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            result = self._capture.finish()
            if result is not None:
                await self._on_done(result)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            if self._capture.feed(chunk):
                await self._finish()
            yield chunk
        await self._finish()

    async def aclose(self) -> None:
        await self._inner.aclose()


class CachingTransport(httpx.BaseTransport):
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
    """

    def __init__(
        self,
        cache: SemanticCache,
        transport: httpx.BaseTransport | None = None,
        *,
        scope: ScopeLike = None,
        threshold: float | None = None,
        ttl: float | None = None,
        tenant_header: str | None = DEFAULT_TENANT_HEADER,
        cache_truncated: bool = False,
        cache_tool_calls: bool = False,
        allow_anonymous: bool = False,
        trust_tenant_header: bool = False,
    ) -> None:
        self.rc = RequestCache(
            cache, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
            cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
            allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        )
        self.inner: httpx.BaseTransport = transport or httpx.HTTPTransport()

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
        request.headers["accept-encoding"] = "identity"
        response = self.inner.handle_request(request)
        response.headers["x-semcache"] = "miss"
        if not _capturing(plan, response):
            return response
        if plan.key.stream:
            capture = StreamCapture(plan.key.endpoint)
            response.stream = _TeeStream(
                response.stream, capture, lambda final: self.rc.store(plan, final)
            )
            return response
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            raw = b"".join(stream)
        finally:
            stream.close()
        self.rc.store(plan, _json_or_none(raw))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the inner transport (the cache belongs to the caller)."""
        self.inner.close()


class AsyncCachingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`CachingTransport` (lookups run off the event loop).

    Parameters are those of :class:`CachingTransport`, with an
    ``httpx.AsyncBaseTransport`` (default ``httpx.AsyncHTTPTransport()``).
    """

    def __init__(
        self,
        cache: SemanticCache,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        scope: ScopeLike = None,
        threshold: float | None = None,
        ttl: float | None = None,
        tenant_header: str | None = DEFAULT_TENANT_HEADER,
        cache_truncated: bool = False,
        cache_tool_calls: bool = False,
        allow_anonymous: bool = False,
        trust_tenant_header: bool = False,
    ) -> None:
        self.rc = RequestCache(
            cache, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
            cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
            allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
        )
        self.inner: httpx.AsyncBaseTransport = transport or httpx.AsyncHTTPTransport()

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
        request.headers["accept-encoding"] = "identity"
        response = await self.inner.handle_async_request(request)
        response.headers["x-semcache"] = "miss"
        if not _capturing(plan, response):
            return response
        if plan.key.stream:
            capture = StreamCapture(plan.key.endpoint)
            response.stream = _AsyncTeeStream(
                response.stream, capture, lambda final: self.rc.astore(plan, final)
            )
            return response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        try:
            raw = b"".join([chunk async for chunk in stream])
        finally:
            await stream.aclose()
        await self.rc.astore(plan, _json_or_none(raw))
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
    allow_anonymous, trust_tenant_header
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
    **client_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``AsyncOpenAI(http_client=...)``; see :func:`caching_client`."""
    client_kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    client_kwargs.setdefault("follow_redirects", True)
    wrapped = AsyncCachingTransport(
        cache, transport, scope=scope, threshold=threshold, ttl=ttl, tenant_header=tenant_header,
        cache_truncated=cache_truncated, cache_tool_calls=cache_tool_calls,
        allow_anonymous=allow_anonymous, trust_tenant_header=trust_tenant_header,
    )
    client: httpx.AsyncClient = httpx.AsyncClient(transport=wrapped, **client_kwargs)
    return client
