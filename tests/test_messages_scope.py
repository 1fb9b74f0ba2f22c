"""Keys from chat messages, and scope canonicalisation."""

from __future__ import annotations

from typing import Any

import pytest

from semcache import ConfigError, InvalidPromptError, Scope, split_messages
from semcache.scope import scope_id


def test_single_user_turn() -> None:
    key = split_messages([{"role": "user", "content": "Hi there"}])
    assert (key.prompt, key.system, key.context) == ("Hi there", None, None)


def test_system_and_history_go_to_the_scope() -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "S1"},
        {"role": "developer", "content": [{"type": "text", "text": "S2"}]},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    key = split_messages(msgs)
    assert key.prompt == "second" and key.system == "S1\n\nS2"
    assert key.context is not None
    changed = [dict(m) for m in msgs]
    changed[3]["content"] = "another reply"
    assert split_messages(changed).context != key.context
    scope = key.scope(Scope(model="m"))
    assert scope.model == "m" and scope.system == "S1\n\nS2" and scope.context == key.context


def test_list_content_with_images_does_not_crash_and_is_keyed() -> None:
    def msg(url: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}]

    a, b = split_messages(msg("http://x/1.png")), split_messages(msg("http://x/2.png"))
    assert a.prompt == b.prompt == "What is in this picture?"
    assert a.context != b.context  # same words about another image never hit
    only_image = split_messages([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/1.png"}}]}])
    assert only_image.prompt and only_image.context


def test_tool_results_are_keyed_by_their_call() -> None:
    base = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "w", "arguments": "{}"}}]}]
    one = split_messages([*base, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    two = split_messages([*base, {"role": "tool", "tool_call_id": "c1", "content": "rain"}])
    assert one.prompt == "sunny" and one.context is not None
    assert one.context == split_messages(
        [*base, {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]).context
    assert two.prompt == "rain"


@pytest.mark.parametrize("bad", [[], "hi", None, [{"content": "x"}], [{"role": "user", "content": 5}],
                                 [{"role": "system", "content": "only system"}],
                                 [{"role": "user", "content": None}]])
def test_bad_messages(bad: Any) -> None:
    with pytest.raises(InvalidPromptError):
        split_messages(bad)


def test_scope_canonical_forms() -> None:
    a = Scope(model="m", params={"temperature": 0, "tools": [{"b": 1, "a": 2.0}]})
    b = Scope.from_value({"tools": [{"a": 2, "b": 1}], "model": "m", "temperature": 0.0})
    assert a == b and hash(a) == hash(b) and a.json == b.json
    assert scope_id(a, "fp1") == scope_id(b, "fp1") != scope_id(a, "fp2")
    assert Scope.from_value("faq") == Scope(namespace="faq")
    assert Scope.from_value(None) == Scope()
    assert Scope(tenant="t") != Scope(namespace="t")  # fields never alias each other
    assert Scope(params={"temperature": 0.5}) != Scope(params={"temperature": 0.7})


@pytest.mark.parametrize("bad", [
    {"model": 3}, {"params": {"x": object()}}, {"params": {"x": float("nan")}},
    {"params": {1: "non-string key"}},
])
def test_bad_scopes(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Scope(**bad)
    with pytest.raises(ConfigError):
        Scope.from_value(42)  # type: ignore[arg-type]
