"""The LangChain cache with a real model class (``ChatOpenAI``) against the upstream
stand-in over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_openai import ChatOpenAI

from semcache import SemanticCache
from semcache.adapters.langchain import SemanticLangChainCache
from tests.upstream_stub import MODEL, PARAPHRASE, Q, RaisingCache, UpstreamStub


@pytest.fixture(autouse=True)
def _reset(stub: UpstreamStub) -> Iterator[None]:
    stub.reset()
    yield
    set_llm_cache(None)


@pytest.fixture
def lc_cache(cache: SemanticCache) -> SemanticLangChainCache:
    return SemanticLangChainCache(cache)


def chat(stub: UpstreamStub, **kw: Any) -> ChatOpenAI:
    kw.setdefault("model", MODEL)
    kw.setdefault("temperature", 0)
    return ChatOpenAI(base_url=stub.url + "/v1", api_key="sk-test", max_retries=0,
                      **kw)


def test_set_llm_cache_serves_identical_and_paraphrased_prompts(
    stub: UpstreamStub, lc_cache: SemanticLangChainCache
) -> None:
    set_llm_cache(lc_cache)
    llm = chat(stub)
    first = llm.invoke(Q)
    assert first.content == f"Answer 1: {Q}" and stub.count == 1
    assert llm.invoke(Q).content == first.content
    again = llm.invoke(PARAPHRASE)
    assert again.content == first.content and isinstance(again, AIMessage) and stub.count == 1
    assert llm.invoke("How do I bake sourdough bread?").content.startswith("Answer 2")


def test_llm_string_is_part_of_the_scope(stub: UpstreamStub, lc_cache: SemanticLangChainCache
                                         ) -> None:
    chat(stub, cache=lc_cache).invoke(Q)
    chat(stub, cache=lc_cache, temperature=0.7).invoke(Q)
    chat(stub, cache=lc_cache, model="gpt-4o").invoke(Q)
    chat(stub, cache=lc_cache).invoke(Q, stop=["\n"])
    assert stub.count == 4
    chat(stub, cache=lc_cache, model="gpt-4o").invoke(Q)
    assert stub.count == 4
    # In the scope, not post-filtered: each setting is its own partition of the cache.
    assert lc_cache.cache.stats().scopes == 4


def test_system_prompt_and_history_are_part_of_the_key(
    stub: UpstreamStub, lc_cache: SemanticLangChainCache
) -> None:
    llm = chat(stub, cache=lc_cache)
    llm.invoke([SystemMessage("Be brief."), HumanMessage(Q)])
    llm.invoke([SystemMessage("Be brief."), HumanMessage(PARAPHRASE)])
    assert stub.count == 1
    llm.invoke([SystemMessage("Answer in French."), HumanMessage(Q)])
    llm.invoke([HumanMessage("Tell me about Germany."), AIMessage("It is in Europe."),
                HumanMessage(Q)])
    assert stub.count == 3


async def test_async_model_calls(stub: UpstreamStub, lc_cache: SemanticLangChainCache) -> None:
    llm = chat(stub, cache=lc_cache)
    first = await llm.ainvoke(Q)
    second = await llm.ainvoke(PARAPHRASE)
    assert second.content == first.content and stub.count == 1
    await lc_cache.aclear()
    await llm.ainvoke(Q)
    assert stub.count == 2


def test_truncated_and_tool_call_generations_are_not_stored(
    stub: UpstreamStub, lc_cache: SemanticLangChainCache
) -> None:
    stub.finish = "length"
    llm = chat(stub, cache=lc_cache)
    llm.invoke(Q)
    llm.invoke(Q)
    assert stub.count == 2
    stub.finish = "stop"
    stub.tool_call = True

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    tooled = llm.bind_tools([weather])
    assert tooled.invoke("Weather in Paris?").tool_calls
    assert tooled.invoke("Weather in Paris?").tool_calls
    assert stub.count == 4
    assert len(lc_cache.cache) == 0


def test_generations_round_trip_as_json(lc_cache: SemanticLangChainCache) -> None:
    chat_prompt = '[{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", ' \
        '"HumanMessage"], "kwargs": {"content": "Hi there", "type": "human"}}]'
    gen = ChatGeneration(message=AIMessage("Hello!", response_metadata={"finish_reason": "stop"}),
                         generation_info={"finish_reason": "stop"})
    lc_cache.update(chat_prompt, "llm-a", [gen])
    (back,) = lc_cache.lookup(chat_prompt, "llm-a") or []
    assert isinstance(back, ChatGeneration) and back.message.content == "Hello!"
    assert back.generation_info == {"finish_reason": "stop"}
    assert lc_cache.lookup(chat_prompt, "llm-b") is None
    # What is stored is plain JSON.
    text, scope = lc_cache.key(chat_prompt, "llm-a")
    hit = lc_cache.cache.get(text, scope=scope)
    assert text == "Hi there" and hit and hit.completion["semcache_langchain"] == 1
    # A text LLM's prompt is compared as text.
    lc_cache.update("Complete: the sky is", "llm-t", [Generation(text=" blue")])
    (plain,) = lc_cache.lookup("Complete: the sky is", "llm-t") or []
    assert type(plain) is Generation and plain.text == " blue"
    lc_cache.clear()
    assert lc_cache.lookup(chat_prompt, "llm-a") is None


def test_list_content_messages(stub: UpstreamStub, lc_cache: SemanticLangChainCache) -> None:
    llm = chat(stub, cache=lc_cache)
    msg = HumanMessage(content=[{"type": "text", "text": "What is in this picture?"},
                                {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}])
    llm.invoke([msg])
    llm.invoke([msg])
    assert stub.count == 1


def test_broken_cache_fails_open(stub: UpstreamStub, hash_embedder: Any) -> None:
    broken = SemanticLangChainCache(RaisingCache(store="memory", embedder=hash_embedder))
    llm = chat(stub, cache=broken)
    assert llm.invoke(Q).content == f"Answer 1: {Q}"
    assert llm.invoke(Q).content == f"Answer 2: {Q}"
