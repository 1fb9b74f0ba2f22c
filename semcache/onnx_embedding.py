"""all-MiniLM-L6-v2 (or another mean-pooled sentence-transformers BERT) on ONNX Runtime.

The ONNX file is made from the model's own weights on this machine, never
downloaded: :func:`export_model` traces the transformer plus the mean pooling
with ``torch.onnx.export``, checks the result against torch on a few texts, and
(for int8) quantises the weights with ``onnxruntime.quantization.quantize_dynamic``.
The files are cached under ``$SEMCACHE_HOME/onnx/<name>/`` where the name holds
a digest of every source file (weights, tokenizer, configs), so a changed model
is exported again; they are written into a temp folder and renamed into place,
under a file lock, so two processes never see half an export and never export
twice. ``semcache model export`` does it ahead of time (e.g. in a Docker build).

At run time only ``tokenizers`` and ``onnxruntime`` are used (torch is not
imported): tokenisation from the model's ``tokenizer.json``, truncated to the
model's ``max_seq_length`` (256 for MiniLM) and padded per batch, mean pooling
over the attention mask inside the graph, L2 normalisation, as
sentence-transformers does. The fingerprint is the torch embedder's with
``/onnx-int8-r2`` (the int8 recipe) or ``/onnx-fp32`` appended: the vectors differ slightly, so their
entries never mix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from semcache._types import FloatArray
from semcache.embedding_base import (
    PROBE_TEXTS,
    _locked,
    bundled_model_path,
    cache_home,
    check_embeddings,
    default_threads,
    model_digest,
    model_name,
)
from semcache.errors import ConfigError, EmbeddingError

__all__ = ["OnnxEmbedder", "configure", "export_model", "model_config", "run"]

log = logging.getLogger("semcache")

#: Cosine the exported model must reach against torch on :data:`PROBE_TEXTS`, per variant.
_EXPORT_MIN_COSINE: Final = {"fp32": 0.9999, "int8": 0.97}

_INSTALL_HINT: Final = "the ONNX embedder needs onnxruntime and onnx: pip install onnxruntime onnx"


def model_config(model_path: Path) -> dict[str, Any]:
    """What the ONNX pipeline needs from a sentence-transformers directory.

    Returns
    -------
    dict with ``max_seq_length`` (int), ``do_lower_case`` (bool), ``dim`` (int),
    ``normalize`` (bool).

    Raises
    ------
    ConfigError
        A pipeline this embedder does not reproduce exactly (pooling other than
        mean, Dense layers, modules other than Transformer/Pooling/Normalize).
    """
    try:
        modules = json.loads((model_path / "modules.json").read_text())
        pooling = json.loads((model_path / "1_Pooling" / "config.json").read_text())
        hf_config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{model_path} is not a sentence-transformers model directory: {exc}") from exc
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize",) for k in kinds[2:]):
        raise ConfigError(f"the ONNX embedder supports Transformer + Pooling (+ Normalize) models, "
                          f"not {kinds}; use SentenceTransformerEmbedder")
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if set(modes) != {"pooling_mode_mean_tokens"}:
        raise ConfigError(f"the ONNX embedder does mean pooling only; {model_path} asks for {sorted(modes)}")
    st_config: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        st_config = json.loads((model_path / "sentence_bert_config.json").read_text())
    max_len = int(st_config.get("max_seq_length") or hf_config.get("max_position_embeddings", 512))
    return {
        "max_seq_length": max_len,
        "do_lower_case": bool(st_config.get("do_lower_case", False)),
        "dim": int(pooling["word_embedding_dimension"]),
        "normalize": "Normalize" in kinds,
    }


#: The export recipe. A changed recipe (exporter settings, graph fusion, quantiser options)
#: is a new cache folder, so an existing export is never reused for another recipe. The
#: int8 fingerprint names it too: the fused graph quantises other tensors (the attention's
#: fused QKV weights), so its vectors differ from an earlier recipe's.
RECIPE: Final = "r2-eager-fused"
#: The fingerprint tag of int8 vectors of :data:`RECIPE` (fp32 vectors equal torch's
#: to float rounding whatever the recipe, so the fp32 tag has none).
_INT8_TAG: Final = "onnx-int8-r2"


def _variant_dir(model_path: Path, quantize: bool, home: Path | None) -> tuple[Path, str]:
    digest = model_digest(model_path)
    if quantize:
        import onnxruntime

        # The quantiser and the fusion belong to onnxruntime: another version may
        # produce another graph.
        variant = f"int8pc-ort{onnxruntime.__version__}"
    else:
        import onnxruntime

        variant = f"fp32-ort{onnxruntime.__version__}"
    root = (home or cache_home()) / "onnx"
    return root / f"{model_path.name}-{digest[:16]}-{RECIPE}-{variant}", digest


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantiser's warnings and root-logger chatter (not ours to act on)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _export_fp32(model_path: Path, out: Path) -> None:
    """Trace transformer + mean pooling to ``out`` and check it against torch."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    with _quiet():
        # Eager attention: its graph is the pattern onnxruntime's BERT optimizer fuses into
        # one Attention node (the default SDPA export is not recognised and stays ~40 nodes).
        hf = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            # sentence-transformers' mean pooling: masked sum over the clamped token count.
            return (h * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)

    wrapper = Pooled(hf)
    ids = torch.ones((2, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"sentence_embedding": {0: "batch"}}
    raw = out.with_name("raw.onnx")
    with _quiet(), torch.no_grad():
        torch.onnx.export(wrapper, (ids, ids, torch.zeros_like(ids)), str(raw), dynamo=False,
                          input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True)
    _fuse(raw, out, hf.config)
    raw.unlink()


def _fuse(raw: Path, out: Path, config: Any) -> None:
    """Fuse the BERT graph (embeddings + LayerNorm, attention, bias + GELU, skip + LayerNorm).

    onnxruntime's transformer optimizer turns each layer's ~60 nodes into 4 fused
    kernels. Measured by ``benchmarks/lab/onnx_fusion.py`` against recipe r1 (torch's
    SDPA export, unfused): no speed gain (int8 4.09 vs 3.80 ms of CPU p50 per real
    prompt, fp32 7.92 vs 8.31), int8 minimum cosine with torch 0.976 vs 0.966; the
    fusion beats only an *eager* unfused export (5.4 ms). Kept for now because every
    int8 number and the shipped int8 calibration were measured on this recipe.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        model = optimize_model(str(raw), model_type="bert", num_heads=int(config.num_attention_heads),
                               hidden_size=int(config.hidden_size),
                               optimization_options=FusionOptions("bert"), opt_level=0)
    stats = model.get_fused_operator_statistics()
    if stats.get("Attention", 0) != int(config.num_hidden_layers):
        # Another transformers/onnxruntime version may export a pattern the optimizer
        # does not recognise: the unfused graph is still correct, only slower.
        log.warning("semcache: ONNX attention fusion matched %s of %s layers; the export is "
                    "correct but slower", stats.get("Attention", 0), config.num_hidden_layers)
    model.save_model_to_file(str(out))


def _check_export(model_path: Path, onnx_file: Path, variant: str) -> float:
    """Minimum cosine between the exported model's and torch's vectors on :data:`PROBE_TEXTS`."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    with _quiet():
        st = SentenceTransformer(str(model_path), device="cpu")
        ref = st.encode(list(PROBE_TEXTS), normalize_embeddings=True, convert_to_numpy=True)
    got = OnnxEmbedder(model_path, onnx_file=onnx_file, threads=1).encode(list(PROBE_TEXTS))
    low = float(np.min(np.sum(ref * got, axis=1)))
    if low < _EXPORT_MIN_COSINE[variant]:
        raise EmbeddingError(f"the {variant} ONNX export of {model_path} disagrees with torch "
                             f"(cosine {low:.5f} on a probe text); not used")
    return low


def export_model(model_path: str | Path | None = None, *, quantize: bool = True,
                 home: str | Path | None = None) -> Path:
    """The ONNX file of a model, exported (and quantised) on first call, then cached.

    Parameters
    ----------
    model_path : str or Path or None
        sentence-transformers directory; None is the bundled all-MiniLM-L6-v2.
    quantize : bool
        True: int8 weights (dynamic quantisation); False: fp32.
    home : str or Path, optional
        Cache home (default :func:`semcache.embedding_base.cache_home`).

    Returns
    -------
    Path of ``model.onnx`` inside ``<home>/onnx/<model>-<digest>-<variant>/``.

    Raises
    ------
    ConfigError
        onnxruntime/onnx missing, or a model this exporter does not support.
    EmbeddingError
        The export failed or disagrees with torch.
    """
    src = Path(model_path) if model_path is not None else bundled_model_path()
    model_config(src)  # refuse unsupported pipelines before spending a minute on them
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(_INSTALL_HINT) from exc
    final, digest = _variant_dir(src, quantize, Path(home) if home is not None else None)
    target = final / "model.onnx"
    if target.is_file():
        return target
    variant = "int8" if quantize else "fp32"
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if target.is_file():  # another process finished it while we waited
            return target
        t0 = time.perf_counter()
        if not quantize:  # the slow step (int8 quantises this file in ~3 s)
            # Once per machine and model; say so, or a first lookup that takes 15 s looks like a hang.
            log.warning("semcache: exporting %s to ONNX under %s, once (~15 s); "
                        "`semcache model export` does it ahead of time", src.name, final.parent)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
        try:
            if quantize:
                fp32 = export_model(src, quantize=False, home=home)
                from onnxruntime.quantization import QuantType, quantize_dynamic

                with _quiet():
                    # Per-channel scales: one scale per weight tensor (the default) gave
                    # cosine 0.956 mean / 0.79 min against fp32 on 300 real prompts,
                    # per output channel 0.993 / 0.98 at the same speed.
                    # DefaultTensorType: the fused nodes (Attention, BiasGelu) are in
                    # Microsoft's domain, which ONNX shape inference does not type.
                    quantize_dynamic(str(fp32), str(tmp / "model.onnx"), weight_type=QuantType.QInt8,
                                     per_channel=True,
                                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            else:
                _export_fp32(src, tmp / "model.onnx")
            low = _check_export(src, tmp / "model.onnx", variant)
            (tmp / "meta.json").write_text(json.dumps({
                "source": str(src), "source_digest": digest, "variant": variant, "recipe": RECIPE,
                "min_cosine_vs_torch": low, "seconds": round(time.perf_counter() - t0, 2),
                "created": time.time()}, indent=1))
            os.rename(tmp, final)
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"exporting {src} to ONNX ({variant}) failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("semcache: exported %s to %s in %.1f s", src, final, time.perf_counter() - t0)
    return target


class OnnxEmbedder:
    """A mean-pooled sentence-transformers model on ONNX Runtime (default: bundled MiniLM, int8).

    Parameters
    ----------
    model_path : str or Path or None
        sentence-transformers directory (its tokenizer and configs are read from
        there); None is the bundled all-MiniLM-L6-v2.
    quantize : bool
        True (default): int8 weights; False: fp32.
    threads : int, optional
        ONNX Runtime intra-op threads of this session (default
        :func:`semcache.embedding_base.default_threads`: ``$SEMCACHE_THREADS`` or 1).
        Unlike torch's, this is per embedder, not process-wide.
    batch_size : int
        Texts per ONNX run inside one :meth:`encode` call (sorted by length first,
        so a batch pads little). fp32 only: int8 runs one text at a time, because
        its activation scales are computed over the whole input, which would make
        a text's vector depend on the other texts of its batch.
    max_chars : int
        Texts are cut to this many characters before tokenising (as
        :class:`~semcache.embedding.SentenceTransformerEmbedder`).
    onnx_file : str or Path, optional
        Use this ONNX file instead of the cached export (it must be the same model).
    home : str or Path, optional
        Where exports are cached (default ``$SEMCACHE_HOME``).

    Notes
    -----
    The export (about 15 s and 110 MB on disk, once per machine and model) runs at
    the first :meth:`encode`; ``semcache model export`` runs it ahead of time.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        quantize: bool = True,
        threads: int | None = None,
        batch_size: int = 32,
        max_chars: int = 8192,
        onnx_file: str | Path | None = None,
        home: str | Path | None = None,
    ) -> None:
        if batch_size < 1 or max_chars < 1:
            raise ConfigError("batch_size and max_chars must be positive")
        self.model_path = model_path
        self.quantize = bool(quantize)
        self.threads = default_threads(threads)
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.onnx_file = Path(onnx_file) if onnx_file is not None else None
        self.home = home
        self._src = Path(model_path) if model_path is not None else bundled_model_path()
        self._config = model_config(self._src)
        self._session: Any = None
        self._tokenizer: Any = None
        self._full_tokenizer: Any = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """Output width ``d``."""
        return int(self._config["dim"])

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads, [CLS] and [SEP] included (256 for MiniLM)."""
        return int(self._config["max_seq_length"])

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text`` (no special tokens, no truncation).

        What the cache's long-prompt window (:class:`semcache.prompts.EmbedWindow`) counts
        tokens with, so a long prompt is windowed by this model's own tokens.
        """
        with self._lock:
            if self._full_tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self._src / "tokenizer.json"))
                tok.no_padding()
                tok.no_truncation()
                self._full_tokenizer = tok
        enc = self._full_tokenizer.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in enc.offsets]

    @property
    def variant(self) -> str:
        """``"int8"`` or ``"fp32"``."""
        return "int8" if self.quantize else "fp32"

    @property
    def fingerprint(self) -> str:
        """The torch embedder's fingerprint of the same directory plus ``/onnx-int8-r2`` or ``/onnx-fp32``."""
        if self._fingerprint is None:
            digest = model_digest(self._src)
            cut = "" if self.max_chars == 8192 else f"/c{self.max_chars}"
            tag = _INT8_TAG if self.quantize else "onnx-fp32"
            self._fingerprint = f"{model_name(self.model_path)}@{digest[:16]}/{self.dim}/l2{cut}/{tag}"
        return self._fingerprint

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(_INSTALL_HINT) from exc
        path = self.onnx_file or export_model(self._src, quantize=self.quantize, home=self.home)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers burn the cores other processes need and collapse under
        # contention; a cache lookup is short, so a parked worker costs little.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            tok = Tokenizer.from_file(str(self._src / "tokenizer.json"))
        except Exception as exc:
            raise EmbeddingError(f"could not load the ONNX model {path}: {exc}") from exc
        tok.no_padding()
        tok.enable_truncation(max_length=int(self._config["max_seq_length"]))
        self._inputs = {i.name for i in session.get_inputs()}
        self._tokenizer = tok
        self._session = session

    def _ensure(self) -> None:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._load()

    def _run(self, texts: list[str]) -> FloatArray:
        encs = self._tokenizer.encode_batch(texts) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        width = max(len(e.ids) for e in encs)
        n = len(encs)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed texts; returns float32 of shape (n, d), rows L2-normalised."""
        batch = [t[: self.max_chars].strip() for t in texts]
        if self._config["do_lower_case"]:
            batch = [t.lower() for t in batch]
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure()
        try:
            # Longest first, as sentence-transformers does: similar lengths pad little.
            order = sorted(range(len(batch)), key=lambda i: -len(batch[i]))
            out = np.empty((len(batch), self.dim), dtype=np.float32)
            # int8: dynamic quantisation scales the activations of the whole input tensor,
            # so a text's vector would depend on its batch-mates and their padding (cosine
            # 0.988 between batched and alone, measured); one text per run keeps a text's
            # vector a function of the text alone.
            step = 1 if self.quantize else self.batch_size
            for s in range(0, len(order), step):
                part = order[s : s + step]
                out[part] = self._run([batch[i] for i in part])
        except (EmbeddingError, ConfigError):
            raise
        except Exception as exc:
            raise EmbeddingError(f"ONNX embedding failed: {exc}") from exc
        return check_embeddings(out, len(batch), self.dim)

    def __repr__(self) -> str:
        return (f"OnnxEmbedder(model_path={self.model_path!r}, quantize={self.quantize}, "
                f"threads={self.threads})")


# --------------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``semcache model``."""
    sub = parser.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("export", help="export the embedding model to ONNX (fp32 and int8) ahead of time",
                       description="Export the bundled (or another mean-pooled sentence-transformers) "
                       "model to ONNX under $SEMCACHE_HOME/onnx, checked against torch; what "
                       "OnnxEmbedder otherwise does at its first use.")
    p.add_argument("--model-path", type=Path, default=None,
                   help="sentence-transformers directory (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--variant", choices=("int8", "fp32", "all"), default="all",
                   help="which ONNX file(s) to make (default: all)")
    p.add_argument("--home", type=Path, default=None, help="cache home (default: $SEMCACHE_HOME)")


def run(args: argparse.Namespace) -> int:
    """``semcache model export``: print each exported file, its fingerprint and its check."""
    variants = ("fp32", "int8") if args.variant == "all" else (args.variant,)
    for v in variants:
        t0 = time.perf_counter()
        try:
            path = export_model(args.model_path, quantize=v == "int8", home=args.home)
            emb = OnnxEmbedder(args.model_path, quantize=v == "int8", home=args.home)
            fp = emb.fingerprint
        except (ConfigError, EmbeddingError) as exc:
            print(f"semcache model export: {exc}")
            return 2
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((path.parent / "meta.json").read_text())
        print(f"{v}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s; "
              f"min cosine vs torch on the probe texts {meta.get('min_cosine_vs_torch', float('nan')):.5f})")
        print(f"  fingerprint {fp}")
    return 0
