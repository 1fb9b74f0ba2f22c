"""``semcache serve`` under load: this tree against a pass-through proxy and against ``main``.

Three proxies run side by side, each as its own process in front of the same
upstream stand-in (a process answering like the OpenAI API after ``--delay``
seconds, JSON or SSE):

- ``pass``: a plain forwarding proxy (this tree's ``ForwardingApp`` alone, no cache);
- ``main``: ``semcache serve`` from ``git archive <--base>`` (default ``main``),
  unpacked into a temporary directory, i.e. the code before this change;
- ``before`` (with ``--before REV``): a second old revision, the same way;
- ``new``: ``semcache serve`` from this tree.

The load is the real ``openai`` async client, ``--clients`` concurrent callers
(8/32/64), all with one API key, a share of them streamed (``--stream-share``).
Prompts are real Quora questions from ``../shared/data/qqp/pairs_dev.jsonl.gz``:
``--seed-prompts`` first questions of duplicate pairs are sent once to seed each
cache (not measured); then, per round and concurrency,

- ``mixed``: 50% exact repeats of seeded prompts, 25% paraphrases (the
  duplicate's other question, labelled a duplicate by Quora), 25% new questions;
- ``hits``: 70% repeats and 30% paraphrases, i.e. what a cache can answer.

The proxies are measured alternately (the order rotates every round), so
a slow spell of the shared machine hits all of them. Each request's outcome is
the proxy's ``x-semcache`` header (``hit``, ``miss``, ``coalesced``...); for the
pass-through every request is an upstream call.

Prints and writes ``benchmarks/results/proxy_bench.txt`` (req/s, hit and miss
p50/p99 per proxy, phase and concurrency) and ``proxy_bench.png``.

    flock /work/coord/heavy.lock python benchmarks/proxy_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
DATA = REPO.parent / "shared" / "data" / "qqp" / "pairs_dev.jsonl.gz"
MODEL = "gpt-4o-mini"

# ----------------------------------------------------------------- upstream
UPSTREAM = r'''
import asyncio, json, sys, time
import uvicorn
DELAY = float(sys.argv[2])
N = [0]

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"}); return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    N[0] += 1
    if scope["path"].endswith("/models"):
        out = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out}); return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""}); return
    req = json.loads(body)
    await asyncio.sleep(DELAY)
    text = "Answer %d: %s" % (N[0], req["messages"][-1]["content"])
    head = {"id": "chatcmpl-%d" % N[0], "created": int(time.time()), "model": req["model"]}
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if not req.get("stream"):
        out = json.dumps({**head, "object": "chat.completion", "choices": [{"index": 0,
              "message": {"role": "assistant", "content": text, "refusal": None},
              "logprobs": None, "finish_reason": "stop"}], "usage": usage}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out}); return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    base = {**head, "object": "chat.completion.chunk"}
    def ev(delta, fr=None):
        return ("data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta,
                "logprobs": None, "finish_reason": fr}]}) + "\n\n").encode()
    await send({"type": "http.response.body", "body": ev({"role": "assistant", "content": ""}),
                "more_body": True})
    for i, w in enumerate(text.split(" ")):
        await send({"type": "http.response.body", "body": ev({"content": w if i == 0 else " " + w}),
                    "more_body": True})
    await send({"type": "http.response.body", "body": ev({}, "stop") + b"data: [DONE]\n\n"})

sock_port = int(sys.argv[1])
print("listening on http://127.0.0.1:%d" % sock_port, flush=True)
uvicorn.run(app, host="127.0.0.1", port=sock_port, log_level="warning", access_log=False)
'''

PASS_THROUGH = r'''
import sys, uvicorn
from semcache.adapters.server import ForwardingApp
port = int(sys.argv[2])
print("listening on http://127.0.0.1:%d" % port, flush=True)
uvicorn.run(ForwardingApp(sys.argv[1]), host="127.0.0.1", port=port, log_level="warning",
            access_log=False, lifespan="off")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: str | None = None
    check_ready: bool = True
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    def start(self, timeout: float = 300) -> Proc:
        import httpx

        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        for line in self.proc.stdout:
            self.log.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                break
            if time.monotonic() - t0 > timeout:
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.log))
        if not self.check_ready:
            return self
        # Ready: /readyz where there is one, else /healthz (main's proxy is ready once it listens).
        while time.monotonic() - t0 < timeout:
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if r.status_code == 200 or (r.status_code == 404 and httpx.get(
                        self.url + "/healthz", timeout=5).status_code in (200, 404)):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} never became ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def base_tree(rev: str, where: Path) -> Path:
    """``git archive rev`` unpacked, with ``adapters/`` where the package expects it."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                          capture_output=True).stdout
    tree = where / "base"
    tree.mkdir(parents=True)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(tree, filter="data")
    # Installed, ``adapters/`` is ``semcache.adapters``: give the archive the same shape so
    # the editable install of this tree is never consulted for it.
    shutil.copytree(tree / "adapters", tree / "semcache" / "adapters")
    return tree


# --------------------------------------------------------------------- load
def load_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["label"] == 1 and row["text_a"].strip() and row["text_b"].strip() and (
                    row["text_a"].strip().lower() != row["text_b"].strip().lower()):
                pairs.append((row["text_a"].strip(), row["text_b"].strip()))
    rng.shuffle(pairs)
    if len(pairs) < n:
        raise SystemExit(f"only {len(pairs)} duplicate pairs in {DATA}")
    return pairs[:n]


@dataclass
class Req:
    prompt: str
    kind: str  # repeat | paraphrase | new
    stream: bool


def stream_of(phase: str, n: int, seeds: list[tuple[str, str]], fresh: Iterator[str],
              paras: Iterator[str], rng: random.Random, stream_share: float) -> list[Req]:
    shares = {"mixed": (0.5, 0.25), "hits": (0.7, 0.3)}[phase]
    out = []
    for _ in range(n):
        u = rng.random()
        if u < shares[0]:
            req = Req(rng.choice(seeds)[0], "repeat", False)
        elif u < shares[0] + shares[1]:
            req = Req(next(paras), "paraphrase", False)
        else:
            req = Req(next(fresh), "new", False)
        req.stream = rng.random() < stream_share
        out.append(req)
    return out


async def drive(url: str, reqs: list[Req], clients: int) -> tuple[float, list[tuple[Req, str, float]]]:
    """Send ``reqs`` through ``clients`` concurrent callers; (seconds, [(req, outcome, latency)])."""
    import httpx
    import openai

    queue: asyncio.Queue[Req] = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    results: list[tuple[Req, str, float]] = []
    errors: list[Exception] = []
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench-key", max_retries=0,
                                  timeout=120, http_client=httpx.AsyncClient(limits=limits)) as c:
        async def worker() -> None:
            while True:
                try:
                    r = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                messages: Any = [{"role": "user", "content": r.prompt}]
                t0 = time.perf_counter()
                try:
                    if r.stream:
                        raw = await c.chat.completions.with_raw_response.create(
                            model=MODEL, messages=messages, stream=True)
                        outcome = raw.headers.get("x-semcache", "upstream")
                        text = "".join([ch.choices[0].delta.content or ""
                                        async for ch in raw.parse() if ch.choices])
                    else:
                        raw = await c.chat.completions.with_raw_response.create(
                            model=MODEL, messages=messages)
                        outcome = raw.headers.get("x-semcache", "upstream")
                        text = raw.parse().choices[0].message.content or ""
                    if not text.startswith("Answer "):
                        outcome = "wrong"
                except Exception as exc:  # counted, never fatal to the run
                    outcome = f"error:{type(exc).__name__}"
                    if not errors:
                        print(f"first error: {exc!r}", file=sys.stderr)
                    errors.append(exc)
                results.append((r, outcome, time.perf_counter() - t0))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, results


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="8,32,64")
    ap.add_argument("--delay", type=float, default=0.5, help="upstream seconds per answer")
    ap.add_argument("--requests", type=int, default=400, help="per proxy, phase, concurrency, round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed-prompts", type=int, default=300)
    ap.add_argument("--stream-share", type=float, default=0.3)
    ap.add_argument("--base", default="main", help="git revision of the 'main' proxy")
    ap.add_argument("--before", default=None,
                    help="a second old revision, measured as proxy 'before' (adds it to --systems)")
    ap.add_argument("--systems", default="pass,main,new")
    ap.add_argument("--backend", default=None,
                    help="SEMCACHE_BACKEND of both cached proxies (torch, onnx-fp32, onnx-int8; "
                         "default: the library's default)")
    ap.add_argument("--out", default=str(RESULTS / "proxy_bench.txt"))
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    systems = args.systems.split(",")
    if args.before and "before" not in systems:
        systems.insert(systems.index("new") if "new" in systems else len(systems), "before")
    rng = random.Random(20)
    phases = ["mixed", "hits"]
    per_round = len(clients) * len(phases) * args.requests
    pairs = load_pairs(args.seed_prompts + per_round * args.rounds, rng)
    seeds = pairs[: args.seed_prompts]
    spare = pairs[args.seed_prompts:]
    fresh = iter([a for a, _ in spare])  # new questions, never sent before
    paras = iter([b for _, b in seeds] * (per_round * args.rounds // len(seeds) + 1))

    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.backend:
        env["SEMCACHE_BACKEND"] = args.backend
    procs: dict[str, Proc] = {}
    try:
        up = Proc("upstream", [sys.executable, "-c", UPSTREAM, str(free_port()), str(args.delay)],
                  env, check_ready=False).start()
        time.sleep(1.0)  # uvicorn binds right after the line is printed
        procs["upstream"] = up
        serve = ["-m", "semcache.cli", "serve", "--upstream", up.url, "--port", "0", "--memory"]
        for name in systems:
            if name == "pass":
                cmd = [sys.executable, "-c", PASS_THROUGH, up.url, str(free_port())]
                procs[name] = Proc(name, cmd, env, cwd=str(REPO))
            elif name in ("main", "before"):
                tree = base_tree(args.base if name == "main" else args.before, tmp / name)
                procs[name] = Proc(name, [sys.executable, *serve],
                                   {**env, "PYTHONPATH": str(tree)}, cwd=str(tree))
            elif name == "new":
                procs[name] = Proc(name, [sys.executable, *serve], env, cwd=str(REPO))
        for name in systems:
            print(f"starting {name}...", flush=True)
            procs[name].start()
        # The 'main' proxy must really be the old code.
        for old in ("main", "before"):
            if old in procs:
                assert str(tmp) in procs[old].env["PYTHONPATH"]
        seeded = [Req(a, "seed", False) for a, _ in seeds]
        for name in systems:
            asyncio.run(drive(procs[name].url, seeded, 32))

        rows: dict[tuple[str, str, int], list[tuple[Req, str, float]]] = defaultdict(list)
        walls: dict[tuple[str, str, int], float] = defaultdict(float)
        plan = [(r, c, ph) for r in range(args.rounds) for c in clients for ph in phases]
        bar = tqdm(total=len(plan) * len(systems), desc="proxy_bench")
        for r, c, ph in plan:
            reqs = stream_of(ph, args.requests, seeds, fresh, paras, rng, args.stream_share)
            order = systems[r % len(systems):] + systems[: r % len(systems)]
            for name in order:
                wall, res = asyncio.run(drive(procs[name].url, reqs, c))
                rows[(name, ph, c)] += res
                walls[(name, ph, c)] += wall
                bar.update()
        bar.close()
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"proxy_bench: {args.rounds} rounds x {args.requests} requests per proxy, phase and "
        f"concurrency; upstream delay {args.delay}s; {args.stream_share:.0%} streamed; "
        f"base={args.base}; before={args.before}; backend={args.backend or 'default'}; {os.cpu_count()} cpus",
        "cmd: " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hit = answered by the proxy's cache (x-semcache: hit); pass = every request upstream",
        "",
        f"{'proxy':6} {'phase':6} {'clients':>7} {'req/s':>8} {'hit/s':>8} {'hits':>6} "
        f"{'miss':>5} {'coal':>5} {'err':>4} {'hit p50':>8} {'hit p99':>8} {'miss p50':>9} "
        f"{'miss p99':>9} {'all p50':>8} {'all p99':>8}",
    ]
    summary: dict[tuple[str, str, int], dict[str, float]] = {}
    for (name, ph, c), res in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        wall = walls[(name, ph, c)]
        hits = [t for _, o, t in res if o == "hit"]
        misses = [t for _, o, t in res if o in ("miss", "upstream")]
        coal = [t for _, o, t in res if o == "coalesced"]
        errs = [o for _, o, _ in res if o.startswith("error") or o == "wrong"]
        alls = [t for _, _, t in res]
        s = {"rps": len(res) / wall, "hps": len(hits) / wall, "hit50": pct(hits, 50),
             "hit99": pct(hits, 99), "all50": pct(alls, 50), "all99": pct(alls, 99),
             "miss50": pct(misses, 50), "miss99": pct(misses, 99)}
        summary[(name, ph, c)] = s
        lines.append(
            f"{name:6} {ph:6} {c:7d} {s['rps']:8.1f} {s['hps']:8.1f} {len(hits):6d} "
            f"{len(misses):5d} {len(coal):5d} {len(errs):4d} {s['hit50']:8.1f} {s['hit99']:8.1f} "
            f"{pct(misses, 50):9.1f} {pct(misses, 99):9.1f} {s['all50']:8.1f} {s['all99']:8.1f}")
    lines.append("")
    lines.append("latencies in ms; req/s over the wall time of the phase's requests")
    for c in clients:
        for ph in phases:
            n, m, p = (summary.get((k, ph, c)) for k in ("new", "main", "pass"))
            b = summary.get(("before", ph, c))
            if n and b:
                lines.append(
                    f"{c} clients, {ph}: before -> new: req/s {b['rps']:.1f} -> {n['rps']:.1f}; "
                    f"hit p50/p99 {b['hit50']:.1f}/{b['hit99']:.1f} -> {n['hit50']:.1f}/"
                    f"{n['hit99']:.1f} ms; miss p50/p99 {b['miss50']:.0f}/{b['miss99']:.0f} -> "
                    f"{n['miss50']:.0f}/{n['miss99']:.0f} ms")
            if n and m:
                lines.append(
                    f"{c} clients, {ph}: req/s new {n['rps']:.1f} / main {m['rps']:.1f}; hit/s new "
                    f"{n['hps']:.1f} / main {m['hps']:.1f} ({n['hps'] / max(m['hps'], 1e-9):.2f}x); "
                    f"hit p50/p99 new {n['hit50']:.1f}/{n['hit99']:.1f} ms, main "
                    f"{m['hit50']:.1f}/{m['hit99']:.1f} ms; miss p50/p99 new "
                    f"{n['miss50']:.0f}/{n['miss99']:.0f} ms, main {m['miss50']:.0f}/{m['miss99']:.0f} ms")
            if n and p:
                lines.append(
                    f"{c} clients, {ph}: new hit p50/p99 {n['hit50']:.1f}/{n['hit99']:.1f} ms, miss "
                    f"p50 {n['miss50']:.0f} ms vs pass-through p50/p99 {p['all50']:.1f}/"
                    f"{p['all99']:.1f} ms ({p['rps']:.1f} req/s)")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    plot(summary, clients, systems, out.with_suffix(".png"))
    return 0


def plot(summary: dict[tuple[str, str, int], dict[str, float]], clients: list[int],
         systems: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    width = 0.8 / len(systems)
    x = np.arange(len(clients))
    for i, name in enumerate(systems):
        for ax, ph, key, label in ((axes[0], "mixed", "rps", "mixed stream: req/s"),
                                   (axes[1], "hits", "rps", "hits stream: req/s"),
                                   (axes[2], "hits", "all99", "hits stream: p99 latency (ms)"),
                                   (axes[3], "mixed", "miss50", "mixed stream: miss p50 (ms)")):
            vals = [summary.get((name, ph, c), {}).get(key, np.nan) for c in clients]
            ax.bar(x + i * width, vals, width, label=name)
            ax.set_title(label)
            ax.set_xticks(x + width * (len(systems) - 1) / 2, [f"{c} clients" for c in clients])
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle("semcache serve: pass-through vs main vs this tree (same run, alternating)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
