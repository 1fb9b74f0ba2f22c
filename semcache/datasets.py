"""Loaders for the real data sets in ``../shared/data`` (used by the demo, eval and benchmarks).

The folder is found from ``$SEMCACHE_DATA``, else ``shared/data`` next to the
project checkout (``<repo>/../shared/data``), else ``./shared/data``.
Every loader returns plain Python lists; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcache.errors import ConfigError

__all__ = [
    "ClincSplit",
    "QQPPair",
    "data_dir",
    "load_clinc150",
    "load_gptcache_mock",
    "load_multiturn",
    "load_qqp_pairs",
    "load_real_prompts",
]


def data_dir() -> Path:
    """Folder holding the shared data sets.

    Raises
    ------
    ConfigError
        No candidate folder exists.
    """
    env = os.environ.get("SEMCACHE_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                   Path.cwd() / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").is_file() or (c / "qqp").is_dir():
            return c
    raise ConfigError(
        "shared data folder not found; set SEMCACHE_DATA to the folder holding qqp/, clinc150/ ..."
    )


@dataclass(frozen=True)
class QQPPair:
    """One labelled question pair: ``label`` 1 means the same answer serves both."""

    text_a: str
    text_b: str
    label: int


def load_qqp_pairs(limit: int | None = None) -> list[QQPPair]:
    """QQP dev pairs (``qqp/pairs_dev.jsonl.gz``), in file order."""
    out: list[QQPPair] = []
    with gzip.open(data_dir() / "qqp" / "pairs_dev.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append(QQPPair(str(row["text_a"]), str(row["text_b"]), int(row["label"])))
            if limit is not None and len(out) >= limit:
                break
    return out


@dataclass(frozen=True)
class ClincSplit:
    """Texts and intent labels of one CLINC150 split; ``"oos"`` marks out-of-scope."""

    texts: list[str]
    intents: list[str]


def load_clinc150(split: str) -> ClincSplit:
    """A CLINC150 split: ``train``, ``val``, ``test``, ``oos_train``, ``oos_val``, ``oos_test``."""
    with (data_dir() / "clinc150" / "data_full.json").open(encoding="utf-8") as fh:
        full: dict[str, list[list[str]]] = json.load(fh)
    if split not in full:
        raise ConfigError(f"unknown CLINC150 split {split!r}; choose one of {sorted(full)}")
    rows = full[split]
    return ClincSplit([r[0] for r in rows], [r[1] for r in rows])


def load_real_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    """Real chat prompts (``prompts/real_prompts.jsonl.gz``): dicts with ``source``, ``prompt``."""
    out: list[dict[str, Any]] = []
    with gzip.open(data_dir() / "prompts" / "real_prompts.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if limit is not None and len(out) >= limit:
                break
    return out


def load_gptcache_mock() -> list[tuple[str, str]]:
    """GPTCache's benchmark paraphrase pairs as ``(origin, similar)``."""
    with (data_dir() / "gptcache_mock" / "mock_data.json").open(encoding="utf-8") as fh:
        rows = json.load(fh)
    return [(str(r["origin"]), str(r["similar"])) for r in rows]


def load_multiturn(name: str = "new_claude.json") -> list[dict[str, Any]]:
    """One of the multi-turn follow-up files in ``multiturn/``."""
    with (data_dir() / "multiturn" / name).open(encoding="utf-8") as fh:
        data: list[dict[str, Any]] = json.load(fh)
    return data
