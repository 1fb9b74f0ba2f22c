"""Local-disk store vs the PostgreSQL store with in-process replicas, same run, same machine.

Measured per size (entries in the cache):

- lookup p50/p99 of ``SemanticCache.get`` with embedding excluded (the embedder is a
  table of precomputed vectors), half hits (a perturbed copy of a stored vector, cosine
  ~0.95) and half misses (fresh random vectors);
- put latency of single ``put`` calls;
- catch-up: time for a new process's ``SemanticCache(...)`` to open on the filled store
  (PostgreSQL: one REPEATABLE READ load of every entry, then the log; local disk: the
  SQLite load), and ``load_all()`` alone;
- replication delay across 3 processes on one PostgreSQL: one writes entries 20 ms apart,
  the two others record when their replica first holds each one (delay = that time - the
  time the writer's ``put`` returned, 0 when it came first), then check every entry is a hit.

Vectors (``--vectors real``, the default) are all-MiniLM-L6-v2 embeddings of QQP questions,
queries half labelled paraphrases of stored questions; ``--vectors random`` uses random
unit vectors, the approximate index's worst case. Both stores run the same in-memory index,
so what differs is the store behind it. PostgreSQL is the
embedded PostgreSQL 18 of the tests (``tests/pg_server.py``) on 127.0.0.1 unless ``--url``
names another server.

Run (heavy: take the shared lock)::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/shared_store_bench.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.common import RESULTS_DIR, percentiles, print_table, save_text  # noqa: E402
from semcache import SemanticCache  # noqa: E402
from semcache.embedding import FunctionEmbedder  # noqa: E402

DIM = 384


class TableVectors:
    """Entries ``e<i>`` and queries ``q<i>`` map to precomputed vectors (embedding costs ~0)."""

    def __init__(self, n: int, n_queries: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.entries = _unit(rng.standard_normal((n, DIM)).astype(np.float32))
        half = n_queries // 2
        src = rng.integers(0, n, half)
        noisy = self.entries[src] + rng.standard_normal((half, DIM)).astype(np.float32) * (0.33 / DIM**0.5)
        self.queries = np.concatenate([_unit(noisy), _unit(rng.standard_normal((n_queries - half, DIM))
                                                          .astype(np.float32))])

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), DIM), np.float32)
        for k, t in enumerate(texts):
            table = self.entries if t[0] == "e" else self.queries
            out[k] = table[int(t[1:].split()[0])]
        return out

    def embedder(self) -> FunctionEmbedder:
        return FunctionEmbedder(self.encode, "bench-table")


class RealVectors(TableVectors):
    """all-MiniLM-L6-v2 embeddings of QQP questions (``/work/shared/data`` layout: ``../shared/data``).

    Entries are distinct questions; the first half of the queries are the labelled duplicates
    of stored questions (real paraphrases), the second half questions that are not stored.
    """

    def __init__(self, n: int, n_queries: int) -> None:
        import gzip

        from benchmarks.common import embed_cached

        path = ROOT.parent.parent / "shared" / "data" / "qqp" / "pairs_dev.jsonl.gz"
        with gzip.open(path, "rt") as fh:
            pairs = [json.loads(line) for line in fh]
        half = n_queries // 2
        dup = [p for p in pairs if p["label"] == 1]
        stored: dict[str, None] = {p["text_a"]: None for p in dup[:half]}
        hit_queries = [p["text_b"] for p in dup[:half]]
        rest = (q for p in pairs for q in (p["text_a"], p["text_b"]))
        misses: list[str] = []
        for q in rest:
            if len(stored) < n:
                stored.setdefault(q, None)
            elif q not in stored and len(misses) < n_queries - half:
                misses.append(q)
            if len(stored) >= n and len(misses) >= n_queries - half:
                break
        texts = list(stored)
        self.entries = embed_cached(texts, f"shared-store-entries-{n}")
        self.queries = embed_cached(hit_queries + misses, f"shared-store-queries-{n_queries}")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def fill(cache: SemanticCache, n: int) -> float:
    t0 = time.perf_counter()
    for s in tqdm(range(0, n, 2000), desc="filling", unit="batch", leave=False):
        texts = [f"e{i}" for i in range(s, min(n, s + 2000))]
        cache.put_many(texts, [f"answer {t}" for t in texts])
    return time.perf_counter() - t0


def lookups(cache: SemanticCache, n_queries: int) -> tuple[list[float], int]:
    for q in range(min(50, n_queries)):  # warm up
        cache.get(f"q{q}")
    times, hits = [], 0
    for q in range(n_queries):
        t0 = time.perf_counter()
        hit = cache.get(f"q{q}")
        times.append(time.perf_counter() - t0)
        hits += bool(hit)
    return times, hits


def puts(cache: SemanticCache, n: int, n_puts: int) -> list[float]:
    times = []
    for k in range(n_puts):
        t0 = time.perf_counter()
        cache.put(f"e{k} extra {k}", "x")  # same vector as entry k, another prompt
        times.append(time.perf_counter() - t0)
    return times


def replication_role(url: str, index: int, n_procs: int, rounds: int) -> None:
    """A worker process (JSON lines out). Process 0 writes ``rounds`` entries 20 ms apart; the
    others record when their replica's log position first reaches each one (polled every
    0.2 ms, no lookup in the way), then check that every entry is a hit."""
    vec = TableVectors(rounds, 0, seed=1)
    cache = SemanticCache(store=url, embedder=vec.embedder(), guards=())
    store = cache._store
    print("READY", flush=True)
    assert sys.stdin.readline().strip() == "GO"
    if index == 0:
        for r in range(rounds):
            time.sleep(0.02)
            entry_id = cache.put(f"e{r}", f"answer {r}")
            print(json.dumps({"put": entry_id, "t": time.time()}), flush=True)
    else:
        seen: list[tuple[int, float]] = []
        last = store.head()
        deadline = time.monotonic() + 60 + 0.1 * rounds
        while time.monotonic() < deadline:
            head = store.head()
            if head != last:
                seen.append((head, time.time()))
                last = head
                if head >= rounds:  # a fresh store: the writer's ids are 1..rounds
                    break
            time.sleep(0.0002)
        hits = sum(bool(cache.get(f"e{r}")) for r in range(rounds))
        print(json.dumps({"seen": seen, "hits": hits}), flush=True)
    cache.close()
    print("DONE", flush=True)


def replication(url: str, n_procs: int = 3, rounds: int = 300) -> tuple[np.ndarray, int]:
    """Delays (s) from a put returning to each other process's replica holding it; and misses."""
    SemanticCache(store=url, embedder=TableVectors(1, 0).embedder()).close()  # schema first
    procs = [subprocess.Popen([sys.executable, __file__, "--role", "replicate", "--url", url,
                               "--index", str(i), "--procs", str(n_procs), "--rounds", str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(n_procs)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    put_t: dict[int, float] = {}
    readers: list[dict[str, Any]] = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        for line in out.strip().splitlines()[:-1]:
            rec = json.loads(line)
            if "put" in rec:
                put_t[int(rec["put"])] = rec["t"]
            else:
                readers.append(rec)
    delays: list[float] = []
    missed = 0
    for rec in readers:
        seen = rec["seen"]
        missed += rounds - int(rec["hits"])
        heads = np.array([h for h, _ in seen])
        times = [t for _, t in seen]
        for entry_id, t_put in put_t.items():
            k = int(np.searchsorted(heads, entry_id))  # first position at or past the entry
            if k < len(seen):
                delays.append(max(0.0, times[k] - t_put))
    return np.array(delays), missed


def catchup(n: int, url: str, tmp: Path) -> list[list[object]]:
    """Fill each store with ``n`` entries through the store API, then time a new process's open.

    Filling bypasses the cache (no index, no projection), so ``open`` here includes fitting the
    projection; ``load_all`` is the store's share of it.
    """
    from semcache.stores import make_store
    from semcache.stores.base import EntryMeta

    rng = np.random.default_rng(3)
    out: list[list[object]] = []
    scope = SemanticCache(store="memory", embedder=TableVectors(1, 0).embedder()).scope_id(None)
    for name in ("local disk", "PostgreSQL replica"):
        store = make_store("disk", tmp / "catchup") if name == "local disk" else make_store(url, None)
        t0 = time.perf_counter()
        for s in tqdm(range(0, n, 5000), desc=f"filling {name}", unit="batch", leave=False):
            k = min(n, s + 5000) - s
            vecs = _unit(rng.standard_normal((k, DIM)).astype(np.float32))
            now = time.time()
            store.put_many([(EntryMeta(scope, f"{s + i:032x}", "fn:bench-table/l2", now, None), vecs[i],
                             f"e{s + i}", f"answer {s + i}") for i in range(k)])
        fill_s = time.perf_counter() - t0
        store.close()
        fresh = make_store("disk", tmp / "catchup") if name == "local disk" else make_store(url, None)
        t0 = time.perf_counter()
        loaded = fresh.load_all()
        load_s = time.perf_counter() - t0
        fresh.close()
        spec = {"directory": tmp / "catchup"} if name == "local disk" else {"store": url}
        opens = []
        for _ in range(2):  # the first open fits the projection and stores it; the next reuse it
            t0 = time.perf_counter()
            cache = SemanticCache(embedder=TableVectors(1, 0).embedder(), guards=(), **spec)  # type: ignore[arg-type]
            opens.append(time.perf_counter() - t0)
            size = len(cache)
            cache.close()
        out.append([name, n, f"{load_s:.2f}", f"{opens[0]:.2f}", f"{opens[1]:.2f}", size, len(loaded.ids),
                    f"{fill_s:.1f}"])
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=300, help="replication rounds (3 processes)")
    ap.add_argument("--vectors", choices=("real", "random"), default="real",
                    help="QQP questions embedded by all-MiniLM-L6-v2, or random unit vectors")
    ap.add_argument("--catchup", type=int, default=100_000,
                    help="entries for the catch-up measurement (0: skip)")
    ap.add_argument("--url", help="an existing PostgreSQL (default: start the embedded one)")
    ap.add_argument("--out", default="shared_store_bench", help="results/<out>.txt and .png")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "replicate":
        replication_role(args.url, args.index, args.procs, args.rounds)
        return

    server = None
    if args.url is None:
        from tests.pg_server import PgServer

        server = PgServer()
        server.start()
    try:
        run(args, server)
    finally:
        if server is not None:
            server.cleanup()


def run(args: argparse.Namespace, server: object) -> None:
    from tests.pg_server import PgServer

    def new_url() -> str:
        if isinstance(server, PgServer):
            return server.new_database()
        return str(args.url)

    rows = []
    plot: dict[str, dict[int, tuple[float, float]]] = {"local disk": {}, "PostgreSQL replica": {}}
    for n in args.sizes:
        vec = (RealVectors(n + args.puts, args.queries) if args.vectors == "real"
               else TableVectors(n + args.puts, args.queries))
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("local disk", "PostgreSQL replica"):
                spec = {"directory": Path(tmp) / "disk"} if name == "local disk" else {"store": new_url()}
                # No guards: the prompts are table keys ("e12", "q7"), not language.
                cache = SemanticCache(embedder=vec.embedder(), guards=(), **spec)  # type: ignore[arg-type]
                fill_s = fill(cache, n)
                lk, hits = lookups(cache, args.queries)
                pt = puts(cache, n, args.puts)
                cache.close()
                t0 = time.perf_counter()
                again = SemanticCache(embedder=vec.embedder(), guards=(), **spec)  # type: ignore[arg-type]
                open_s = time.perf_counter() - t0
                size = len(again)
                t0 = time.perf_counter()
                again._store.load_all()
                load_s = time.perf_counter() - t0
                again.close()
                l50, l99 = percentiles(lk)
                p50, p99 = percentiles(pt)
                plot[name][n] = (l50, l99)
                rows.append([name, n, f"{l50:.3f}", f"{l99:.3f}", f"{hits}/{len(lk)}", f"{p50:.2f}",
                             f"{p99:.2f}", f"{open_s:.2f}", f"{load_s:.2f}", size, f"{fill_s:.1f}"])
                print(rows[-1], flush=True)
    headers = ["store", "entries", "get p50 ms", "get p99 ms", "hits", "put p50 ms", "put p99 ms",
               "open s", "load_all s", "size", "fill s"]
    table = print_table(headers, rows) if rows else ""
    ratios = []
    for n in args.sizes:
        loc, pg = plot["local disk"][n], plot["PostgreSQL replica"][n]
        ratios.append(f"{n}: replica/local lookup p50 {pg[0] / loc[0]:.2f}x, p99 {pg[1] / loc[1]:.2f}x")
    delays, missed = replication(new_url(), 3, args.rounds) if args.rounds else (np.zeros(1), 0)
    d50, d99 = percentiles(delays)
    rep = (f"replication delay, 1 writer -> 2 other processes ({len(delays)} deliveries; {missed} entries "
           f"not a hit afterwards): p50 {d50:.2f} ms, p99 {d99:.2f} ms, "
           f"max {1e3 * float(delays.max()):.2f} ms")
    if not args.rounds:
        rep = ""
    print("\n".join(ratios))
    print(rep)
    parts = [table, "", *ratios, rep] if rows or rep else []
    if args.catchup:
        with tempfile.TemporaryDirectory() as tmp:
            cu = catchup(args.catchup, new_url(), Path(tmp))
        parts += ["", "catch-up of a new process (filled through the store API, random vectors; first open = "
                  "load + index build + projection fit, next open = load + index build with the stored "
                  "projection)", print_table(["store", "entries", "load_all s", "first open s", "next open s",
                                              "size", "loaded", "fill s"], cu)]
    text = "\n".join(parts)
    command = ("flock /work/coord/heavy.lock .venv/bin/python benchmarks/shared_store_bench.py --sizes "
               + " ".join(map(str, args.sizes))
               + f" --catchup {args.catchup} --vectors {args.vectors} --rounds {args.rounds}"
               + f" --out {args.out}")
    save_text(f"{args.out}.txt", command, text)
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.35
    xs = np.arange(len(args.sizes))
    for k, (name, vals) in enumerate(plot.items()):
        ax1.bar(xs + k * width, [vals[n][0] for n in args.sizes], width, label=f"{name} p50")
        ax1.scatter(xs + k * width, [vals[n][1] for n in args.sizes], marker="_", s=300, color="k")
    ax1.set_xticks(xs + width / 2, [f"{n:,}" for n in args.sizes])
    ax1.set_ylabel("get() ms, embedding excluded (bar p50, dash p99)")
    ax1.set_xlabel("entries")
    ax1.legend()
    ax2.hist(delays * 1e3, bins=50)
    ax2.axvline(d99, color="r", linestyle="--", label=f"p99 {d99:.1f} ms")
    ax2.set_xlabel("replication delay, ms (put returned -> in another process's replica)")
    ax2.set_ylabel("hits")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{args.out}.png", dpi=110)


if __name__ == "__main__":
    main()
