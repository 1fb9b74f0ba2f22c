"""Which embedding backend should be the default? torch fp32 vs ONNX fp32 vs ONNX int8, same run.

For each backend of the bundled all-MiniLM-L6-v2, with one intra-op thread (the default):

* latency per prompt at batch 1, 4 and 32 on real chat prompts (p50 / p99 per
  prompt, prompts/s), quiet and under contention (one busy-looping process per
  core started by this script);
* cold start and resident memory, each measured in a fresh subprocess (import,
  load, first embedding; ONNX with its export already cached);
* agreement with the torch vectors (mean / min / 1st percentile cosine) on real
  prompts from ``../shared/data/prompts``;
* quality users feel: hit rate and wrong-hit rate on QQP dev and CLINC150 val
  (store train, query val + out-of-scope) with the default guards, at the cache's
  default threshold and at each backend's own threshold calibrated for a target
  wrong-hit rate (``semcache/calibration.py``'s procedure on the same data).

Each part is a separate run (a few minutes each; heavy, so under the shared lock on a
shared machine) adding to ``benchmarks/results/embedding_bench.json``; every run rewrites
``embedding_bench.txt`` and ``embedding_bench.png`` from all parts measured so far::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/embedding_bench.py --part speed
    flock /work/coord/heavy.lock .venv/bin/python benchmarks/embedding_bench.py --part agree
    flock /work/coord/heavy.lock .venv/bin/python benchmarks/embedding_bench.py --part quality \
        --backends torch     # then onnx-fp32, then onnx-int8

Quality noise: each wrong-hit rate is printed with its 95% binomial half-width.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semcache import evaluation as ev  # noqa: E402
from semcache.cache import DEFAULT_THRESHOLD  # noqa: E402
from semcache.calibration import GRID, calibrate_profiles  # noqa: E402
from semcache.embedding import Embedder, make_embedder  # noqa: E402
from semcache.guards import default_guards  # noqa: E402
from semcache.report import format_table  # noqa: E402

BACKENDS = ("torch", "onnx-fp32", "onnx-int8")
DATA = Path(os.environ.get("SEMCACHE_DATA", ROOT.parent / "shared" / "data"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
RESULTS = ROOT / "benchmarks" / "results"


def real_prompts(n: int, seed: int = 0) -> list[str]:
    with gzip.open(DATA / "prompts" / "real_prompts.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [r["prompt"] for r in map(json.loads, fh) if r["prompt"].strip()]
    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in idx]


def _busy() -> None:  # pragma: no cover - runs in a child process
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def latency(emb: Embedder, prompts: list[str], batch: int, rounds: int) -> dict[str, float]:
    """Per-prompt seconds of ``rounds`` calls of ``batch`` prompts each."""
    per: list[float] = []
    t_all = time.perf_counter()
    n = 0
    for r in range(rounds):
        chunk = [prompts[(r * batch + i) % len(prompts)] for i in range(batch)]
        t0 = time.perf_counter()
        emb.encode(chunk)
        per.append((time.perf_counter() - t0) / batch)
        n += batch
    wall = time.perf_counter() - t_all
    a = np.array(per) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "prompts_per_s": n / wall}


def cold_start(backend: str) -> dict[str, float]:
    """Fresh process: seconds to the first vector and resident MB after it."""
    code = (
        "import os; os.environ.pop('SEMCACHE_THREADS', None);"
        "import time; t=time.perf_counter();"
        "from semcache.embedding import make_embedder;"
        f"e=make_embedder({backend!r}); e.encode(['hello world']);"
        "import json; c=time.perf_counter()-t;"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(json.dumps({'cold_s': c, 'rss_mb': int(hwm)/1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def _rates(c: Any, thr: float) -> dict[str, float]:
    """Hit rate, wrong-hit rate and its binomial 95% half-width at threshold ``thr``."""
    i = int(np.argmin(np.abs(c.thresholds - thr)))
    judged = int(c.hits[i] - c.unlabelled[i])
    w = float(c.wrong_hit_rate[i])
    return {"threshold": float(c.thresholds[i]), "hit_rate": float(c.hit_rate[i]), "wrong_hit_rate": w,
            "hits": int(c.hits[i]), "judged": judged, "wrong": int(c.wrong[i]),
            "ci95": float(1.96 * np.sqrt(max(w * (1 - w), 1e-12) / max(judged, 1)))}


def quality(emb: Embedder, embed_dir: Path, qqp_limit: int | None, targets: list[float]
            ) -> dict[str, Any]:
    """Hit / wrong-hit rates at the default threshold and at this backend's calibrated ones."""
    guards = list(default_guards())
    curves = {}
    for name, data in (("qqp_dev", ev.qqp_replay(emb, embed_dir, qqp_limit)),
                       ("clinc150_val", ev.clinc_replay(emb, embed_dir, "val"))):
        top = ev.top_candidates(data, k=10)
        veto = ev.guard_vetoes(data, top, guards, min_score=GRID[0])
        s, r = ev.served(top, veto)
        curves[name] = ev.sweep(data.name, s, r, int(data.possible.sum()), GRID)
    profiles = calibrate_profiles(curves, targets, min_hits=50)
    out: dict[str, Any] = {"queries": {n: int(c.queries) for n, c in curves.items()}}
    for name, c in curves.items():
        out[f"{name}/default"] = _rates(c, DEFAULT_THRESHOLD)
    for t in targets:
        cal = [p["threshold"] for p in profiles["all"] if p["target"] == t]
        out[f"calibrated_threshold@{t}"] = cal[0] if cal else None
        for name, c in curves.items():
            if cal:
                out[f"{name}/cal@{t}"] = _rates(c, cal[0])
    return out


def _load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {}


def part_speed(res: dict[str, Any], backends: list[str], rounds: int, skip_busy: bool) -> None:
    """Latency at batch 1/4/32 quiet, batch 1 contended, cold start and memory."""
    from tqdm import tqdm

    lat_prompts = real_prompts(400, seed=1)
    embs = {b: make_embedder(b, threads=1) for b in backends}
    for b, e in embs.items():
        e.encode(lat_prompts[:20])  # load + warm the kernels
        res.setdefault(b, {})["fingerprint"] = e.fingerprint
    cells = [(b, bs) for b in backends for bs in (1, 4, 32)]
    for b, bs in tqdm(cells, desc="latency (quiet)"):
        n = rounds if bs == 1 else max(10, rounds // bs)
        res[b][f"quiet_b{bs}"] = latency(embs[b], lat_prompts, bs, n)
    if not skip_busy:
        # One busy-looping process per core: every embedding competes for a core.
        hogs = [mp.Process(target=_busy, daemon=True) for _ in range(os.cpu_count() or 2)]
        for h in hogs:
            h.start()
        try:
            time.sleep(0.5)
            for b in tqdm(backends, desc="latency (contended)"):
                res[b]["busy_b1"] = latency(embs[b], lat_prompts, 1, rounds)
        finally:
            for h in hogs:
                h.terminate()
                h.join()
    for b in tqdm(backends, desc="cold start"):
        res[b]["cold"] = cold_start(b)
    res["_speed_meta"] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          "load_before": os.getloadavg()[0], "rounds": rounds}


def part_agree(res: dict[str, Any], backends: list[str], n: int, threads: int) -> None:
    """Cosine of each ONNX backend's vectors with torch's on ``n`` real prompts."""
    from tqdm import tqdm

    prompts = real_prompts(n)
    ref = make_embedder("torch", threads=threads).encode(prompts)
    for b in tqdm([b for b in backends if b != "torch"], desc="agreement"):
        emb = make_embedder(b, threads=threads)
        got = np.concatenate([emb.encode(prompts[i : i + 256]) for i in range(0, n, 256)])
        c = np.sum(got * ref, axis=1)
        res.setdefault(b, {})["agreement"] = {"n": len(c), "mean": float(c.mean()), "min": float(c.min()),
                                              "p1": float(np.percentile(c, 1))}


def part_quality(res: dict[str, Any], backends: list[str], embed_dir: Path, qqp_limit: int | None,
                 targets: list[float], threads: int) -> None:
    for b in backends:
        emb = make_embedder(b, threads=threads)
        res.setdefault(b, {})["quality"] = quality(emb, embed_dir, qqp_limit, targets)
        res[b]["quality"]["qqp_limit"] = qqp_limit


def _cell(r: dict[str, Any], key: str) -> str:
    x = r.get(key)
    return f"{x['p50_ms']:.2f}/{x['p99_ms']:.2f}" if x else "-"


def report(res: dict[str, Any], stem: str) -> str:
    """The results text (and PNG) from every part measured so far."""
    backends = [b for b in BACKENDS if b in res]
    meta = res.get("_speed_meta", {})
    lines = [f"embedding_bench: {os.cpu_count()} cores (shared with other jobs), threads=1 per backend "
             "for latency; parts run separately under the shared lock (see each part's command)", ""]
    for part, cmd in sorted(res.get("_commands", {}).items()):
        lines.append(f"  {part}: {cmd}")
    lines.append("")
    if any("quiet_b1" in res[b] for b in backends):
        rows = []
        for b in backends:
            r = res[b]
            if "quiet_b1" not in r:
                continue
            ratio = (f"{r['busy_b1']['p99_ms'] / r['quiet_b1']['p99_ms']:.2f}x" if "busy_b1" in r else "-")
            rows.append([b, _cell(r, "quiet_b1"), _cell(r, "quiet_b4"), _cell(r, "quiet_b32"),
                         f"{r['quiet_b1']['prompts_per_s']:.0f}", f"{r['quiet_b32']['prompts_per_s']:.0f}",
                         _cell(r, "busy_b1"), ratio, f"{r['cold']['cold_s']:.2f}",
                         f"{r['cold']['rss_mb']:.0f}"])
        lines.append(f"Latency per prompt, ms p50/p99 ({meta.get('when', '?')}, load average "
                     f"{meta.get('load_before', float('nan')):.1f} before; 400 real chat prompts, "
                     "batch 4/32 = call time / size; busy = one busy-looping process per core)")
        lines.append(format_table(("backend", "b1", "b4", "b32", "p/s b1", "p/s b32", "busy b1",
                                   "busy p99/quiet p99", "cold s", "RSS MB"), rows))
        lines.append("")
    ag = [b for b in backends if "agreement" in res[b]]
    if ag:
        lines.append(f"Agreement with torch vectors on {res[ag[0]]['agreement']['n']} real prompts (cosine)")
        lines.append(format_table(("backend", "mean", "min", "1st pct"), [
            [b, f"{res[b]['agreement']['mean']:.5f}", f"{res[b]['agreement']['min']:.5f}",
             f"{res[b]['agreement']['p1']:.5f}"] for b in ag]))
        lines.append("")
    qb = [b for b in backends if "quality" in res[b]]
    if qb:
        q0 = res[qb[0]]["quality"]
        targets = sorted(float(k.split("@")[1]) for k in q0 if k.startswith("calibrated_threshold@"))
        lines.append("Quality (default guards): hit rate / wrong-hit rate +- 95% binomial half-width "
                     f"[hits], QQP dev ({q0['queries']['qqp_dev']} lookups, limit {q0.get('qqp_limit')}) "
                     f"and CLINC150 train->val+oos ({q0['queries']['clinc150_val']} lookups), at the "
                     f"default threshold {DEFAULT_THRESHOLD} and at each backend's own threshold "
                     "calibrated for a target wrong-hit rate (profile 'all')")

        def fmt(x: dict[str, Any] | None) -> str:
            return (f"{x['hit_rate']:.4f}/{x['wrong_hit_rate']:.4f}+-{x['ci95']:.4f} [{x['hits']}]"
                    if x else "-")

        for label, cal_key in [("default", None)] + [(f"target {t}", f"calibrated_threshold@{t}")
                                                     for t in targets]:
            rows_q: list[list[object]] = []
            for b in qb:
                q = res[b]["quality"]
                key = "default" if cal_key is None else f"cal@{cal_key.split('@')[1]}"
                thr = DEFAULT_THRESHOLD if cal_key is None else q.get(cal_key)
                rows_q.append([b, thr if thr is not None else "-", fmt(q.get(f"qqp_dev/{key}")),
                               fmt(q.get(f"clinc150_val/{key}"))])
            lines.append(f"  at the {label} threshold")
            lines.append(format_table(("backend", "threshold", "QQP dev hit/wrong", "CLINC val hit/wrong"),
                                      rows_q))
        lines.append("")
    lines.append("fingerprints: " + "; ".join(f"{b}={res[b].get('fingerprint', '?')}" for b in backends))
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{stem}.txt").write_text(text)
    _plot(res, backends, stem)
    return text


def _plot(res: dict[str, Any], backends: list[str], stem: str) -> None:
    sp = [b for b in backends if "quiet_b1" in res[b]]
    if not sp:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cols = [c for c in ("quiet_b1", "quiet_b4", "quiet_b32", "busy_b1") if all(c in res[b] for b in sp)]
    x = np.arange(len(cols))
    for k, b in enumerate(sp):
        axes[0].bar(x + 0.27 * (k - 1), [res[b][c]["p50_ms"] for c in cols], 0.27, label=b)
    axes[0].set_xticks(x, [c.replace("quiet_", "").replace("busy_b1", "b1 busy") for c in cols])
    axes[0].axhline(3.0, color="k", lw=0.8, ls="--", label="3 ms target")
    axes[0].set_ylabel("ms per prompt (p50)")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title("Embedding latency per prompt, 1 thread")
    for b in sp:
        if "busy_b1" in res[b]:
            axes[1].bar(b, res[b]["busy_b1"]["p99_ms"], alpha=0.5, color="tab:red")
        axes[1].bar(b, res[b]["quiet_b1"]["p99_ms"], alpha=0.9, color="tab:blue")
    axes[1].set_ylabel("batch-1 p99 ms (blue: quiet, red: contended)")
    axes[1].set_title("Batch-1 p99, quiet vs contended")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("speed", "agree", "quality", "report"), required=True,
                    help="which measurement to run (each adds to the results JSON; 'report' only "
                         "writes the text and plot from it)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--agree", type=int, default=10000, help="real prompts for the agreement check")
    ap.add_argument("--rounds", type=int, default=300, help="calls per latency cell at batch 1")
    ap.add_argument("--qqp-limit", type=int, default=None, help="first N QQP dev pairs (default: all)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.1],
                    help="target wrong-hit rates to calibrate")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for the agree/quality embeddings (latency always uses 1)")
    ap.add_argument("--embed-cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--skip-busy", action="store_true",
                    help="no contended run (when not holding the machine: it would disturb others)")
    ap.add_argument("--out", default="embedding_bench", help="results file stem")
    args = ap.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    res = _load_results(path)
    if args.part == "speed":
        part_speed(res, args.backends, args.rounds, args.skip_busy)
    elif args.part == "agree":
        part_agree(res, args.backends, args.agree, args.threads)
    elif args.part == "quality":
        part_quality(res, args.backends, args.embed_cache, args.qqp_limit, args.targets, args.threads)
    if args.part != "report":
        key = args.part if args.part != "quality" else f"quality {' '.join(args.backends)}"
        script = Path(sys.argv[0]).resolve().relative_to(ROOT)
        res.setdefault("_commands", {})[key] = " ".join(["python", str(script), *sys.argv[1:]])
        path.write_text(json.dumps(res, indent=1))
    print(report(res, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
