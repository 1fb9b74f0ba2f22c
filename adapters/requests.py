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
  * ``tenant``: from a request header (see :class:`RequestCache`);
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

Per-request control
-------------------
A ``cache-control`` request header with ``no-cache`` skips the lookup (the
fresh answer is still stored); ``no-store`` skips both lookup and store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from semcache import MISS, Hit, Scope, SemanticCache
from semcache.cache import ScopeLike
from semcache.messages import split_messages
from semcache.prompts import normalize_prompt

__all__ = [
    "DEFAULT_TENANT_HEADER",
    "IGNORED_FIELDS",
    "CacheKey",
    "Endpoint",
    "NotCacheable",
    "Plan",
    "RequestCache",
    "cache_control",
    "endpoint_of",
    "request_key",
    "storable",
]

log = logging.getLogger("semcache.adapters")

Endpoint: TypeAlias = Literal["chat", "responses"]

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
        scope = mkey.scope((base or Scope()).replace(model=model, tenant=tenant, params=params))
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
        Request header holding the tenant; None: no tenants.
    cache_truncated, cache_tool_calls : bool
        Also store ``finish_reason="length"`` / tool-call answers.
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
    ) -> None:
        self.cache = cache
        self.scope = Scope.from_value(scope)
        self.threshold = threshold
        self.ttl = ttl
        self.tenant_header = tenant_header.lower() if tenant_header else None
        self.cache_truncated = cache_truncated
        self.cache_tool_calls = cache_tool_calls
        #: Adapter-level failures (the cache raised, a body could not be stored).
        self.errors = 0

    # ------------------------------------------------------------------ keys
    def plan(
        self, method: str, path: str, header: Callable[[str], str | None], body: bytes
    ) -> Plan:
        """Decide what to do with a request.

        Parameters
        ----------
        method, path : str
        header : callable
            ``header(lowercase_name) -> value or None``.
        body : bytes
            The raw request body.
        """
        endpoint = endpoint_of(path)
        if method.upper() != "POST" or endpoint is None:
            return Plan(None, False, False, "not a cached endpoint")
        lookup, store = cache_control(header("cache-control"))
        if not lookup and not store:
            return Plan(None, False, False, "cache-control: no-store")
        tenant = header(self.tenant_header) if self.tenant_header else None
        try:
            key = request_key(endpoint, json.loads(body), base=self.scope, tenant=tenant or None)
        except (NotCacheable, ValueError, UnicodeDecodeError) as exc:
            return Plan(None, False, False, f"not cacheable: {exc}")
        return Plan(key, lookup, store)

    # --------------------------------------------------------------- lookups
    def lookup(self, plan: Plan) -> Hit | None:
        """The hit for a planned request, or None (also when the cache fails)."""
        if plan.key is None or not plan.lookup:
            return None
        try:
            hit = self.cache.get(plan.key.prompt, scope=plan.key.scope, threshold=self.threshold)
        except Exception as exc:  # the cache must never break a request
            self._failed("lookup", exc)
            return None
        return self._usable(plan.key, hit)

    async def alookup(self, plan: Plan) -> Hit | None:
        """:meth:`lookup` without blocking the event loop."""
        if plan.key is None or not plan.lookup:
            return None
        try:
            hit = await self.cache.aget(
                plan.key.prompt, scope=plan.key.scope, threshold=self.threshold
            )
        except Exception as exc:
            self._failed("lookup", exc)
            return None
        return self._usable(plan.key, hit)

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
            return self.cache.put(
                plan.key.prompt, completion, scope=plan.key.scope, ttl=self.ttl
            ) is not None
        except Exception as exc:
            self._failed("store", exc)
            return False

    async def astore(self, plan: Plan, completion: Any) -> bool:
        """:meth:`store` without blocking the event loop."""
        if not self.should_store(plan, completion):
            return False
        assert plan.key is not None
        try:
            entry = await self.cache.aput(
                plan.key.prompt, completion, scope=plan.key.scope, ttl=self.ttl
            )
        except Exception as exc:
            self._failed("store", exc)
            return False
        return entry is not None

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
