"""The OpenAI SDK adapter: the real ``openai`` client, through the caching transport,
against the upstream stand-in over real HTTP on 127.0.0.1. Also the request keys
and the SSE assembly/replay it relies on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from semcache import SemanticCache
from semcache.adapters.openai import async_caching_client, caching_client
from semcache.adapters.requests import (
    NotCacheable,
    cache_control,
    endpoint_of,
    request_key,
    storable,
)
from semcache.adapters.sse import SSEDecoder, assemble, chat_chunks, replay, responses_events
from tests.upstream_stub import MODEL, PARAPHRASE, Q, RaisingCache, UpstreamStub


@pytest.fixture(autouse=True)
def _reset(stub: UpstreamStub) -> None:
    stub.reset()


def make_client(stub: UpstreamStub, cache: SemanticCache, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stub.url + "/v1",
        api_key="test-key",
        max_retries=0,
        http_client=caching_client(cache, **kw),
    )


@pytest.fixture
def client(stub: UpstreamStub, cache: SemanticCache) -> Iterator[openai.OpenAI]:
    c = make_client(stub, cache)
    yield c
    c.close()


def ask(client: openai.OpenAI, content: Any = Q, **kw: Any) -> tuple[str | None, Any]:
    """One chat call; returns (answer text, raw response headers)."""
    kw.setdefault("model", MODEL)
    messages = kw.pop("messages", None) or [{"role": "user", "content": content}]
    raw = client.chat.completions.with_raw_response.create(messages=messages, **kw)
    return raw.parse().choices[0].message.content, raw.headers


def stream_text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


# ---------------------------------------------------------------- end to end
def test_identical_and_paraphrased_requests_hit(client: openai.OpenAI, stub: UpstreamStub) -> None:
    text, headers = ask(client)
    assert text == f"Answer 1: {Q}" and headers["x-semcache"] == "miss" and stub.count == 1
    text, headers = ask(client)
    assert text == f"Answer 1: {Q}" and headers["x-semcache"] == "hit"
    assert float(headers["x-semcache-similarity"]) == 1.0
    text, headers = ask(client, PARAPHRASE)
    assert text == f"Answer 1: {Q}" and headers["x-semcache"] == "hit"
    assert 0.9 <= float(headers["x-semcache-similarity"]) < 1.0
    assert stub.count == 1
    text, _ = ask(client, "How do I bake sourdough bread?")
    assert text == "Answer 2: How do I bake sourdough bread?" and stub.count == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.7},
        {"extra_headers": {"x-semcache-tenant": "other-tenant"}},
        {"messages": [{"role": "system", "content": "Answer in French."},
                      {"role": "user", "content": Q}]},
        {"messages": [{"role": "user", "content": "Tell me about Germany."},
                      {"role": "assistant", "content": "Germany is in Europe."},
                      {"role": "user", "content": Q}]},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
        {"seed": 7},
        {"max_tokens": 5},
    ],
    ids=["model", "temperature", "tenant", "system", "earlier-turns", "tools", "format", "seed",
         "max-tokens"],
)
def test_a_different_setting_goes_upstream(
    client: openai.OpenAI, stub: UpstreamStub, change: dict[str, Any]
) -> None:
    ask(client, temperature=0)
    assert stub.count == 1
    kw: dict[str, Any] = {"temperature": 0, **change}
    text, headers = ask(client, **kw)
    assert headers["x-semcache"] == "miss" and text == f"Answer 2: {Q}" and stub.count == 2


def test_ignored_fields_share_entries(client: openai.OpenAI, stub: UpstreamStub) -> None:
    ask(client, user="alice")
    text, headers = ask(client, user="bob", metadata={"run": "2"}, store=False)
    assert headers["x-semcache"] == "hit" and text == f"Answer 1: {Q}" and stub.count == 1


def test_streamed_miss_is_stored_and_replayed(client: openai.OpenAI, stub: UpstreamStub) -> None:
    msgs = [{"role": "user", "content": Q}]
    upstream_chunks = list(client.chat.completions.create(
        model=MODEL, messages=msgs, stream=True, stream_options={"include_usage": True}))
    assert stub.count == 1
    first = "".join(c.choices[0].delta.content or "" for c in upstream_chunks if c.choices)
    assert first == f"Answer 1: {Q}"
    # A streamed hit, parsed by the SDK's own stream parser.
    replayed = list(client.chat.completions.create(
        model=MODEL, messages=msgs, stream=True, stream_options={"include_usage": True}))
    assert stub.count == 1
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == first
    assert replayed[-1].choices == [] and replayed[-1].usage is not None
    assert replayed[-1].usage.total_tokens == upstream_chunks[-1].usage.total_tokens
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "stop"
    # Same chunk shape as the upstream's: the same top-level and choice keys.
    assert {tuple(sorted(c.model_dump(exclude_unset=True))) for c in replayed} == {
        tuple(sorted(c.model_dump(exclude_unset=True))) for c in upstream_chunks}
    # A plain request for the same prompt gets the assembled response; so does the helper.
    text, headers = ask(client)
    assert text == first and headers["x-semcache"] == "hit"
    with client.chat.completions.stream(model=MODEL, messages=msgs) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == first and stub.count == 1


def test_paraphrased_stream_hit_reassembles(client: openai.OpenAI, stub: UpstreamStub) -> None:
    ask(client)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PARAPHRASE}], stream=True)
    assert stream_text(stream) == f"Answer 1: {Q}" and stub.count == 1


def test_responses_api_json_and_stream(client: openai.OpenAI, stub: UpstreamStub) -> None:
    events = list(client.responses.create(model=MODEL, input=Q, stream=True))
    assert stub.count == 1
    final = events[-1]
    assert final.type == "response.completed"
    replayed = list(client.responses.create(model=MODEL, input=PARAPHRASE, stream=True))
    assert stub.count == 1
    assert [e.type for e in replayed] == [e.type for e in events]
    assert [e.sequence_number for e in replayed] == list(range(len(replayed)))
    assert "".join(e.delta for e in replayed if e.type == "response.output_text.delta") == (
        f"Answer 1: {Q}")
    with client.responses.stream(model=MODEL, input=Q) as s:
        assert s.get_final_response().output_text == f"Answer 1: {Q}"
    assert client.responses.create(model=MODEL, input=Q).output_text == f"Answer 1: {Q}"
    assert stub.count == 1
    # The same words asked of the chat endpoint are another scope.
    ask(client)
    assert stub.count == 2


def test_responses_instructions_are_scope(client: openai.OpenAI, stub: UpstreamStub) -> None:
    client.responses.create(model=MODEL, input=Q, instructions="Be brief.")
    client.responses.create(model=MODEL, input=Q, instructions="Be brief.")
    assert stub.count == 1
    client.responses.create(model=MODEL, input=Q, instructions="Answer in French.")
    assert stub.count == 2


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_pass_through_and_are_not_cached(
    client: openai.OpenAI, stub: UpstreamStub, status: int, stream: bool
) -> None:
    stub.status = status
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": Q}], stream=stream)
    assert err.value.status_code == status
    assert f"stub error {status}" in str(err.value)
    stub.status = None
    text, headers = ask(client)
    assert headers["x-semcache"] == "miss" and text == f"Answer 2: {Q}" and stub.count == 2


def test_truncated_answers_are_not_cached_unless_asked(
    stub: UpstreamStub, cache: SemanticCache
) -> None:
    stub.finish = "length"
    with make_client(stub, cache) as c:
        ask(c)
        ask(c)
        assert stub.count == 2
        c.responses.create(model=MODEL, input=Q)
        c.responses.create(model=MODEL, input=Q)
        assert stub.count == 4
    with make_client(stub, cache, cache_truncated=True) as c:
        ask(c, "Describe the Moon.")
        text, headers = ask(c, "Describe the Moon.")
        assert headers["x-semcache"] == "hit" and text == "Answer 5: Describe the Moon."
        assert stub.count == 5


def test_tool_calls_are_not_cached_unless_asked(stub: UpstreamStub, cache: SemanticCache) -> None:
    stub.tool_call = True
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    with make_client(stub, cache) as c:
        for _ in range(2):
            r = c.chat.completions.create(model=MODEL, messages=msgs, tools=tools)
            assert r.choices[0].message.tool_calls
        assert stub.count == 2
    with make_client(stub, cache, cache_tool_calls=True) as c:
        list(c.chat.completions.create(model=MODEL, messages=msgs, tools=tools, stream=True))
        assert stub.count == 3
        chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, tools=tools,
                                                stream=True))
        assert stub.count == 3
        calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
        assert calls[0].function.name == "weather"
        args = "".join(tc.function.arguments or "" for tc in calls)
        assert json.loads(args) == {"city": "Paris"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_cut_off_stream_is_not_cached(client: openai.OpenAI, stub: UpstreamStub) -> None:
    stub.cut_stream = True
    partial = stream_text(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": Q}], stream=True))
    assert partial and partial != f"Answer 1: {Q}"
    stub.cut_stream = False
    text, headers = ask(client)
    assert headers["x-semcache"] == "miss" and text == f"Answer 2: {Q}"


def test_cache_control_headers(client: openai.OpenAI, stub: UpstreamStub) -> None:
    _, h = ask(client, extra_headers={"cache-control": "no-store"})
    assert h["x-semcache"] == "bypass"
    _, h = ask(client)
    assert h["x-semcache"] == "miss" and stub.count == 2  # no-store stored nothing
    text, h = ask(client, extra_headers={"cache-control": "no-cache"})
    assert h["x-semcache"] == "miss" and text == f"Answer 3: {Q}"
    text, h = ask(client)
    assert h["x-semcache"] == "hit" and text == f"Answer 3: {Q}"  # no-cache still stored


def test_other_endpoints_pass_through(client: openai.OpenAI, stub: UpstreamStub) -> None:
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-semcache"] == "bypass"
    assert raw.parse().data[0].id == "gpt-stub"


def test_list_content_does_not_crash(client: openai.OpenAI, stub: UpstreamStub) -> None:
    def parts(url: str) -> list[dict[str, Any]]:
        return [{"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": url}}]

    ask(client, parts("https://example.com/cat.png"))
    text, h = ask(client, parts("https://example.com/cat.png"))
    assert h["x-semcache"] == "hit" and text == "Answer 1: What is in this picture?"
    assert stub.count == 1
    _, h = ask(client, parts("https://example.com/dog.png"))
    assert h["x-semcache"] == "miss" and stub.count == 2
    # Image only, no text at all: keyed by the image, never a crash.
    ask(client, [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])
    _, h = ask(client, [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])
    assert h["x-semcache"] == "hit" and stub.count == 3


# ---------------------------------------------------------------- fail open
def test_store_directory_removed_fails_open(
    stub: UpstreamStub, cache_dir: Path, embedder: Any
) -> None:
    cache = SemanticCache(cache_dir, embedder=embedder)
    with make_client(stub, cache) as c:
        ask(c)
        shutil.rmtree(cache_dir)
        text, _ = ask(c, "How do I bake sourdough bread?")
        assert text == "Answer 2: How do I bake sourdough bread?"
        text, _ = ask(c)
        assert text in (f"Answer 1: {Q}", f"Answer 3: {Q}")
    cache.close()


def test_raising_cache_fails_open(stub: UpstreamStub, hash_embedder: Any) -> None:
    cache = RaisingCache(store="memory", embedder=hash_embedder)
    transport_client = caching_client(cache)
    with openai.OpenAI(base_url=stub.url + "/v1", api_key="k", max_retries=0,
                       http_client=transport_client) as c:
        for n in (1, 2):
            text, h = ask(c)
            assert text == f"Answer {n}: {Q}" and h["x-semcache"] == "miss"
        stream = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": Q}], stream=True)
        assert stream_text(stream) == f"Answer 3: {Q}"
    assert transport_client._transport.rc.errors >= 4


def test_closed_cache_fails_open(client: openai.OpenAI, stub: UpstreamStub,
                                 cache: SemanticCache) -> None:
    cache.close()
    assert ask(client)[0] == f"Answer 1: {Q}"
    assert ask(client)[0] == f"Answer 2: {Q}"


# -------------------------------------------------------------------- async
async def test_async_client(stub: UpstreamStub, cache: SemanticCache) -> None:
    async with openai.AsyncOpenAI(
        base_url=stub.url + "/v1", api_key="k", max_retries=0,
        http_client=async_caching_client(cache),
    ) as c:
        msgs = [{"role": "user", "content": Q}]
        stream = await c.chat.completions.create(model=MODEL, messages=msgs, stream=True)
        first = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert first == f"Answer 1: {Q}" and stub.count == 1
        r = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": PARAPHRASE}])
        assert r.headers["x-semcache"] == "hit" and r.parse().choices[0].message.content == first
        stream = await c.chat.completions.create(model=MODEL, messages=msgs, stream=True)
        again = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert again == first and stub.count == 1
        resp = await c.responses.create(model=MODEL, input="Name a prime number.")
        resp2 = await c.responses.create(model=MODEL, input="Name a prime number.")
        assert resp2.output_text == resp.output_text and stub.count == 2
        stub.status = 500
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "new question"}])
        stub.status = None
        await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "new question"}])
        assert stub.count == 4


# ------------------------------------------------------------- request keys
def test_request_key_scope_and_ignored_fields() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "S"},
                                       {"role": "user", "content": "  Hello   world "}],
            "temperature": 0, "stream": True, "user": "u",
            "stream_options": {"include_usage": True}}
    key = request_key("chat", body, tenant="t")
    assert key.prompt == "Hello world" and key.stream and key.include_usage
    assert key.scope.model == "m" and key.scope.system == "S" and key.scope.tenant == "t"
    assert key.scope.params == {"temperature": 0, "semcache:endpoint": "chat"}
    plain = request_key("chat", {**body, "stream": False, "user": "v", "stream_options": None})
    assert plain.scope == request_key("chat", body).scope
    assert request_key("chat", {**body, "temperature": 0.5}).scope != plain.scope
    r = request_key("responses", {"model": "m", "input": "Hello world", "instructions": "S",
                                  "temperature": 0})
    assert r.prompt == "Hello world" and r.scope.system == "S" and r.scope != plain.scope
    items = request_key("responses", {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "sunny"}]})
    assert items.scope.context is not None


@pytest.mark.parametrize("body", [
    [], {"messages": [{"role": "user", "content": "x"}]}, {"model": "m"},
    {"model": "m", "messages": []}, {"model": "m", "messages": "hi"},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
    {"model": "m", "messages": [{"role": "user", "content": 5}]},
])
def test_request_key_rejects_unkeyable_bodies(body: Any) -> None:
    with pytest.raises(NotCacheable):
        request_key("chat", body)


def test_endpoints_cache_control_and_storable() -> None:
    assert endpoint_of("/v1/chat/completions") == "chat"
    assert endpoint_of("/openai/v1/responses/") == "responses"
    assert endpoint_of("/v1/embeddings") is None
    assert endpoint_of("/v1/responses/resp_1") is None
    assert cache_control(None) == (True, True)
    assert cache_control("no-cache") == (False, True)
    assert cache_control("max-age=0, No-Store") == (False, False)
    ok = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}]}
    assert storable("chat", ok)[0]
    assert not storable("chat", {"choices": [{"finish_reason": "content_filter"}]})[0]
    assert not storable("chat", {"choices": []})[0]
    assert not storable("responses", {"status": "failed", "output": []})[0]
    assert storable("responses", {"status": "incomplete", "output": []},
                    cache_truncated=True)[0]


# ---------------------------------------------------------------------- SSE
def test_sse_decoder_handles_any_chunking() -> None:
    wire = ("event: a\r\ndata: {\"x\": \"é\"}\r\n\r\n: keep-alive\n\ndata: l1\ndata: l2\n\n"
            "data: last\r\rdata: [DONE]").encode()
    expected = None
    for size in (1, 2, 3, 7, len(wire)):
        dec = SSEDecoder()
        events = []
        for i in range(0, len(wire), size):
            events += dec.feed(wire[i:i + size])
        events += dec.flush()
        got = [(e.event, e.data) for e in events]
        expected = expected or got
        assert got == expected
    assert expected == [("a", '{"x": "é"}'), (None, "l1\nl2"), (None, "last"), (None, "[DONE]")]


def test_chat_replay_assembles_back_to_the_completion() -> None:
    completion = {
        "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
        "system_fingerprint": "fp", "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                              "total_tokens": 3},
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello,  wide\nworld ",
                                     "refusal": None}, "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": None,
                                     "tool_calls": [
                                         {"id": "t1", "type": "function",
                                          "function": {"name": "f", "arguments": '{"a": [1, 2]}'}},
                                         {"id": "t2", "type": "function",
                                          "function": {"name": "g", "arguments": "{}"}}]},
             "logprobs": None, "finish_reason": "tool_calls"},
        ],
    }
    body = b"".join(replay("chat", completion, include_usage=True))
    assert assemble("chat", body) == completion
    assert body.endswith(b"data: [DONE]\n\n")
    assert all(c["object"] == "chat.completion.chunk" for c in chat_chunks(completion))


def test_responses_replay_ends_in_the_stored_response() -> None:
    response = {"id": "r1", "object": "response", "status": "completed", "model": "m",
                "output": [{"id": "m1", "type": "message", "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": "Hi there",
                                         "annotations": []}]}]}
    events = responses_events(response)
    assert events[0]["type"] == "response.created"
    assert events[0]["response"]["output"] == [] and response["output"]  # input not mutated
    assert events[-1] == {"type": "response.completed", "sequence_number": len(events) - 1,
                          "response": response}
    assert assemble("responses", b"".join(replay("responses", response))) == response


def test_incomplete_streams_assemble_to_nothing() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    assert assemble("chat", f"data: {json.dumps(chunk)}\n\n".encode()) is None
    assert assemble("chat", b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n') is None
    assert assemble("responses", b'event: response.created\ndata: {"type": "response.created",'
                                 b' "response": {"id": "r"}}\n\n') is None


# ------------------------------------------------------------ missing extras
@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("semcache.adapters.openai", "httpx", "openai"),
        ("semcache.adapters.langchain", "langchain_core.caches", "langchain"),
    ],
)
def test_a_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, module: str, missing: str, extra: str
) -> None:
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    with pytest.raises(ImportError, match=rf"pip install 'semcache-llm\[{extra}\]'"):
        importlib.import_module(module)


def test_serve_without_uvicorn_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from semcache.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--upstream", "http://127.0.0.1:9"]) == 2
    assert "pip install 'semcache-llm[server]'" in capsys.readouterr().err
