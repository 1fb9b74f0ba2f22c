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

Run (heavy: under the shared lock)::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/embedding_bench.py \
        --agree 2000 --qqp-limit 4000

Writes ``benchmarks/results/embedding_bench.txt`` and ``embedding_bench.png``.
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


def quality(emb: Embedder, embed_dir: Path, qqp_limit: int | None, target: float) -> dict[str, Any]:
    """Hit / wrong-hit rates at the default threshold and at this backend's calibrated one."""
    guards = list(default_guards())
    curves = {}
    for name, data in (("qqp_dev", ev.qqp_replay(emb, embed_dir, qqp_limit)),
                       ("clinc150_val", ev.clinc_replay(emb, embed_dir, "val"))):
        top = ev.top_candidates(data, k=10)
        veto = ev.guard_vetoes(data, top, guards, min_score=GRID[0])
        s, r = ev.served(top, veto)
        curves[name] = ev.sweep(data.name, s, r, int(data.possible.sum()), GRID)
    profiles = calibrate_profiles(curves, [target], min_hits=50)
    cal = [p["threshold"] for p in profiles["all"] if p["target"] == target]
    thr_cal = cal[0] if cal else None
    out: dict[str, Any] = {"calibrated_threshold": thr_cal}
    for name, c in curves.items():
        for label, thr in (("default", DEFAULT_THRESHOLD), ("calibrated", thr_cal)):
            if thr is None:
                continue
            i = int(np.argmin(np.abs(c.thresholds - thr)))
            out[f"{name}/{label}"] = {"hit_rate": float(c.hit_rate[i]),
                                      "wrong_hit_rate": float(c.wrong_hit_rate[i])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agree", type=int, default=2000, help="real prompts for the agreement check")
    ap.add_argument("--rounds", type=int, default=200, help="calls per latency cell at batch 1")
    ap.add_argument("--qqp-limit", type=int, default=4000, help="first N QQP dev pairs (None: all)")
    ap.add_argument("--target", type=float, default=0.1, help="target wrong-hit rate to calibrate")
    ap.add_argument("--embed-cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-busy", action="store_true",
                    help="no contended run (when not holding the machine: it would disturb others)")
    ap.add_argument("--out", default="embedding_bench", help="results file stem")
    args = ap.parse_args()
    from tqdm import tqdm

    prompts = real_prompts(max(args.agree, 400))
    lat_prompts = prompts[:400]
    embs = {b: make_embedder(b, threads=1) for b in BACKENDS}
    for e in embs.values():
        e.encode(["warm up"])
    res: dict[str, dict[str, Any]] = {b: {"fingerprint": e.fingerprint} for b, e in embs.items()}

    cells = [(b, bs) for b in BACKENDS for bs in (1, 4, 32)]
    for b, bs in tqdm(cells, desc="latency (quiet)"):
        rounds = args.rounds if bs == 1 else max(10, args.rounds * 4 // bs // 4)
        res[b][f"quiet_b{bs}"] = latency(embs[b], lat_prompts, bs, rounds)
    hogs = [] if args.skip_busy else [mp.Process(target=_busy, daemon=True)
                                      for _ in range(os.cpu_count() or 2)]
    for h in hogs:
        h.start()
    try:
        time.sleep(0.5)
        for b in tqdm(BACKENDS, desc="latency (contended)", disable=args.skip_busy):
            res[b]["busy_b1"] = (latency(embs[b], lat_prompts, 1, args.rounds) if not args.skip_busy
                                 else {"p50_ms": float("nan"), "p99_ms": float("nan"),
                                       "prompts_per_s": float("nan")})
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    for b in tqdm(BACKENDS, desc="cold start"):
        res[b]["cold"] = cold_start(b)

    ref = embs["torch"].encode(prompts[: args.agree])
    for b in tqdm(BACKENDS[1:], desc="agreement"):
        c = np.sum(embs[b].encode(prompts[: args.agree]) * ref, axis=1)
        res[b]["agreement"] = {"n": len(c), "mean": float(c.mean()), "min": float(c.min()),
                               "p1": float(np.percentile(c, 1))}
    if not args.skip_quality:
        for b in tqdm(BACKENDS, desc="quality"):
            res[b]["quality"] = quality(embs[b], args.embed_cache, args.qqp_limit, args.target)

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"embedding_bench: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} cores (shared with other jobs), threads=1 per backend",
             f"command: {' '.join(sys.argv)}", ""]
    rows = []
    for b in BACKENDS:
        r = res[b]
        rows.append([b] + [f"{r[f'quiet_b{bs}']['p50_ms']:.2f}/{r[f'quiet_b{bs}']['p99_ms']:.2f}"
                           for bs in (1, 4, 32)]
                    + [f"{r['quiet_b1']['prompts_per_s']:.0f}", f"{r['quiet_b32']['prompts_per_s']:.0f}",
                       f"{r['busy_b1']['p50_ms']:.2f}/{r['busy_b1']['p99_ms']:.2f}",
                       f"{r['busy_b1']['p99_ms'] / r['quiet_b1']['p99_ms']:.2f}x",
                       f"{r['cold']['cold_s']:.2f}", f"{r['cold']['rss_mb']:.0f}"])
    lines.append("Latency per prompt, ms p50/p99 (real chat prompts; batch 4/32 = call time / size)")
    lines.append(format_table(("backend", "b1", "b4", "b32", "p/s b1", "p/s b32", "busy b1",
                               "busy p99/quiet p99", "cold s", "RSS MB"), rows))
    lines.append("")
    lines.append(f"Agreement with torch vectors on {args.agree} real prompts (cosine)")
    lines.append(format_table(("backend", "mean", "min", "1st pct"), [
        [b, f"{res[b]['agreement']['mean']:.5f}", f"{res[b]['agreement']['min']:.5f}",
         f"{res[b]['agreement']['p1']:.5f}"] for b in BACKENDS[1:]]))
    if not args.skip_quality:
        lines.append("")
        lines.append(f"Quality (default guards): hit rate / wrong-hit rate at the default threshold "
                     f"{DEFAULT_THRESHOLD} and at each backend's threshold calibrated for target "
                     f"{args.target} (QQP dev first {args.qqp_limit} pairs, CLINC150 train->val+oos)")
        qrows = []
        for b in BACKENDS:
            q = res[b]["quality"]
            cells_q: list[object] = [b, q["calibrated_threshold"]]
            for name in ("qqp_dev", "clinc150_val"):
                for label in ("default", "calibrated"):
                    x = q.get(f"{name}/{label}")
                    cells_q.append(f"{x['hit_rate']:.3f}/{x['wrong_hit_rate']:.3f}" if x else "-")
            qrows.append(cells_q)
        lines.append(format_table(("backend", "cal thr", "qqp@default", "qqp@cal", "clinc@default",
                                   "clinc@cal"), qrows))
    lines.append("")
    lines.append("fingerprints: " + "; ".join(f"{b}={res[b]['fingerprint']}" for b in BACKENDS))
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{args.out}.txt").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=1))
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        x = np.arange(4)
        for k, b in enumerate(BACKENDS):
            vals = [res[b][c]["p50_ms"] for c in ("quiet_b1", "quiet_b4", "quiet_b32", "busy_b1")]
            axes[0].bar(x + 0.27 * (k - 1), vals, 0.27, label=b)
        axes[0].set_xticks(x, ["b1", "b4", "b32", "b1 busy"])
        axes[0].set_ylabel("ms per prompt (p50)")
        axes[0].set_yscale("log")
        axes[0].legend()
        axes[0].set_title("Embedding latency, 1 thread")
        for b in BACKENDS:
            axes[1].bar(b, res[b]["busy_b1"]["p99_ms"], alpha=0.5, label=f"{b} busy p99")
            axes[1].bar(b, res[b]["quiet_b1"]["p99_ms"], alpha=0.9)
        axes[1].set_ylabel("ms per prompt p99 (dark: quiet, light: contended)")
        axes[1].set_title("Batch-1 p99, quiet vs contended")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.out}.png", dpi=110)
    except ImportError:
        print("matplotlib missing: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
