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
            head = t[1:].split()[0] if len(t) > 1 and t[0] in "eq" else ""
            if not head.isdigit():  # not a table key (e.g. the embedder's fingerprint probe)
                out[k] = np.full(DIM, DIM**-0.5, np.float32)
                continue
            table = self.entries if t[0] == "e" else self.queries
            out[k] = table[int(head)]
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
        self.query_texts = hit_queries + misses
        self.entries = embed_cached(texts, f"shared-store-entries-{n}")
        self.queries = embed_cached(hit_queries + misses, f"shared-store-queries-{n_queries}")


class LiveQueries:
    """The table's embedder, except that queries are embedded by all-MiniLM-L6-v2 for real.

    Same fingerprint as the table (``bench-table``), so the cache serves the stored entries;
    with ``--vectors real`` the live vectors equal the table's (same model, same texts).
    """

    def __init__(self, vec: TableVectors, n_queries: int) -> None:
        from semcache.embedding import default_embedder

        self.vec = vec
        self.model = default_embedder()
        self.texts = getattr(vec, "query_texts", None) or [f"question number {i}" for i in range(n_queries)]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.vec.encode(texts)
        for k, t in enumerate(texts):
            if t[0] == "q":
                live = self.model.encode([self.texts[int(t[1:].split()[0])]])[0]
                out[k] = live if live.shape[0] == DIM else out[k]
        return out

    def embedder(self) -> FunctionEmbedder:
        return FunctionEmbedder(self.encode, "bench-table")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def fill(cache: SemanticCache, n: int) -> float:
    t0 = time.perf_counter()
    for s in tqdm(range(0, n, 2000), desc="filling", unit="batch", leave=False):
        texts = [f"e{i}" for i in range(s, min(n, s + 2000))]
        cache.put_many(texts, [f"answer {t}" for t in texts])
    return time.perf_counter() - t0


def lookups(cache: SemanticCache, n_queries: int, start: int = 0) -> tuple[list[float], int]:
    for q in range(min(50, n_queries)):  # warm up
        cache.get(f"q{q}")
    times, hits = [], 0
    for q in range(start, start + n_queries):
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


def open_ready(emb: FunctionEmbedder, spec: dict[str, Any]) -> SemanticCache:
    """Open a cache and wait until a remote store has connected and loaded (background warm-up);
    for ``index="pgvector"`` also until the engine's HNSW index exists (built over a filled
    table on first use): what a new node pays before its first hit."""
    cache = SemanticCache(embedder=emb, guards=(), **spec)
    while cache._warming:
        time.sleep(0.005)
    if spec.get("index") == "pgvector":
        cache._store.engine_search(DIM, **spec.get("index_params", {}))  # type: ignore[attr-defined]
    return cache


STORES = {"disk": "local disk", "replica": "PostgreSQL replica", "pgvector": "PostgreSQL index=pgvector"}


def spec_for(kind: str, tmp: Path, url: str) -> dict[str, Any]:
    """``SemanticCache`` keyword arguments of one store kind (``url``: a fresh database)."""
    if kind == "disk":
        return {"directory": tmp / "disk"}
    if kind == "replica":  # with the opt-in completion cache (docs/postgres.md)
        return {"store": url + "?completion_cache=10000"}
    # The HNSW build over a filled table may take minutes on a busy 2-core machine.
    return {"store": url + "?load_timeout=1800", "index": "pgvector", "index_params": {"build_mem_mb": 1024}}


def fill_store(kind: str, spec: dict[str, Any], vec: TableVectors, n: int) -> float:
    """Write entries ``e0..e<n-1>`` through the store API (no cache, no index): what a new
    node finds. For ``pgvector`` the engine column exists first, so the puts fill it and the
    new node's open builds the HNSW index over the filled table (timed there)."""
    from semcache.prompts import normalize_prompt, prompt_key
    from semcache.stores import make_store
    from semcache.stores import postgres_sql as sql
    from semcache.stores.base import EntryMeta

    emb = vec.embedder()
    scope = SemanticCache(store="memory", embedder=emb).scope_id(None)
    store = make_store("disk" if kind == "disk" else spec["store"], spec.get("directory"))
    if kind == "pgvector":
        store._write(lambda c: [c.execute(sql.render(q, store.schema)) for q in sql.ENGINE_CREATE])  # type: ignore[attr-defined]
        store._embedded = True  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for s in tqdm(range(0, n, 2000), desc=f"filling {kind}", unit="batch", leave=False):
        k = min(n, s + 2000) - s
        now = time.time()
        store.put_many([(EntryMeta(scope, prompt_key(normalize_prompt(f"e{s + i}")), emb.fingerprint, now,
                                   None), vec.entries[s + i], f"e{s + i}", f"answer e{s + i}")
                        for i in range(k)])
    store.close()
    return time.perf_counter() - t0


def throughput_role(spec_json: str, secs: float, offset: int, n_queries: int, vectors: str, n: int) -> None:
    """A worker: open the cache, then look up as fast as it can for ``secs`` (JSON count out)."""
    spec = json.loads(spec_json)
    vec = (RealVectors(n, n_queries) if vectors == "real" else TableVectors(n, n_queries))
    cache = open_ready(vec.embedder(), spec)
    for q in range(n_queries):  # warm: every process measured with its completion cache filled
        cache.get(f"q{q}")
    print("READY", flush=True)
    assert sys.stdin.readline().strip() == "GO"
    done = 0
    end = time.perf_counter() + secs
    while time.perf_counter() < end:
        cache.get(f"q{(offset + done) % n_queries}")
        done += 1
    cache.close()
    print(json.dumps({"lookups": done}), flush=True)


def throughput(spec: dict[str, Any], procs: int, args: argparse.Namespace, n: int,
               secs: float = 5.0) -> float:
    """Lookups per second of ``procs`` processes together on one store."""
    spec_json = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in spec.items()})
    ps = [subprocess.Popen([sys.executable, __file__, "--role", "throughput", "--spec", spec_json,
                            "--secs", str(secs), "--index", str(i * 397), "--queries", str(args.queries),
                            "--vectors", args.vectors, "--sizes", str(n + args.puts)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(procs)]
    for p in ps:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in ps:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    total = 0
    for p in ps:
        out, _ = p.communicate(timeout=600)
        total += json.loads(out.strip().splitlines()[-1])["lookups"]
    return total / secs


def recall(url: str, args: argparse.Namespace) -> list[list[object]]:
    """Threshold hits of ``index="pgvector"`` vs exact search, per scope size, in one table.

    Entries (real QQP embeddings unless ``--vectors random``) are split into scopes of the
    sizes asked for plus one scope holding the rest; each query asks in the scope of the
    stored question it paraphrases (misses: a random scope). The reference is exact search
    over that scope's vectors at the cache's threshold.
    """
    total = args.recall
    vec = (RealVectors(total, args.queries) if args.vectors == "real" else TableVectors(total, args.queries))
    rng = np.random.default_rng(5)
    sizes = [s for s in args.scope_sizes if s < total]
    labels = np.full(total, len(sizes), dtype=np.int64)  # the rest: the last scope
    perm = rng.permutation(total)
    at = 0
    for k, sz in enumerate(sizes):
        labels[perm[at:at + sz]] = k
        at += sz
    names = [f"s{k}" for k in range(len(sizes) + 1)]
    sizes_all = [*sizes, total - at]
    from semcache.prompts import normalize_prompt, prompt_key
    from semcache.stores import make_store
    from semcache.stores import postgres_sql as sql
    from semcache.stores.base import EntryMeta

    emb = vec.embedder()
    mem = SemanticCache(store="memory", embedder=emb)
    sids = [mem.scope_id(nm) for nm in names]
    thr = mem.threshold
    mem.close()
    spec = spec_for("pgvector", Path("/nonexistent"), url)
    store = make_store(spec["store"], None)
    store._write(lambda c: [c.execute(sql.render(q, store.schema)) for q in sql.ENGINE_CREATE])  # type: ignore[attr-defined]
    store._embedded = True  # type: ignore[attr-defined]
    ids = np.zeros(total, dtype=np.int64)
    for s in tqdm(range(0, total, 2000), desc="filling (recall)", unit="batch", leave=False):
        k = min(total, s + 2000) - s
        now = time.time()
        got = store.put_many([(EntryMeta(sids[labels[s + i]], prompt_key(normalize_prompt(f"e{s + i}")),
                                         emb.fingerprint, now, None), vec.entries[s + i], f"e{s + i}", "x")
                              for i in range(k)])
        ids[s:s + k] = got
    store.close()
    cache = open_ready(emb, spec)
    half = args.queries // 2
    q_scope = np.concatenate([labels[:half], rng.integers(0, len(names), args.queries - half)])
    stats = {k: [0, 0, 0, 0] for k in range(len(names))}  # queries, expected hits, found, wrong
    for qi in tqdm(range(args.queries), desc="recall lookups", leave=False):
        k = int(q_scope[qi])
        members = np.flatnonzero(labels == k)
        scores = vec.entries[members] @ vec.queries[qi]
        best = int(np.argmax(scores))
        expected = int(ids[members[best]]) if scores[best] >= thr else None
        hit = cache.get(f"q{qi}", scope=names[k])
        got = hit.entry_id if hit else None
        st = stats[k]
        st[0] += 1
        st[1] += expected is not None
        st[2] += expected is not None and got == expected
        st[3] += got is not None and got != expected
    engine = cache._store._engines[vec.entries.shape[1]]  # type: ignore[attr-defined]
    errors = cache.stats().errors
    cache.close()
    rows = []
    for k in range(len(names)):
        q, e, f, w = stats[k]
        path = "exact scan" if sizes_all[k] < engine.exact_below else "HNSW + iterative scan"
        rows.append([f"{sizes_all[k]:,} of {total:,}", path, q, e, f, f"{f / e:.4f}" if e else "-", w])
    rows.append(["all", f"{errors} lookups failed open (timeout)", args.queries, "", "", "", ""])
    # "other entry": a hit above the threshold, but not exact search's best (the graph missed it).
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000])
    ap.add_argument("--stores", nargs="*", default=list(STORES), choices=list(STORES))
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=300, help="replication rounds (3 processes; 0: skip)")
    ap.add_argument("--vectors", choices=("real", "random"), default="real",
                    help="QQP questions embedded by all-MiniLM-L6-v2, or random unit vectors")
    ap.add_argument("--embed-queries", type=int, default=0,
                    help="lookups with the real embedder in the loop (first size, every store)")
    ap.add_argument("--throughput", type=float, default=0.0,
                    help="seconds of lookups by 1 then 3 processes per PostgreSQL store (0: skip)")
    ap.add_argument("--recall", type=int, default=0, help="table size for the pgvector recall test (0: skip)")
    ap.add_argument("--scope-sizes", type=int, nargs="*", default=[300, 2000, 5000])
    ap.add_argument("--url", help="an existing PostgreSQL (default: start the embedded one)")
    ap.add_argument("--out", default="shared_store_bench", help="results/<out>.txt and .png")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--secs", type=float, default=5.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "replicate":
        replication_role(args.url, args.index, args.procs, args.rounds)
        return
    if args.role == "throughput":
        throughput_role(args.spec, args.secs, args.index, args.queries, args.vectors, args.sizes[0])
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
    extra: list[str] = []
    plot: dict[str, dict[int, tuple[float, float]]] = {STORES[k]: {} for k in args.stores}
    for n in args.sizes:
        vec = (RealVectors(n + args.puts, args.queries) if args.vectors == "real"
               else TableVectors(n + args.puts, args.queries))
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.stores:
                name = STORES[kind]
                spec = spec_for(kind, Path(tmp), new_url())
                fill_s = fill_store(kind, spec, vec, n)
                # A new node: load + index build (+ projection fit, or the HNSW build in the engine).
                t0 = time.perf_counter()
                cache = open_ready(vec.embedder(), spec)
                first_open = time.perf_counter() - t0
                lk, hits = lookups(cache, args.queries)
                pt = puts(cache, n, args.puts)
                if args.embed_queries and n == args.sizes[0]:
                    live = LiveQueries(vec, args.queries)
                    cache.embedder = live.embedder()  # same fingerprint: the table's vectors, computed live
                    t_emb, _ = lookups(cache, min(args.embed_queries, args.queries), start=args.queries // 4)
                    e50, e99 = percentiles(t_emb)
                    extra.append(f"{name} {n}: get with all-MiniLM-L6-v2 in the loop ({len(t_emb)} lookups): "
                                 f"p50 {e50:.2f} ms, p99 {e99:.2f} ms")
                    print(extra[-1], flush=True)
                cache.close()
                t0 = time.perf_counter()
                again = open_ready(vec.embedder(), spec)
                next_open = time.perf_counter() - t0
                size = len(again)
                again.close()
                if args.throughput and kind != "disk":
                    one = throughput(spec, 1, args, n, args.throughput)
                    three = throughput(spec, 3, args, n, args.throughput)
                    extra.append(f"{name} {n}: lookups/s, 1 process {one:.0f}, 3 processes {three:.0f} "
                                 f"({three / one:.2f}x; 2 cores)")
                    print(extra[-1], flush=True)
                l50, l99 = percentiles(lk)
                p50, p99 = percentiles(pt)
                plot[name][n] = (l50, l99)
                rows.append([name, n, f"{l50:.3f}", f"{l99:.3f}", f"{hits}/{len(lk)}", f"{p50:.2f}",
                             f"{p99:.2f}", f"{first_open:.2f}", f"{next_open:.2f}", size, f"{fill_s:.1f}"])
                print(rows[-1], flush=True)
    headers = ["store", "entries", "get p50 ms", "get p99 ms", "hits", "put p50 ms", "put p99 ms",
               "first open s", "next open s", "size", "fill s"]
    table = print_table(headers, rows) if rows else ""
    ratios = []
    for n in args.sizes:
        loc = plot.get("local disk", {}).get(n)
        for name, vals in plot.items():
            if loc and name != "local disk" and n in vals:
                ratios.append(f"{n}: {name}/local lookup p50 {vals[n][0] / loc[0]:.2f}x, "
                              f"p99 {vals[n][1] / loc[1]:.2f}x")
    delays, missed = replication(new_url(), 3, args.rounds) if args.rounds else (np.zeros(1), 0)
    d50, d99 = percentiles(delays)
    rep = (f"replication delay, 1 writer -> 2 other processes ({len(delays)} deliveries; {missed} entries "
           f"not a hit afterwards): p50 {d50:.2f} ms, p99 {d99:.2f} ms, "
           f"max {1e3 * float(delays.max()):.2f} ms") if args.rounds else ""
    print("\n".join(ratios))
    print(rep)
    parts = [table, "", *ratios, *extra, rep]
    if args.recall:
        rec = recall(new_url(), args)
        parts += ["", f"index=pgvector: threshold hits vs exact search per scope, one table of "
                  f"{args.recall:,} ({args.vectors} vectors; hit queries ask in the scope of the "
                  "question they paraphrase)",
                  print_table(["scope size", "path", "queries", "exact hits", "found", "recall",
                               "other entry served"], rec),
                  "found: the hit is exact search's best entry; other entry served: a hit at or above the "
                  "threshold, but not the best one (the graph missed the best)"]
        print(parts[-2], flush=True)
    text = "\n".join(parts)
    command = ("flock /work/coord/heavy.lock .venv/bin/python benchmarks/shared_store_bench.py "
               + " ".join(sys.argv[1:]))
    save_text(f"{args.out}.txt", command, text)
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / max(1, len(plot))
    xs = np.arange(len(args.sizes))
    for k, (name, vals) in enumerate(plot.items()):
        ax1.bar(xs + k * width, [vals[n][0] for n in args.sizes], width, label=f"{name} p50")
        ax1.scatter(xs + k * width, [vals[n][1] for n in args.sizes], marker="_", s=300, color="k")
    ax1.set_xticks(xs + width * (len(plot) - 1) / 2, [f"{n:,}" for n in args.sizes])
    ax1.set_ylabel("get() ms, embedding excluded (bar p50, dash p99)")
    ax1.set_xlabel("entries")
    ax1.legend(fontsize=8)
    if args.rounds:
        ax2.hist(delays * 1e3, bins=50)
        ax2.axvline(d99, color="r", linestyle="--", label=f"p99 {d99:.1f} ms")
        ax2.set_xlabel("replication delay, ms (put returned -> in another process's replica)")
        ax2.set_ylabel("deliveries")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{args.out}.png", dpi=110)


if __name__ == "__main__":
    main()
