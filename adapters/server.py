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
import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

# Only light imports at module level: ``semcache serve --help`` and the time to
# listen must not wait for numpy, the index kernels or the embedding model.
# The cache, the middleware and the model are imported in the background.
from ._asgi import ASGIScope, Message, Receive, Send, header_getter

if TYPE_CHECKING:
    import httpx

    from semcache import SemanticCache

    from .requests import Plan

__all__ = ["ForwardingApp", "KeyEntry", "KeyRing", "ProxyApp", "ServeApp", "UpstreamVerifier",
           "configure", "run"]

log = logging.getLogger("semcache.adapters")

_INSTALL: Final = "pip install 'semcache-llm[server]'"

#: Default largest request body, in bytes (``--max-body``).
MAX_BODY: Final = 16 * 1024 * 1024

#: The tenant header and anonymous tenant of :mod:`.requests` (kept equal by a test).
DEFAULT_TENANT_HEADER: Final = "x-semcache-tenant"
ANONYMOUS: Final = "anonymous"

#: Per-connection headers a proxy must not forward (RFC 9110 §7.6.1), plus those
#: recomputed for the new hop.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade", b"host"}
)


async def _error(send: Send, status: int, message: str, kind: str, code: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answer in the API's own shape, so clients raise their usual errors."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _TooLarge(Exception):
    """The request body grew past the proxy's limit while it was being forwarded."""


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
    max_body : int
        Largest request body forwarded, in bytes; a longer one is refused (413).
    """

    def __init__(self, upstream: str, *, timeout: float = 600.0,
                 max_body: int = MAX_BODY) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            hx = _httpx()
            self._client = hx.AsyncClient(
                timeout=hx.Timeout(self.timeout, connect=10.0), follow_redirects=False,
                limits=hx.Limits(max_connections=1000, max_keepalive_connections=200),
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
        limit = self.max_body

        async def body() -> AsyncIterator[bytes]:
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                yield chunk
                if not message.get("more_body", False):
                    return

        request = self.client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self.client.send(request, stream=True)
        except _TooLarge:
            await _error(send, 413, f"request body over {limit} bytes", "invalid_request_error",
                         "request_too_large")
            return
        except hx.HTTPError as exc:
            log.warning("semcache serve: upstream %s failed: %r", url, exc)
            await _error(send, 502, f"upstream unreachable: {exc!r}", "proxy_error",
                         "bad_gateway")
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


class KeyEntry(NamedTuple):
    """One proxy key of a ``--keys`` file: its tenant and the upstream key it uses."""

    tenant: str
    upstream_key: str | None


def _token(header: Callable[[str], str | None]) -> str | None:
    """The key a caller presents: ``Authorization: Bearer <key>`` or ``api-key: <key>``."""
    auth = header("authorization")
    if auth:
        scheme, _, rest = auth.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest.strip() else auth.strip()
    key = header("api-key")
    return key.strip() if key else None


class KeyRing:
    """The proxy's own keys (``--keys FILE``): proxy key -> tenant and upstream key.

    The file is JSON, an object mapping each proxy key to
    ``{"tenant": "acme", "upstream_key": "sk-..."}`` (or ``"upstream_key_env":
    "ENV_VAR"`` to read it from the environment, or neither for an upstream
    without auth). Keys are held as keyed hashes, so a lookup does not compare
    the presented key against the stored ones character by character.

    Parameters
    ----------
    entries : mapping
        proxy key -> :class:`KeyEntry`.
    """

    def __init__(self, entries: Mapping[str, KeyEntry]) -> None:
        self._secret = secrets.token_bytes(32)
        self._by_digest = {self._digest(k): e for k, e in entries.items()}

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """Read a key file; ``ValueError`` says what is wrong with it (never a key)."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the key file {path}: {exc}") from None
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: expected a JSON object of proxy key -> settings")
        entries: dict[str, KeyEntry] = {}
        for n, (key, spec) in enumerate(raw.items(), 1):
            if not key or not isinstance(spec, dict) or not isinstance(spec.get("tenant"), str) \
                    or not spec["tenant"]:
                raise ValueError(f"{path}: entry {n} needs a non-empty key and a 'tenant' string")
            upstream = spec.get("upstream_key")
            env = spec.get("upstream_key_env")
            if env is not None:
                upstream = os.environ.get(str(env))
                if upstream is None:
                    raise ValueError(f"{path}: entry {n}: ${env} is not set")
            if upstream is not None and not isinstance(upstream, str):
                raise ValueError(f"{path}: entry {n}: 'upstream_key' must be a string")
            entries[key] = KeyEntry(spec["tenant"], upstream)
        return cls(entries)

    def find(self, header: Callable[[str], str | None]) -> KeyEntry | None:
        """The entry of the key a request presents, or None."""
        token = _token(header)
        return None if token is None else self._by_digest.get(self._digest(token))


class UpstreamVerifier:
    """Checks a credential with the upstream before a shared entry is served to it.

    ``--share-across-keys`` shares entries between every caller the upstream
    accepts. The first time a credential would be served a hit, the proxy asks
    the upstream's model listing (``GET <prefix>/models``) with that credential;
    a 200 is remembered for ``ttl`` seconds (at most ``max_entries``
    credentials, by keyed hash), anything else is not remembered, and the
    request goes upstream like a miss (where it fails as it should).

    Parameters
    ----------
    forward : ForwardingApp
        The proxy's client to the upstream.
    ttl : float
        Seconds a successful check is trusted.
    max_entries : int
    """

    def __init__(self, forward: ForwardingApp, *, ttl: float = 300.0,
                 max_entries: int = 100_000) -> None:
        self.forward = forward
        self.ttl = ttl
        self.max_entries = max_entries
        self._ok: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self.checks = 0

    async def __call__(self, scope: ASGIScope, plan: Plan) -> bool:
        digest = plan.credential
        if digest is None:
            return True  # no credential: the anonymous tenant, shared by nobody else
        now = time.monotonic()
        until = self._ok.get(digest)
        if until is not None and until > now:
            return True
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            ok = await self._check(scope)
            future.set_result(ok)
        except BaseException:
            future.set_result(False)
            raise
        finally:
            del self._pending[digest]
        if ok:
            self._ok[digest] = time.monotonic() + self.ttl
            self._ok.move_to_end(digest)
            while len(self._ok) > self.max_entries:
                self._ok.popitem(last=False)
        return ok

    async def _check(self, scope: ASGIScope) -> bool:
        hx = _httpx()
        self.checks += 1
        path = scope.get("path", "").rstrip("/")
        prefix = path.rsplit("/chat/completions", 1)[0] if path.endswith("/chat/completions") \
            else path.rsplit("/responses", 1)[0]
        wanted = {b"authorization", b"api-key"}
        headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() in wanted]
        try:
            r = await self.forward.client.get(self.forward.upstream + prefix + "/models",
                                              headers=headers)
        except hx.HTTPError as exc:
            log.warning("semcache serve: could not verify a credential upstream: %r", exc)
            return False
        return bool(r.status_code == 200)


class ProxyApp:
    """The whole proxy: ``/healthz``, ``/readyz``, ``/metrics``, and the cached forwarding app.

    Parameters
    ----------
    upstream : str
    cache : SemanticCache
    keys : KeyRing, optional
        The proxy authenticates callers itself: a request must present one of
        these keys (else 401); its entries are scoped to the key's tenant, and
        it goes upstream with the key's upstream key.
    share_across_keys : bool
        Share entries between every credential the upstream accepts (checked
        with :class:`UpstreamVerifier` before the first hit).
    verify_ttl : float
        Seconds a credential checked with the upstream is trusted.
    max_body : int
        Largest request body accepted, in bytes (413 beyond).
    **options
        Passed to :class:`~semcache.adapters.middleware.SemanticCacheMiddleware`
        (``threshold``, ``ttl``, ``tenant_header``, ``allow_anonymous``, ...).
    """

    def __init__(self, upstream: str, cache: SemanticCache, *, keys: KeyRing | None = None,
                 share_across_keys: bool = False, verify_ttl: float = 300.0,
                 max_body: int = MAX_BODY, forward: ForwardingApp | None = None,
                 **options: Any) -> None:
        from .middleware import CacheMetrics, SemanticCacheMiddleware

        if keys is not None and share_across_keys:
            raise ValueError("--keys and --share-across-keys are two different ways to share; "
                             "choose one")
        self.cache = cache
        self.forward = forward or ForwardingApp(upstream, max_body=max_body)
        self.metrics = CacheMetrics()
        self.keys = keys
        self.share_across_keys = share_across_keys
        self.verifier = UpstreamVerifier(self.forward, ttl=verify_ttl) if share_across_keys \
            else None
        self.max_body = max_body
        self.allow_anonymous = bool(options.get("allow_anonymous", False))
        self.trust_tenant_header = bool(options.get("trust_tenant_header", False))
        header = options.get("tenant_header", DEFAULT_TENANT_HEADER)
        self.tenant_header: str | None = header.lower() if header else None
        hook = self._tenant if (keys is not None or share_across_keys) else None
        self.middleware = SemanticCacheMiddleware(
            self.forward, cache, metrics=self.metrics, scope_from_request=hook,
            verify_hit=self.verifier, max_body=max_body, **options,
        )

    def _tenant(self, scope: ASGIScope) -> str | None:
        """Who a caller is, when the proxy shares across keys (``--keys``, ``--share-across-keys``)."""
        header = header_getter(scope)
        named = header(self.tenant_header) if self.tenant_header else None
        if named and self.trust_tenant_header:
            return f"tenant:{named}"
        if self.keys is not None:
            base: str | None = scope.get("semcache.tenant")
        elif header("authorization") or header("api-key"):
            base = "shared"  # every credential the upstream accepts (checked before a hit)
        else:
            base = ANONYMOUS if self.allow_anonymous else None
        if base is None:
            return None
        return f"{base}|tenant:{named}" if named else base

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = scope.get("path")
            if path == "/healthz":
                await self._health(send)
                return
            if path == "/readyz":
                await self._reply(send, 200, b'{"ready":true}', b"application/json")
                return
            if path == "/metrics":
                text = self.middleware.render_metrics().encode()
                await self._reply(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
                return
        if scope["type"] == "http":
            checked = await _admit(scope, send, self.keys, self.max_body)
            if checked is None:
                return
            scope = checked
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
        body = json.dumps({"status": status, "ready": True, "entries": entries,
                           "upstream": self.forward.upstream}).encode()
        await self._reply(send, 200, body, b"application/json")

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, ctype: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _admit(scope: ASGIScope, send: Send, keys: KeyRing | None, max_body: int
                 ) -> ASGIScope | None:
    """The request as it goes on (upstream key swapped in), or None once refused.

    Refuses a declared body over ``max_body`` (413) and, with ``--keys``, a
    request presenting no proxy key (401). Every path is behind the keys:
    the proxy's keys are the only credentials its callers hold.
    """
    header = header_getter(scope)
    length = header("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body):
        await _error(send, 413, f"request body over {max_body} bytes",
                     "invalid_request_error", "request_too_large")
        return None
    if keys is None:
        return scope
    entry = keys.find(header)
    if entry is None:
        await _error(send, 401, "unknown or missing API key for this proxy",
                     "invalid_request_error", "invalid_api_key")
        return None
    headers = [(k, v) for k, v in scope.get("headers") or []
               if k.lower() not in (b"authorization", b"api-key")]
    if entry.upstream_key:
        headers.append((b"authorization", f"Bearer {entry.upstream_key}".encode("latin-1")))
    return {**scope, "headers": headers, "semcache.tenant": f"tenant:{entry.tenant}"}


class ServeApp:
    """What ``semcache serve`` runs: it answers at once, and caches once the cache is ready.

    Importing the cache and loading the embedding model take seconds, so they
    happen in a background thread after the server listens. Until then
    ``/healthz`` answers ``{"status": "ok", "ready": false}``, ``/readyz`` 503,
    and requests go upstream uncached (``x-semcache: bypass``, ``--keys`` still
    enforced).

    Parameters
    ----------
    forward : ForwardingApp
    build : callable
        ``build(forward) -> ProxyApp``, run in the background thread.
    keys : KeyRing, optional
    max_body : int
    """

    def __init__(self, forward: ForwardingApp, build: Callable[[ForwardingApp], ProxyApp], *,
                 keys: KeyRing | None = None, max_body: int = MAX_BODY) -> None:
        self.forward = forward
        self.keys = keys
        self.max_body = max_body
        self.proxy: ProxyApp | None = None
        self.failed: str | None = None
        self._build = build
        self.loader = threading.Thread(target=self._load, daemon=True, name="semcache-load")

    def _load(self) -> None:
        try:
            self.proxy = self._build(self.forward)
        except Exception as exc:  # the proxy keeps forwarding; /readyz says why it is not ready
            log.error("semcache serve: the cache could not be loaded: %r", exc)
            self.failed = repr(exc)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        proxy = self.proxy
        if proxy is not None:
            await proxy(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("method") in ("GET", "HEAD") and scope.get("path") in ("/healthz", "/readyz"):
            if scope["path"] == "/healthz":
                body = json.dumps({"status": "ok", "ready": False, "entries": None,
                                   "upstream": self.forward.upstream}).encode()
                await ProxyApp._reply(send, 200, body, b"application/json")
            else:
                body = json.dumps({"ready": False, "error": self.failed}).encode()
                await ProxyApp._reply(send, 503, body, b"application/json")
            return
        checked = await _admit(scope, send, self.keys, self.max_body)
        if checked is None:
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or []
                           if k.lower() != b"x-semcache"]
                message = {**message, "headers": [*headers, (b"x-semcache", b"bypass")]}
            await send(message)

        await self.forward(checked, receive, marked)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loader.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.forward.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

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
    who = parser.add_argument_group(
        "who is served what",
        "By default entries are scoped by a keyed hash of each caller's API key "
        "(Authorization / api-key header): one key's answers never reach another key, "
        "and requests without a key are forwarded uncached.")
    who.add_argument("--allow-anonymous", action="store_true",
                     help="also cache requests without a key (an upstream without auth); "
                          "they share one 'anonymous' scope")
    who.add_argument("--keys", metavar="FILE", default=None,
                     help="JSON file of this proxy's own keys: {\"<proxy key>\": {\"tenant\": "
                          "\"acme\", \"upstream_key\": \"sk-...\"}}. Callers must present one "
                          "(else 401); entries are shared within a tenant, and the upstream "
                          "is called with the tenant's upstream key")
    who.add_argument("--share-across-keys", action="store_true",
                     help="share entries between every key the upstream accepts: a key not "
                          "seen before is checked with GET <upstream>/v1/models before it is "
                          "served a hit")
    who.add_argument("--verify-ttl", type=float, default=300.0,
                     help="seconds a key checked with the upstream is trusted (default 300)")
    who.add_argument("--tenant-header", default=DEFAULT_TENANT_HEADER,
                     help="request header naming a tenant; it splits a caller's entries "
                          "further ('' to ignore it)")
    who.add_argument("--trust-tenant-header", action="store_true",
                     help="the tenant header IS the caller's identity (only behind a gateway "
                          "that authenticates callers and sets it): callers naming the same "
                          "tenant share entries")
    parser.add_argument("--namespace", default=None, help="scope every entry to this name")
    parser.add_argument("--cache-truncated", action="store_true",
                        help="also store answers cut off by max_tokens")
    parser.add_argument("--cache-tool-calls", action="store_true",
                        help="also store answers that call tools")
    parser.add_argument("--max-body", type=int, default=MAX_BODY,
                        help=f"largest request body in bytes (413 beyond; default {MAX_BODY})")
    parser.add_argument("--embed-batch", type=int, default=32, metavar="N",
                        help="embed concurrent lookups together, up to N prompts a model call "
                             "(default 32; 0: each lookup calls the model itself)")
    parser.add_argument("--graceful-timeout", type=float, default=1.5,
                        help="seconds requests in flight may finish after SIGTERM (default 1.5)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(_fast_exit=True)


def run(args: argparse.Namespace) -> int:
    """Start the proxy; returns when it is stopped (SIGINT/SIGTERM).

    Parsed by :func:`configure` (the ``semcache serve`` command), the process
    then ends right after the cache is closed, without the interpreter's slow
    teardown; other callers get the return.
    """
    fast_exit = bool(getattr(args, "_fast_exit", False))
    try:
        import uvicorn

        _httpx()
    except ImportError as exc:
        print(f"semcache serve needs uvicorn and httpx ({exc}): {_INSTALL}", file=sys.stderr)
        return 2
    keys = None
    if args.keys:
        try:
            keys = KeyRing.load(args.keys)
        except ValueError as exc:
            print(f"semcache serve: {exc}", file=sys.stderr)
            return 2
    if keys is not None and args.share_across_keys:
        print("semcache serve: --keys and --share-across-keys are two different ways to share; "
              "choose one", file=sys.stderr)
        return 2
    if args.embed_batch < 0:
        print("semcache serve: --embed-batch must be 0 or positive", file=sys.stderr)
        return 2
    if args.max_body <= 0:
        print("semcache serve: --max-body must be positive", file=sys.stderr)
        return 2
    where = "memory" if args.memory else str(args.cache_dir or "~/.cache/semcache/proxy")
    built: list[Any] = []

    def build(forward: ForwardingApp) -> ProxyApp:
        from semcache import SemanticCache, default_directory

        kwargs: dict[str, Any] = {"ttl": args.ttl}
        if args.embed_batch > 0:
            from semcache.batching import BatchingEmbedder
            from semcache.embedding import default_embedder

            # Concurrent lookups share model calls: one call at a time, never one per
            # thread fighting for the cores (see docs/adapters.md, "Throughput").
            kwargs["embedder"] = BatchingEmbedder(default_embedder(), max_batch=args.embed_batch)
        if args.threshold is not None:
            kwargs["threshold"] = args.threshold
        if args.memory:
            cache = SemanticCache(store="memory", **kwargs)
        else:
            cache = SemanticCache(args.cache_dir or default_directory("proxy"), **kwargs)
        built.append(cache)
        cache.embedder.encode(["warm up"])  # load the model before saying ready
        return ProxyApp(
            args.upstream, cache, keys=keys, share_across_keys=args.share_across_keys,
            verify_ttl=args.verify_ttl, max_body=args.max_body, forward=forward,
            tenant_header=args.tenant_header or None, scope=args.namespace,
            cache_truncated=args.cache_truncated, cache_tool_calls=args.cache_tool_calls,
            allow_anonymous=args.allow_anonymous, trust_tenant_header=args.trust_tenant_header,
        )

    app = ServeApp(ForwardingApp(args.upstream, max_body=args.max_body), build, keys=keys,
                   max_body=args.max_body)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    # Listen before announcing, so a client that connects right away is queued.
    sock.listen(1024)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"semcache serve: listening on http://{shown}:{port} -> {args.upstream} "
          f"(cache: {where}; GET /readyz once the model is loaded)", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=args.graceful_timeout)
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
        sock.close()
        if app.loader.is_alive():
            # Still loading: the cache may be half-built; wait briefly, then leave it.
            app.loader.join(timeout=0.2)
        if not app.loader.is_alive():
            for cache in built:
                cache.close()
    if fast_exit:
        # Everything this process owns is closed (the cache's files included). The
        # interpreter's own teardown (torch and the model, thread pools) took 2-3 s
        # on a 2-core machine after a 0.15 s uvicorn shutdown: skip it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


class _Stopped(Exception):
    """Raised by the SIGTERM handler once uvicorn has shut down."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped
