"""The online wrong-hit guarantee (issue 24) on held-out streams, against static thresholds.

Each held-out set is replayed as a stream through ``@semantic_cache`` around an
*oracle LLM* whose answer names the query's QQP duplicate cluster, CLINC150
intent (out-of-scope queries get an answer of their own) or GPTCache mock pair:

* the cache first holds the set's stored prompts with their oracle answers;
* queries come in a shuffled order (seed 0); a miss calls the oracle and the
  decorator stores its answer, as in production;
* a served hit is wrong when its answer differs from the oracle's.

Runs: ``SemanticCache(target_wrong_hit_rate=r)`` (online guarantee, defaults:
confidence 0.95, default answer comparison) for r in 0.02/0.05/0.1, against
static thresholds through the same decorator: the one the old code picked for r
(``threshold_for``, profile "all"; 0.02 is outside its calibrated range, so the
QQP dev profile's 0.984 stands in) and a sweep, whose best threshold meeting r
on the set (most hits with a final wrong share <= r) is an oracle baseline no
deployment could pick in advance.

Held-out data only (subsets, to keep CPU bounded on a shared 2-core machine;
embeddings cached in ``benchmarks/.cache``): see ``_guarantee_data.py``.

Run: ``flock /work/coord/heavy.lock .venv/bin/python benchmarks/guarantee_bench.py``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from _guarantee_data import Stream, clinc_test, gptcache_mock, qqp_heldout  # noqa: E402
from common import RESULTS_DIR, save_text  # noqa: E402
from tqdm import tqdm  # noqa: E402

from semcache import SemanticCache  # noqa: E402
from semcache.calibration import load_calibration, threshold_for  # noqa: E402
from semcache.decorator import semantic_cache  # noqa: E402
from semcache.report import format_table  # noqa: E402

TARGETS = (0.02, 0.05, 0.1)
SWEEP = (*tuple(round(0.6 + 0.02 * i, 2) for i in range(20)), 0.99)
#: Hits after which the running wrong share must stay under the target.
BURN_IN = 100


class LookupEmbedder:
    """Serves precomputed vectors under the real model's fingerprint (the calibration prior)."""

    def __init__(self, texts: list[str], vecs: np.ndarray, fingerprint: str) -> None:
        self.rows = {t: i for i, t in enumerate(texts)}
        self.vecs = np.asarray(vecs, dtype=np.float32)
        self.fingerprint = fingerprint

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.vecs[[self.rows[t] for t in texts]]


@dataclass
class Run:
    label: str
    hits: int = 0
    wrong: int = 0
    probes: int = 0
    llm_calls: int = 0
    queries: int = 0
    seconds: float = 0.0
    running: list[float] = field(default_factory=list)  # wrong share after each hit

    @property
    def wrong_share(self) -> float:
        return self.wrong / self.hits if self.hits else 0.0

    def worst_after(self, burn_in: int) -> float:
        tail = self.running[burn_in:]
        return max(tail) if tail else float("nan")


def replay(stream: Stream, fingerprint: str, label: str, order: np.ndarray, *,
           target: float | None = None, threshold: float | None = None) -> Run:
    texts = stream.stored + stream.queries
    emb = LookupEmbedder(texts, np.concatenate([stream.stored_vecs, stream.query_vecs]),
                         fingerprint)
    cache = SemanticCache(store="memory", embedder=emb, threshold=threshold,
                          target_wrong_hit_rate=target)
    cache.put_many(stream.stored, stream.stored_answers)
    oracle = dict(zip(stream.queries, stream.query_answers, strict=True))
    run = Run(label)
    calls = [0]

    @semantic_cache(cache)
    def llm(prompt: str) -> str:
        calls[0] += 1
        return oracle[prompt]

    t0 = time.perf_counter()
    for qi in order.tolist():
        q = stream.queries[qi]
        before = calls[0]
        out = llm(q)
        run.queries += 1
        if calls[0] == before:
            run.hits += 1
            run.wrong += out != oracle[q]
            run.running.append(run.wrong / run.hits)
    run.seconds = time.perf_counter() - t0
    run.llm_calls = calls[0]
    run.probes = cache.stats().probes
    cache.close()
    return run


def old_threshold(fp: str, r: float) -> tuple[float, str]:
    try:
        return threshold_for(fp, r), "old code (profile all)"
    except Exception:
        return threshold_for(fp, r, profile="qqp_dev"), "old code raises; qqp_dev profile"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clinc-per-intent", type=int, default=15, help="train prompts stored per intent")
    ap.add_argument("--clinc-test-per-intent", type=int, default=15)
    ap.add_argument("--clinc-oos", type=int, default=300)
    ap.add_argument("--qqp-pairs", type=int, default=2500)
    ap.add_argument("--sets", nargs="+", default=["qqp", "clinc", "mock"])
    args = ap.parse_args()
    fp = next(iter(load_calibration()["models"]))
    loaders = {
        "qqp": lambda: qqp_heldout(args.qqp_pairs),
        "clinc": lambda: clinc_test(args.clinc_per_intent, args.clinc_test_per_intent,
                                    args.clinc_oos),
        "mock": gptcache_mock,
    }
    lines: list[str] = []
    summary_rows: list[list[object]] = []
    plots: dict[str, list[Run]] = {}
    for key in args.sets:
        stream = loaders[key]()
        order = np.random.default_rng(0).permutation(len(stream.queries))
        lines.append(f"\n== {stream.name}: {stream.note}\n   {len(stream.stored)} stored, "
                     f"{len(stream.queries)} queries")
        static: dict[float, Run] = {}
        for t in tqdm(SWEEP, desc=f"{stream.name} static sweep"):
            static[t] = replay(stream, fp, f"static {t}", order, threshold=t)
        rows: list[list[object]] = []
        runs: list[Run] = []
        for r in TARGETS:
            g = replay(stream, fp, f"guarantee r={r}", order, target=r)
            runs.append(g)
            t_old, how = old_threshold(fp, r)
            old = replay(stream, fp, f"static {t_old:.3f} ({how})", order, threshold=t_old)
            old.label = f"static {t_old:.3f} = old code's for r={r}" + (
                "" if how.startswith("old code (") else " (qqp_dev profile)")
            runs.append(old)
            meeting = [s for s in static.values() if s.hits and s.wrong_share <= r]
            best = max(meeting, key=lambda s: s.hits) if meeting else None
            ratio = g.hits / best.hits if best and best.hits else float("nan")
            for run in (g, old) + ((best,) if best else ()):
                rows.append([r, run.label, run.hits, f"{run.hits / run.queries:.3f}",
                             f"{run.wrong_share:.4f}", f"{run.worst_after(BURN_IN):.4f}",
                             run.probes, run.llm_calls])
            summary_rows.append([
                stream.name, r, g.hits, f"{g.wrong_share:.4f}", f"{g.worst_after(BURN_IN):.4f}",
                "yes" if not (g.worst_after(BURN_IN) > r) else "NO", g.probes,
                f"{old.hits} @ {old.wrong_share:.4f}",
                f"{best.hits} @ {best.wrong_share:.4f} (t={best.label.split()[1]})" if best else "none",
                f"{ratio:.2f}"])
        plots[stream.name] = runs
        lines.append(format_table(
            ("r", "run", "hits", "hit rate", "wrong share", f"worst after {BURN_IN} hits",
             "probes", "LLM calls"), rows))
        sweep_rows = [[t, s.hits, f"{s.wrong_share:.4f}", s.llm_calls] for t, s in static.items()]
        lines.append("static sweep:\n" + format_table(("threshold", "hits", "wrong share",
                                                       "LLM calls"), sweep_rows))
        print("\n".join(lines[-3:]), flush=True)
    head = format_table(
        ("set", "r", "hits", "wrong share", f"worst after {BURN_IN}", "bound held", "probes",
         "old static: hits @ wrong", "best static meeting r (oracle)", "hits ratio"),
        summary_rows)
    text = ("Online guarantee (confidence 0.95) vs static thresholds, held-out streams through "
            "@semantic_cache with an oracle LLM\n" + head + "\n" + "\n".join(lines))
    save_text("guarantee_bench.txt",
              "flock /work/coord/heavy.lock .venv/bin/python benchmarks/guarantee_bench.py "
              + " ".join(sys.argv[1:]), text)
    print(head)
    plot(plots)
    return 0


def plot(plots: dict[str, list[Run]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plots), figsize=(5.5 * len(plots), 4.2), squeeze=False)
    colors = {0.02: "tab:green", 0.05: "tab:blue", 0.1: "tab:orange"}
    for ax, (name, runs) in zip(axes[0], plots.items(), strict=True):
        for run in runs:
            if run.label.startswith("guarantee"):
                r = float(run.label.split("=")[1])
                ax.plot(np.arange(1, run.hits + 1), run.running, color=colors[r],
                        label=f"{run.label} ({run.hits} hits)")
                ax.axhline(r, color=colors[r], ls=":", lw=1)
            else:
                r = float(run.label.rsplit("r=", 1)[1].split()[0])
                ax.plot(np.arange(1, run.hits + 1), run.running, color=colors[r], ls="--",
                        lw=0.8, label=f"{run.label} ({run.hits} hits)")
        ax.axvline(BURN_IN, color="black", lw=0.5)
        ax.set_ylim(0, 0.3)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("hits served so far")
        ax.set_ylabel("wrong share of hits so far")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS_DIR / "guarantee_bench.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
