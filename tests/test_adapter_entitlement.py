"""Who is served what: every adapter scopes entries by the caller's credential.

All over real HTTP on 127.0.0.1: the upstream stand-in (which can reject keys
like the real API), the ASGI middleware and the proxy under uvicorn, the real
``openai`` client and httpx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from semcache import SemanticCache
from semcache.adapters import server as server_mod
from semcache.adapters.middleware import SemanticCacheMiddleware
from semcache.adapters.openai import CachingTransport, caching_client
from semcache.adapters.requests import ANONYMOUS, DEFAULT_TENANT_HEADER, SECRET_FILE, load_secret
from semcache.adapters.server import KeyRing, ProxyApp
from tests.servers import ThreadServer
from tests.upstream_stub import MODEL, PARAPHRASE, Q, UpstreamStub

BODY = {"model": MODEL, "messages": [{"role": "user", "content": Q}]}


@pytest.fixture(autouse=True)
def _reset(stub: UpstreamStub) -> None:
    stub.reset()


def post(url: str, key: str | None, body: Any = None, **headers: str) -> httpx.Response:
    """One chat request with ``Authorization: Bearer key`` (none when key is None)."""
    h = dict(headers)
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    return httpx.post(url + "/v1/chat/completions", json=body or BODY, headers=h, timeout=60)


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


@pytest.fixture
def mw_url(stub: UpstreamStub, cache: SemanticCache) -> Iterator[str]:
    """The middleware (default settings) in front of the upstream stand-in."""
    with ThreadServer(SemanticCacheMiddleware(stub.app, cache)) as server:
        yield server.url


def test_key_a_answer_never_reaches_key_b_or_anonymous(mw_url: str, stub: UpstreamStub) -> None:
    r = post(mw_url, "key-a")
    assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 1: {Q}"
    r = post(mw_url, "key-a", {**BODY, "messages": [{"role": "user", "content": PARAPHRASE}]})
    assert r.headers["x-semcache"] == "hit" and answer(r) == f"Answer 1: {Q}"
    # Another key: its own upstream call, its own answer.
    r = post(mw_url, "key-b")
    assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 2: {Q}"
    # The same key through the Azure-style header is another credential too.
    r = post(mw_url, None, **{"api-key": "key-a"})
    assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 3: {Q}"
    # No credential at all (or a blank one): forwarded untouched, neither served nor stored.
    for n in (4, 5):
        r = post(mw_url, None)
        assert r.headers["x-semcache"] == "bypass" and answer(r) == f"Answer {n}: {Q}"
    r = post(mw_url, None, authorization="Bearer")
    assert r.headers["x-semcache"] == "bypass" and answer(r) == f"Answer 6: {Q}"
    assert stub.count == 6
    # And each key still gets its own entry back.
    assert answer(post(mw_url, "key-b")) == f"Answer 2: {Q}"
    assert answer(post(mw_url, "key-a")) == f"Answer 1: {Q}"
    assert stub.count == 6


def test_forged_tenant_header_reads_nothing(mw_url: str, stub: UpstreamStub) -> None:
    assert post(mw_url, "key-a", **{DEFAULT_TENANT_HEADER: "acme"}).headers["x-semcache"] == "miss"
    assert post(mw_url, "key-a", **{DEFAULT_TENANT_HEADER: "acme"}).headers["x-semcache"] == "hit"
    # Another caller naming acme reads nothing of acme's: the header only narrows a key.
    r = post(mw_url, "key-evil", **{DEFAULT_TENANT_HEADER: "acme"})
    assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 2: {Q}"
    r = post(mw_url, None, **{DEFAULT_TENANT_HEADER: "acme"})
    assert r.headers["x-semcache"] == "bypass" and answer(r) == f"Answer 3: {Q}"
    # key-a without the header is a different (narrower-less) scope as well.
    assert post(mw_url, "key-a").headers["x-semcache"] == "miss"
    assert stub.count == 4


def test_an_invalid_key_gets_no_hit(mw_url: str, stub: UpstreamStub) -> None:
    stub.valid_keys = {"good"}
    assert post(mw_url, "good").headers["x-semcache"] == "miss"
    assert post(mw_url, "good").headers["x-semcache"] == "hit"
    with openai.OpenAI(base_url=mw_url + "/v1", api_key="stolen-guess", max_retries=0) as c, \
            pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(**BODY)  # type: ignore[call-overload]
    # The 401 is the upstream's (the middleware has none): the bad key was sent there, and
    # refused calls are not counted.
    assert stub.count == 1


def test_allow_anonymous_and_trusted_tenant_header(stub: UpstreamStub, cache: SemanticCache
                                                   ) -> None:
    app = SemanticCacheMiddleware(stub.app, cache, allow_anonymous=True)
    with ThreadServer(app) as server:
        assert post(server.url, None).headers["x-semcache"] == "miss"
        assert post(server.url, None).headers["x-semcache"] == "hit"
        # A keyed caller is not served the anonymous entry.
        assert post(server.url, "key-a").headers["x-semcache"] == "miss"
    app = SemanticCacheMiddleware(stub.app, cache, trust_tenant_header=True)
    with ThreadServer(app) as server:
        t = {DEFAULT_TENANT_HEADER: "acme"}
        assert post(server.url, "key-a", **t).headers["x-semcache"] == "miss"
        # Behind a gateway, the tenant is the identity: shared across keys...
        r = post(server.url, "key-b", **t)
        assert r.headers["x-semcache"] == "hit" and answer(r) == f"Answer 3: {Q}"
        # ...and not with another tenant.
        assert post(server.url, "key-a", **{DEFAULT_TENANT_HEADER: "other"}).headers[
            "x-semcache"] == "miss"
    assert stub.count == 4


def test_scope_from_request_hook(stub: UpstreamStub, cache: SemanticCache) -> None:
    async def user_of(scope: Any) -> str | None:
        for k, v in scope["headers"]:
            if k == b"x-user":
                return "user:" + v.decode()
        return None

    app = SemanticCacheMiddleware(stub.app, cache, scope_from_request=user_of)
    with ThreadServer(app) as server:
        assert post(server.url, "k1", **{"x-user": "ann"}).headers["x-semcache"] == "miss"
        # The hook's identity decides: another key, same user -> hit.
        assert post(server.url, "k2", **{"x-user": "ann"}).headers["x-semcache"] == "hit"
        assert post(server.url, "k1", **{"x-user": "bob"}).headers["x-semcache"] == "miss"
        assert post(server.url, "k1").headers["x-semcache"] == "bypass"  # hook said None
    assert stub.count == 3


def test_httpx_transport_scopes_by_api_key(stub: UpstreamStub, cache: SemanticCache) -> None:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=stub.url + "/v1", api_key=key, max_retries=0,
                             http_client=caching_client(cache))

    with client("key-a") as a, client("key-b") as b:
        assert a.chat.completions.create(**BODY).choices[0].message.content == (  # type: ignore[call-overload]
            f"Answer 1: {Q}")
        assert a.chat.completions.create(**BODY).choices[0].message.content == (  # type: ignore[call-overload]
            f"Answer 1: {Q}")
        assert b.chat.completions.create(**BODY).choices[0].message.content == (  # type: ignore[call-overload]
            f"Answer 2: {Q}")
    # A client without any key (a local server) is not cached unless allowed.
    with httpx.Client(transport=CachingTransport(cache)) as anon:
        for _ in range(2):
            r = anon.post(stub.url + "/v1/chat/completions", json=BODY)
            assert r.headers["x-semcache"] == "bypass"
    with httpx.Client(transport=CachingTransport(cache, allow_anonymous=True)) as allowed:
        assert allowed.post(stub.url + "/v1/chat/completions", json=BODY).headers[
            "x-semcache"] == "miss"
        assert allowed.post(stub.url + "/v1/chat/completions", json=BODY).headers[
            "x-semcache"] == "hit"
    assert stub.count == 5


def test_secret_file_is_private_and_credentials_are_never_stored_or_logged(
        mw_url: str, cache: SemanticCache, cache_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="semcache")
    credential = "sk-very-secret-credential-0123456789"
    assert post(mw_url, credential).headers["x-semcache"] == "miss"
    assert post(mw_url, credential).headers["x-semcache"] == "hit"
    path = cache_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    found = [p for p in cache_dir.rglob("*") if p.is_file() and credential.encode() in p.read_bytes()]
    assert found == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("semcache")]
    assert not any(credential in m for m in ours)
    assert load_secret(cache_dir) == path.read_bytes()
    assert load_secret(None) == load_secret(None) != path.read_bytes()  # memory: per process


def test_secret_creation_is_race_free_across_processes(tmp_path: Path) -> None:
    code = ("import sys; from semcache.adapters.requests import load_secret; "
            "print(load_secret(sys.argv[1]).hex())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "c")],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1 and len(outs.pop()) == 64
    assert [p.name for p in (tmp_path / "c").iterdir()] == [SECRET_FILE]  # no temp files left


# ------------------------------------------------------------------ the proxy
def _keys_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(spec))
    return path


def test_proxy_keys_map_callers_to_tenants(stub: UpstreamStub, embedder: Any, tmp_path: Path
                                           ) -> None:
    stub.valid_keys = {"sk-acme", "sk-other"}
    os.environ["SEMCACHE_TEST_UPSTREAM_KEY"] = "sk-other"
    keys = KeyRing.load(_keys_file(tmp_path, {
        "pk-ann": {"tenant": "acme", "upstream_key": "sk-acme"},
        "pk-bob": {"tenant": "acme", "upstream_key": "sk-acme"},
        "pk-eve": {"tenant": "other", "upstream_key_env": "SEMCACHE_TEST_UPSTREAM_KEY"},
    }))
    cache = SemanticCache(store="memory", embedder=embedder)
    with ThreadServer(ProxyApp(stub.url, cache, keys=keys)) as proxy:
        r = post(proxy.url, "pk-ann")
        assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 1: {Q}"
        assert stub.auth == ["Bearer sk-acme"]  # the upstream sees the tenant's key only
        r = post(proxy.url, "pk-bob")  # same tenant: shared on purpose
        assert r.headers["x-semcache"] == "hit" and answer(r) == f"Answer 1: {Q}"
        r = post(proxy.url, None, **{"api-key": "pk-eve"})  # other tenant
        assert r.headers["x-semcache"] == "miss" and answer(r) == f"Answer 2: {Q}"
        assert stub.auth[-1] == "Bearer sk-other"
        # Unknown or missing proxy keys are refused by the proxy itself, on every path.
        for key in ("sk-acme", "pk-unknown", None):
            r = post(proxy.url, key)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        h = {"authorization": "Bearer nope"}
        assert httpx.get(proxy.url + "/v1/models", headers=h).status_code == 401
        # A forged tenant header does not move a caller into another tenant.
        r = post(proxy.url, "pk-eve", **{DEFAULT_TENANT_HEADER: "acme"})
        assert r.headers["x-semcache"] == "miss"
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="pk-bob", max_retries=0) as c:
            assert c.models.list().data[0].id == "gpt-stub"
    assert stub.count == 3
    cache.close()
    del os.environ["SEMCACHE_TEST_UPSTREAM_KEY"]


@pytest.mark.parametrize("spec", [[], {"k": "acme"}, {"k": {"tenant": ""}},
                                  {"k": {"tenant": "a", "upstream_key_env": "SEMCACHE_NOPE"}}])
def test_bad_key_files_are_refused(tmp_path: Path, spec: Any) -> None:
    with pytest.raises(ValueError, match=r"keys\.json"):
        KeyRing.load(_keys_file(tmp_path, spec))


def test_proxy_shares_across_keys_only_after_the_upstream_accepts_them(
        stub: UpstreamStub, embedder: Any) -> None:
    stub.valid_keys = {"good-1", "good-2"}
    cache = SemanticCache(store="memory", embedder=embedder)
    app = ProxyApp(stub.url, cache, share_across_keys=True, verify_ttl=60)
    with ThreadServer(app) as proxy:
        assert post(proxy.url, "good-1").headers["x-semcache"] == "miss"
        assert stub.models_calls == 0
        r = post(proxy.url, "good-2")
        assert r.headers["x-semcache"] == "hit" and answer(r) == f"Answer 1: {Q}"
        assert stub.models_calls == 1  # checked once...
        assert post(proxy.url, "good-2").headers["x-semcache"] == "hit"
        assert stub.models_calls == 1  # ...and remembered
        # A key the upstream refuses gets no hit: it goes upstream and fails there.
        for n in (2, 3):
            r = post(proxy.url, "bad")
            assert r.status_code == 401 and r.headers["x-semcache"] == "miss"
            assert stub.models_calls == n  # failures are never remembered
        r = post(proxy.url, None)
        assert r.status_code == 401 and r.headers["x-semcache"] == "bypass"
    assert stub.count == 1  # refused calls are not counted
    cache.close()


def test_a_refused_key_is_not_served_a_coalesced_answer(stub: UpstreamStub, embedder: Any
                                                       ) -> None:
    """With --share-across-keys, waiting on another key's call is served only once verified."""
    stub.valid_keys = {"good"}
    stub.delay = 0.5
    cache = SemanticCache(store="memory", embedder=embedder)
    app = ProxyApp(stub.url, cache, share_across_keys=True)

    async def both(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            async def ask(key: str, wait: float) -> httpx.Response:
                await asyncio.sleep(wait)
                return await c.post("/v1/chat/completions", json=BODY,
                                    headers={"authorization": f"Bearer {key}"})
            return list(await asyncio.gather(ask("good", 0), ask("bad", 0.2), ask("good", 0.2)))

    with ThreadServer(app) as proxy:
        good, bad, good2 = asyncio.run(both(proxy.url))
    assert good.status_code == 200 and good2.status_code == 200
    assert good2.headers["x-semcache"] == "coalesced"
    assert bad.status_code == 401 and "Answer" not in bad.text
    cache.close()


def test_server_constants_match_requests() -> None:
    assert server_mod.DEFAULT_TENANT_HEADER == DEFAULT_TENANT_HEADER
    assert server_mod.ANONYMOUS == ANONYMOUS
