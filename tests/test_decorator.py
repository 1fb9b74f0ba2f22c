"""@semantic_cache around sync and async LLM calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from semcache import ConfigError, Scope, SemanticCache, semantic_cache
from tests.conftest import HashEmbedder


class FakeLLM:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, prompt: Any, **kw: Any) -> str:
        self.calls.append((prompt, kw))
        return f"answer #{len(self.calls)}"


def test_called_only_on_a_miss_and_wrapped_kept(cache: SemanticCache) -> None:
    llm = FakeLLM()

    def ask(prompt: str, model: str = "m1", temperature: float = 0.0) -> str:
        """Docstring kept."""
        return llm(prompt, model=model, temperature=temperature)

    cached = semantic_cache(cache)(ask)
    assert cached.__wrapped__ is ask  # type: ignore[attr-defined]
    assert cached.__doc__ == "Docstring kept." and cached.__name__ == "ask"
    assert cached("What is the capital of France?") == "answer #1"
    assert cached("what's France's capital city?") == "answer #1"  # paraphrase served
    assert cached("What is the capital of France?", model="m1") == "answer #1"  # default bound
    assert len(llm.calls) == 1
    # Other arguments are part of the scope.
    assert cached("What is the capital of France?", model="m2") == "answer #2"
    assert cached("What is the capital of France?", temperature=0.7) == "answer #3"
    assert cached("How tall is Mount Everest?") == "answer #4"
    text, scope = cached.__cache_key__("What is  the capital of France?", model="m2")  # type: ignore[attr-defined]
    assert text == "What is the capital of France?"
    assert scope.params == {"args": {"model": "m2", "temperature": 0.0}}


async def test_async_function(cache: SemanticCache) -> None:
    calls = 0

    @semantic_cache(cache, scope=Scope(tenant="t1"))
    async def ask(prompt: str) -> dict[str, str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return {"text": f"reply {calls}"}

    assert await ask("Tell me a joke about cats") == {"text": "reply 1"}
    assert await ask("tell me a joke about cats") == {"text": "reply 1"}
    assert calls == 1
    assert not cache.get("Tell me a joke about cats")  # other (default) scope: tenant differs
    assert cache.get("Tell me a joke about cats", scope=ask.__cache_key__("x")[1])  # type: ignore[attr-defined]


def test_messages_follow_up_never_crosses_conversations(cache: SemanticCache) -> None:
    llm = FakeLLM()

    @semantic_cache(cache, prompt="messages")
    def chat(messages: list[dict[str, Any]], model: str = "m") -> str:
        return llm(messages)

    def convo(person: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Who is {person}?"},
            {"role": "assistant", "content": f"{person} is a politician."},
            {"role": "user", "content": "How old is he?"},
        ]

    assert chat(convo("Barack Obama")) == "answer #1"
    assert chat(convo("Joe Biden")) == "answer #2"  # same follow-up, other conversation
    assert chat(convo("Barack Obama")) == "answer #1"
    follow_up = convo("Barack Obama")
    follow_up[-1]["content"] = "What is his age?"
    assert chat(follow_up) == "answer #1"  # paraphrased follow-up, same conversation
    other_system = convo("Barack Obama")
    other_system[0]["content"] = "Answer like a pirate."
    assert chat(other_system) == "answer #3"
    assert len(llm.calls) == 3


def test_fails_open_when_the_cache_breaks(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    cache = SemanticCache(tmp_path / "c", embedder=hash_embedder)
    llm = FakeLLM()
    ask = semantic_cache(cache)(lambda prompt: llm(prompt))
    assert ask("q") == "answer #1"
    cache.close()  # every cache call now raises ConfigError: the function must still run
    assert ask("q") == "answer #2"
    assert ask("") == "answer #3"  # an invalid prompt is the cache's problem, not the caller's


def test_non_json_results_and_arguments(hash_embedder: HashEmbedder) -> None:
    with SemanticCache(store="memory", embedder=hash_embedder) as cache:
        class Client:
            pass

        @semantic_cache(cache, ignore=["client"])
        def ask(prompt: str, client: Client) -> set[str]:
            return {"not", "json"}

        assert ask("q", Client()) == {"not", "json"}  # stored? no: not JSON; still returned
        assert len(cache) == 0

        @semantic_cache(cache, encode=sorted, decode=set)
        def ask2(prompt: str) -> set[str]:
            return {"b", "a"}

        assert ask2("q") == {"a", "b"}
        assert ask2("q") == {"a", "b"} and len(cache) == 1

        with pytest.raises(ConfigError, match="no parameter"):
            semantic_cache(cache, prompt="nope")(lambda prompt: prompt)
        with pytest.raises(ConfigError, match="ignore"):
            semantic_cache(cache, ignore=["nope"])(lambda prompt: prompt)
