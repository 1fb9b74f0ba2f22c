"""Shared helpers of the benchmark scripts: an on-disk cache of real embeddings, timing, tables.

Embedding 137k QQP questions takes minutes on 2 cores, so every script asks
:func:`embed_cached`, which stores vectors under ``benchmarks/.cache/`` keyed by
the embedder fingerprint and a hash of the texts.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from semcache.embedding import Embedder, default_embedder  # noqa: E402
from semcache.report import format_table  # noqa: E402

CACHE_DIR = ROOT / ".cache"
RESULTS_DIR = ROOT / "results"


def embed_cached(
    texts: Sequence[str], name: str, embedder: Embedder | None = None, batch: int = 512
) -> np.ndarray:
    """Embeddings of ``texts`` (float32, (n, d), unit rows), computed once and kept on disk."""
    emb = embedder or default_embedder()
    h = hashlib.sha256(emb.fingerprint.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = CACHE_DIR / f"{name}-{h.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in tqdm(range(0, len(texts), batch), desc=f"embedding {name}", unit="batch"):
        parts.append(emb.encode(list(texts[i : i + batch])))
    out = np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)
    np.save(path, out)
    return out


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of samples given in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def save_text(name: str, command: str, text: str) -> Path:
    """Write ``text`` to ``results/<name>``, under a first line giving the command that made it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / name
    out.write_text(f"# {command}\n{text}\n")
    return out


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print (and return) a plain aligned text table."""
    text = format_table(headers, rows)
    print(text)
    return text


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
