"""Single-flight in the OpenAI httpx transports: concurrent identical misses through one
caching client make one upstream call. Real concurrency (threads sharing the sync client,
tasks sharing the async one) against the upstream stand-in over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from semcache import SemanticCache
from semcache.adapters.openai import async_caching_client, caching_client
from tests.upstream_stub import MODEL, Q, UpstreamStub

N = 10


@pytest.fixture(autouse=True)
def _reset(stub: UpstreamStub) -> None:
    stub.reset()


def _one(client: openai.OpenAI, stream: bool, content: str = Q) -> tuple[str, str] | Exception:
    """(answer text, x-semcache) of one call, or the API error it raised."""
    messages: Any = [{"role": "user", "content": content}]
    try:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages,
                                                               stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = str(raw.parse().choices[0].message.content)
        return text, raw.headers["x-semcache"]
    except openai.APIStatusError as exc:
        return exc


def _crowd(stub: UpstreamStub, cache: SemanticCache, streams: list[bool],
           contents: list[str] | None = None) -> list[tuple[str, str] | Exception]:
    """``len(streams)`` threads calling at once through one shared sync client."""
    client = openai.OpenAI(base_url=stub.url + "/v1", api_key="k", max_retries=0,
                           http_client=caching_client(cache))
    start = threading.Barrier(len(streams))

    def go(i: int) -> tuple[str, str] | Exception:
        start.wait()
        return _one(client, streams[i], contents[i % len(contents)] if contents else Q)

    try:
        with ThreadPoolExecutor(len(streams)) as pool:
            return list(pool.map(go, range(len(streams))))
    finally:
        client.close()


async def _acrowd(stub: UpstreamStub, cache: SemanticCache, streams: list[bool]
                  ) -> list[tuple[str, str] | Exception]:
    """``len(streams)`` tasks calling at once through one shared async client."""
    async with openai.AsyncOpenAI(base_url=stub.url + "/v1", api_key="k", max_retries=0,
                                  http_client=async_caching_client(cache)) as client:
        async def one(stream: bool) -> tuple[str, str] | Exception:
            messages: Any = [{"role": "user", "content": Q}]
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=messages, stream=stream)
                if stream:
                    text = "".join([c.choices[0].delta.content or ""
                                    async for c in raw.parse() if c.choices])
                else:
                    text = str(raw.parse().choices[0].message.content)
                return text, raw.headers["x-semcache"]
            except openai.APIStatusError as exc:
                return exc

        return list(await asyncio.gather(*(one(s) for s in streams)))


SHAPES = {"plain": [False] * N, "streamed": [True] * N, "mixed": [i % 2 == 1 for i in range(N)]}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_concurrent_identical_misses_make_one_upstream_call(
        stub: UpstreamStub, cache: SemanticCache, shape: str, mode: str) -> None:
    stub.delay = 0.5
    streams = SHAPES[shape]
    out = _crowd(stub, cache, streams) if mode == "sync" else asyncio.run(
        _acrowd(stub, cache, streams))
    assert stub.count == 1
    assert [a for a in out if isinstance(a, Exception)] == []
    assert {a[0] for a in out if isinstance(a, tuple)} == {f"Answer 1: {Q}"}
    assert sorted(a[1] for a in out if isinstance(a, tuple)) == ["coalesced"] * (N - 1) + ["miss"]
    # Stored once: the next request is a hit.
    again = _crowd(stub, cache, [False])
    assert again == [(f"Answer 1: {Q}", "hit")] and stub.count == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_errors_and_unstorable_answers_reach_every_waiter_and_are_not_stored(
        stub: UpstreamStub, cache: SemanticCache, stream: bool, mode: str) -> None:
    def crowd() -> list[tuple[str, str] | Exception]:
        streams = [stream] * N
        return _crowd(stub, cache, streams) if mode == "sync" else asyncio.run(
            _acrowd(stub, cache, streams))

    stub.delay = 0.5
    stub.status = 503
    out = crowd()
    assert stub.count == 1
    assert all(isinstance(a, openai.APIStatusError) and a.status_code == 503 for a in out), out
    stub.reset()
    stub.delay = 0.5
    stub.finish = "length"  # cut off by max_tokens: answered, never stored
    out = crowd()
    assert stub.count == 1 and {a[0] for a in out if isinstance(a, tuple)} == {f"Answer 1: {Q}"}
    assert len([a for a in out if isinstance(a, tuple)]) == N
    stub.reset()
    # Neither was stored: the next request goes upstream.
    assert _crowd(stub, cache, [stream]) == [(f"Answer 1: {Q}", "miss")]
    assert stub.count == 1


def test_different_prompts_and_no_cache_requests_are_not_coalesced(
        stub: UpstreamStub, cache: SemanticCache) -> None:
    stub.delay = 0.5
    out = _crowd(stub, cache, [False] * 4, contents=["How do I bake bread?",
                                                     "What is the boiling point of water?"])
    assert stub.count == 2 and all(isinstance(a, tuple) for a in out)
    stub.reset()
    stub.delay = 0.5
    client = openai.OpenAI(base_url=stub.url + "/v1", api_key="k", max_retries=0,
                           http_client=caching_client(cache))
    start = threading.Barrier(3)

    def fresh(_: int) -> str:
        start.wait()
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a prime number."}],
            extra_headers={"cache-control": "no-cache"})
        return r.headers["x-semcache"]

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(fresh, range(3)))
    client.close()
    assert stub.count == 3 and outcomes == ["miss"] * 3


def test_a_waiter_calls_upstream_itself_after_the_bound(stub: UpstreamStub,
                                                        cache: SemanticCache) -> None:
    stub.delay = 1.0
    client = openai.OpenAI(base_url=stub.url + "/v1", api_key="k", max_retries=0,
                           http_client=caching_client(cache, coalesce_wait=0.2))
    start = threading.Barrier(3)

    def go(_: int) -> tuple[str, str] | Exception:
        start.wait()
        return _one(client, False)

    with ThreadPoolExecutor(3) as pool:
        out = list(pool.map(go, range(3)))
    client.close()
    assert stub.count == 3 and all(isinstance(a, tuple) and a[1] == "miss" for a in out)
