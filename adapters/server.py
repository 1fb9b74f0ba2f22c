"""``semcache serve``: an OpenAI-compatible caching proxy.

::

    semcache serve --upstream https://api.openai.com --port 8080
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python my_app.py

A forwarding ASGI app (httpx, streaming both ways) wrapped by
:class:`~semcache.adapters.middleware.SemanticCacheMiddleware`, served by
uvicorn. Any client works by changing its base URL; the request path is
appended to ``--upstream`` unchanged (``/v1/chat/completions`` goes to
``<upstream>/v1/chat/completions``), and headers (``authorization`` included)
are passed on, so the proxy holds no API key.

Two endpoints of its own:

- ``GET /healthz``: ``{"status": "ok", "entries": n, "upstream": url}``;
- ``GET /metrics``: Prometheus text: requests by outcome (hit/miss/bypass),
  hits, misses, stored answers, upstream errors, cache errors, entries, and
  latency histograms (see :class:`~semcache.adapters.middleware.CacheMetrics`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from semcache import SemanticCache, default_directory

from .middleware import ASGIScope, CacheMetrics, Receive, SemanticCacheMiddleware, Send
from .requests import DEFAULT_TENANT_HEADER

if TYPE_CHECKING:
    import httpx

__all__ = ["ForwardingApp", "ProxyApp", "configure", "run"]

log = logging.getLogger("semcache.adapters")

_INSTALL: Final = "pip install 'semcache-llm[server]'"

#: Per-connection headers a proxy must not forward (RFC 9110 §7.6.1), plus those
#: recomputed for the new hop.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"host"}
)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(f"semcache serve needs httpx: {_INSTALL}") from exc
    return httpx


class ForwardingApp:
    """ASGI app that sends every request on to ``upstream`` and streams the answer back.

    Parameters
    ----------
    upstream : str
        Base URL the request path is appended to, e.g. ``https://api.openai.com``.
    timeout : float
        Read timeout in seconds (long generations); connecting times out after 10 s.
    """

    def __init__(self, upstream: str, *, timeout: float = 600.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            hx = _httpx()
            self._client = hx.AsyncClient(
                timeout=hx.Timeout(self.timeout, connect=10.0), follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        hx = _httpx()
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.upstream + scope.get("path", "/") + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in _HOP_BY_HOP]
        # Uncompressed answers: the cache middleware can only read (and store) those.
        headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
        headers.append((b"accept-encoding", b"identity"))

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        request = self.client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self.client.send(request, stream=True)
        except hx.HTTPError as exc:
            log.warning("semcache serve: upstream %s failed: %r", url, exc)
            err = json.dumps({"error": {"message": f"upstream unreachable: {exc!r}",
                                        "type": "proxy_error", "code": "bad_gateway"}}).encode()
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(err)).encode())]})
            await send({"type": "http.response.body", "body": err, "more_body": False})
            return
        try:
            out_headers = [
                (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out_headers})
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


class ProxyApp:
    """The whole proxy: ``/healthz``, ``/metrics``, and the cached forwarding app.

    Parameters
    ----------
    upstream : str
    cache : SemanticCache
    **options
        Passed to :class:`~semcache.adapters.middleware.SemanticCacheMiddleware`
        (``threshold``, ``ttl``, ``tenant_header``, ``cache_truncated``, ...).
    """

    def __init__(self, upstream: str, cache: SemanticCache, **options: Any) -> None:
        self.cache = cache
        self.forward = ForwardingApp(upstream)
        self.metrics = CacheMetrics()
        self.middleware = SemanticCacheMiddleware(
            self.forward, cache, metrics=self.metrics, **options
        )

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = scope.get("path")
            if path == "/healthz":
                await self._health(send)
                return
            if path == "/metrics":
                text = self.middleware.render_metrics().encode()
                await self._reply(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
                return
        await self.middleware(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.forward.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, send: Send) -> None:
        try:
            entries: int | None = len(self.cache)
            status = "ok"
        except Exception as exc:  # the proxy still forwards; say the cache is unwell
            entries, status = None, f"cache unavailable: {exc!r}"
        body = json.dumps({"status": status, "entries": entries,
                           "upstream": self.forward.upstream}).encode()
        await self._reply(send, 200, body, b"application/json")

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, ctype: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``semcache serve`` options."""
    parser.add_argument("--upstream", required=True,
                        help="base URL of the API, e.g. https://api.openai.com")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache directory (default: ~/.cache/semcache/proxy)")
    parser.add_argument("--memory", action="store_true",
                        help="keep the cache in memory only (lost on exit)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine similarity a stored prompt needs to be served")
    parser.add_argument("--ttl", type=float, default=None, help="seconds an entry lives")
    parser.add_argument("--tenant-header", default=DEFAULT_TENANT_HEADER,
                        help="request header naming the tenant ('' for none)")
    parser.add_argument("--namespace", default=None, help="scope every entry to this name")
    parser.add_argument("--cache-truncated", action="store_true",
                        help="also store answers cut off by max_tokens")
    parser.add_argument("--cache-tool-calls", action="store_true",
                        help="also store answers that call tools")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    """Start the proxy; returns when it is stopped (SIGINT/SIGTERM)."""
    try:
        import uvicorn

        _httpx()
    except ImportError as exc:
        print(f"semcache serve needs uvicorn and httpx ({exc}): {_INSTALL}", file=sys.stderr)
        return 2
    kwargs: dict[str, Any] = {"ttl": args.ttl}
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    if args.memory:
        cache = SemanticCache(store="memory", **kwargs)
    else:
        cache = SemanticCache(args.cache_dir or default_directory("proxy"), **kwargs)
    try:
        # Load the embedding model now, not on the first request.
        cache.embedder.encode(["warm up"])
        app = ProxyApp(
            args.upstream, cache, tenant_header=args.tenant_header or None,
            scope=args.namespace, cache_truncated=args.cache_truncated,
            cache_tool_calls=args.cache_tool_calls,
        )
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        # Listen before announcing, so a client that connects right away is queued.
        sock.listen(1024)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"semcache serve: listening on http://{shown}:{port} -> {args.upstream} "
              f"(cache: {cache.directory or 'memory'})", flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on")
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with
        # the handler found at start: make that handler end run() normally, so the cache
        # is closed and the exit status is 0.
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except (_Stopped, KeyboardInterrupt):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        cache.close()
    return 0


class _Stopped(Exception):
    """Raised by the SIGTERM handler once uvicorn has shut down."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped
