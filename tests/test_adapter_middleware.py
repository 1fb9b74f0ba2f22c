"""The ASGI middleware in front of an OpenAI-compatible app (the upstream stand-in),
served by uvicorn on 127.0.0.1 and called with the real ``openai`` client and httpx."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from semcache import SemanticCache
from semcache.adapters.middleware import SemanticCacheMiddleware
from tests.servers import ThreadServer
from tests.upstream_stub import MODEL, PARAPHRASE, Q, RaisingCache, UpstreamStub


@pytest.fixture
def stub() -> UpstreamStub:
    return UpstreamStub()


@pytest.fixture
def served(
    stub: UpstreamStub, cache: SemanticCache
) -> Iterator[tuple[str, SemanticCacheMiddleware]]:
    mw = SemanticCacheMiddleware(stub.app, cache)
    with ThreadServer(mw) as server:
        yield server.url, mw


@pytest.fixture
def client(served: tuple[str, SemanticCacheMiddleware]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served[0] + "/v1", api_key="k", max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, content: Any = Q, **kw: Any) -> tuple[str | None, Any]:
    kw.setdefault("model", MODEL)
    raw = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": content}], **kw)
    return raw.parse().choices[0].message.content, raw.headers


def test_hits_on_identical_and_paraphrased_requests(client: openai.OpenAI, stub: UpstreamStub
                                                    ) -> None:
    text, h = ask(client)
    assert h["x-semcache"] == "miss" and "x-semcache-similarity" not in h
    text, h = ask(client)
    assert h["x-semcache"] == "hit" and h["x-semcache-similarity"] == "1.0000"
    text, h = ask(client, PARAPHRASE)
    assert h["x-semcache"] == "hit" and 0.9 <= float(h["x-semcache-similarity"]) < 1
    assert text == f"Answer 1: {Q}" and stub.count == 1
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": Q}])
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.content)


def test_body_reaches_the_inner_app_unchanged(served: tuple[str, Any], stub: UpstreamStub
                                              ) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Ünïcode ✓ " + "x" * 100_000}],
            "temperature": 0.3, "user": "u1"}
    raw = json.dumps(body).encode()
    # Sent in many small pieces, so the middleware has to gather them and replay them all.
    pieces = [raw[i:i + 4096] for i in range(0, len(raw), 4096)]
    r = httpx.post(served[0] + "/v1/chat/completions", content=iter(pieces),
                   headers={"content-type": "application/json", "authorization": "Bearer k"})
    assert r.status_code == 200 and r.headers["x-semcache"] == "miss"
    assert stub.calls[-1] == ("/v1/chat/completions", body)


def test_streaming_miss_then_streamed_hit(client: openai.OpenAI, served: tuple[str, Any],
                                          stub: UpstreamStub) -> None:
    msgs = [{"role": "user", "content": Q}]
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=msgs, stream=True) as resp:
        assert resp.headers["x-semcache"] == "miss"
        first = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert first == f"Answer 1: {Q}"
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": PARAPHRASE}],
            stream=True) as resp:
        assert resp.headers["x-semcache"] == "hit"
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices) == first
    # The Responses API streams too, and a plain request is served from a streamed entry.
    events = list(client.responses.create(model=MODEL, input="Name a colour.", stream=True))
    again = list(client.responses.create(model=MODEL, input="Name a colour.", stream=True))
    assert [e.type for e in again] == [e.type for e in events]
    assert client.responses.create(model=MODEL, input="Name a colour.").output_text == (
        "Answer 2: Name a colour.")
    assert stub.count == 2


def test_cache_control_and_tenant(client: openai.OpenAI, stub: UpstreamStub) -> None:
    _, h = ask(client, extra_headers={"cache-control": "no-store"})
    assert h["x-semcache"] == "bypass"
    ask(client)
    assert stub.count == 2
    text, h = ask(client, extra_headers={"cache-control": "no-cache"})
    assert h["x-semcache"] == "miss" and text == f"Answer 3: {Q}"
    assert ask(client)[0] == f"Answer 3: {Q}"
    _, h = ask(client, extra_headers={"x-semcache-tenant": "acme"})
    assert h["x-semcache"] == "miss" and stub.count == 4
    _, h = ask(client, extra_headers={"x-semcache-tenant": "acme"})
    assert h["x-semcache"] == "hit" and stub.count == 4


def test_custom_tenant_header(stub: UpstreamStub, cache: SemanticCache) -> None:
    app = SemanticCacheMiddleware(stub.app, cache, tenant_header="X-Org")
    with ThreadServer(app) as server, httpx.Client(
            base_url=server.url, headers={"authorization": "Bearer k"}) as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": Q}]}
        assert http.post("/v1/chat/completions", json=body,
                         headers={"x-org": "a"}).headers["x-semcache"] == "miss"
        assert http.post("/v1/chat/completions", json=body,
                         headers={"x-org": "b"}).headers["x-semcache"] == "miss"
        assert http.post("/v1/chat/completions", json=body,
                         headers={"x-org": "a"}).headers["x-semcache"] == "hit"
    assert stub.count == 2


@pytest.mark.parametrize("status", [400, 429, 500])
def test_upstream_errors_pass_through_uncached(client: openai.OpenAI, stub: UpstreamStub,
                                               status: int) -> None:
    stub.status = status
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": Q}], stream=stream)
        assert err.value.status_code == status
        assert err.value.response.headers["x-semcache"] == "miss"
    stub.status = None
    assert ask(client)[0] == f"Answer 3: {Q}"


def test_truncated_and_cut_streams_are_not_stored(client: openai.OpenAI, stub: UpstreamStub
                                                  ) -> None:
    stub.finish = "length"
    ask(client)
    ask(client)
    assert stub.count == 2
    stub.finish = "stop"
    stub.cut_stream = True
    list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}],
                                        stream=True))
    stub.cut_stream = False
    _, h = ask(client)
    assert h["x-semcache"] == "miss" and stub.count == 4


def test_other_requests_pass_through_untouched(served: tuple[str, Any], stub: UpstreamStub
                                               ) -> None:
    r = httpx.get(served[0] + "/v1/models")
    assert r.status_code == 200 and "x-semcache" not in r.headers
    r = httpx.post(served[0] + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 404 and "x-semcache" not in r.headers
    # A body that cannot be keyed still reaches the app, whose answer is passed on.
    r = httpx.post(served[0] + "/v1/chat/completions", content=b"not json",
                   headers={"content-type": "application/json"})
    assert r.headers["x-semcache"] == "bypass" and r.status_code >= 400


def test_list_content(client: openai.OpenAI, stub: UpstreamStub) -> None:
    parts = [{"type": "text", "text": "Describe this."},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    ask(client, parts)
    _, h = ask(client, parts)
    assert h["x-semcache"] == "hit" and stub.count == 1


def test_starlette_add_middleware(cache: SemanticCache) -> None:
    stub = UpstreamStub()
    stub.app.add_middleware(SemanticCacheMiddleware, cache=cache)
    with ThreadServer(stub.app) as server, openai.OpenAI(
            base_url=server.url + "/v1", api_key="k", max_retries=0) as c:
        ask(c)
        _, h = ask(c, PARAPHRASE)
    assert h["x-semcache"] == "hit" and stub.count == 1


def test_fail_open(stub: UpstreamStub, cache_dir: Path, embedder: Any, hash_embedder: Any) -> None:
    broken = RaisingCache(store="memory", embedder=hash_embedder)
    mw = SemanticCacheMiddleware(stub.app, broken)
    with ThreadServer(mw) as server, openai.OpenAI(
            base_url=server.url + "/v1", api_key="k", max_retries=0) as c:
        assert ask(c)[0] == f"Answer 1: {Q}"
        assert ask(c)[0] == f"Answer 2: {Q}"
        stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": Q}],
                                           stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == (
            f"Answer 3: {Q}")
    assert mw.rc.errors == 6  # three lookups and three stores failed; no request did
    assert "semcache_errors_total 6" in mw.render_metrics()

    cache = SemanticCache(cache_dir, embedder=embedder)
    with ThreadServer(SemanticCacheMiddleware(stub.app, cache)) as server, openai.OpenAI(
            base_url=server.url + "/v1", api_key="k", max_retries=0) as c:
        ask(c, "Why is the sky blue?")
        shutil.rmtree(cache_dir)
        assert ask(c, "How far is the Moon?")[0] == "Answer 5: How far is the Moon?"
    cache.close()


def test_metrics_count_outcomes(client: openai.OpenAI, served: tuple[str, SemanticCacheMiddleware]
                                ) -> None:
    ask(client)
    ask(client)
    ask(client, extra_headers={"cache-control": "no-store"})
    text = served[1].render_metrics()
    assert 'semcache_requests_total{outcome="hit"} 1' in text
    assert 'semcache_requests_total{outcome="miss"} 1' in text
    assert 'semcache_requests_total{outcome="bypass"} 1' in text
    assert "semcache_entries 1" in text and "semcache_stored_total 1" in text
    assert 'semcache_request_duration_seconds_bucket{outcome="hit",le="+Inf"} 1' in text
    assert "semcache_lookup_duration_seconds_count 2" in text
