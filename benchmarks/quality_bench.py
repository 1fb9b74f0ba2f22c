"""Cache correctness on labelled data: tables and PNG plots (issue #5).

Runs the harness of :mod:`semcache.evaluation` on the shared data and saves its
plots and JSON to ``benchmarks/results/``:

1. threshold sweeps (QQP dev pairs, QQP dev replay, CLINC150 dev = val and held-out
   = test replays) and the real :class:`SemanticCache` at the default threshold;
2. ``--guards``: each guard of :mod:`semcache.guards` on the dev data (QQP dev
   replay, CLINC150 train -> val): wrong hits removed vs good hits lost;
3. ``--feedback``: the replay with simulated feedback (CLINC150 val, then test twice),
   also with other ``max_wrong`` / ``feedback_margin`` settings of the cache.

Run: ``.venv/bin/python benchmarks/quality_bench.py [--guards] [--feedback] [--qqp-limit N]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from common import CACHE_DIR, RESULTS_DIR, print_table  # noqa: E402

from semcache import evaluation as ev  # noqa: E402
from semcache.cache import DEFAULT_THRESHOLD  # noqa: E402
from semcache.embedding import default_embedder  # noqa: E402
from semcache.guards import ALL_GUARDS, default_guards  # noqa: E402

GUARD_THRESHOLDS = (0.8, 0.85, 0.9)


def guard_table(qqp_limit: int | None) -> dict[str, Any]:
    """Each guard alone on the dev replays: wrong hits removed vs good hits lost."""
    emb = default_embedder()
    datas = [ev.qqp_replay(emb, CACHE_DIR, qqp_limit), ev.clinc_replay(emb, CACHE_DIR, "val")]
    tops = {d.name: ev.top_candidates(d, k=10) for d in datas}
    rows: list[list[object]] = []
    out: dict[str, Any] = {}
    for name, guard in ALL_GUARDS.items():
        out[name] = {}
        for d in datas:
            res = ev.guard_payoff(d, tops[d.name], guard, GUARD_THRESHOLDS)
            out[name][d.name] = res
            for r in res:
                ratio = r["wrong_removed"] / r["good_lost"] if r["good_lost"] else float("inf")
                rows.append([name, d.name, r["threshold"], r["hits"], r["wrong"],
                             r["wrong_removed"], r["good_lost"],
                             ratio if r["wrong_removed"] else 0.0])
    print("\nGuards on the dev data (each alone; a vetoed query may be served its next-best "
          "candidate)")
    print_table(("guard", "data", "threshold", "hits", "wrong hits", "wrong removed",
                 "good lost", "removed/lost"), rows)
    # The payoff rule of semcache.guards: summed over both dev sets at the default threshold.
    summary = []
    for name in ALL_GUARDS:
        rem = lost = 0
        for d in datas:
            r = next(x for x in out[name][d.name] if abs(x["threshold"] - DEFAULT_THRESHOLD) < 1e-9)
            rem += int(r["wrong_removed"])
            lost += int(r["good_lost"])
        summary.append([name, rem, lost, "yes" if rem >= 10 and rem >= 2 * lost else "no"])
    print(f"\nPayoff at the default threshold {DEFAULT_THRESHOLD:g}, both dev sets summed "
          "(keep if removed >= 2 x lost and removed >= 10)")
    print_table(("guard", "wrong removed", "good lost", "keep"), summary)
    return out


def feedback_runs(threshold: float) -> tuple[list[ev.FeedbackResult], list[list[object]]]:
    """The feedback replay (val, then test twice) with and without feedback, and other
    feedback settings of the cache (``max_wrong``, ``feedback_margin``; no core change)."""
    emb = default_embedder()
    guards = default_guards()
    data, stream, phases = ev.clinc_feedback_stream(emb, CACHE_DIR)
    results = [ev.feedback_replay(data, emb, threshold=threshold, feedback=fb, guards=guards,
                                  stream=stream, window=100) for fb in (False, True)]
    print(f"\nFeedback replay at threshold {threshold:g}: cache warmed with CLINC150 train; "
          "stream = val (dev), then test twice (held out); each hit reported right/wrong")
    print_table(("run", "phase", "hit rate", "wrong-hit rate", "wrong hits"),
                ev.phase_rows(results, phases))
    rows: list[list[object]] = []
    for max_wrong, margin in ((2, 1e-3), (1, 1e-3), (3, 1e-3), (1000, 1e-3), (2, 0.01),
                              (2, 0.03)):
        r = ev.feedback_replay(data, emb, threshold=threshold, feedback=True, guards=guards,
                               max_wrong=max_wrong, feedback_margin=margin, stream=stream,
                               window=100, progress=False)
        per = ev.phase_rows([r], phases)
        rows.append([max_wrong, margin, *[x for row in per for x in (row[2], row[3])],
                     r.entries_deleted])
    print("\nFeedback settings (hit rate, wrong-hit rate per phase: val | test 1st | test 2nd)")
    print_table(("max_wrong", "margin", "val hit", "val wrong", "test1 hit", "test1 wrong",
                 "test2 hit", "test2 wrong", "deleted"), rows)
    return results, rows


def main() -> int:
    parser = argparse.ArgumentParser(description="semcache cache-correctness benchmark")
    parser.add_argument("--qqp-limit", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--guards", action="store_true", help="measure every guard on dev data")
    parser.add_argument("--feedback", action="store_true", help="run the feedback replays")
    parser.add_argument("--skip-main", action="store_true", help="skip the sweeps")
    args = parser.parse_args()
    ev._limit_threads(1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    emb = default_embedder()
    summary: dict[str, Any] = {"threshold": args.threshold,
                               "default_guards": [g.__name__ for g in default_guards()]}
    if not args.skip_main:
        for split in ("val", "test"):
            print(f"\n=== CLINC150 replay on {split} ({'dev' if split == 'val' else 'held out'})"
                  f"{' and QQP dev' if split == 'val' else ''}")
            res = ev.evaluate(
                embedder=emb, embed_dir=CACHE_DIR,
                datasets=("qqp", "clinc150") if split == "val" else ("clinc150",),
                clinc_split=split, threshold=args.threshold, qqp_limit=args.qqp_limit,
                plot_dir=RESULTS_DIR / f"quality_{split}",
            )
            summary[f"eval_{split}"] = res.to_json()
    if args.guards:
        summary["guards"] = guard_table(args.qqp_limit)
    if args.feedback:
        fb, policies = feedback_runs(args.threshold)
        summary["feedback"] = [r.to_json() for r in fb]
        summary["feedback_plot"] = str(ev.plot_feedback(fb, RESULTS_DIR))
        summary["feedback_policies"] = policies
    out = RESULTS_DIR / "quality_bench.json"
    if out.is_file():  # a partial run (--skip-main, --guards) updates only its own parts
        with contextlib.suppress(ValueError):
            summary = {**json.loads(out.read_text()), **summary}
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nsaved {out} and plots under {RESULTS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
