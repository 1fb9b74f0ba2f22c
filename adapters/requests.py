"""From an OpenAI API request to a cache key, and the rules every adapter follows.

Both the httpx transport (:mod:`semcache.adapters.openai`) and the ASGI
middleware (:mod:`semcache.adapters.middleware`) use this module, so a request
is keyed the same way whichever adapter sees it.

The key of a request
--------------------
Two endpoints are cached: ``.../chat/completions`` and ``.../responses``.

- **Prompt** (what is embedded and compared): the text of the last message, as
  built by :func:`semcache.messages.split_messages`. For the Responses API a
  string ``input`` is one user message, and items without a ``role``
  (``function_call_output``...) take their ``type`` as role.
- **Scope** (must match exactly, never shared):

  * ``model``;
  * ``system``: system/developer messages (and the Responses API
    ``instructions``);
  * ``context``: a digest of every earlier turn, and of the last message's
    non-text parts (images, audio) and tool-call fields;
  * ``tenant``: **who is entitled to the answer** (see "Entitlement" below);
  * ``params``: the endpoint (chat or responses, whose answers differ in shape)
    and **every other body field** except those in :data:`IGNORED_FIELDS`. So
    ``temperature``, ``top_p``, ``max_tokens``, ``max_completion_tokens``,
    ``max_output_tokens``, ``tools``, ``tool_choice``, ``parallel_tool_calls``,
    ``response_format``, ``text``, ``seed``, ``n``, ``stop``,
    ``frequency_penalty``, ``presence_penalty``, ``logit_bias``, ``logprobs``,
    ``top_logprobs``, ``reasoning_effort``/``reasoning``, ``modalities``,
    ``audio``, ``prediction``, ``previous_response_id``, ``conversation``,
    ``include``... are part of the scope, and so is any parameter a future API
    version adds (unknown fields are kept: a wrong hit costs more than a miss).
    ``temperature=1`` and no ``temperature`` are different scopes.

- **Ignored** fields (:data:`IGNORED_FIELDS`): ``stream``, ``stream_options``
  (a streamed and a plain request share entries: a stream is stored as its
  assembled final response and replayed as chunks), ``user``,
  ``safety_identifier``, ``metadata``, ``store``, ``service_tier``,
  ``prompt_cache_key``, ``prompt_cache_retention``: they do not change the
  answer.

What is stored
--------------
Only complete, successful answers: HTTP 200 whose every choice finished with
``finish_reason="stop"`` (Responses API: ``status="completed"`` with only
``message``/``reasoning`` output items). Truncated answers (``length``,
``incomplete``) and tool calls are stored only when the adapter is built with
``cache_truncated=True`` / ``cache_tool_calls=True``; content-filtered, failed
and error answers never are.

Entitlement
-----------
An answer is only ever served to a caller entitled to it. By default the
scope's ``tenant`` is the caller's credential, keyed: ``key:<HMAC-SHA256>`` of
the ``Authorization`` and ``api-key`` header values, under a secret generated
once per cache directory (file :data:`SECRET_FILE`, mode 0600, created
race-free) or, for a memory cache, once per process. So an answer fetched with
API key A is never served to key B, and the raw credential is never stored,
hashed without a secret, or logged. A request with no credential neither hits
nor stores (it is passed through, ``x-semcache: bypass``) unless
``allow_anonymous=True`` (an upstream without auth, e.g. a local model server),
when all anonymous callers share the ``anonymous`` tenant.

The tenant header (default ``x-semcache-tenant``) only *narrows* this: it splits
one credential's entries further (an application serving many customers with
one API key), and a forged value reads nothing of anybody else's. With
``trust_tenant_header=True`` (a deployment behind a gateway that authenticates
callers and sets the header itself) the header *replaces* the credential:
every caller naming tenant ``acme`` shares ``tenant:acme``'s entries.

Sharing across credentials on purpose is the proxy's job
(:mod:`semcache.adapters.server`: ``--keys`` or ``--share-across-keys``); the
ASGI middleware takes a ``scope_from_request`` hook for its own rule.

Per-request control
-------------------
A ``cache-control`` request header with ``no-cache`` skips the lookup (the
fresh answer is still stored); ``no-store`` skips both lookup and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, TypeVar

from semcache import MISS, Hit, Scope, SemanticCache
from semcache.cache import ScopeLike
from semcache.messages import split_messages
from semcache.prompts import normalize_prompt

__all__ = [
    "ANONYMOUS",
    "CREDENTIAL_HEADERS",
    "DEFAULT_TENANT_HEADER",
    "IGNORED_FIELDS",
    "SECRET_FILE",
    "CacheKey",
    "Endpoint",
    "Entitlement",
    "NotCacheable",
    "Plan",
    "RequestCache",
    "cache_control",
    "endpoint_of",
    "load_secret",
    "request_key",
    "storable",
]

log = logging.getLogger("semcache.adapters")

Endpoint: TypeAlias = Literal["chat", "responses"]
T = TypeVar("T")

#: Body fields that do not change the answer and are left out of the scope.
IGNORED_FIELDS: Final = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)

#: Header naming the tenant by default (entries are never shared across tenants).
DEFAULT_TENANT_HEADER: Final = "x-semcache-tenant"

#: Request headers carrying the caller's credential (OpenAI, Azure OpenAI).
CREDENTIAL_HEADERS: Final = ("authorization", "api-key")

#: The HMAC secret's file in a cache directory.
SECRET_FILE: Final = "adapter-credential.key"

#: The tenant of credential-less callers when ``allow_anonymous`` is set.
ANONYMOUS: Final = "anonymous"

_SECRET_BYTES: Final = 32
_PROCESS_SECRET: Final = secrets.token_bytes(_SECRET_BYTES)
_secret_lock = threading.Lock()
_secrets: dict[Path, bytes] = {}


def load_secret(directory: str | Path | None) -> bytes:
    """The HMAC secret that keys credentials for caches in ``directory``.

    Created once with 32 random bytes, owner-only (0600). Creation is race-free
    across processes: the secret is written whole to a private temporary file,
    then hard-linked to its final name, which fails if another process got there
    first (whose secret is then read). Every process sharing a cache directory
    therefore keys a credential the same way.

    Parameters
    ----------
    directory : str, Path or None
        The cache directory; None (a memory cache): a random secret of this
        process, so nothing keyed with it outlives the process.

    Returns
    -------
    bytes
        32 bytes.
    """
    if directory is None:
        return _PROCESS_SECRET
    where = Path(directory).expanduser().absolute()
    with _secret_lock:
        known = _secrets.get(where)
        if known is not None:
            return known
        where.mkdir(parents=True, exist_ok=True)
        path = where / SECRET_FILE
        if not path.exists():
            fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=where)  # mkstemp: mode 0600
            try:
                os.write(fd, secrets.token_bytes(_SECRET_BYTES))
                os.fsync(fd)
                os.close(fd)
                # Fails if another process created it first: then theirs is used.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # Someone widened it: narrow it back rather than key with a readable secret.
            log.warning("semcache: %s had mode %o; set to 0600", path, mode)
            os.chmod(path, 0o600)
        secret = path.read_bytes()
        if len(secret) != _SECRET_BYTES:
            raise OSError(f"{path} is not a semcache secret ({len(secret)} bytes)")
        _secrets[where] = secret
        return secret


class Entitlement:
    """Who a request is from, as the tenant its entries are scoped to.

    Parameters
    ----------
    secret : bytes
        HMAC key (see :func:`load_secret`).
    allow_anonymous : bool
        Cache credential-less requests too, all in the :data:`ANONYMOUS` tenant.
    tenant_header : str or None
        Request header naming a tenant.
    trust_tenant_header : bool
        The header *is* the identity (a gateway sets it); otherwise it only
        narrows the credential's scope.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        allow_anonymous: bool = False,
        tenant_header: str | None = DEFAULT_TENANT_HEADER,
        trust_tenant_header: bool = False,
    ) -> None:
        self._secret = secret
        self.allow_anonymous = allow_anonymous
        self.tenant_header = tenant_header.lower() if tenant_header else None
        self.trust_tenant_header = trust_tenant_header

    def digest(self, credential: str) -> str:
        """The keyed hash of a credential (hex, 128 bits): what scopes and logs may hold."""
        mac = hmac.new(self._secret, credential.encode("utf-8", "surrogateescape"),
                       hashlib.sha256)
        return mac.hexdigest()[:32]

    @staticmethod
    def credential(header: Callable[[str], str | None]) -> str | None:
        """The raw credential of a request (``Authorization`` and ``api-key``), or None."""
        parts = [(name, header(name)) for name in CREDENTIAL_HEADERS]
        # A blank key ("Bearer " with nothing after it) is no credential: it would
        # otherwise be one scope shared by every caller that sends it.
        present = [(n, v) for n, v in parts
                   if v and v.strip() and v.strip().lower() != "bearer"]
        if not present:
            return None
        return "\0".join(f"{n}\0{v}" for n, v in present)

    def tenant(self, header: Callable[[str], str | None]) -> str | None:
        """The tenant a request's entries belong to; None: it may neither hit nor store."""
        named = header(self.tenant_header) if self.tenant_header else None
        if named and self.trust_tenant_header:
            return f"tenant:{named}"
        credential = self.credential(header)
        if credential is not None:
            base = f"key:{self.digest(credential)}"
        elif self.allow_anonymous:
            base = ANONYMOUS
        else:
            return None
        return f"{base}|tenant:{named}" if named else base


#: Default of :meth:`RequestCache.plan`'s ``tenant``: decide from the request headers.
FROM_HEADERS: Final = object()


class NotCacheable(Exception):
    """The request is valid for the upstream but cannot be keyed; it is passed through."""


def endpoint_of(path: str) -> Endpoint | None:
    """Which cached endpoint a URL path is, if any.

    Any prefix is accepted (``/v1/chat/completions``, ``/openai/v1/responses``),
    so the adapters work behind a base URL with a path.
    """
    p = path.rstrip("/")
    if p.endswith("/chat/completions") or p == "chat/completions":
        return "chat"
    if p.endswith("/responses") or p == "responses":
        return "responses"
    return None


@dataclass(frozen=True)
class CacheKey:
    """What a request is cached under.

    Attributes
    ----------
    endpoint : {"chat", "responses"}
    prompt : str
        Normalised text of the last message.
    scope : Scope
    stream : bool
        The caller asked for a stream (``stream: true``).
    include_usage : bool
        A chat stream asked for a final usage chunk (``stream_options``).
    """

    endpoint: Endpoint
    prompt: str
    scope: Scope
    stream: bool
    include_usage: bool = False


def _responses_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Responses API ``instructions`` + ``input`` as chat-style messages."""
    raw = body.get("input")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise NotCacheable("instructions is not a string")
        messages.append({"role": "system", "content": instructions})
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, Mapping):
                raise NotCacheable("an input item is not an object")
            if isinstance(item.get("role"), str):
                messages.append(dict(item))
            else:
                # function_call_output, reasoning, item_reference...: no role, so the
                # item's type plays it; the rest of the item lands in the context digest.
                kind = item.get("type")
                messages.append({**item, "role": f"item:{kind}"})
    else:
        raise NotCacheable("input is neither a string nor a list")
    return messages


def request_key(
    endpoint: Endpoint,
    body: Any,
    *,
    base: Scope | None = None,
    tenant: str | None = None,
    semantic_context: bool = False,
) -> CacheKey:
    """Build the cache key of an OpenAI request body.

    Parameters
    ----------
    endpoint : {"chat", "responses"}
    body : object
        The decoded JSON body.
    base : Scope, optional
        The adapter's own scope (namespace...); request fields are added to it.
    tenant : str, optional
    semantic_context : bool
        The earlier turns go into the scope as text (a cache with
        ``context_match="semantic"``), see :meth:`semcache.messages.MessageKey.scope`.

    Returns
    -------
    CacheKey

    Raises
    ------
    NotCacheable
        The body has no usable model or messages (it still goes upstream, whose
        answer is then the caller's error message).
    """
    if not isinstance(body, Mapping):
        raise NotCacheable("the body is not a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise NotCacheable("no model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise NotCacheable("stream is not a boolean")
    if endpoint == "chat":
        messages: Any = body.get("messages")
        skip = {"messages", "model"}
    else:
        messages = _responses_messages(body)
        skip = {"input", "instructions", "model"}
    params = {k: v for k, v in body.items() if k not in skip and k not in IGNORED_FIELDS}
    params["semcache:endpoint"] = endpoint
    try:
        mkey = split_messages(messages)
        prompt = normalize_prompt(mkey.prompt)
        scope = mkey.scope((base or Scope()).replace(model=model, tenant=tenant, params=params),
                           semantic=semantic_context)
    except ValueError as exc:  # InvalidPromptError / ConfigError: not keyable, not our error
        raise NotCacheable(str(exc)) from exc
    options = body.get("stream_options")
    include_usage = bool(
        endpoint == "chat" and isinstance(options, Mapping) and options.get("include_usage")
    )
    return CacheKey(endpoint, prompt, scope, stream, include_usage)


def cache_control(value: str | None) -> tuple[bool, bool]:
    """``(lookup, store)`` allowed by a request's ``cache-control`` header.

    ``no-cache``: do not serve from the cache, but store the fresh answer;
    ``no-store``: neither. Other directives are ignored.
    """
    if not value:
        return True, True
    directives = {d.strip().split("=", 1)[0].lower() for d in value.split(",")}
    if "no-store" in directives:
        return False, False
    if "no-cache" in directives:
        return False, True
    return True, True


def storable(
    endpoint: Endpoint,
    response: Any,
    *,
    cache_truncated: bool = False,
    cache_tool_calls: bool = False,
) -> tuple[bool, str]:
    """Whether a (complete, HTTP 200) response body may be stored, and why not.

    Returns
    -------
    (bool, str)
        ``(True, "")`` or ``(False, reason)``.
    """
    if not isinstance(response, Mapping):
        return False, "not a JSON object"
    if response.get("error"):
        return False, "an error body"
    if endpoint == "chat":
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices:
            return False, "no choices"
        ok = {"stop"}
        if cache_truncated:
            ok.add("length")
        if cache_tool_calls:
            ok.update({"tool_calls", "function_call"})
        for choice in choices:
            if not isinstance(choice, Mapping):
                return False, "a malformed choice"
            reason = choice.get("finish_reason")
            if reason not in ok:
                return False, f"finish_reason={reason!r}"
            message = choice.get("message")
            if isinstance(message, Mapping) and not cache_tool_calls and (
                message.get("tool_calls") or message.get("function_call")
            ):
                return False, "a tool call"
        return True, ""
    status = response.get("status")
    if status != "completed" and not (cache_truncated and status == "incomplete"):
        return False, f"status={status!r}"
    output = response.get("output")
    if not isinstance(output, list):
        return False, "no output"
    for item in output:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind not in ("message", "reasoning") and not cache_tool_calls:
            return False, f"a {kind} output item"
    return True, ""


@dataclass
class Plan:
    """What an adapter does with one request.

    Attributes
    ----------
    key : CacheKey or None
        None: the request is passed through untouched (``x-semcache: bypass``).
        Its ``scope.tenant`` is who is entitled to the answer.
    lookup, store : bool
        Allowed by the request's ``cache-control``.
    reason : str
        Why the request bypasses the cache (for logs).
    """

    key: CacheKey | None
    lookup: bool = True
    store: bool = True
    reason: str = ""
    started: float = field(default_factory=time.perf_counter)
    #: Keyed hash of the caller's credential (never the credential), if any.
    credential: str | None = None


class RequestCache:
    """The request-level logic shared by the adapters, failing open everywhere.

    Parameters
    ----------
    cache : SemanticCache
    scope : Scope, mapping or str, optional
        Base scope of every entry (e.g. a namespace per application).
    threshold : float, optional
        Cosine threshold override for lookups.
    ttl : float, optional
        Lifetime of stored entries (default: the cache's).
    tenant_header : str or None
        Request header naming a tenant; None: no tenants. It narrows the
        credential's scope, or replaces it with ``trust_tenant_header``.
    cache_truncated, cache_tool_calls : bool
        Also store ``finish_reason="length"`` / tool-call answers.
    allow_anonymous : bool
        Cache requests without a credential (all in one ``anonymous`` tenant).
    trust_tenant_header : bool
        The tenant header is the caller's identity (set by an authenticating
        gateway): callers naming the same tenant share entries across keys.
    """

    def __init__(
        self,
        cache: SemanticCache,
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
        self.cache = cache
        self.scope = Scope.from_value(scope)
        self.threshold = threshold
        self.ttl = ttl
        self.tenant_header = tenant_header.lower() if tenant_header else None
        self.cache_truncated = cache_truncated
        self.cache_tool_calls = cache_tool_calls
        self.entitlement = Entitlement(
            load_secret(cache.directory), allow_anonymous=allow_anonymous,
            tenant_header=tenant_header, trust_tenant_header=trust_tenant_header,
        )
        #: Adapter-level failures (the cache raised, a body could not be stored).
        self.errors = 0
        self._executor: Executor | None = None
        self._fast: Executor | None = None
        self._threads = min(32, (os.cpu_count() or 1) + 4)
        #: (scope, prompt) of recent exact entries: their lookups need no embedding.
        self._exact_hint: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._hint_lock = threading.Lock()

    # --------------------------------------------------------------- threads
    def use_executors(self, executor: Executor | None = None, threads: int | None = None
                      ) -> None:
        """Where async lookups and stores run (see the middleware's ``executor``).

        Parameters
        ----------
        executor : Executor, optional
            Runs lookups that may embed, and stores. Default: a pool of
            ``threads`` threads of this adapter.
        threads : int, optional
            Default ``min(32, cpus + 4)``.
        """
        self._executor = executor
        if threads is not None:
            self._threads = max(1, int(threads))

    @property
    def executor(self) -> Executor:
        """The pool lookups that may embed, and stores, run in."""
        if self._executor is None:
            # Its own pool, so exact repeats (the fast pool) and other work on the
            # loop's default executor never wait for it; not larger, because without
            # a batching embedder concurrent model calls oversubscribe the cores.
            self._executor = ThreadPoolExecutor(self._threads,
                                                thread_name_prefix="semcache-lookup")
        return self._executor

    @property
    def fast_executor(self) -> Executor:
        """A small pool for exact repeats, so they never wait behind embeddings."""
        if self._fast is None:
            self._fast = ThreadPoolExecutor(8, thread_name_prefix="semcache-exact")
        return self._fast

    async def run(self, fn: Callable[..., T], *args: Any, fast: bool = False) -> T:
        """``fn(*args)`` in one of the adapter's pools, awaited."""
        loop = asyncio.get_running_loop()
        pool = self.fast_executor if fast else self.executor
        return await loop.run_in_executor(pool, functools.partial(fn, *args))

    def embed(self, texts: list[str]) -> Any:
        """Unit-length embeddings of normalised prompts, ``(n, d)``, as the cache's lookups see
        them (:meth:`SemanticCache.embed`: the vector a lookup has just computed is reused)."""
        return self.cache.embed(texts)

    def _hint(self, key: CacheKey) -> None:
        with self._hint_lock:
            self._exact_hint[(key.scope.json, key.prompt)] = None
            self._exact_hint.move_to_end((key.scope.json, key.prompt))
            while len(self._exact_hint) > 100_000:
                self._exact_hint.popitem(last=False)

    def _hinted(self, key: CacheKey) -> bool:
        return (key.scope.json, key.prompt) in self._exact_hint

    # ------------------------------------------------------------------ keys
    def plan(
        self,
        method: str,
        path: str,
        header: Callable[[str], str | None],
        body: bytes,
        *,
        tenant: str | object | None = FROM_HEADERS,
    ) -> Plan:
        """Decide what to do with a request.

        Never raises: a body that cannot be keyed (bad JSON or UTF-8, nesting
        deeper than the parser allows, wrong types) is passed through.

        Parameters
        ----------
        method, path : str
        header : callable
            ``header(lowercase_name) -> value or None``.
        body : bytes
            The raw request body.
        tenant : str or None, optional
            Who the caller is, decided by the adapter (``scope_from_request``,
            the proxy's key file); None: not entitled to cached answers. By
            default it comes from the request's headers (:class:`Entitlement`).
        """
        endpoint = endpoint_of(path)
        if method.upper() != "POST" or endpoint is None:
            return Plan(None, False, False, "not a cached endpoint")
        lookup, store = cache_control(header("cache-control"))
        if not lookup and not store:
            return Plan(None, False, False, "cache-control: no-store")
        credential = self.entitlement.credential(header)
        digest = None if credential is None else self.entitlement.digest(credential)
        who = self.entitlement.tenant(header) if tenant is FROM_HEADERS else tenant
        if who is None:
            return Plan(None, False, False, "no credential", credential=digest)
        if not isinstance(who, str) or not who:
            return Plan(None, False, False, "no tenant", credential=digest)
        try:
            key = request_key(endpoint, json.loads(body), base=self.scope, tenant=who,
                              semantic_context=self.cache.context_match == "semantic")
        except (NotCacheable, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return Plan(None, False, False, f"not cacheable: {exc}", credential=digest)
        except RecursionError:
            return Plan(None, False, False, "not cacheable: nested too deeply",
                        credential=digest)
        except Exception as exc:  # hostile input must never fail the request: forward it
            log.info("semcache: request not keyed: %r", exc)
            return Plan(None, False, False, f"not cacheable: {type(exc).__name__}",
                        credential=digest)
        return Plan(key, lookup, store, credential=digest)

    # --------------------------------------------------------------- lookups
    def lookup(self, plan: Plan) -> Hit | None:
        """The hit for a planned request, or None (also when the cache fails)."""
        if plan.key is None or not plan.lookup:
            return None
        try:
            hit = self._get(plan.key)
        except Exception as exc:  # the cache must never break a request
            self._failed("lookup", exc)
            return None
        return self._usable(plan.key, hit)

    async def alookup(self, plan: Plan) -> Hit | None:
        """:meth:`lookup` without blocking the event loop."""
        if plan.key is None or not plan.lookup:
            return None
        key = plan.key
        try:
            hit = await self.run(self._get, key, fast=self._hinted(key))
        except Exception as exc:
            self._failed("lookup", exc)
            return None
        return self._usable(key, hit)

    def _get(self, key: CacheKey) -> Hit | Any:
        hit = self.cache.get(key.prompt, scope=key.scope, threshold=self.threshold)
        if isinstance(hit, Hit) and hit.exact:
            self._hint(key)
        return hit

    def _usable(self, key: CacheKey, hit: Hit | Any) -> Hit | None:
        if hit is MISS or not isinstance(hit, Hit):
            return None
        if not isinstance(hit.completion, dict):
            # Not something an adapter stored (another writer shares the scope): skip it.
            log.warning("semcache: entry %d is not an API response; ignored", hit.entry_id)
            return None
        return hit

    # ---------------------------------------------------------------- stores
    def should_store(self, plan: Plan, completion: Any) -> bool:
        """Whether ``completion`` (the parsed final response) may be stored for ``plan``."""
        if plan.key is None or not plan.store:
            return False
        ok, reason = storable(
            plan.key.endpoint,
            completion,
            cache_truncated=self.cache_truncated,
            cache_tool_calls=self.cache_tool_calls,
        )
        if not ok:
            log.info("semcache: not storing the answer: %s", reason)
        return ok

    def store(self, plan: Plan, completion: Any) -> bool:
        """Store a final response if allowed; returns whether it was stored."""
        if not self.should_store(plan, completion):
            return False
        assert plan.key is not None
        try:
            return self._put(plan.key, completion) is not None
        except Exception as exc:
            self._failed("store", exc)
            return False

    async def astore(self, plan: Plan, completion: Any) -> bool:
        """:meth:`store` without blocking the event loop."""
        if not self.should_store(plan, completion):
            return False
        assert plan.key is not None
        key = plan.key
        try:
            entry = await self.run(self._put, key, completion)
        except Exception as exc:
            self._failed("store", exc)
            return False
        return entry is not None

    def _put(self, key: CacheKey, completion: Any) -> int | None:
        entry = self.cache.put(key.prompt, completion, scope=key.scope, ttl=self.ttl)
        if entry is not None:
            self._hint(key)
        return entry

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("semcache: cache %s failed; the request is served without it: %r", what, exc)


def hit_headers(hit: Hit, stream: bool) -> list[tuple[str, str]]:
    """Response headers of a served hit (without content-length)."""
    ctype = "text/event-stream; charset=utf-8" if stream else "application/json"
    headers = [
        ("content-type", ctype),
        ("x-semcache", "hit"),
        ("x-semcache-similarity", f"{hit.score:.4f}"),
    ]
    if stream:
        headers.append(("cache-control", "no-cache"))
    return headers
