"""Computing calibrated thresholds (``semcache calibrate``): a tool, not part of the cache.

The cache only *reads* the result, through :mod:`semcache.thresholds`
(:func:`~semcache.thresholds.threshold_for`, re-exported here); this module runs the
replays of :mod:`semcache.evaluation` that produce it, so the core never imports it.

A raw cosine threshold means different things for different models and data. A
*target wrong-hit rate* (the share of hits that serve a wrong answer) is what a
user can reason about, so the package ships, per embedding model fingerprint,
the threshold that reached each target on labelled dev data.

Procedure (reproduce with ``semcache calibrate``)
    1. Replays on the dev data only (see :mod:`semcache.evaluation`): QQP dev
       (store every ``text_a``, look up every ``text_b``) and CLINC150 (store
       ``train``, look up ``val`` + ``oos_val`` + ``oos_train``), with the
       default guards (:func:`semcache.guards.default_guards`), as a cache built
       with default settings would serve.
    2. For each data set and target ``r``, the calibrated threshold is the
       lowest cosine ``t`` (grid step 0.001) such that the wrong-hit rate is at
       most ``r`` at ``t`` *and at every higher threshold* where at least
       ``min_hits`` lookups hit (so the rate stays under target however the
       threshold is raised).
    3. The model's threshold for ``r`` (profile ``"all"``, the default) is the
       highest of the per-data-set ones: the target then holds on every dev set.
       Each data set's own thresholds are kept too, as profiles ``"qqp_dev"``
       (open-domain questions with hard negatives) and ``"clinc150_val"``
       (assistant commands); a target one data set cannot reach is left out of
       that profile and of ``"all"``.

:func:`threshold_for` interpolates linearly between calibrated targets and
refuses targets outside the calibrated range and unknown fingerprints. How well
the targets held on held-out data (CLINC150 test, for the ``"all"`` and
``"clinc150_val"`` thresholds) is stored under ``"held_out"`` and printed by
``semcache calibrate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from semcache.errors import ConfigError
from semcache.report import format_table
from semcache.thresholds import (
    CALIBRATION_FILE,
    FORMAT,
    _load,
    _package_file,
    calibrated_targets,
    load_calibration,
    threshold_for,
)

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_TARGETS",
    "calibrate_curve",
    "calibrate_profiles",
    "calibrated_targets",
    "configure",
    "load_calibration",
    "run",
    "threshold_for",
]

#: Target wrong-hit rates calibrated by default.
DEFAULT_TARGETS: Final = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)

#: Thresholds tried: cosine 0.5 to 1.0 in steps of 0.001.
GRID: Final = tuple(round(0.5 + 0.001 * i, 3) for i in range(501))

def calibrate_curve(
    hits: Sequence[int], wrong: Sequence[int], grid: Sequence[float], target: float,
    *, min_hits: int = 50,
) -> float | None:
    """Lowest threshold whose wrong-hit rate, and every higher one's, is at most ``target``.

    Thresholds where fewer than ``min_hits`` lookups hit are too noisy to judge
    and are not checked. Returns None when even the highest checked threshold
    misses the target.
    """
    h = np.asarray(hits, dtype=np.float64)
    w = np.asarray(wrong, dtype=np.float64)
    rate = np.where(h > 0, w / np.maximum(h, 1), 0.0)
    ok = (rate <= target) | (h < min_hits)
    # Walk down from the top: stop at the first threshold that fails the target.
    best: float | None = None
    for i in range(len(grid) - 1, -1, -1):
        if not ok[i]:
            break
        if h[i] >= min_hits:
            best = float(grid[i])
    return best


def calibrate_profiles(curves: Mapping[str, Any], targets: Sequence[float], min_hits: int
                       ) -> dict[str, list[dict[str, Any]]]:
    """Per-data-set calibrated points and the combined ``"all"`` profile (their maximum).

    ``curves`` maps a data set name to an object with ``hits``, ``wrong``,
    ``unlabelled`` and ``thresholds`` arrays (a :class:`semcache.evaluation.Curve`).
    """
    profiles: dict[str, list[dict[str, Any]]] = {"all": []}
    profiles.update({name: [] for name in curves})
    for r in sorted(targets):
        per: dict[str, float | None] = {}
        for name, c in curves.items():
            judged = np.asarray(c.hits) - np.asarray(c.unlabelled)
            per[name] = calibrate_curve(judged, c.wrong, c.thresholds, r, min_hits=min_hits)
            if per[name] is not None:
                profiles[name].append({"target": r, "threshold": per[name]})
        if any(v is None for v in per.values()):
            continue  # not reachable on some dev set: leave it out of "all"
        profiles["all"].append({"target": r,
                                "threshold": max(v for v in per.values() if v is not None),
                                "per_dataset": per})
    return profiles


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``semcache calibrate``."""
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (default: the packaged semcache/data/calibration.json)")
    parser.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS),
                        help="target wrong-hit rates")
    parser.add_argument("--min-hits", type=int, default=50,
                        help="ignore thresholds with fewer hits than this (noise)")
    parser.add_argument("--guards", choices=("default", "none"), default="default",
                        help="calibrate with the default guards (default) or none")
    parser.add_argument("--qqp-limit", type=int, default=None, help="first N QQP pairs only")
    parser.add_argument("--embed-cache", type=Path, default=None, metavar="DIR",
                        help="folder of cached embeddings")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the held-out check on CLINC150 test")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """``semcache calibrate``: compute and write the calibration, check it on held-out data."""
    from semcache import evaluation as ev
    from semcache.embedding import default_embedder
    from semcache.guards import default_guards

    ev._limit_threads(args.threads)
    embedder = default_embedder()
    embed_dir = args.embed_cache or ev.default_embed_dir()
    guards = default_guards() if args.guards == "default" else []
    progress = not args.quiet

    def curve(data: ev.ReplayData) -> ev.Curve:
        top = ev.top_candidates(data, k=10)
        veto = ev.guard_vetoes(data, top, guards, min_score=GRID[0]) if guards else None
        s, r = ev.served(top, veto)
        return ev.sweep(data.name, s, r, int(data.possible.sum()), GRID)

    try:
        dev = {
            "qqp_dev": curve(ev.qqp_replay(embedder, embed_dir, args.qqp_limit)),
            "clinc150_val": curve(ev.clinc_replay(embedder, embed_dir, "val")),
        }
    except ConfigError as exc:
        print(f"semcache calibrate: {exc}", file=sys.stderr)
        return 2
    profiles = calibrate_profiles(dev, args.targets, args.min_hits)
    points = profiles["all"]
    if not points:
        print("semcache calibrate: no target was reachable on every dev set", file=sys.stderr)
        return 1
    held: dict[str, list[dict[str, float]]] = {}
    if not args.no_check:
        test = curve(ev.clinc_replay(embedder, embed_dir, "test"))
        for prof in ("all", "clinc150_val"):
            held[prof] = []
            for p in profiles[prof]:
                i = int(np.argmin(np.abs(test.thresholds - p["threshold"])))
                held[prof].append({
                    "target": p["target"], "threshold": p["threshold"],
                    "wrong_hit_rate": float(test.wrong_hit_rate[i]),
                    "hit_rate": float(test.hit_rate[i]), "recall": float(test.recall[i])})
    del progress
    out_path = args.out or _package_file()
    data: dict[str, Any] = {"format": FORMAT, "models": {}}
    if Path(out_path).is_file():
        try:
            data = json.loads(Path(out_path).read_text(encoding="utf-8"))
            data.setdefault("models", {})
        except ValueError:
            pass
    data["format"] = FORMAT
    data["models"][embedder.fingerprint] = {
        "procedure": "semcache calibrate (see semcache/calibration.py)",
        "dev_data": {"qqp_dev": "qqp/pairs_dev replay (store text_a, query text_b)",
                     "clinc150_val": "clinc150 train -> val + oos_val + oos_train"},
        "guards": [getattr(g, "__name__", "?") for g in guards],
        "min_hits": args.min_hits,
        "grid_step": 0.001,
        "points": points,
        "profiles": profiles,
        "held_out": {"data": "clinc150 train -> test + oos_test", "profiles": held},
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    _load.cache_clear()
    rows: list[list[object]] = []
    for r in sorted(args.targets):
        cells: list[object] = [r]
        for prof in ("all", "qqp_dev", "clinc150_val"):
            found = [x["threshold"] for x in profiles[prof] if x["target"] == r]
            cells.append(found[0] if found else "-")
        for prof in ("all", "clinc150_val"):
            hs = [x for x in held.get(prof, []) if x["target"] == r]
            cells += [hs[0]["wrong_hit_rate"], hs[0]["hit_rate"]] if hs else ["-", "-"]
        rows.append(cells)
    print("Calibrated thresholds (dev data) and what they give on held-out CLINC150 test")
    print(format_table(
        ("target", "thr all", "thr qqp_dev", "thr clinc_val", "test wrong (all)",
         "test hit (all)", "test wrong (clinc thr)", "test hit (clinc thr)"), rows))
    print('"-": not reachable on that dev set (needs >= --min-hits hits at every threshold '
          "above); left out of the profile")
    print(f"wrote {out_path} for {embedder.fingerprint}")
    return 0
