"""A LangChain ``BaseCache`` backed by a semantic cache.

>>> from langchain_core.globals import set_llm_cache               # doctest: +SKIP
>>> from semcache.adapters.langchain import SemanticLangChainCache
>>> set_llm_cache(SemanticLangChainCache(SemanticCache()))           # doctest: +SKIP

LangChain calls the cache with ``(prompt, llm_string)``. For chat models the
prompt is LangChain's JSON serialisation of the messages; it is turned back
into messages and keyed like an OpenAI request (:func:`semcache.messages.split_messages`:
the last turn is compared semantically, the system prompt and earlier turns
must match). For text LLMs the prompt string itself is compared. The
``llm_string`` (model class, model name, temperature, stop words, bound tools...)
is put **into the scope**, so entries of different model settings live in
different partitions and never compete for a lookup.

Generations are stored as JSON (:func:`langchain_core.messages.message_to_dict`
for chat messages); nothing is pickled. As with the other adapters, answers cut
off by a token limit and answers that call tools are not stored unless asked
for. Cache failures are logged and read as misses, so the model is called.

``clear()`` empties the whole :class:`~semcache.SemanticCache` (as LangChain's
own caches do); give LangChain a cache of its own if others share it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from semcache import Hit, Scope, SemanticCache
from semcache.cache import ScopeLike
from semcache.messages import split_messages
from semcache.prompts import normalize_prompt

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.messages import (
        BaseMessage,
        convert_to_openai_messages,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.outputs import ChatGeneration, Generation
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "semcache.adapters.langchain needs langchain-core: pip install 'semcache-llm[langchain]'"
    ) from exc

__all__ = ["SemanticLangChainCache"]

log = logging.getLogger("semcache.adapters")

_FORMAT = 1


def _chat_messages(prompt: str) -> list[BaseMessage] | None:
    """The messages of a chat model's serialised prompt, or None for a plain text prompt."""
    if not prompt.startswith("["):
        return None
    try:
        raw = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(raw, list) or not raw:
        return None
    dicts = []
    for item in raw:
        # LangChain's serialisation: {"lc": 1, "type": "constructor", "id": [...], "kwargs": {...}}
        kwargs = item.get("kwargs") if isinstance(item, dict) and item.get("lc") == 1 else None
        if not isinstance(kwargs, dict) or not isinstance(kwargs.get("type"), str):
            return None
        dicts.append({"type": kwargs["type"], "data": kwargs})
    try:
        return messages_from_dict(dicts)
    except Exception:  # not messages after all: compare the text
        return None


def _encode(generations: Sequence[Generation]) -> dict[str, Any]:
    out = []
    for g in generations:
        item: dict[str, Any] = {"text": g.text, "generation_info": g.generation_info}
        if isinstance(g, ChatGeneration):
            item["message"] = message_to_dict(g.message)
        out.append(item)
    return {"semcache_langchain": _FORMAT, "generations": out}


def _decode(value: Any) -> list[Generation] | None:
    if not isinstance(value, dict) or value.get("semcache_langchain") != _FORMAT:
        return None
    gens: list[Generation] = []
    for item in value.get("generations") or []:
        info = item.get("generation_info")
        if "message" in item:
            (message,) = messages_from_dict([item["message"]])
            gens.append(ChatGeneration(message=message, generation_info=info))
        else:
            gens.append(Generation(text=item.get("text", ""), generation_info=info))
    return gens


def _finish_reason(g: Generation) -> Any:
    info = g.generation_info or {}
    if "finish_reason" in info:
        return info["finish_reason"]
    if isinstance(g, ChatGeneration):
        return g.message.response_metadata.get("finish_reason")
    return None


class SemanticLangChainCache(BaseCache):
    """LangChain's LLM cache interface over a :class:`~semcache.SemanticCache`.

    Parameters
    ----------
    cache : SemanticCache
    scope : Scope, mapping or str, optional
        Base scope of every entry (default: namespace ``"langchain"``).
    threshold : float, optional
        Cosine threshold for lookups (default: the cache's).
    ttl : float, optional
        Lifetime of stored entries (default: the cache's).
    cache_truncated, cache_tool_calls : bool
        Also store generations cut off by a token limit / that call tools.

    Examples
    --------
    >>> llm = ChatOpenAI(model="gpt-4o-mini", cache=SemanticLangChainCache(cache))  # doctest: +SKIP
    """

    def __init__(
        self,
        cache: SemanticCache,
        *,
        scope: ScopeLike = "langchain",
        threshold: float | None = None,
        ttl: float | None = None,
        cache_truncated: bool = False,
        cache_tool_calls: bool = False,
    ) -> None:
        self.cache = cache
        self.scope = Scope.from_value(scope)
        self.threshold = threshold
        self.ttl = ttl
        self.cache_truncated = cache_truncated
        self.cache_tool_calls = cache_tool_calls

    def key(self, prompt: str, llm_string: str) -> tuple[str, Scope]:
        """The prompt text and scope LangChain's ``(prompt, llm_string)`` is cached under."""
        base = self.scope.replace(params={"langchain_llm": llm_string})
        messages = _chat_messages(prompt)
        if messages is None:
            return normalize_prompt(prompt), base.replace(params={"langchain_kind": "text"})
        mkey = split_messages(convert_to_openai_messages(messages))
        scope = mkey.scope(base.replace(params={"langchain_kind": "chat"}))
        return normalize_prompt(mkey.prompt), scope

    def _storable(self, generations: Sequence[Generation]) -> bool:
        if not generations:
            return False
        for g in generations:
            reason = _finish_reason(g)
            if reason in ("length", "max_tokens") and not self.cache_truncated:
                return False
            if reason in ("content_filter",):
                return False
            if (
                isinstance(g, ChatGeneration)
                and getattr(g.message, "tool_calls", None)
                and not self.cache_tool_calls
            ):
                return False
        return True

    # ------------------------------------------------------------ BaseCache
    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The cached generations for a prompt and model setting, or None."""
        try:
            text, scope = self.key(prompt, llm_string)
            hit = self.cache.get(text, scope=scope, threshold=self.threshold)
            return _decode(hit.completion) if isinstance(hit, Hit) else None
        except Exception as exc:  # never let the cache break the model call
            log.warning("semcache: LangChain lookup failed; calling the model: %r", exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations of a call (unless truncated or calling tools)."""
        if not self._storable(return_val):
            return
        try:
            text, scope = self.key(prompt, llm_string)
            self.cache.put(text, _encode(return_val), scope=scope, ttl=self.ttl)
        except Exception as exc:
            log.warning("semcache: LangChain update failed: %r", exc)

    def clear(self, **kwargs: Any) -> None:
        """Delete every entry of the underlying cache."""
        self.cache.clear()

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """:meth:`lookup` in a worker thread (embedding and disk reads block)."""
        return await asyncio.to_thread(self.lookup, prompt, llm_string)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """:meth:`update` in a worker thread."""
        await asyncio.to_thread(self.update, prompt, llm_string, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        """:meth:`clear` in a worker thread."""
        await asyncio.to_thread(self.clear, **kwargs)
