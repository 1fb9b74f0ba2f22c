"""Index benchmark of issue #3: the semcache indexes against exact search, faiss, hnswlib, usearch.

Run (single thread; the script pins every library to one thread itself)::

    python benchmarks/index_bench.py --quick     # 10k and full real corpus, a few minutes
    python benchmarks/index_bench.py             # + 100k and 1M with synthetic rows (an hour or more)
    # sizes in separate processes, then one report and one set of plots:
    python benchmarks/index_bench.py --sizes 1M --save /tmp/b.json
    python benchmarks/index_bench.py --merge /tmp/a.json,/tmp/b.json

Data: MiniLM embeddings of every distinct question of ``qqp/pairs_dev`` plus the
real prompts (embedded once, cached under ``benchmarks/.cache``). 2,000 random
QQP questions (500 with ``--quick``) are held out as queries; the rest, with half
of the distinct real prompts, is the cache. The mixed-workload stream replays the
other half of the prompts in file order (with their real repeats) shuffled with
the held-out questions. The 1M set adds synthetic rows: a real row moved by one or two real
paraphrase differences (pairs mined from the data), renormalised, so the
synthetic rows have the near-duplicate structure of real prompts; 100k is the
real rows plus 8k such rows.

Per N and method it reports: build time and batched insert rate, single
insert and single delete cost (semcache: "ins us" is the index insert given the
projected row, which the cache has from the lookup that missed; "ins+proj us"
adds the projection), recall of threshold hits (the exact best match
with cosine >= t is returned) at t = 0.85 / 0.9 / 0.95, lookup p50 / p99 at
t = 0.9 one query at a time (semcache timings include the query projection and
the exact re-rank of the candidates, as the cache does them), index bytes per
entry beyond the raw float32 vectors (right after the build, "ovh %", after
the single inserts and deletes, "ovh % churn", and for semcache the largest
while it takes N/2 more single inserts and then N/2 that each evict the oldest,
"ovh % stream", plotted over the stream), and a mixed cache workload (replay a
prompt stream: lookup, insert on miss; semcache projects each prompt once, the
insert reusing the lookup's projection) in operations per second. Each kNN peer
returns its 10 nearest neighbours; its search parameter (ef / nprobe) is the
smallest of a sweep reaching the recall of the semcache multigrid (the cache's
default), so comparisons are at equal or better recall. Ratios are against peers measured in the same run.
Plots go to ``benchmarks/results/``.

Single inserts are timed in two passes of ``--ops`` new rows each, the mean of
each reported: "cold ins us" is the first pass, right after the lookup
measurements, and "ins us" the second, on the next rows of the stream (the
steady state of a cache inserting after misses). Deletes are timed over the
rows of both passes.

Builds and parameter sweeps run one method after another. Everything timed
one row at a time (lookups, both passes of inserts, deletes, then the mixed
workload) runs for every method at once: they take turns on chunks of 200
items (both passes at once for inserts), so a drift of the machine's speed over
the minutes of a run falls on all of them alike (see :func:`take_turns`).
Memory left idle is slow to write again on this kind of machine
(``idle_memory_bench.py``), and the first-built methods sit idle while the
others are built (minutes at 1M rows), so each timed phase starts by writing
every resident page of the process once (:mod:`idle_pages`): no method pays
for the order of the builds.
"""

from __future__ import annotations

import single_thread  # noqa: F401  (before numpy: see its docstring)

# isort: split

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from common import RESULTS_DIR, embed_cached, percentiles, print_table
from idle_pages import rewrite_resident_pages
from tqdm import tqdm

from semcache.datasets import load_qqp_pairs, load_real_prompts
from semcache.index import ExactIndex, GridIndex, Index, MultiGridIndex, ThermalIndex
from semcache.projection import LearnedProjection, PCAProjection
from semcache.projection.learned import mine_pairs

THRESHOLDS = (0.85, 0.9, 0.95)
LOOKUP_T = 0.9
K_NN = 10

# ----------------------------------------------------------------------------- data


def qqp_questions() -> list[str]:
    """Distinct questions of the QQP dev pairs, in first-seen order (deterministic)."""
    seen: dict[str, None] = {}
    for p in load_qqp_pairs():
        seen.setdefault(p.text_a, None)
        seen.setdefault(p.text_b, None)
    return list(seen)


def real_prompts() -> list[str]:
    """Real chat prompts in file order, repeats kept (a replayed stream has repeats)."""
    return [str(r["prompt"]) for r in load_real_prompts()]


def load_real_corpus() -> dict[str, np.ndarray]:
    """Embeddings of the QQP questions and of the distinct real prompts (cached on disk)."""
    q = qqp_questions()
    prompts = real_prompts()
    uniq = list(dict.fromkeys(prompts))
    pos = {p: i for i, p in enumerate(uniq)}
    return {
        "qqp": embed_cached(q, "qqp-questions"),
        "prompts": embed_cached(uniq, "real-prompts"),
        "prompt_stream": np.array([pos[p] for p in prompts], dtype=np.int64),
    }


def split_corpus(data: dict[str, np.ndarray], n_q: int
                 ) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    """Held-out queries and cached rows, the same in every benchmark that calls this.

    ``n_q`` random QQP questions are the queries. The distinct prompts split in
    two: one half is cached content with the other QQP questions, the other
    half (in file order, with its repeats) is replayed with the held-out
    questions as the mixed-workload stream, so the stream is unseen traffic.

    Returns
    -------
    rng : numpy Generator
        Seeded with 0 and advanced past the split (callers draw from it next).
    Q : ndarray, shape (n_q, d)
    real : ndarray, shape (n, d)
        The cached rows.
    p_stream : ndarray of int64
        Indexes of the distinct prompts kept for the stream, ascending.
    """
    rng = np.random.default_rng(0)
    qqp = data["qqp"]
    perm = rng.permutation(len(qqp))
    Q = np.ascontiguousarray(qqp[perm[:n_q]])
    n_p = len(data["prompts"])
    p_perm = rng.permutation(n_p)
    p_cache, p_stream = p_perm[: n_p // 2], np.sort(p_perm[n_p // 2 :])
    real = np.ascontiguousarray(np.vstack([qqp[perm[n_q:]], data["prompts"][p_cache]]))
    return rng, Q, real, p_stream


def synthetic(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows near ``base`` rows, moved by real paraphrase differences."""
    rng = np.random.default_rng(seed)
    sample = base[rng.choice(len(base), min(len(base), 10_000), replace=False)]
    a, b, _ = mine_pairs(sample, 0.75)
    diffs = (sample[a] - sample[b]).astype(np.float32)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        c = base[rng.integers(0, len(base), m)]
        w1 = rng.normal(0, 0.8, (m, 1)).astype(np.float32)
        w2 = rng.normal(0, 0.5, (m, 1)).astype(np.float32)
        x = c + w1 * diffs[rng.integers(0, len(diffs), m)] + w2 * diffs[
            rng.integers(0, len(diffs), m)
        ]
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def corpus_of_size(label: str, real: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The rows of one benchmark size, shape (N, d), C-contiguous.

    ``5k``, ``10k``, ``20k``: random real rows; ``full``: all of them; ``100k`` and
    ``1M``: the real rows, then synthetic ones up to N (the QQP dev questions and
    prompts are 92k rows, so 100k is nearly all real).
    """
    small = {"5k": 5_000, "10k": 10_000, "20k": 20_000}
    if label in small:
        X = real[rng.choice(len(real), small[label], replace=False)]
    elif label == "full":
        X = real
    elif label in ("100k", "1M"):
        n_target = 100_000 if label == "100k" else 1_000_000
        if len(real) >= n_target:
            X = real[rng.choice(len(real), n_target, replace=False)]
        else:
            X = np.vstack([real, synthetic(real, n_target - len(real))])
    else:
        raise SystemExit(f"unknown size {label}")
    return np.ascontiguousarray(X)


def rows_over_sizes(sizes: str, n_queries: int,
                    run: Callable[[str, np.ndarray, np.ndarray, list[list[Any]]], None]
                    ) -> list[list[Any]]:
    """Table rows of ``run(label, X, Q, rows)`` for each size of the comma list ``sizes``.

    The corpus is loaded and split once (``n_queries`` held-out queries ``Q``);
    each size's rows ``X`` come from :func:`corpus_of_size`.
    """
    rng, Q, real, _ = split_corpus(load_real_corpus(), n_queries)
    rows: list[list[Any]] = []
    for label in sizes.split(","):
        run(label, corpus_of_size(label, real, rng), Q, rows)
    return rows


def ground_truth(X: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact best match (row, cosine) of each query."""
    best = np.empty(len(Q), dtype=np.int64)
    score = np.empty(len(Q), dtype=np.float32)
    for i in range(0, len(Q), 256):
        S = Q[i : i + 256] @ X.T
        best[i : i + 256] = S.argmax(1)
        score[i : i + 256] = S[np.arange(len(S)), best[i : i + 256]]
    return best, score


# -------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One index under test, with uniform single-row operations."""

    name: str
    build: Callable[[np.ndarray], None]
    search: Callable[[np.ndarray, float], np.ndarray]  # (q_full, t) -> ids with cos >= t
    add_one: Callable[[int, np.ndarray], None] | None
    remove_one: Callable[[int], None] | None
    nbytes: Callable[[int], float]
    set_param: Callable[[Any], None] | None = None
    # semcache only: (prepare, add) where prepare(x) projects the row as the
    # lookup before an insert already did, and add(i, prepared) is the index
    # insert alone.
    add_split: tuple[Callable[[np.ndarray], Any], Callable[[int, Any], None]] | None = None
    # semcache only: search(prepared, t), so the mixed workload projects each
    # prompt once and its insert after a miss reuses the lookup's projection.
    search_prepared: Callable[[Any, float], np.ndarray] | None = None
    # Drops the built index at the end of its size's run. The mixed workload
    # interleaves the methods, so until then they are all alive: at 1M rows
    # every peer holds its own 1.5 GB copy of the vectors (the recorded 1M run
    # picks four methods with --methods).
    release: Callable[[], None] | None = None
    # semcache only: the entries the index holds now (the memory stream's denominator).
    entries: Callable[[], int] | None = None
    sweep: list[Any] = field(default_factory=list)
    param: Any = None


class Store:
    """Full vectors by id (row = id), as the cache keeps them for re-ranking."""

    def __init__(self, cap: int, d: int) -> None:
        self.X = np.zeros((cap, d), dtype=np.float32)

    def put(self, ids: np.ndarray | int, X: np.ndarray) -> None:
        self.X[ids] = X


def semcache_method(name: str, make: Callable[[], Index], proj: Any, store: Store) -> Method:
    holder: dict[str, Any] = {}

    def build(X: np.ndarray) -> None:
        idx = make()
        idx.add(np.arange(len(X), dtype=np.int64), proj.transform(X), X)
        holder["i"] = idx

    def search_prepared(p: tuple[np.ndarray, np.ndarray], t: float) -> np.ndarray:
        q = p[1][0]
        c = holder["i"].candidates(p[0][0], q, t)
        if len(c) == 0:
            return c
        s = store.X[c] @ q
        return c[s >= t]

    def search(q: np.ndarray, t: float) -> np.ndarray:
        return search_prepared(prepare(q), t)

    def add_one(i: int, x: np.ndarray) -> None:
        add_prepared(i, prepare(x))

    def remove_one(i: int) -> None:
        holder["i"].remove(np.array([i], dtype=np.int64))

    def prepare(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # As the cache projects a query: one row through the projection's transform.
        row = x[None, :]
        return proj.transform(row), row

    def add_prepared(i: int, p: tuple[np.ndarray, np.ndarray]) -> None:
        # The id as an int, as hnswlib's caller passes it (Index.add takes either).
        holder["i"].add(i, p[0], p[1])

    return Method(name, build, search, add_one, remove_one,
                  lambda n: holder["i"].stats()["bytes"] / max(1, n),
                  add_split=(prepare, add_prepared), search_prepared=search_prepared,
                  release=holder.clear, entries=lambda: len(holder["i"]))


def exact_method() -> Method:
    holder: dict[str, ExactIndex] = {}

    def build(X: np.ndarray) -> None:
        ex = ExactIndex()
        ex.add(np.arange(len(X), dtype=np.int64), X[:, :1], X)
        holder["i"] = ex

    def add_one(i: int, x: np.ndarray) -> None:
        holder["i"].add(i, x[None, :1], x[None, :])

    return Method(
        "exact-numpy", build, lambda q, t: holder["i"].candidates(q[:1], q, t), add_one,
        lambda i: holder["i"].remove(np.array([i])),
        # The id array and the Python dict id -> row.
        lambda n: (sys.getsizeof(holder["i"]._row) + 8 * n) / max(1, n),
        release=holder.clear,
    )


def faiss_methods(d: int) -> list[Method]:
    import faiss

    faiss.omp_set_num_threads(1)
    out = []

    def knn(index: Any, q: np.ndarray, t: float) -> np.ndarray:
        D, Ids = index.search(q[None, :], K_NN)
        keep = (Ids[0] >= 0) & (D[0] >= t)
        return Ids[0][keep].astype(np.int64)

    def size(index: Any, n: int) -> float:
        return max(0.0, (len(faiss.serialize_index(index)) - n * d * 4) / max(1, n))

    # Flat with an id map (needed for removals).
    h: dict[str, Any] = {}

    def b_flat(X: np.ndarray) -> None:
        h["flat"] = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        h["flat"].add_with_ids(X, np.arange(len(X), dtype=np.int64))

    out.append(Method(
        "faiss-flat", b_flat, lambda q, t: knn(h["flat"], q, t),
        lambda i, x: h["flat"].add_with_ids(x[None, :], np.array([i], dtype=np.int64)),
        lambda i: h["flat"].remove_ids(np.array([i], dtype=np.int64)),
        lambda n: size(h["flat"], n), release=lambda: h.pop("flat", None)))

    def b_ivf(X: np.ndarray) -> None:
        nlist = int(4 * np.sqrt(len(X)))
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        ivf.train(X[rng.choice(len(X), min(len(X), 40 * nlist), replace=False)])
        ivf.add_with_ids(X, np.arange(len(X), dtype=np.int64))
        h["ivf"] = ivf

    out.append(Method(
        "faiss-ivf", b_ivf, lambda q, t: knn(h["ivf"], q, t),
        lambda i, x: h["ivf"].add_with_ids(x[None, :], np.array([i], dtype=np.int64)),
        lambda i: h["ivf"].remove_ids(np.array([i], dtype=np.int64)),
        lambda n: size(h["ivf"], n),
        set_param=lambda p: setattr(h["ivf"], "nprobe", p), sweep=[4, 8, 16, 32, 64, 128],
        release=lambda: h.pop("ivf", None)))

    def b_hnsw(X: np.ndarray) -> None:
        hn = faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)
        hn.hnsw.efConstruction = 100
        hn.add(X)
        h["hnsw"] = hn

    out.append(Method(
        "faiss-hnsw", b_hnsw, lambda q, t: knn(h["hnsw"], q, t),
        lambda i, x: h["hnsw"].add(x[None, :]), None,  # no removals in IndexHNSW
        lambda n: size(h["hnsw"], n),
        set_param=lambda p: setattr(h["hnsw"].hnsw, "efSearch", p),
        sweep=[10, 16, 24, 32, 48, 64, 128], release=lambda: h.pop("hnsw", None)))
    return out


def hnswlib_method(d: int, cap: int) -> Method:
    import hnswlib

    h: dict[str, Any] = {}

    def build(X: np.ndarray) -> None:
        p = hnswlib.Index(space="ip", dim=d)
        p.init_index(max_elements=cap, ef_construction=100, M=16, allow_replace_deleted=True)
        p.set_num_threads(1)
        p.add_items(X, np.arange(len(X)))
        h["p"] = p

    def search(q: np.ndarray, t: float) -> np.ndarray:
        n = h["p"].get_current_count()
        labels, dist = h["p"].knn_query(q[None, :], k=min(K_NN, n))
        keep = (1.0 - dist[0]) >= t
        return labels[0][keep].astype(np.int64)

    return Method(
        "hnswlib", build, search, lambda i, x: h["p"].add_items(x[None, :], [i]),
        lambda i: h["p"].mark_deleted(i),
        lambda n: (16 * 2 * 4 + 4 + 8 + 16 * 4 * 0.06) * 1.0,  # level-0 links, label, upper levels
        set_param=lambda p: h["p"].set_ef(p), sweep=[10, 16, 24, 32, 48, 64, 128],
        release=h.clear)


def usearch_method(d: int) -> Method | None:
    try:
        from usearch.index import Index
    except ImportError:
        return None
    h: dict[str, Any] = {}

    def build(X: np.ndarray) -> None:
        ix = Index(ndim=d, metric="ip", connectivity=16, expansion_add=100, dtype="f32")
        ix.add(np.arange(len(X)), X, threads=1)
        h["u"] = ix

    def search(q: np.ndarray, t: float) -> np.ndarray:
        m = h["u"].search(q, K_NN, threads=1)
        keep = (1.0 - m.distances) >= t
        return np.asarray(m.keys[keep], dtype=np.int64)

    return Method(
        "usearch", build, search, lambda i, x: h["u"].add(i, x, threads=1),
        lambda i: h["u"].remove(i),
        lambda n: max(0.0, (h["u"].memory_usage - n * d * 4) / max(1, n)),
        set_param=lambda p: setattr(h["u"], "expansion_search", p),
        sweep=[10, 16, 24, 32, 48, 64, 128], release=h.clear)


# ------------------------------------------------------------------------ measuring


def threshold_recall(search: Callable[[int, float], np.ndarray], best: np.ndarray,
                     score: np.ndarray) -> dict[float, float]:
    """Per threshold t, the share of queries whose exact best match (cosine >= t) is found.

    ``search(i, t)`` returns the ids found for query ``i``; ``best`` and ``score``
    are :func:`ground_truth`'s.
    """
    out = {}
    for t in THRESHOLDS:
        hit = np.flatnonzero(score >= t)
        found = sum(int(best[i] in set(search(int(i), t).tolist())) for i in hit)
        out[t] = found / max(1, len(hit))
    return out


def recall_of(m: Method, Q: np.ndarray, best: np.ndarray, score: np.ndarray) -> dict[float, float]:
    return threshold_recall(lambda i, t: m.search(Q[i], t), best, score)


def lookup_times(m: Method, Q: np.ndarray) -> tuple[float, float]:
    """Lookup p50 and p99 (ms) of the queries ``Q`` one after another (the sweeps' timing)."""
    op = lookup_op(m, Q)
    return percentiles([op(j) for j in range(len(Q))])


def run_size(label: str, X: np.ndarray, Q: np.ndarray, stream: np.ndarray, proj: Any,
             args: argparse.Namespace, curves: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """Every method on the rows ``X``: built and swept one after another, then timed taking turns.

    Builds, recall and the parameter sweeps run one method at a time. The
    timed single-row operations (lookups, the two passes of inserts, the
    deletes and the mixed workload) run for every method at once, the methods
    taking turns on chunks (:func:`take_turns`), so every method is alive until
    the end of the size.
    """
    n, d = X.shape
    extra = len(stream) + 2 * args.ops
    store = Store(n + extra, d)
    store.put(np.arange(n), X)
    best, score = ground_truth(X, Q)
    new_rows = stream[: 2 * args.ops]  # two passes of single inserts (see the module docstring)
    store.put(n + np.arange(len(new_rows)), _STREAM["vecs"][new_rows])
    methods: list[Method] = [
        semcache_method("semcache-multigrid", lambda: MultiGridIndex(**args.multigrid), proj, store),
        semcache_method("semcache-grid", lambda: GridIndex(**args.grid), proj, store),
        semcache_method("semcache-thermal", lambda: ThermalIndex(**args.thermal), proj, store),
        exact_method(),
    ]
    if not args.no_peers:
        methods += faiss_methods(d)
        methods.append(hnswlib_method(d, n + extra))
        um = usearch_method(d)
        if um is not None:
            methods.append(um)
    if args.methods:
        wanted = set(args.methods.split(","))
        unknown = wanted - {m.name for m in methods}
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; have {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in wanted]
    rows = []
    target = None
    for m in tqdm(methods, desc=f"N={label} build and sweep", unit="index"):
        row: dict[str, Any] = {"N": label, "method": m.name}
        t0 = time.perf_counter()
        m.build(X)
        row["build_s"] = time.perf_counter() - t0
        row["batch_ins_per_s"] = n / row["build_s"]
        row["bytes_per_entry"] = m.nbytes(n)
        row["overhead_pct"] = 100.0 * row["bytes_per_entry"] / (d * 4)
        if m.sweep and m.set_param is not None:
            # Smallest setting reaching the grid's recall (equal or better).
            chosen = m.sweep[-1]
            for p in m.sweep:
                m.set_param(p)
                rec = recall_of(m, Q, best, score)
                p50, _ = lookup_times(m, Q[: min(200, len(Q))])
                curves.setdefault(f"{m.name} N={label}", []).append((p50, rec[LOOKUP_T]))
                if target is not None and min(rec.values()) >= target - 1e-9:
                    chosen = p
                    break
            m.set_param(chosen)
            m.param = chosen
        rec = recall_of(m, Q, best, score)
        if m.name == "semcache-multigrid":
            # Peers are swept to the recall of the cache's default index.
            target = min(rec.values())
        for t in THRESHOLDS:
            row[f"recall@{t}"] = rec[t]
        row["param"] = m.param
        rows.append(row)
    for row, ts in zip(rows, take_turns([lookup_op(m, Q) for m in methods], len(Q), "lookups"),
                       strict=True):
        row["p50_ms"], row["p99_ms"] = percentiles(ts)
        curves.setdefault(f"{row['method']} N={label}", []).append((row["p50_ms"], row[f"recall@{LOOKUP_T}"]))
    # Single inserts (new ids n..), then single deletes of the same rows.
    # semcache rows are inserted without their projection timed (the cache
    # inserts on a miss, after projecting the row for the lookup); the
    # projection is timed on its own so both totals are reported.
    ins = [(m, r) for m, r in zip(methods, rows, strict=True) if m.add_one is not None]
    # One turn per method holds both passes, so the steady pass follows the
    # method's own cold pass, as in a cache that keeps inserting. Another
    # library's turn between them leaves the caches cold: with turns of 200
    # rows the two-table grid's 1M inserts averaged 10.2 us instead of 2.8,
    # and with a turn per pass (its steady pass right after hnswlib's
    # cold one) 6.7 us (measured apart at 1M: turns of 200 faiss IVF
    # inserts between ours raised them from 2.5 to 3.6 us, of 200 hnswlib
    # inserts from 3.0-3.4 to 4.5-5.5 us). That cost weighs on a 3 us insert,
    # not on a 400 us one. The insert phase still lasts seconds, short
    # against the machine's drift.
    times = take_turns([insert_op(m, n, new_rows) for m, _ in ins], len(new_rows),
                       "single inserts", chunk=len(new_rows))
    for (_, row), ts in zip(ins, times, strict=True):
        row.update(insert_means([t[0] for t in ts], [t[1] for t in ts], args.ops))
    dels = [(m, r) for m, r in zip(methods, rows, strict=True) if m.remove_one is not None]
    times = take_turns([delete_op(m, n) for m, _ in dels], len(new_rows), "single deletes")
    for (_, row), ts in zip(dels, times, strict=True):
        row["delete_us"] = 1e6 * float(np.mean(ts))
    for m, row in zip(methods, rows, strict=True):
        # After the passes of single inserts and the deletes of their rows:
        # what a cache's churn leaves (dead blocks, grown arrays).
        row["overhead_churn_pct"] = 100.0 * m.nbytes(n) / (d * 4)
    for m in methods:
        if m.add_one is not None and m.remove_one is None:
            # It cannot delete (faiss HNSW): the rows of the insert passes are
            # still in it, and the mixed workload replays those prompts, so it
            # found 55% hits where the others found 9%. Rebuilt on X instead.
            m.build(X)
            if m.set_param is not None and m.param is not None:
                m.set_param(m.param)
    mixed_workload(ins, stream, n + len(new_rows), store)
    stream_memory([(m, r) for m, r in ins if m.add_split is not None], X, proj,
                  n + extra, args.mem_stream)
    for m in methods:
        if m.release is not None:
            m.release()
    return rows


def stream_memory(runs: list[tuple[Method, dict[str, Any]]], X: np.ndarray, proj: Any,
                  first_id: int, share: float) -> None:
    """Index bytes beyond the raw vectors while a cache keeps inserting, then evicting.

    After the timed phases, each semcache index takes ``share * N`` single
    inserts (a growing cache), then as many inserts that each evict the
    oldest of these rows (a full cache evicting). Its overhead is read every
    ``N / 50`` steps; the row gets the largest (``ovh % stream``) and the
    curve for the plot. The rows are copies of the built ones under new ids,
    projected in one batch (the phase measures memory, not time), so cells
    fill as the data's own distribution fills them. Peers are left out: the
    benchmark reads their memory from their serialised size (faiss) or their
    per-element layout (hnswlib, which allocates ``max_elements`` up front),
    neither of which shows spare room that a history of inserts leaves.
    """
    n, d = X.shape
    steps = int(share * n)
    if steps == 0 or not runs:
        return
    rng = np.random.default_rng(1)
    src = rng.integers(0, n, size=2 * steps)
    low = proj.transform(X[src])
    every = max(1, n // 50)
    for m, row in runs:
        assert m.add_split is not None and m.remove_one is not None and m.entries is not None
        add_prepared = m.add_split[1]
        # The index holds more than N rows by now: the mixed workload's misses.
        curve = [(0.0, 100.0 * m.nbytes(m.entries()) / (d * 4))]
        for j in tqdm(range(2 * steps), desc=f"{m.name} memory stream", unit="row", mininterval=2):
            r = src[j]
            add_prepared(first_id + j, (low[j : j + 1], X[r : r + 1]))
            if j >= steps:
                m.remove_one(first_id + j - steps)  # the oldest streamed row
            if (j + 1) % every == 0 or j + 1 == 2 * steps:
                curve.append(((j + 1) / n, 100.0 * m.nbytes(m.entries()) / (d * 4)))
        row["overhead_stream_pct"] = max(p for _, p in curve)
        row["overhead_stream_curve"] = curve


#: Items (queries, rows, stream rows) each method runs in one turn of :func:`take_turns`.
CHUNK = 200


def take_turns(ops: list[Callable[[int], Any]], n: int, desc: str,
               chunk: int = CHUNK) -> list[list[Any]]:
    """``[[ops[i](j) for j in range(n)] for i ...]``, the methods taking turns on chunks of items.

    Each method runs ``chunk`` items, then the next method the same items,
    and so on; the method that goes first rotates from chunk to chunk. This
    machine's speed drifts over minutes, and methods measured one after
    another drifted apart: the same code's mixed-workload ratio to faiss IVF
    at 10k came out anywhere from 1.35x to 2.58x, and its single inserts at
    100k from 82x to 144x hnswlib's. Each ``ops[i](j)`` times itself and
    returns what it measured.

    Every resident page of the process is written first
    (:func:`idle_pages.rewrite_resident_pages`), so a method built minutes
    before does not pay for its memory having sat idle meanwhile.
    """
    rewrite_resident_pages()
    out: list[list[Any]] = [[] for _ in ops]
    for c, start in enumerate(tqdm(range(0, n, chunk), desc=desc, unit="chunk")):
        stop = min(start + chunk, n)
        for k in range(len(ops)):
            i = (c + k) % len(ops)
            op = ops[i]
            out[i].extend(op(j) for j in range(start, stop))
    return out


def lookup_op(m: Method, Q: np.ndarray) -> Callable[[int], float]:
    """Query ``j`` of ``Q`` at ``LOOKUP_T``, timed (projection and re-rank included)."""
    def op(j: int) -> float:
        q = Q[j]
        t0 = time.perf_counter()
        m.search(q, LOOKUP_T)
        return time.perf_counter() - t0
    return op


def insert_op(m: Method, first_id: int, new_rows: np.ndarray) -> Callable[[int], tuple[float, float]]:
    """Insert stream row ``new_rows[j]`` with id ``first_id + j``: (insert s, projection s).

    semcache's index insert is timed apart from the projection before it;
    peers insert the vector (projection 0).
    """
    if m.add_split is not None:
        prepare, add_prepared = m.add_split

        def op(j: int) -> tuple[float, float]:
            x = stream_vec(new_rows[j])
            t0 = time.perf_counter()
            p = prepare(x)
            t1 = time.perf_counter()
            add_prepared(first_id + j, p)
            return time.perf_counter() - t1, t1 - t0
        return op
    add_one = m.add_one
    assert add_one is not None

    def op_peer(j: int) -> tuple[float, float]:
        x = stream_vec(new_rows[j])
        t0 = time.perf_counter()
        add_one(first_id + j, x)
        return time.perf_counter() - t0, 0.0
    return op_peer


def delete_op(m: Method, first_id: int) -> Callable[[int], float]:
    """Delete id ``first_id + j``, timed."""
    remove_one = m.remove_one
    assert remove_one is not None

    def op(j: int) -> float:
        t0 = time.perf_counter()
        remove_one(first_id + j)
        return time.perf_counter() - t0
    return op


def mixed_workload(runs: list[tuple[Method, dict[str, Any]]], stream: np.ndarray, first_id: int,
                   store: Store) -> None:
    """Replay the stream through every method (lookup, insert on miss), taking turns.

    The methods take turns on chunks of the stream (:func:`take_turns`). A row
    inserted after a miss gets the id ``first_id`` + its place in the stream,
    the same for every method, so the shared store holds its vector. semcache
    projects each prompt once: the insert after a miss takes the lookup's
    projection, as a caller of the index does (peers take the vector). Fills
    in each row's ``mixed_ops_s`` and ``mixed_hit_rate``.
    """
    store.put(first_id + np.arange(len(stream)), _STREAM["vecs"][stream])
    ops = [mixed_op(m, stream, first_id) for m, _ in runs]
    for (_, row), res in zip(runs, take_turns(ops, len(stream), "mixed workload"), strict=True):
        row["mixed_ops_s"] = len(stream) / sum(t for t, _ in res)
        row["mixed_hit_rate"] = sum(h for _, h in res) / len(stream)


def mixed_op(m: Method, stream: np.ndarray, first_id: int) -> Callable[[int], tuple[float, bool]]:
    """Stream row ``j``: lookup, insert on a miss; (seconds, hit)."""
    prep: Callable[[np.ndarray], Any] = _same
    lookup: Callable[[Any, float], np.ndarray] = m.search
    insert: Callable[[int, Any], None] = m.add_one  # type: ignore[assignment]
    if m.add_split is not None and m.search_prepared is not None:
        prep, insert = m.add_split
        lookup = m.search_prepared

    def op(j: int) -> tuple[float, bool]:
        x = stream_vec(stream[j])
        t0 = time.perf_counter()
        p = prep(x)
        hit = len(lookup(p, LOOKUP_T)) > 0
        if not hit:
            insert(first_id + j, p)
        return time.perf_counter() - t0, hit
    return op


_STREAM: dict[str, np.ndarray] = {}


def insert_means(ts: list[float], tp: list[float], ops: int) -> dict[str, float]:
    """Mean single-insert times in microseconds: the first pass of ``ops`` (cold) and the second.

    ``ts`` are the index inserts, ``tp`` the projections before them (zeros for peers).
    """
    both = np.add(ts, tp)
    return {
        "insert_cold_us": 1e6 * float(np.mean(ts[:ops])),
        "insert_us": 1e6 * float(np.mean(ts[ops:])),
        "insert_proj_us": 1e6 * float(np.mean(both[ops:])),
    }


def _same(x: np.ndarray) -> np.ndarray:
    """What peers search and insert: the vector itself (semcache's is projected)."""
    return x


def stream_vec(r: int) -> np.ndarray:
    """Embedding of stream entry ``r`` (a prompt or a held-out question)."""
    return _STREAM["vecs"][r]


# ---------------------------------------------------------------------------- report


def report(rows: list[dict[str, Any]]) -> None:
    by_n: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_n.setdefault(r["N"], []).append(r)
    for label, rs in by_n.items():
        ref = next((r for r in rs if r["method"] == "hnswlib"), None)
        peers = [r for r in rs if not r["method"].startswith("semcache")]
        best_mixed = max((r.get("mixed_ops_s", 0.0) for r in peers), default=0.0)
        print(f"\n== N = {label} ==")
        headers = ["method", "param", "build s", "batch ins/s", "ins us", "cold ins us",
                   "ins+proj us", "del us",
                   "R@.85", "R@.9", "R@.95", "p50 ms", "p99 ms", "B/entry", "ovh %",
                   "ovh % churn", "ovh % stream", "mixed op/s", "hit %"]
        table = []
        for r in rs:
            table.append([
                r["method"], str(r.get("param", "")), r["build_s"], r["batch_ins_per_s"],
                r.get("insert_us", float("nan")), r.get("insert_cold_us", float("nan")),
                r.get("insert_proj_us", float("nan")), r.get("delete_us", float("nan")),
                r["recall@0.85"], r["recall@0.9"], r["recall@0.95"], r["p50_ms"], r["p99_ms"],
                r["bytes_per_entry"], r["overhead_pct"], r.get("overhead_churn_pct", float("nan")),
                r.get("overhead_stream_pct", float("nan")), r.get("mixed_ops_s", float("nan")),
                100 * r.get("mixed_hit_rate", float("nan")),
            ])
        print_table(headers, table)
        if ref is not None:
            print(f"\nratios vs hnswlib (ef={ref['param']}) and the best peer in mixed workload "
                  f"({best_mixed:.0f} op/s), N = {label}:")
            rt = []
            for r in rs:
                if not r["method"].startswith("semcache"):
                    continue
                rt.append([
                    r["method"], r["p50_ms"] / ref["p50_ms"],
                    ref.get("insert_us", np.nan) / r.get("insert_us", np.nan),
                    ref.get("insert_cold_us", np.nan) / r.get("insert_cold_us", np.nan),
                    ref.get("insert_us", np.nan) / r.get("insert_proj_us", np.nan),
                    r.get("mixed_ops_s", np.nan) / best_mixed if best_mixed else np.nan,
                    np.nanmax([r["overhead_pct"], r.get("overhead_churn_pct", np.nan),
                               r.get("overhead_stream_pct", np.nan)]),
                ])
            print_table(["method", "p50 / hnswlib (<=1 target)", "insert speedup (>=100)",
                         "cold pass", "incl. projection",
                         "mixed / best peer (>=2)", "overhead % (<15), largest"], rt)


def plots(rows: list[dict[str, Any]], curves: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r["N"] for r in rows))
    sizes = {lab: next(r["n"] for r in rows if r["N"] == lab) for lab in labels}
    fig, ax = plt.subplots(figsize=(7, 5))
    for meth in dict.fromkeys(r["method"] for r in rows):
        pts = [(sizes[r["N"]], r["p50_ms"]) for r in rows if r["method"] == meth]
        ax.plot(*zip(*pts, strict=True), marker="o", label=meth)
    ax.set(xscale="log", yscale="log", xlabel="N entries", ylabel="lookup p50 (ms)",
           title="Lookup latency vs N (single thread, t=0.9)")
    ax.legend(fontsize=8)
    fig.savefig(RESULTS_DIR / "index_latency_vs_n.png", dpi=120, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    ax.set(xscale="log", xlabel="lookup p50 (ms)", ylabel="recall of cos>=0.9 hits",
           title="Recall vs latency")
    ax.legend(fontsize=6)
    fig.savefig(RESULTS_DIR / "index_recall_vs_latency.png", dpi=120, bbox_inches="tight")
    streamed = [r for r in rows if r.get("overhead_stream_curve")]
    if streamed:
        fig, ax = plt.subplots(figsize=(7, 5))
        # A colour per method and a line style per size: more lines than colours.
        colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["method"] for r in streamed))}
        style = {lab: ("-", "--", "-.", ":")[i % 4] for i, lab in enumerate(labels)}
        for r in streamed:
            pts = r["overhead_stream_curve"]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[r["method"]],
                    linestyle=style[r["N"]], label=f"{r['method']} N={r['N']}")
        ax.axhline(15, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="single inserts / N (then as many that each evict the oldest)",
               ylabel="index bytes beyond the raw vectors (%)",
               title="Index memory while a cache keeps inserting")
        ax.legend(fontsize=7)
        fig.savefig(RESULTS_DIR / "index_memory_stream.png", dpi=120, bbox_inches="tight")
    print(f"\nplots saved to {RESULTS_DIR}")


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k and the full real corpus only")
    ap.add_argument("--sizes", default=None,
                    help="comma list of 10k,100k,full,1M (default: all; --quick: 10k,full)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--ops", type=int, default=None,
                    help="single inserts per timed pass (two passes; deletes of both)")
    ap.add_argument("--stream", type=int, default=None, help="mixed-workload stream length")
    ap.add_argument("--mem-stream", type=float, default=0.5,
                    help="memory stream: this share of N single inserts, then as many evicting (0: skip)")
    ap.add_argument("--projection", choices=["learned", "pca"], default="learned")
    ap.add_argument("--k", type=int, default=32, help="projection width")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--methods", default=None,
                    help="comma list of methods to run (e.g. at 1M: semcache-multigrid,faiss-ivf,hnswlib)")
    ap.add_argument("--embed-only", action="store_true")
    ap.add_argument("--save", default=None, help="also write rows and curves to this JSON file")
    ap.add_argument("--merge", default=None,
                    help="comma list of --save files: print their tables and plot them together")
    args = ap.parse_args()
    if args.merge:
        rows_m: list[dict[str, Any]] = []
        curves_m: dict[str, list[tuple[float, float]]] = {}
        for path in args.merge.split(","):
            with open(path) as f:
                saved = json.load(f)
            rows_m += saved["rows"]
            curves_m.update({k: [tuple(p) for p in v] for k, v in saved["curves"].items()})
        report(rows_m)
        plots(rows_m, curves_m)
        return
    data = load_real_corpus()
    if args.embed_only:
        print({k: v.shape for k, v in data.items()})
        return
    sizes = (args.sizes or ("10k,full" if args.quick else "10k,100k,full,1M")).split(",")
    n_q = args.queries or (500 if args.quick else 2000)
    args.ops = args.ops or (500 if args.quick else 2000)
    n_stream = args.stream or (3000 if args.quick else 10_000)
    args.multigrid = {}
    args.grid = {}
    args.thermal = {}

    rng, Q, real, p_stream = split_corpus(data, n_q)
    n_p = len(data["prompts"])
    stream_vecs = np.vstack([data["prompts"], Q])
    prompt_ids = data["prompt_stream"][np.isin(data["prompt_stream"], p_stream)]
    sel = np.concatenate([prompt_ids, n_p + np.arange(len(Q))])
    rng.shuffle(sel)
    _STREAM["vecs"] = stream_vecs
    stream = sel[:n_stream]
    if len(stream) < 2 * args.ops:
        raise SystemExit(f"the stream has {len(stream)} rows: too few for two passes of "
                         f"--ops {args.ops} single inserts")

    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    for label in sizes:
        X = corpus_of_size(label, real, rng)
        t0 = time.perf_counter()
        proj = (LearnedProjection(args.k) if args.projection == "learned"
                else PCAProjection(args.k)).fit(X)
        print(f"N={label} ({len(X)} rows): {args.projection} projection k={args.k} fitted in "
              f"{time.perf_counter() - t0:.1f}s")
        rs = run_size(label, X, Q, stream, proj, args, curves)
        for r in rs:
            r["n"] = len(X)
        rows += rs
        report(rs)
        if args.save:
            with open(args.save, "w") as f:
                json.dump({"rows": rows, "curves": curves}, f, default=float)
    plots(rows, curves)


if __name__ == "__main__":
    main()
