"""A Scope is a value: what it was given cannot change it afterwards (issue 25, item 8)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from semcache import MISS, Scope, SemanticCache
from semcache.scope import scope_id
from tests.conftest import HashEmbedder


def test_mutating_the_params_dict_does_not_change_the_scope() -> None:
    params: dict[str, Any] = {"temperature": 0, "tools": [{"name": "search", "args": ["q"]}]}
    s = Scope(model="m", params=params)
    before = (s.json, scope_id(s, "fp"), hash(s))
    params["temperature"] = 1
    params["tools"][0]["name"] = "delete_everything"
    params["tools"][0]["args"].append("x")
    params["seed"] = 7
    assert (s.json, scope_id(s, "fp"), hash(s)) == before
    # What the scope shows is what its id hashes: the values it was given, not the later ones.
    assert s.params["temperature"] == 0
    assert s.params["tools"][0]["name"] == "search"
    assert list(s.params["tools"][0]["args"]) == ["q"]
    assert "seed" not in s.params
    assert s == Scope(model="m", params={"temperature": 0, "tools": [{"name": "search", "args": ["q"]}]})
    assert s != Scope(model="m", params=params)


def test_params_cannot_be_changed_in_place() -> None:
    s = Scope(params={"temperature": 0, "response_format": {"type": "json"}, "stop": ["a"]})
    with pytest.raises(TypeError):
        s.params["temperature"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        s.params["response_format"]["type"] = "text"
    with pytest.raises(AttributeError):
        s.params["stop"].append("b")
    with pytest.raises(AttributeError):
        s.params = {}  # type: ignore[misc]  # frozen dataclass


def test_as_dict_is_a_mutable_copy_that_cannot_reach_back() -> None:
    s = Scope(model="m", params={"temperature": 0, "stop": ["a"], "fmt": {"type": "json"}})
    d = s.as_dict()
    assert d == {"model": "m", "params": {"temperature": 0, "stop": ["a"], "fmt": {"type": "json"}}}
    d["params"]["temperature"] = 1
    d["params"]["stop"].append("b")
    d["params"]["fmt"]["type"] = "text"
    assert s.as_dict()["params"] == {"temperature": 0, "stop": ["a"], "fmt": {"type": "json"}}
    assert Scope.from_value(s.as_dict()) == s


def test_replace_pickle_and_copy_keep_the_scope() -> None:
    s = Scope(model="m", params={"temperature": 0, "stop": ["a"]}, tenant="t")
    assert pickle.loads(pickle.dumps(s)) == s
    assert copy.deepcopy(s) == s and copy.copy(s) == s
    r = s.replace(params={"temperature": 1})
    assert r.params["temperature"] == 1 and s.params["temperature"] == 0
    assert r != s


def test_from_value_mapping_is_copied() -> None:
    given: dict[str, Any] = {"model": "m", "temperature": 0, "params": {"top_p": 1}}
    s = Scope.from_value(given)
    given["temperature"] = 1
    given["params"]["top_p"] = 0.5
    assert s == Scope(model="m", params={"temperature": 0, "top_p": 1})


def test_cache_never_serves_a_temperature_0_answer_for_temperature_1() -> None:
    """The reported failure, end to end: a dict mutated after building its scope."""
    params: dict[str, Any] = {"temperature": 0}
    cold = Scope(model="m", params=params)
    with SemanticCache(store="memory", embedder=HashEmbedder()) as cache:
        cache.put("write a poem about the sea", "deterministic poem", scope=cold)
        params["temperature"] = 1  # the caller reuses its dict for a creative call
        hot = Scope(model="m", params=params)
        assert cache.get("write a poem about the sea", scope=hot) is MISS
        # The first scope still means temperature 0, says so, and finds its own entry:
        # before scopes were frozen it said temperature 1 here and still served this hit.
        hit = cache.get("write a poem about the sea", scope=cold)
        assert hit and hit.completion == "deterministic poem"
        assert cold.params["temperature"] == 0
        assert cache.scope_id(Scope.from_value(cold.as_dict())) == cache.scope_id(cold)
        assert cache.scope_id(cold) == cache.scope_id({"model": "m", "temperature": 0})
