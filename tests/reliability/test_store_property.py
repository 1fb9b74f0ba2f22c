"""Property test: random scopes and operations against a model; no wrong-scope hit, nothing lost."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcache import Hit
from tests.reliability.store_tools import open_cache

SCOPES: list[Any] = [None, "tenant-a", "tenant-b", {"model": "x", "temperature": 0},
                     {"model": "x", "temperature": 1}, "Tenant-A"]
PROMPTS = [f"question number {i}" for i in range(8)]

op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, len(SCOPES) - 1), st.integers(0, len(PROMPTS) - 1),
              st.integers(0, 10**6)),
    st.tuples(st.just("get"), st.integers(0, len(SCOPES) - 1), st.integers(0, len(PROMPTS) - 1),
              st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, len(SCOPES) - 1), st.integers(0, len(PROMPTS) - 1),
              st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("purge"), st.integers(0, len(SCOPES) - 1), st.just(0), st.just(0)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=40), store=st.sampled_from(["disk", "memory"]),
       second_process=st.booleans())
def test_random_operations_match_the_model(ops: list[tuple[str, int, int, int]], store: str,
                                           second_process: bool) -> None:
    directory = Path(tempfile.mkdtemp(prefix="semcache-prop-"))
    try:
        model: dict[tuple[int, int], tuple[int, int]] = {}  # (scope, prompt) -> (value, entry id)
        cache = open_cache(directory, store=store, snapshot_min_entries=1)
        # a second handle on the same directory sees every change through the change log
        other = open_cache(directory, snapshot_min_entries=1) if store == "disk" and second_process else None
        for kind, s, p, value in ops:
            if kind == "put":
                entry = cache.put(PROMPTS[p], {"s": s, "p": p, "v": value}, scope=SCOPES[s])
                assert entry is not None
                model[(s, p)] = (value, entry)
            elif kind == "get":
                for reader in (cache, other):
                    if reader is None:
                        continue
                    hit = reader.get(PROMPTS[p], scope=SCOPES[s])
                    if (s, p) in model:
                        assert isinstance(hit, Hit), "acknowledged entry lost"
                        assert hit.completion == {"s": s, "p": p, "v": model[(s, p)][0]}
                    else:
                        assert not hit, f"served {hit.completion!r} for scope {s} prompt {p}"  # type: ignore[union-attr]
            elif kind == "delete":
                if (s, p) in model:
                    assert cache.delete(model.pop((s, p))[1])
            elif kind == "purge":
                cache.purge(scope=SCOPES[s])
                for key in [k for k in model if k[0] == s]:
                    del model[key]
            elif kind == "reopen" and store == "disk":
                cache.close()
                cache = open_cache(directory, store=store, snapshot_min_entries=1)
        for reader in (cache, other):
            if reader is None:
                continue
            assert len(reader) == len(model)
            for (s, p), (value, _) in model.items():
                hit = reader.get(PROMPTS[p], scope=SCOPES[s])
                assert isinstance(hit, Hit) and hit.completion == {"s": s, "p": p, "v": value}
            reader.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
