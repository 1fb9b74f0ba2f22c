"""The ONNX Runtime embedder against the torch model it is exported from (real bundled weights)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semcache import SemanticCache
from semcache.cli import main
from semcache.embedding import Embedder, SentenceTransformerEmbedder, bundled_model_path
from semcache.errors import ConfigError
from semcache.onnx_embedding import OnnxEmbedder, export_model, model_config

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "real_prompts.jsonl.gz"
if not PROMPTS.is_file():  # the worktree layout: /work/wt-x/tests -> /work/shared
    PROMPTS = Path("/work/shared/data/prompts/real_prompts.jsonl.gz")


def real_prompts(n: int) -> list[str]:
    """``n`` real chat prompts spread over the file (short and long, many languages, code)."""
    with gzip.open(PROMPTS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line)["prompt"] for line in fh]
    step = max(1, len(rows) // n)
    return [p for p in rows[::step] if p.strip()][:n]


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-home")


@pytest.fixture(scope="module")
def onnx_int8(onnx_home: Path) -> OnnxEmbedder:
    emb = OnnxEmbedder(home=onnx_home)
    emb.encode(["warm up"])  # exports fp32, then int8, each checked against torch
    return emb


@pytest.fixture(scope="module")
def onnx_fp32(onnx_home: Path, onnx_int8: OnnxEmbedder) -> OnnxEmbedder:
    emb = OnnxEmbedder(quantize=False, home=onnx_home)
    emb.encode(["warm up"])
    return emb


@pytest.fixture(scope="module")
def torch_embedder(embedder: Embedder) -> Embedder:
    """The torch model (the shared fixture when it is torch, so it is loaded once)."""
    if isinstance(embedder, SentenceTransformerEmbedder):
        return embedder
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return real_prompts(60)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_fp32_reproduces_torch(onnx_fp32: OnnxEmbedder, torch_embedder: Embedder,
                               prompts: list[str]) -> None:
    c = cosines(onnx_fp32.encode(prompts), torch_embedder.encode(prompts))
    assert c.min() >= 0.9999, c.min()


def test_int8_agrees_with_torch(onnx_int8: OnnxEmbedder, torch_embedder: Embedder,
                                prompts: list[str]) -> None:
    c = cosines(onnx_int8.encode(prompts), torch_embedder.encode(prompts))
    # int8 weights cost a little agreement: 0.992 mean, 0.95 worst on these 60 prompts.
    assert c.mean() >= 0.99 and c.min() >= 0.95, (c.mean(), c.min())


def test_edge_texts_match_torch(onnx_fp32: OnnxEmbedder, torch_embedder: Embedder) -> None:
    long = " ".join(f"word{i}" for i in range(2000))  # far past 256 tokens: truncated the same way
    texts = ["  padded with spaces \n", "x", "日本語のテキスト", "def f(x):\n    return x * 2", long,
             long + " but a different ending"]
    out = onnx_fp32.encode(texts)
    assert cosines(out, torch_embedder.encode(texts)).min() >= 0.9999
    assert out.shape == (6, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Only the first 256 tokens are seen, as with torch.
    assert float(out[4] @ out[5]) > 0.9999


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_batch_equals_one_by_one(onnx_int8: OnnxEmbedder, onnx_fp32: OnnxEmbedder, prompts: list[str],
                                 variant: str) -> None:
    # A text's vector must not depend on its batch-mates (the cache compares vectors
    # embedded alone with vectors embedded in put_many batches).
    emb = onnx_int8 if variant == "int8" else onnx_fp32
    batch = emb.encode(prompts[:20])
    single = np.stack([emb.encode([p])[0] for p in prompts[:20]])
    assert cosines(batch, single).min() >= 0.9999
    assert emb.encode([]).shape == (0, 384)


def test_fingerprints_keep_backends_apart(onnx_int8: OnnxEmbedder, onnx_fp32: OnnxEmbedder,
                                          torch_embedder: Embedder) -> None:
    fps = {torch_embedder.fingerprint, onnx_fp32.fingerprint, onnx_int8.fingerprint}
    assert len(fps) == 3
    assert onnx_int8.fingerprint.endswith("/onnx-int8-r2") and onnx_fp32.fingerprint.endswith("/onnx-fp32")


def test_export_is_the_fused_graph(onnx_home: Path, onnx_int8: OnnxEmbedder) -> None:
    """Every layer's attention is one fused kernel (the speed of the export depends on it)."""
    import onnx

    layers = json.loads((bundled_model_path() / "config.json").read_text())["num_hidden_layers"]
    for quantize, attention in ((False, "Attention"), (True, "QAttention")):
        ops = [n.op_type for n in onnx.load(str(export_model(home=onnx_home, quantize=quantize))).graph.node]
        assert ops.count(attention) == layers, (attention, sorted(set(ops)))
        assert "Softmax" not in ops  # nothing of the unfused attention is left


def test_a_changed_recipe_is_another_export(onnx_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semcache import onnx_embedding

    now, _ = onnx_embedding._variant_dir(bundled_model_path(), True, onnx_home)
    monkeypatch.setattr(onnx_embedding, "RECIPE", "r-other")
    other, _ = onnx_embedding._variant_dir(bundled_model_path(), True, onnx_home)
    assert now != other and now.parent == other.parent


def test_long_prompts_are_windowed_by_the_models_tokens(onnx_int8: OnnxEmbedder,
                                                        torch_embedder: Embedder) -> None:
    """The cache's long-prompt window counts the ONNX model's tokens exactly as the torch model's."""
    from semcache.prompts import Window

    texts = ["short question", "word " * 300 + "what is the end?", "x" * 2000, "日本語の文章。" * 80,
             "a" * 253, "The quick brown fox. " * 13]
    onnx_w, torch_w = Window(onnx_int8), Window(torch_embedder)
    for t in texts:
        assert onnx_w.fits(t) == torch_w.fits(t), t[:40]
        assert onnx_w.view(t) == torch_w.view(t), t[:40]
    assert not onnx_w.fits(texts[1]) and onnx_w.fits(texts[0])


def test_entries_never_mix_between_backends(tmp_path: Path, onnx_int8: OnnxEmbedder,
                                           torch_embedder: Embedder) -> None:
    embedder = torch_embedder
    with SemanticCache(tmp_path / "c", embedder=embedder) as cache:
        cache.put("How do I reset my password?", "torch answer")
    with SemanticCache(tmp_path / "c", embedder=onnx_int8) as cache:
        assert not cache.get("How do I reset my password?")
        cache.put("How do I reset my password?", "onnx answer")
        hit = cache.get("How can I reset my password?")
        assert hit and hit.completion == "onnx answer" and -1.0 <= hit.score <= 1.0
    with SemanticCache(tmp_path / "c", embedder=embedder) as cache:
        hit = cache.get("How do I reset my password?")
        assert hit and hit.completion == "torch answer"


def test_export_is_cached_and_leaves_no_temp_files(onnx_home: Path, onnx_int8: OnnxEmbedder) -> None:
    path = export_model(home=onnx_home)
    before = path.stat().st_mtime_ns
    again = export_model(home=onnx_home)
    assert again == path and path.stat().st_mtime_ns == before  # not exported twice
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["variant"] == "int8" and meta["min_cosine_vs_torch"] >= 0.97
    folders = sorted(p.name for p in (onnx_home / "onnx").iterdir() if p.is_dir())
    assert len(folders) == 2 and not any(f.startswith(".") for f in folders), folders


def test_cli_export_reports_the_fingerprint(onnx_home: Path, onnx_int8: OnnxEmbedder,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "export", "--home", str(onnx_home)]) == 0
    out = capsys.readouterr().out
    assert onnx_int8.fingerprint in out and "fp32:" in out and "int8:" in out


def test_threads_reach_the_session(onnx_home: Path, onnx_int8: OnnxEmbedder,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    emb = OnnxEmbedder(home=onnx_home, threads=2)
    emb.encode(["hello"])
    assert emb._session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("SEMCACHE_THREADS", "3")
    assert OnnxEmbedder(home=onnx_home).threads == 3
    monkeypatch.setenv("SEMCACHE_THREADS", "many")
    with pytest.raises(ConfigError, match="SEMCACHE_THREADS"):
        OnnxEmbedder(home=onnx_home)
    with pytest.raises(ConfigError, match="threads"):
        OnnxEmbedder(home=onnx_home, threads=0)


def _model_copy(tmp_path: Path) -> Path:
    """The bundled model's configs copied, its weights symlinked (only configs change below)."""
    src = bundled_model_path()
    dst = tmp_path / "copy"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


def test_unsupported_pipelines_are_refused(tmp_path: Path) -> None:
    model = _model_copy(tmp_path)
    assert model_config(model)["max_seq_length"] == 256
    pooling = model / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="mean pooling"):
        OnnxEmbedder(model)
