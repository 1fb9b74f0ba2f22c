"""``@semantic_cache``: cache a function that calls an LLM.

The decorated function runs only on a miss; its result is stored. The key is
the prompt argument (a string, or OpenAI-style ``messages``, see
:mod:`semcache.messages`) and the scope is the decorator's ``scope`` plus every
other argument of the call (model, temperature, ...), bound with their defaults,
so two calls that differ in any argument never share an answer.

Cache failures fail open: the function is called and its result returned, and
the failure is logged.

With ``SemanticCache(target_wrong_hit_rate=r)`` the decorator needs nothing more
for the online guarantee (:mod:`semcache.guarantee`): a would-be hit the cache
cannot yet vouch for comes back as a miss (a *probe*), the function runs, and
the ``put`` of its result under the same prompt and scope lets the cache compare
the fresh answer with the stored one and learn from the label. The comparison
sees the stored form (after ``encode``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from semcache._types import JSONValue
from semcache.cache import MISS, Hit, ScopeLike, SemanticCache
from semcache.errors import ConfigError, SemcacheError
from semcache.messages import split_messages
from semcache.prompts import normalize_prompt
from semcache.scope import Scope, canonical_json

__all__ = ["semantic_cache"]

log = logging.getLogger("semcache")

P = ParamSpec("P")
R = TypeVar("R")

_PROMPT_NAMES = ("prompt", "messages", "query", "question", "input", "text")


def _prompt_param(sig: inspect.Signature, prompt: str | None) -> str:
    names = list(sig.parameters)
    if prompt is not None:
        if prompt not in sig.parameters:
            raise ConfigError(f"the function has no parameter {prompt!r}; it has {names}")
        return prompt
    for n in _PROMPT_NAMES:
        if n in sig.parameters:
            return n
    for n, p in sig.parameters.items():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return n
    raise ConfigError("cannot tell which argument is the prompt; pass prompt='name'")


def semantic_cache(
    cache: SemanticCache,
    *,
    prompt: str | Callable[..., Any] | None = None,
    scope: ScopeLike | Callable[..., ScopeLike] = None,
    ignore: Sequence[str] = (),
    threshold: float | None = None,
    ttl: float | None = None,
    encode: Callable[[Any], JSONValue] | None = None,
    decode: Callable[[JSONValue], Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so its results are served from ``cache``.

    Parameters
    ----------
    cache : SemanticCache
    prompt : str or callable, optional
        Name of the parameter holding the prompt (a str or a ``messages`` list),
        or a callable taking the call's arguments and returning one. Default: the
        parameter named ``prompt``, ``messages``, ``query``, ``question``,
        ``input`` or ``text``, else the first positional parameter.
    scope : Scope, mapping, str, or callable, optional
        The base scope, or a callable taking the call's arguments and returning it.
    ignore : sequence of str
        Parameters left out of the scope (clients, callbacks, loggers): every other
        argument is part of it and must be JSON-like.
    threshold, ttl : optional
        Per-function overrides of the cache's settings.
    encode, decode : callable, optional
        Convert the function's result to JSON for storage and back, e.g.
        ``encode=lambda r: r.model_dump()`` and ``decode=ChatCompletion.model_validate``.

    Returns
    -------
    decorator
        The wrapper keeps ``__wrapped__`` and adds ``cache`` and
        ``__cache_key__(*args, **kwargs) -> (prompt_text, Scope)``.

    Examples
    --------
    >>> @semantic_cache(cache, ignore=("client",))               # doctest: +SKIP
    ... def ask(prompt: str, model: str = "gpt-4o-mini", client=None) -> str:
    ...     return client.complete(prompt, model=model)
    """
    ignored = set(ignore)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)
        prompt_name = None if callable(prompt) else _prompt_param(sig, prompt)
        if prompt_name is not None:
            ignored.add(prompt_name)
        unknown = [n for n in ignored if n not in sig.parameters]
        if unknown:
            raise ConfigError(f"ignore names parameters the function does not have: {unknown}")

        def cache_key(*args: Any, **kwargs: Any) -> tuple[str, Scope]:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            value = (
                prompt(*args, **kwargs) if callable(prompt) else bound.arguments[str(prompt_name)]
            )
            base = Scope.from_value(scope(*args, **kwargs) if callable(scope) else scope)
            params: dict[str, Any] = {}
            for name, arg in bound.arguments.items():
                if name in ignored:
                    continue
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    params.update({k: v for k, v in arg.items() if k not in ignored})
                else:
                    params[name] = list(arg) if kind is inspect.Parameter.VAR_POSITIONAL else arg
            try:
                canonical_json(params)
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc}; list non-JSON arguments in semantic_cache(..., ignore=[...])"
                ) from None
            if params:
                base = base.replace(params={"args": params})
            if isinstance(value, str):
                return normalize_prompt(value), base
            key = split_messages(value)
            return key.prompt, key.scope(base, semantic=cache.context_match == "semantic")

        def lookup(args: Any, kwargs: Any) -> tuple[Any, tuple[str, Scope] | None]:
            try:
                text, sc = cache_key(*args, **kwargs)
                hit = cache.get(text, scope=sc, threshold=threshold)
            except SemcacheError as exc:
                log.warning("semcache: lookup for %s failed; calling it: %s", fn.__qualname__, exc)
                return MISS, None
            if isinstance(hit, Hit):
                try:
                    return (decode(hit.completion) if decode else hit.completion), (text, sc)
                except Exception as exc:  # a stored value the decoder no longer accepts
                    log.warning("semcache: could not decode a cached result: %s", exc)
            return MISS, (text, sc)

        def store(key: tuple[str, Scope] | None, result: Any) -> None:
            if key is None:
                return
            try:
                cache.put(key[0], encode(result) if encode else result, scope=key[1], ttl=ttl)
            except Exception as exc:  # never let caching break the user's call
                log.warning("semcache: could not store the result of %s: %s", fn.__qualname__, exc)

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                import asyncio

                value, key = await asyncio.to_thread(lookup, args, kwargs)
                if value is not MISS:
                    return value
                result = await afn(*args, **kwargs)
                await asyncio.to_thread(store, key, result)
                return result

            wrapper: Any = awrapper
        else:

            @functools.wraps(fn)
            def swrapper(*args: Any, **kwargs: Any) -> Any:
                value, key = lookup(args, kwargs)
                if value is not MISS:
                    return value
                result = fn(*args, **kwargs)
                store(key, result)
                return result

            wrapper = swrapper
        wrapper.cache = cache
        wrapper.__cache_key__ = cache_key
        return cast(Callable[P, R], wrapper)

    return decorate


