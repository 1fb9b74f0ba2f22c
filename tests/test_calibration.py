"""Calibrated thresholds: the packaged JSON, threshold_for, and the calibration procedure."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from semcache import evaluation as ev
from semcache.calibration import (
    calibrate_curve,
    calibrate_profiles,
    calibrated_targets,
    load_calibration,
    threshold_for,
)
from semcache.datasets import load_clinc150
from semcache.embedding import SentenceTransformerEmbedder
from semcache.errors import ConfigError


def write_calibration(path: Path, fingerprint: str, points: list[tuple[float, float]]) -> Path:
    path.write_text(json.dumps({"format": 1, "models": {fingerprint: {
        "points": [{"target": t, "threshold": thr} for t, thr in points]}}}))
    return path


def test_packaged_calibration_covers_the_bundled_model(
    embedder: SentenceTransformerEmbedder,
) -> None:
    data = load_calibration()
    assert embedder.fingerprint in data["models"]
    pts = calibrated_targets(embedder.fingerprint)
    assert len(pts) >= 2
    targets = [t for t, _ in pts]
    thresholds = [thr for _, thr in pts]
    # A looser target never needs a stricter threshold.
    assert all(a >= b for a, b in itertools.pairwise(thresholds))
    assert all(-1.0 <= thr <= 1.0 for thr in thresholds)
    mid = (targets[0] + targets[1]) / 2
    assert thresholds[1] <= threshold_for(embedder.fingerprint, mid) <= thresholds[0]
    # Each data set's own profile is there too, and "all" is never looser than either.
    for prof in ("qqp_dev", "clinc150_val"):
        own = dict(calibrated_targets(embedder.fingerprint, profile=prof))
        for t, thr in pts:
            if t in own:
                assert thr >= own[t] - 1e-9


def test_threshold_for_interpolates_and_rejects(tmp_path: Path) -> None:
    path = write_calibration(tmp_path / "cal.json", "fp", [(0.05, 0.95), (0.1, 0.9), (0.2, 0.8)])
    assert threshold_for("fp", 0.05, path=path) == pytest.approx(0.95)
    assert threshold_for("fp", 0.075, path=path) == pytest.approx(0.925)
    assert threshold_for("fp", 0.15, path=path) == pytest.approx(0.85)
    assert threshold_for("fp", 0.2, path=path) == pytest.approx(0.8)
    for bad in (0.01, 0.3, 0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            threshold_for("fp", bad, path=path)
    with pytest.raises(ConfigError, match="no calibration for embedder"):
        threshold_for("another-model", 0.1, path=path)
    with pytest.raises(ConfigError, match="profile"):
        threshold_for("fp", 0.1, path=path, profile="nope")
    with pytest.raises(ConfigError):
        threshold_for("fp", True, path=path)  # type: ignore[arg-type]


def test_unreadable_calibration_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        threshold_for("fp", 0.1, path=bad)
    with pytest.raises(ConfigError):
        threshold_for("fp", 0.1, path=tmp_path / "missing.json")


def test_calibrate_curve_is_the_lowest_safe_threshold() -> None:
    grid = [0.7, 0.8, 0.9, 0.95]
    hits = [400, 300, 200, 100]
    wrong = [60, 24, 8, 2]  # rates 0.15, 0.08, 0.04, 0.02
    assert calibrate_curve(hits, wrong, grid, 0.05, min_hits=50) == 0.9
    assert calibrate_curve(hits, wrong, grid, 0.1, min_hits=50) == 0.8
    assert calibrate_curve(hits, wrong, grid, 0.2, min_hits=50) == 0.7
    assert calibrate_curve(hits, wrong, grid, 0.01, min_hits=50) is None
    # A bad rate above a good one blocks everything below it: the target must hold
    # however far the threshold is raised.
    assert calibrate_curve(hits, [60, 24, 30, 2], grid, 0.1, min_hits=50) == 0.95
    # ... unless that threshold has too few hits to judge.
    assert calibrate_curve([400, 300, 20, 10], [60, 24, 10, 0], grid, 0.1, min_hits=50) == 0.8


def test_calibration_holds_on_the_data_it_was_fitted_on(
    embedder: SentenceTransformerEmbedder,
) -> None:
    # A small real replay: calibrate on it, then check by brute force that the
    # threshold for each target gives at most that wrong-hit rate on the same data.
    train, val = load_clinc150("train"), load_clinc150("val")
    intents = sorted(set(train.intents))[:12]
    keep = [i for i, it in enumerate(train.intents) if it in intents][::2]
    qk = [i for i, it in enumerate(val.intents) if it in intents]
    data = ev.replay_from_lists(
        "slice", [train.texts[i] for i in keep], [train.intents[i] for i in keep],
        [val.texts[i] for i in qk], [val.intents[i] for i in qk], embedder)
    s, v = ev.served(ev.top_candidates(data, k=1))
    grid = np.round(np.arange(0.5, 1.0, 0.01), 2)
    curve = ev.sweep("slice", s, v, int(data.possible.sum()), grid)
    profiles = calibrate_profiles({"slice": curve}, (0.02, 0.05, 0.1), min_hits=10)
    assert profiles["all"], "some target should be reachable on this slice"
    for p in profiles["all"]:
        hit = s >= p["threshold"]
        rate = float((v[hit] == 0).sum() / max(hit.sum(), 1))
        assert rate <= p["target"] + 1e-12
        assert p["threshold"] == p["per_dataset"]["slice"]
