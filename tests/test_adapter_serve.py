"""``semcache serve`` as a process: liveness at once, readiness once the model is
loaded, a fast ``--help``, and a quick graceful stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ProcessServer
from tests.upstream_stub import MODEL, Q, UpstreamStub

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": Q}]}


def test_serve_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, time; t = time.perf_counter(); from semcache.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'torch', 'sentence_transformers', 'numba', "
            "'sklearn', 'semcache.cache') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--upstream" in out and "--keys" in out and "--allow-anonymous" in out
    assert "HEAVY []" in out
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "semcache.cli", "serve", "--help"],
                       capture_output=True, timeout=120, check=True)
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0, times
    # The top-level help lists every subcommand without importing them.
    top = subprocess.run([sys.executable, "-m", "semcache.cli", "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "serve" in top and "eval" in top


def test_liveness_at_once_readiness_after_the_model(stub: UpstreamStub, tmp_path: Path) -> None:
    stub.reset()
    args = ["serve", "--upstream", stub.url, "--port", "0", "--cache-dir", str(tmp_path / "c")]
    with ProcessServer(args, env=ENV) as proxy:
        t0 = time.monotonic()
        live = httpx.get(proxy.url + "/healthz", timeout=5)
        assert live.status_code == 200 and time.monotonic() - t0 < 1.0
        assert live.json()["status"] == "ok"
        ready = httpx.get(proxy.url + "/readyz", timeout=5)
        if ready.status_code == 503:
            assert ready.json()["ready"] is False
            # Not ready yet: requests are forwarded, uncached.
            r = httpx.post(proxy.url + "/v1/chat/completions", json=BODY,
                           headers={"authorization": "Bearer k"}, timeout=30)
            assert r.status_code == 200 and r.headers["x-semcache"] in ("bypass", "miss")
        proxy.wait_ready()
        assert httpx.get(proxy.url + "/healthz").json()["ready"] is True
        h = {"authorization": "Bearer k"}
        httpx.post(proxy.url + "/v1/chat/completions", json=BODY, headers=h, timeout=30)
        r = httpx.post(proxy.url + "/v1/chat/completions", json=BODY, headers=h, timeout=30)
        assert r.headers["x-semcache"] == "hit"


def test_sigterm_stops_within_two_seconds_finishing_requests_in_flight(
        stub: UpstreamStub, tmp_path: Path) -> None:
    stub.reset()
    args = ["serve", "--upstream", stub.url, "--port", "0", "--cache-dir", str(tmp_path / "c")]
    proxy = ProcessServer(args, env=ENV).start()
    try:
        proxy.wait_ready()
        stub.delay = 1.0
        result: dict[str, Any] = {}

        def call() -> None:
            body = {**BODY, "messages": [{"role": "user", "content": "A slow question?"}]}
            result["r"] = httpx.post(proxy.url + "/v1/chat/completions", json=body,
                                     headers={"authorization": "Bearer k"}, timeout=30)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while stub.count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub.count == 1  # the request is upstream, in flight
        assert proxy.proc is not None and proxy.pid is not None
        t0 = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        code = proxy.proc.wait(timeout=10)
        took = time.monotonic() - t0
        t.join(timeout=10)
        assert code == 0 and took < 2.0, took
        assert result["r"].status_code == 200
        assert result["r"].json()["choices"][0]["message"]["content"] == (
            "Answer 1: A slow question?")
    finally:
        stub.delay = 0.0
        proxy.stop()


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text("{not json")
    for extra in (["--keys", str(bad)], ["--max-body", "0"],
                  ["--keys", str(bad), "--share-across-keys"]):
        r = subprocess.run([sys.executable, "-m", "semcache.cli", "serve", "--upstream",
                            "http://127.0.0.1:9", "--port", "0", *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "semcache serve:" in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--keys", "--allow-anonymous", "--share-across-keys",
                                  "--trust-tenant-header", "--max-body", "--verify-ttl",
                                  "--graceful-timeout"])
def test_every_flag_is_documented(flag: str) -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "adapters.md"
    assert flag in doc.read_text(encoding="utf-8")
