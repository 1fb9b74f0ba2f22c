"""The middleware and proxy under real traffic, over real HTTP on 127.0.0.1:
single-flight of concurrent misses, hostile bodies, compression inside the
middleware, usage on streamed hits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.middleware.gzip import GZipMiddleware

from semcache import SemanticCache
from semcache.adapters.middleware import SemanticCacheMiddleware
from semcache.adapters.server import ProxyApp
from tests.servers import ThreadServer
from tests.upstream_stub import MODEL, PARAPHRASE, Q, UpstreamStub

AUTH = {"authorization": "Bearer k"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": Q}]}


@pytest.fixture(autouse=True)
def _reset(stub: UpstreamStub) -> None:
    stub.reset()


@pytest.fixture
def mw_url(stub: UpstreamStub, cache: SemanticCache) -> Iterator[str]:
    with ThreadServer(SemanticCacheMiddleware(stub.app, cache)) as server:
        yield server.url


async def _ask_many(url: str, n: int, *, stream: bool, contents: list[str] | None = None,
                    stagger: float = 0.0) -> list[str | Exception]:
    """``n`` concurrent chat calls through the real async client; their answer texts."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
        async def one(i: int) -> str | Exception:
            if stagger and i:
                await asyncio.sleep(stagger)
            content = contents[i % len(contents)] if contents else Q
            messages: Any = [{"role": "user", "content": content}]
            try:
                if stream:
                    chunks = await c.chat.completions.create(model=MODEL, messages=messages,
                                                             stream=True)
                    return "".join([ch.choices[0].delta.content or ""
                                    async for ch in chunks if ch.choices])
                r = await c.chat.completions.create(model=MODEL, messages=messages)
                return str(r.choices[0].message.content)
            except openai.APIStatusError as exc:
                return exc

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("stream", [False, True])
def test_twenty_concurrent_identical_misses_make_one_upstream_call(
        mw_url: str, stub: UpstreamStub, stream: bool) -> None:
    stub.delay = 0.5
    answers = asyncio.run(_ask_many(mw_url, 20, stream=stream))
    assert stub.count == 1
    assert answers == [f"Answer 1: {Q}"] * 20
    # A mixed crowd: plain waiters on a streamed leader and the other way round.
    stub.reset()
    stub.delay = 0.5
    mixed = asyncio.run(_ask_many(mw_url, 10, stream=not stream, contents=["Why is the sky blue?"]))
    assert stub.count == 1 and set(mixed) == {"Answer 1: Why is the sky blue?"}


def test_coalesced_answers_are_marked_and_counted(mw_url: str, stub: UpstreamStub) -> None:
    stub.delay = 0.5

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=mw_url, headers=AUTH, timeout=30) as c:
            return list(await asyncio.gather(
                *(c.post("/v1/chat/completions", json=BODY) for _ in range(5))))

    rs = asyncio.run(go())
    assert sorted(r.headers["x-semcache"] for r in rs) == ["coalesced"] * 4 + ["miss"]
    assert {r.json()["choices"][0]["message"]["content"] for r in rs} == {f"Answer 1: {Q}"}


def test_a_paraphrase_in_flight_is_waited_for(mw_url: str, stub: UpstreamStub) -> None:
    stub.delay = 0.8
    answers = asyncio.run(_ask_many(mw_url, 6, stream=False, contents=[Q, PARAPHRASE],
                                    stagger=0.2))
    assert stub.count == 1 and set(answers) == {f"Answer 1: {Q}"}
    # An unrelated prompt in flight at the same time is not coalesced with it.
    stub.reset()
    stub.delay = 0.5
    answers = asyncio.run(_ask_many(mw_url, 2, stream=False, contents=[
        "How do I bake bread?", "What is the boiling point of water?"]))
    assert stub.count == 2


@pytest.mark.parametrize("stream", [False, True])
def test_errors_and_uncacheable_answers_reach_every_waiter_unstored(
        mw_url: str, stub: UpstreamStub, stream: bool) -> None:
    stub.delay = 0.5
    stub.status = 503
    answers = asyncio.run(_ask_many(mw_url, 8, stream=stream))
    assert stub.count == 1
    assert all(isinstance(a, openai.APIStatusError) and a.status_code == 503 for a in answers)
    stub.reset()
    stub.delay = 0.5
    stub.finish = "length"
    answers = asyncio.run(_ask_many(mw_url, 8, stream=stream))
    assert stub.count == 1 and set(answers) == {f"Answer 1: {Q}"}
    stub.reset()
    # Neither was stored: the next request goes upstream.
    assert asyncio.run(_ask_many(mw_url, 1, stream=stream)) == [f"Answer 1: {Q}"]
    assert stub.count == 1


def test_a_waiter_stops_waiting_after_the_bound(stub: UpstreamStub, cache: SemanticCache) -> None:
    app = SemanticCacheMiddleware(stub.app, cache, coalesce_wait=0.2)
    stub.delay = 1.0
    with ThreadServer(app) as server:
        answers = asyncio.run(_ask_many(server.url, 3, stream=False))
    assert stub.count == 3 and len(set(answers)) == 3


# --------------------------------------------------------------- hostile input
@pytest.fixture
def proxy_url(stub: UpstreamStub, embedder: Any) -> Iterator[str]:
    cache = SemanticCache(store="memory", embedder=embedder)
    with ThreadServer(ProxyApp(stub.url, cache, max_body=2_000_000)) as server:
        yield server.url
    cache.close()


HOSTILE = {
    "deep-array": b"[" * 200_000 + b"]" * 200_000,
    "deep-messages": b'{"model": "m", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "deep-param": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
                  b'"metadata": 1, "tools": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    "deep-but-parsed": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '
                       b'"hi"}], "tools": ' + b"[" * 950 + b"]" * 950 + b"}",
    "bad-utf8": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "wrong-types": b'{"model": 5, "messages": "no"}',
    "wrong-message-types": b'{"model": "gpt-4o-mini", "messages": [{"role": 7, "content": {}}]}',
    "nan": b'{"model": "gpt-4o-mini", "messages": [], "temperature": NaN}',
    "huge-int": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], '
                b'"seed": ' + b"9" * 5000 + b"}",
    "not-json": b"not json",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_are_forwarded_never_a_500(proxy_url: str, stub: UpstreamStub,
                                                  name: str) -> None:
    r = httpx.post(proxy_url + "/v1/chat/completions", content=HOSTILE[name],
                   headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert r.status_code < 500, r.text
    assert r.headers["x-semcache"] in ("bypass", "miss")
    assert httpx.get(proxy_url + "/healthz").json()["status"] == "ok"


def test_body_limit(proxy_url: str, stub: UpstreamStub) -> None:
    big = json.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 2_100_000}]})
    r = httpx.post(proxy_url + "/v1/chat/completions", content=big, headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Without a content-length (chunked), the limit holds while forwarding.
    pieces = [big[i:i + 65536].encode() for i in range(0, len(big), 65536)]
    r = httpx.post(proxy_url + "/v1/chat/completions", content=iter(pieces), headers=AUTH,
                   timeout=60)
    assert r.status_code == 413
    assert stub.count == 0
    # Just under it: forwarded and answered.
    ok = json.dumps({**BODY, "messages": [{"role": "user", "content": "y" * 1_000_000}]})
    r = httpx.post(proxy_url + "/v1/chat/completions", content=ok, headers=AUTH, timeout=60)
    assert r.status_code == 200 and stub.count == 1


# ----------------------------------------------------------------- compression
def test_gzip_inside_the_middleware_does_not_turn_caching_off(stub: UpstreamStub,
                                                              cache: SemanticCache) -> None:
    # A long answer, so GZipMiddleware (minimum_size=500) would compress it.
    long_q = "Explain this: " + "why " * 200
    app = SemanticCacheMiddleware(GZipMiddleware(stub.app, minimum_size=100), cache)
    body = {"model": MODEL, "messages": [{"role": "user", "content": long_q}]}
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, headers={
            **AUTH, "accept-encoding": "gzip"}) as http:
        r1 = http.post("/v1/chat/completions", json=body)
        r2 = http.post("/v1/chat/completions", json=body)
        assert r1.headers["x-semcache"] == "miss" and r2.headers["x-semcache"] == "hit"
        assert r1.json() == r2.json()
        # Requests the cache does not handle still get compressed answers.
        r3 = http.post("/v1/chat/completions", json=body, headers={"cache-control": "no-store"})
        assert r3.headers["x-semcache"] == "bypass"
        assert r3.headers.get("content-encoding") == "gzip"
        raw = http.post("/v1/chat/completions", json=body,
                        headers={"cache-control": "no-store"}).read()
        assert json.loads(raw)["choices"]  # httpx decoded it
    assert stub.count == 3


# ----------------------------------------------------------------------- usage
def test_streamed_hits_carry_usage_when_asked(mw_url: str, stub: UpstreamStub) -> None:
    with openai.OpenAI(base_url=mw_url + "/v1", api_key="k", max_retries=0) as c:
        plain = c.chat.completions.create(**BODY)  # type: ignore[call-overload]
        assert plain.usage is not None
        chunks = list(c.chat.completions.create(
            **BODY, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
        # Not asked: no usage chunk.
        chunks = list(c.chat.completions.create(**BODY, stream=True))  # type: ignore[call-overload]
        assert all(ch.usage is None for ch in chunks) and chunks[-1].choices
        # A stream that asked for usage on its miss stores it; a plain hit returns it.
        sky = [{"role": "user", "content": "Why is the sky blue?"}]
        list(c.chat.completions.create(model=MODEL, messages=sky, stream=True,
                                       stream_options={"include_usage": True}))
        hit = c.chat.completions.with_raw_response.create(model=MODEL, messages=sky)
        assert hit.headers["x-semcache"] == "hit"
        usage = hit.parse().usage
        assert usage is not None and usage.total_tokens == 15
    assert stub.count == 2


# ------------------------------------------------------------------ throughput
def test_exact_repeats_do_not_queue_behind_embeddings(stub: UpstreamStub) -> None:
    from tests.conftest import HashEmbedder

    class SlowEmbedder(HashEmbedder):
        """Each call takes 1 s (the GIL released), like a model under contention."""

        def encode(self, texts: list[str]) -> Any:
            import time

            time.sleep(1.0)
            return super().encode(texts)

    cache = SemanticCache(store="memory", embedder=SlowEmbedder())
    app = SemanticCacheMiddleware(stub.app, cache, coalesce_similar=False)

    async def go(url: str) -> tuple[float, list[int]]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as c:
            assert (await c.post("/v1/chat/completions", json=BODY)).status_code == 200
            flood = [asyncio.create_task(c.post("/v1/chat/completions", json={
                **BODY, "messages": [{"role": "user", "content": f"New question number {i}?"}]}))
                for i in range(150)]
            await asyncio.sleep(0.6)  # the lookup pool is now full of embeddings
            t0 = asyncio.get_running_loop().time()
            r = await c.post("/v1/chat/completions", json=BODY)
            took = asyncio.get_running_loop().time() - t0
            assert r.headers["x-semcache"] == "hit"
            return took, [(await f).status_code for f in flood]

    with ThreadServer(app) as server:
        took, codes = asyncio.run(go(server.url))
    assert codes == [200] * 150
    # 150 slow lookups hold every lookup thread for 1 s or more; the repeat does not wait.
    assert took < 0.5, took
    cache.close()


def test_a_miss_is_stored_without_queueing_behind_other_lookups(stub: UpstreamStub) -> None:
    """The store of a miss (before its last byte) runs in its own pool: with every lookup
    thread busy embedding other requests, the miss still ends right after the upstream."""
    from tests.conftest import HashEmbedder

    class SlowEmbedder(HashEmbedder):
        def encode(self, texts: list[str]) -> Any:
            import time

            time.sleep(0.5)  # the GIL released, like a model call
            return super().encode(texts)

    cache = SemanticCache(store="memory", embedder=SlowEmbedder())
    app = SemanticCacheMiddleware(stub.app, cache, coalesce_similar=False, lookup_threads=2)

    def body(content: str) -> dict[str, Any]:
        return {**BODY, "messages": [{"role": "user", "content": content}]}

    async def go(url: str) -> tuple[float, str, list[int]]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60,
                                     limits=httpx.Limits(max_connections=100)) as c:
            # A first entry, so the scope exists and every later lookup embeds.
            assert (await c.post("/v1/chat/completions", json=body("Seed question?"))
                    ).headers["x-semcache"] == "miss"
            stub.delay = 0.5
            t0 = asyncio.get_running_loop().time()
            miss = asyncio.create_task(c.post("/v1/chat/completions", json=body(Q)))
            await asyncio.sleep(0.2)  # its lookup is running; now fill the lookup pool
            flood = [asyncio.create_task(c.post("/v1/chat/completions", json=body(
                f"Unrelated question number {i}?"))) for i in range(12)]
            r = await miss
            took = asyncio.get_running_loop().time() - t0
            codes = [(await f).status_code for f in flood]
            again = await c.post("/v1/chat/completions", json=body(Q))
            return took, f"{r.headers['x-semcache']}/{again.headers['x-semcache']}", codes

    with ThreadServer(app) as server:
        took, outcomes, codes = asyncio.run(go(server.url))
    assert codes == [200] * 12
    assert outcomes == "miss/hit"  # stored, and found by the next request
    # Lookup 0.5 s + upstream 0.5 s; the 12 lookups queued meanwhile hold both lookup
    # threads for 3 s, which a store waiting for a lookup thread would have added.
    assert took < 1.8, took
    cache.close()


def test_long_prompts_with_the_same_end_are_not_coalesced_as_paraphrases(
        mw_url: str, stub: UpstreamStub) -> None:
    """Prompts longer than the embedder reads are embedded by their end: two such prompts
    with another beginning embed alike, yet they are different requests."""
    tail = " ".join(f"Section {i} of the shared manual describes part {i} of the machine."
                    for i in range(40))
    first = "Context: the history of the Roman Empire and its emperors. " + tail + " " + Q
    second = "Context: a recipe for sourdough bread with rye flour. " + tail + " " + Q
    stub.delay = 0.6
    answers = asyncio.run(_ask_many(mw_url, 2, stream=False, contents=[first, second],
                                    stagger=0.2))
    assert stub.count == 2
    assert {a.split(":")[0] for a in answers if isinstance(a, str)} == {"Answer 1", "Answer 2"}


def test_a_batching_embedder_reads_what_its_model_reads(embedder: Any) -> None:
    """``semcache serve`` wraps its model in a BatchingEmbedder: long prompts must still be
    windowed and matched by the model's own token count."""
    from semcache.batching import BatchingEmbedder

    long_prompt = "word " * 400 + Q
    plain = SemanticCache(store="memory", embedder=embedder)
    batched = SemanticCache(store="memory", embedder=BatchingEmbedder(embedder))
    try:
        assert plain.reads_whole(Q) and batched.reads_whole(Q)
        assert not plain.reads_whole(long_prompt) and not batched.reads_whole(long_prompt)
        assert float(plain.embed([long_prompt])[0] @ batched.embed([long_prompt])[0]) > 0.9999
    finally:
        plain.close()
        batched.close()
