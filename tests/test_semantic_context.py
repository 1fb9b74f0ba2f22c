"""context_match="semantic": a paraphrased conversation shares its follow-up answer, another never does."""

from __future__ import annotations

from typing import Any

import pytest

from semcache import ConfigError, Scope, SemanticCache, semantic_cache, split_messages
from semcache.adapters.requests import request_key
from semcache.embedding import SentenceTransformerEmbedder

FIRST = "What is photosynthesis?"
FIRST_PARAPHRASE = "Can you explain what photosynthesis is?"
ANSWER0 = "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen."
OTHER_FIRST = "What is cellular respiration?"
OTHER_ANSWER0 = "Cellular respiration is how cells break sugar down with oxygen to release energy."
FOLLOW = "What gas is released as a byproduct?"


def conv(first: str, answer: str, follow: str = FOLLOW) -> list[dict[str, str]]:
    return [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
            {"role": "user", "content": follow}]


def scope_of(cache: SemanticCache, messages: list[dict[str, str]], **base: Any) -> tuple[str, Scope]:
    key = split_messages(messages)
    return key.prompt, key.scope(Scope(**base), semantic=cache.context_match == "semantic")


@pytest.fixture
def semantic(embedder: SentenceTransformerEmbedder) -> Any:
    with SemanticCache(store="memory", embedder=embedder, context_match="semantic") as cache:
        yield cache


def test_paraphrased_conversation_shares_the_follow_up_and_another_does_not(
    semantic: SemanticCache, embedder: SentenceTransformerEmbedder,
) -> None:
    prompt, scope = scope_of(semantic, conv(FIRST, ANSWER0))
    assert semantic.put(prompt, "Oxygen.", scope=scope) is not None
    prompt, scope = scope_of(semantic, conv(FIRST_PARAPHRASE, ANSWER0))
    hit = semantic.get(prompt, scope=scope)
    assert hit and hit.completion == "Oxygen." and -1.0 <= hit.score <= 1.0
    # The same follow-up after another conversation: never the first one's answer.
    prompt, scope = scope_of(semantic, conv(OTHER_FIRST, OTHER_ANSWER0))
    assert not semantic.get(prompt, scope=scope)
    # Another tenant's paraphrased conversation: nothing crosses tenants.
    prompt, scope = scope_of(semantic, conv(FIRST_PARAPHRASE, ANSWER0), tenant="other")
    assert not semantic.get(prompt, scope=scope)
    # The default (exact) mode never shares across paraphrased conversations.
    with SemanticCache(store="memory", embedder=embedder) as exact:
        prompt, scope = scope_of(exact, conv(FIRST, ANSWER0))
        exact.put(prompt, "Oxygen.", scope=scope)
        prompt, scope = scope_of(exact, conv(FIRST_PARAPHRASE, ANSWER0))
        assert not exact.get(prompt, scope=scope)
        prompt, scope = scope_of(exact, conv(FIRST, ANSWER0))
        assert exact.get(prompt, scope=scope)


def test_contexts_are_not_counted_as_lookups_and_do_not_chain(semantic: SemanticCache) -> None:
    prompt, scope = scope_of(semantic, conv(FIRST, ANSWER0))
    semantic.put(prompt, "Oxygen.", scope=scope)
    prompt, scope = scope_of(semantic, conv(FIRST_PARAPHRASE, ANSWER0))
    semantic.get(prompt, scope=scope)
    st = semantic.stats()
    assert (st.hits, st.misses, st.puts) == (1, 0, 1)
    # A conversation that matched stores under the canonical context: one registered context.
    semantic.put("Which organelle does it happen in?", "Chloroplasts.", scope=scope)
    contexts = [e for e in semantic.entries() if e.completion.__class__ is str
                and str(e.completion).startswith("ctx:")]
    assert len(contexts) == 1


def test_decorator_and_request_key_use_the_semantic_context(semantic: SemanticCache) -> None:
    calls: list[str] = []

    @semantic_cache(semantic)
    def chat(messages: list[dict[str, str]]) -> str:
        calls.append(messages[0]["content"])
        return "Oxygen." if "photosynthesis" in messages[0]["content"] else "Carbon dioxide."

    assert chat(conv(FIRST, ANSWER0)) == "Oxygen."
    assert chat(conv(FIRST_PARAPHRASE, ANSWER0)) == "Oxygen."
    assert chat(conv(OTHER_FIRST, OTHER_ANSWER0)) == "Carbon dioxide."
    assert calls == [FIRST, OTHER_FIRST]

    body = {"model": "m", "messages": conv(FIRST_PARAPHRASE, ANSWER0)}
    key = request_key("chat", body, tenant="t", semantic_context=True)
    assert key.scope.context is not None and key.scope.context.startswith("user: " + FIRST_PARAPHRASE)
    assert request_key("chat", body, tenant="t").scope.context != key.scope.context  # digest by default


def test_non_text_turns_fall_back_to_the_exact_context() -> None:
    tool_turn = [{"role": "user", "content": FIRST},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                 {"role": "user", "content": FOLLOW}]
    key = split_messages(tool_turn)
    assert key.context_text is None
    assert key.scope(semantic=True).context == key.context
    assert split_messages([{"role": "user", "content": FOLLOW}]).context_text is None


def test_bad_context_options_are_refused(embedder: SentenceTransformerEmbedder) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(store="memory", embedder=embedder, context_match="fuzzy")
    with pytest.raises(ConfigError):
        SemanticCache(store="memory", embedder=embedder, context_match="semantic", context_threshold=1.5)
    with SemanticCache(store="memory", embedder=embedder, context_match="semantic") as cache:
        assert cache.context_threshold >= cache.threshold
