"""``semcache serve``: the caching proxy as a real subprocess in front of the upstream
stand-in, used through the real ``openai`` client by changing its base URL."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from semcache import SemanticCache
from semcache.adapters.server import ProxyApp
from tests.servers import ProcessServer, ThreadServer
from tests.upstream_stub import MODEL, PARAPHRASE, Q, UpstreamStub


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[UpstreamStub, str]]:
    stub = UpstreamStub()
    with ThreadServer(stub.app) as server:
        yield stub, server.url


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_semcache_serve_subprocess(upstream: tuple[UpstreamStub, str], tmp_path: Path,
                                   embedder: Any) -> None:
    stub, url = upstream
    stub.reset()
    args = ["serve", "--upstream", url, "--host", "127.0.0.1", "--port", "0",
            "--cache-dir", str(tmp_path / "proxy-cache")]
    proxy = ProcessServer(args, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    with proxy, openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0) as c:
        assert proxy.pid is not None
        proxy.wait_ready()
        health = httpx.get(proxy.url + "/healthz").json()
        assert health == {"status": "ok", "ready": True, "entries": 0, "upstream": url}

        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": Q}])
        assert raw.headers["x-semcache"] == "miss" and stub.count == 1
        # The client's headers (the API key) reach the upstream.
        assert stub.calls[0][1]["messages"][0]["content"] == Q
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": PARAPHRASE}])
        assert raw.headers["x-semcache"] == "hit"
        assert raw.parse().choices[0].message.content == f"Answer 1: {Q}" and stub.count == 1
        stream = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": Q}], stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == (
            f"Answer 1: {Q}")
        # A streamed miss is passed through and stored.
        sky = [{"role": "user", "content": "Why is the sky blue?"}]
        stream = c.chat.completions.create(model=MODEL, messages=sky, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == (
            "Answer 2: Why is the sky blue?")
        assert c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        ).choices[0].message.content == "Answer 2: Why is the sky blue?"
        # Errors pass through unchanged and are not stored; other endpoints are forwarded.
        stub.status = 503
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "New?"}])
        assert err.value.status_code == 503
        stub.status = None
        assert c.models.list().data[0].id == "gpt-stub"
        assert [path for path, _ in stub.calls] == ["/v1/chat/completions"] * 3

        metrics = httpx.get(proxy.url + "/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert _metric(text, "semcache_hits_total") == 3
        assert _metric(text, "semcache_misses_total") == 3
        assert _metric(text, "semcache_entries") == 2
        assert _metric(text, "semcache_upstream_errors_total") == 1
        assert _metric(text, "semcache_errors_total") == 0
        assert _metric(text, 'semcache_request_duration_seconds_count{outcome="hit"}') == 3
        assert 'semcache_request_duration_seconds_bucket{outcome="miss",le="+Inf"} 3' in text
        assert "# TYPE semcache_lookup_duration_seconds histogram" in text
    assert proxy.stop() == 0  # SIGTERM: graceful shutdown, cache closed, exit status 0
    # The entries outlive the process.
    with SemanticCache(tmp_path / "proxy-cache", embedder=embedder) as reopened:
        assert len(reopened) == 2


def test_unreachable_upstream_is_a_502(hash_embedder: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening
        cache = SemanticCache(store="memory", embedder=hash_embedder)
        with ThreadServer(ProxyApp(dead, cache)) as proxy:
            r = httpx.post(proxy.url + "/v1/chat/completions",
                           json={"model": MODEL, "messages": [{"role": "user", "content": Q}]},
                           headers={"authorization": "Bearer k"})
            assert r.status_code == 502 and r.json()["error"]["type"] == "proxy_error"
            assert r.headers["x-semcache"] == "miss"
            assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
        cache.close()
