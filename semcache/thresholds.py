"""Calibrated thresholds: read the packaged ``semcache/data/calibration.json``.

``SemanticCache(target_wrong_hit_rate=r)`` turns ``r`` into a cosine threshold
with :func:`threshold_for`. This module only reads the calibration; computing it
is a tool (``semcache calibrate``, :mod:`semcache.calibration`), which the cache
never imports.

:func:`threshold_for` interpolates linearly between calibrated targets and
refuses targets outside the calibrated range and unknown fingerprints.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from semcache.errors import ConfigError

__all__ = ["CALIBRATION_FILE", "calibrated_targets", "load_calibration", "threshold_for"]

#: The calibration data shipped with the package.
CALIBRATION_FILE: Final = "calibration.json"

FORMAT: Final = 1


def _package_file() -> Path:
    return Path(str(resources.files("semcache") / "data" / CALIBRATION_FILE))


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"no calibration file at {path}; run `semcache calibrate`") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"calibration file {path} is unreadable: {exc}") from exc
    if data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
        raise ConfigError(f"calibration file {path} has an unknown format")
    return data


def load_calibration(path: str | Path | None = None) -> dict[str, Any]:
    """The calibration JSON (the packaged one by default)."""
    return _load(str(path or _package_file()))


def calibrated_targets(fingerprint: str, path: str | Path | None = None, *,
                       profile: str = "all") -> list[tuple[float, float]]:
    """``(target, threshold)`` pairs calibrated for ``fingerprint``, by increasing target.

    Raises
    ------
    ConfigError
        No calibration for this fingerprint, or no such profile.
    """
    models = load_calibration(path)["models"]
    model = models.get(fingerprint)
    if model is None:
        known = ", ".join(sorted(models)) or "none"
        raise ConfigError(
            f"no calibration for embedder {fingerprint!r} (calibrated: {known}); pass a "
            "threshold instead, or run `semcache calibrate` for this model"
        )
    profiles = model.get("profiles", {"all": model["points"]})
    if profile not in profiles:
        raise ConfigError(f"no calibration profile {profile!r}; choose one of {sorted(profiles)}")
    pts = sorted((float(p["target"]), float(p["threshold"])) for p in profiles[profile])
    if not pts:
        raise ConfigError(f"the calibration of {fingerprint!r} has no points")
    return pts


def threshold_for(fingerprint: str, target_wrong_hit_rate: float,
                  *, profile: str = "all", path: str | Path | None = None) -> float:
    """The cosine threshold expected to serve at most ``target_wrong_hit_rate`` wrong hits.

    Linear interpolation between the calibrated targets of the embedder.

    Parameters
    ----------
    fingerprint : str
        The embedder's fingerprint (``cache.fingerprint``).
    target_wrong_hit_rate : float
        Share of hits allowed to be wrong, within the calibrated range.
    profile : str
        ``"all"`` (default: the target holds on every dev set), or one data set's
        own calibration: ``"qqp_dev"``, ``"clinc150_val"``.
    path : str or Path, optional
        Another calibration file (default: the packaged one).

    Raises
    ------
    ConfigError
        Unknown fingerprint or profile, or a target outside the calibrated range.
    """
    r = target_wrong_hit_rate
    if isinstance(r, bool) or not isinstance(r, int | float) or not (0.0 < r < 1.0):
        raise ConfigError(f"target_wrong_hit_rate must be a number in (0, 1), got {r!r}")
    pts = calibrated_targets(fingerprint, path, profile=profile)
    lo, hi = pts[0][0], pts[-1][0]
    if not (lo - 1e-12 <= r <= hi + 1e-12):
        raise ConfigError(
            f"target_wrong_hit_rate {r:g} is outside the calibrated range [{lo:g}, {hi:g}] "
            f"for {fingerprint!r} (profile {profile!r})"
        )
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    return float(np.interp(r, xs, ys))
