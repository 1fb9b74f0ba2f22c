"""semcache and GPTCache side by side: same model, same data, same vectors (issue #5, item 5).

GPTCache 0.1.44 runs in its own virtual environment (it is a benchmark, not a
dependency, and it pip-installs missing back ends at import time, which must not
touch the project's venv)::

    python3 -m venv benchmarks/.cache/venv-gptcache
    benchmarks/.cache/venv-gptcache/bin/pip install gptcache==0.1.44 faiss-cpu sqlalchemy

This script (run with the project's venv) computes the all-MiniLM-L6-v2 vectors
once (``embed_cached``), hands them to a worker process in that venv through
``.npy`` files, and GPTCache receives them through its ``embedding_func`` hook, so
both caches see identical vectors and embedding time is excluded from both.

GPTCache is configured as its README's semantic-cache example: sqlite scalar store,
faiss vector store, ``SearchDistanceEvaluation``, ``Config()`` (similarity_threshold
0.8, which on unit vectors means cosine >= 2 * 0.8 - 1 = 0.6) and top_k 1; the only
change from its defaults is ``max_size`` raised above the data size, since the
default LRU size of 1,000 would evict almost everything. semcache runs at its
defaults (``DEFAULT_THRESHOLD``, ``default_guards()``, memory store).

Reported per data set (QQP dev replay; CLINC150 train -> test + oos_test):
hit rate, wrong-hit rate and per-request cache overhead (lookup time minus
embedding) for GPTCache at its default, GPTCache at the threshold that gives
semcache's hit rate (interpolated from a sweep), and semcache at its defaults.

Run: ``.venv/bin/python benchmarks/gptcache_compare.py [--qqp-limit N]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
#: ``gptcache.Config().similarity_threshold`` in 0.1.44 (checked by the worker's default run).
GPTCACHE_DEFAULT_SIMILARITY = 0.8
GPT_VENV = ROOT / ".cache" / "venv-gptcache"


# ----------------------------------------------------------------------------- worker
def worker(folder: Path, tmp_base: str | None) -> None:
    """Runs inside the GPTCache venv: replay the queries in ``folder`` through GPTCache."""
    from gptcache import Cache, Config
    from gptcache.adapter.api import get
    from gptcache.manager import manager_factory
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    stored = json.loads((folder / "stored.json").read_text())
    queries = json.loads((folder / "queries.json").read_text())
    svec = np.load(folder / "stored.npy")
    qvec = np.load(folder / "queries.npy")
    vec_of = {t: svec[i] for i, t in enumerate(stored)}
    vec_of.update({t: qvec[i] for i, t in enumerate(queries)})
    embed_time = [0.0]

    def embedding_func(text: str, **_: Any) -> np.ndarray:
        t0 = time.perf_counter()
        v = vec_of[text]
        embed_time[0] += time.perf_counter() - t0
        return v

    out: dict[str, Any] = {}
    runs = [("sweep", 0.0)]
    if len(queries) <= 20_000:
        # Small data: also run GPTCache at its default to confirm that cutting the sweep at
        # cosine 2 * 0.8 - 1 gives the same answers (large data: the sweep alone, same work).
        runs.insert(0, ("default", Config().similarity_threshold))
    for run, sim in runs:
        with tempfile.TemporaryDirectory(dir=tmp_base) as tmp:
            dm = manager_factory("sqlite,faiss", data_dir=tmp,
                                 vector_params={"dimension": int(svec.shape[1])},
                                 max_size=len(stored) + 1000,
                                 eviction_params={"max_size": len(stored) + 1000})
            cache = Cache()
            cache.init(pre_embedding_func=get_prompt, embedding_func=embedding_func,
                       data_manager=dm, similarity_evaluation=SearchDistanceEvaluation(),
                       config=Config(similarity_threshold=sim))
            # Bulk import (what GPTCache offers for warming); answers name the entry.
            dm.import_data(stored, [str(i) for i in range(len(stored))], list(svec),
                           [None] * len(stored))
            served: list[int] = []
            scores: list[float] = []
            overhead: list[float] = []
            for i, q in enumerate(queries):
                got: list[float] = []
                embed_time[0] = 0.0
                t0 = time.perf_counter()
                ans = get(q, cache_obj=cache,
                          hit_callback=lambda res, got=got: got.extend(s for _, s in res))
                overhead.append(time.perf_counter() - t0 - embed_time[0])
                served.append(int(ans) if ans is not None else -1)
                # hit_callback gives rank / (max - min) = (4 - |a-b|^2) / 4 = (1 + cos) / 2.
                scores.append(2.0 * got[0] - 1.0 if got else float("-inf"))
                if i % 5000 == 0:
                    print(f"  gptcache {run}: {i}/{len(queries)}", file=sys.stderr, flush=True)
            out[run] = {"served": served, "score": [s if np.isfinite(s) else -9.0 for s in scores],
                        "overhead_ms": (np.asarray(overhead) * 1e3).tolist(),
                        "similarity_threshold": sim}
            dm.close()
    (folder / "result.json").write_text(json.dumps(out))


# ----------------------------------------------------------------------------- main side
def _semcache_side(data: Any, embedder: Any, tmp_base: str | None) -> dict[str, Any]:
    from semcache import evaluation as ev
    from semcache.cache import DEFAULT_THRESHOLD
    from semcache.guards import default_guards

    guards = default_guards()
    with tempfile.TemporaryDirectory(dir=tmp_base) as tmp:
        # The default disk store, on the same file system as GPTCache's sqlite + faiss.
        res = ev.cache_replay(data, embedder, threshold=DEFAULT_THRESHOLD, guards=guards,
                              directory=Path(tmp) / "cache")
    top = ev.top_candidates(data, k=10)
    veto = ev.guard_vetoes(data, top, guards) if guards else None
    s, r = ev.served(top, veto)
    curve = ev.sweep(data.name, s, r, int(data.possible.sum()), ev.THRESHOLDS)
    return {"result": res, "curve": curve}


def _gpt_metrics(data: Any, served: list[int], threshold_cos: float | None = None,
                 scores: list[float] | None = None) -> dict[str, float]:
    """Hit rate and wrong-hit rate of GPTCache's answers, judged like semcache's."""
    srv = np.asarray(served)
    if threshold_cos is not None and scores is not None:
        srv = np.where(np.asarray(scores) >= threshold_cos - 1e-6, srv, -1)
    hit = srv >= 0
    verdict = data.verdict(np.arange(len(srv)), np.maximum(srv, 0))
    hits = int(hit.sum())
    wrong = int((hit & (verdict == 0)).sum())
    judged = hits - int((hit & (verdict < 0)).sum())
    return {"hits": hits, "wrong": wrong, "unlabelled": hits - judged,
            "hit_rate": hits / len(srv), "wrong_hit_rate": wrong / judged if judged else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--qqp-limit", type=int, default=None)
    parser.add_argument("--data", choices=("all", "qqp", "clinc150"), default="all")
    parser.add_argument("--gptcache-python", type=Path, default=GPT_VENV / "bin" / "python")
    parser.add_argument("--store-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="where both caches keep their files (default: /dev/shm, a tmpfs, "
                             "so disk flush latency of the machine does not dominate)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.store_dir)
        return 0

    sys.path.insert(0, str(ROOT.parent))
    sys.path.insert(0, str(ROOT))
    from common import CACHE_DIR, RESULTS_DIR, print_table

    from semcache import evaluation as ev
    from semcache.cache import DEFAULT_THRESHOLD
    from semcache.embedding import default_embedder
    from semcache.guards import default_guards

    ev._limit_threads(1)
    if not args.gptcache_python.is_file():
        print(f"GPTCache venv not found at {args.gptcache_python}; see this script's docstring",
              file=sys.stderr)
        return 2
    embedder = default_embedder()
    datas = []
    if args.data in ("all", "qqp"):
        datas.append(ev.qqp_replay(embedder, CACHE_DIR, args.qqp_limit))
    if args.data in ("all", "clinc150"):
        datas.append(ev.clinc_replay(embedder, CACHE_DIR, "test"))
    rows: list[list[object]] = []
    summary: dict[str, Any] = {"semcache_threshold": DEFAULT_THRESHOLD,
                               "store_dir": args.store_dir,
                               "semcache_guards": [g.__name__ for g in default_guards()]}
    curves = {}
    for data in datas:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "stored.json").write_text(json.dumps(data.stored))
            (folder / "queries.json").write_text(json.dumps(data.queries))
            np.save(folder / "stored.npy", data.stored_vecs)
            np.save(folder / "queries.npy", data.query_vecs)
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       MKL_NUM_THREADS="1")
            cmd = [str(args.gptcache_python), str(Path(__file__).resolve()), "--worker",
                   str(folder)]
            if args.store_dir:
                cmd += ["--store-dir", args.store_dir]
            subprocess.run(cmd, check=True, env=env)
            gpt = json.loads((folder / "result.json").read_text())
        sem = _semcache_side(data, embedder, args.store_dir)
        res = sem["result"]
        # GPTCache's sweep: its top-1 answer and score at threshold 0, cut at each cosine.
        # With top_k=1 it serves its best candidate iff (1 + cos) / 2 >= similarity_threshold.
        g_scores = np.asarray(gpt["sweep"]["score"], dtype=np.float32)
        g_served = gpt["sweep"]["served"]
        default_cos = 2 * GPTCACHE_DEFAULT_SIMILARITY - 1
        g_def = _gpt_metrics(data, g_served, default_cos, g_scores.tolist())
        if "default" in gpt:
            ran = _gpt_metrics(data, gpt["default"]["served"])
            if (ran["hits"], ran["wrong"]) != (g_def["hits"], g_def["wrong"]):
                print(f"warning: GPTCache default run {ran} differs from the cut sweep {g_def}",
                      file=sys.stderr)
        # Overhead: every GPTCache lookup does the same work whatever the threshold.
        g_ov = np.asarray(gpt["default" if "default" in gpt else "sweep"]["overhead_ms"])
        g_curve = [_gpt_metrics(data, g_served, float(t), g_scores.tolist())
                   for t in ev.THRESHOLDS]
        g_hr = np.array([m["hit_rate"] for m in g_curve])
        g_wr = np.array([m["wrong"] for m in g_curve], dtype=np.float64)
        # Interpolate GPTCache's wrong hits at semcache's hit rate (hit rate falls with t).
        order = np.argsort(g_hr)
        g_wrong_same = float(np.interp(res.hit_rate, g_hr[order], g_wr[order]))
        g_thr_same = float(np.interp(res.hit_rate, g_hr[order],
                                     np.asarray(ev.THRESHOLDS)[order]))
        g_same = _gpt_metrics(data, g_served, g_thr_same, g_scores.tolist())
        s_ov50, s_ov99 = res.overhead_ms_p50, res.overhead_ms_p99
        g50, g99 = float(np.percentile(g_ov, 50)), float(np.percentile(g_ov, 99))
        rows += [
            [data.name, "GPTCache default (cos>=0.6)", g_def["hit_rate"], g_def["wrong_hit_rate"],
             g_def["wrong"], g50, g99],
            [data.name, f"GPTCache cos>={g_thr_same:.3f} (same hit rate)", g_same["hit_rate"],
             g_same["wrong_hit_rate"], g_same["wrong"], g50, g99],
            [data.name, f"semcache default (cos>={DEFAULT_THRESHOLD:g}+guards)", res.hit_rate,
             res.wrong_hit_rate, res.wrong_hits, s_ov50, s_ov99],
        ]
        summary[data.name] = {
            "gptcache_default": g_def, "gptcache_same_hit_rate": g_same,
            "gptcache_threshold_same_hit_rate": g_thr_same,
            "gptcache_wrong_interpolated_same_hit_rate": g_wrong_same,
            "semcache": res.to_json(),
            "wrong_hit_ratio_semcache_over_gptcache_same_hit_rate":
                res.wrong_hits / g_wrong_same if g_wrong_same else None,
            "gptcache_overhead_ms": [g50, g99], "semcache_overhead_ms": [s_ov50, s_ov99],
            "overhead_ratio_p50": g50 / s_ov50 if s_ov50 else None,
        }
        curves[data.name] = (g_curve, sem["curve"])
    print()
    print_table(("data", "cache", "hit rate", "wrong-hit rate", "wrong hits",
                 "overhead p50 ms", "p99 ms"), rows)
    print()
    ratio_rows = [[k, v["wrong_hit_ratio_semcache_over_gptcache_same_hit_rate"],
                   v["overhead_ratio_p50"]]
                  for k, v in summary.items() if isinstance(v, dict)]
    print_table(("data", "semcache wrong / GPTCache wrong at same hit rate",
                 "GPTCache overhead / semcache overhead (p50)"), ratio_rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "gptcache_compare.json").write_text(json.dumps(summary, indent=1))
    _plot(curves, RESULTS_DIR / "gptcache_compare.png")
    print(f"\nsaved {RESULTS_DIR / 'gptcache_compare.json'} and {RESULTS_DIR / 'gptcache_compare.png'}")
    return 0


def _plot(curves: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (name, (g_curve, s_curve)) in zip(axes[0], curves.items(), strict=True):
        ax.plot([m["hit_rate"] for m in g_curve], [m["wrong_hit_rate"] for m in g_curve],
                label="GPTCache (threshold swept)")
        ax.plot(s_curve.hit_rate, s_curve.wrong_hit_rate, label="semcache + default guards (swept)")
        ax.set_title(name)
        ax.set_xlabel("hit rate")
        ax.set_ylabel("wrong-hit rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
