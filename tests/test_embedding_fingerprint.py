"""Fingerprints change whenever the vectors would (#25.2), and a changed embedder never breaks a directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from semcache import FunctionEmbedder, SemanticCache
from semcache.embedding import (
    SentenceTransformerEmbedder,
    as_embedder,
    bundled_model_path,
    file_digest,
    model_digest,
)
from semcache.errors import ConfigError
from tests.helpers import hash_vectors


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache home: digests and probe references of one test never leak into another."""
    h = tmp_path / "home"
    monkeypatch.setenv("SEMCACHE_HOME", str(h))
    import semcache.embedding_base as e

    monkeypatch.setattr(e, "_DIGESTS", {})
    return h


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A full copy of the bundled model directory (weights included: the test edits them)."""
    dst = tmp_path / "minilm"
    shutil.copytree(bundled_model_path(), dst)
    return dst


def fp_of(path: Path) -> str:
    return SentenceTransformerEmbedder(path).fingerprint


def test_bundled_copy_has_the_bundled_digest(model_copy: Path) -> None:
    bundled = SentenceTransformerEmbedder().fingerprint
    copy = fp_of(model_copy)
    assert bundled.split("@")[1] == copy.split("@")[1]  # same bytes, same digest and width
    assert bundled.endswith("/384/l2")


def test_a_changed_weight_changes_the_fingerprint(model_copy: Path) -> None:
    before = fp_of(model_copy)
    weights = model_copy / "model.safetensors"
    with weights.open("r+b") as fh:  # one byte deep inside a layer, size unchanged
        fh.seek(weights.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0x01]))
    assert fp_of(model_copy) != before


@pytest.mark.parametrize("edit", ["pooling", "max_len", "no_normalize", "tokenizer"])
def test_config_changes_change_the_fingerprint(model_copy: Path, edit: str) -> None:
    before = fp_of(model_copy)
    if edit == "pooling":
        p = model_copy / "1_Pooling" / "config.json"
        cfg = json.loads(p.read_text())
        cfg.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
        p.write_text(json.dumps(cfg))
    elif edit == "max_len":
        p = model_copy / "sentence_bert_config.json"
        p.write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    elif edit == "no_normalize":
        p = model_copy / "modules.json"
        p.write_text(json.dumps(json.loads(p.read_text())[:2]))
    else:
        (model_copy / "vocab.txt").write_text((model_copy / "vocab.txt").read_text() + "newtoken\n")
    assert fp_of(model_copy) != before


def test_documentation_does_not_change_the_fingerprint(model_copy: Path) -> None:
    before = fp_of(model_copy)
    (model_copy / "README.md").write_text("edited")
    assert fp_of(model_copy) == before


def test_digests_are_cached_by_size_and_mtime(tmp_path: Path, home: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = file_digest(f)
    assert (home / "digests.json").is_file()
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size; restore the mtime: the cached digest is used
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_digest(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a real rewrite moves the mtime
    assert file_digest(f) != first
    assert model_digest(bundled_model_path()) == model_digest(bundled_model_path())


# ------------------------------------------------------------------ callables
def fn_a(texts: list[str]) -> np.ndarray:
    return hash_vectors(texts, 384)


def fn_b(texts: list[str]) -> np.ndarray:
    return hash_vectors([t + " (another model)" for t in texts], 384)


def fn_256(texts: list[str]) -> np.ndarray:
    return hash_vectors(texts, 256)


def test_a_bare_callable_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"FunctionEmbedder\(fn_a, name="):
        SemanticCache(tmp_path / "c", embedder=fn_a)  # type: ignore[arg-type]
    named = as_embedder(fn_a, name="hash-384")
    assert named.fingerprint.startswith("fn:hash-384/384/p")


def test_probe_tells_functions_apart_under_one_name() -> None:
    a = FunctionEmbedder(fn_a, name="embed")
    b = FunctionEmbedder(fn_b, name="embed")
    assert a.fingerprint != b.fingerprint
    assert FunctionEmbedder(fn_a, name="embed").fingerprint == a.fingerprint  # stable


def test_probe_noise_keeps_the_fingerprint() -> None:
    a = FunctionEmbedder(fn_a, name="noisy")
    rng = np.random.default_rng(0)

    def noisy(texts: list[str]) -> np.ndarray:  # a remote API's run-to-run jitter
        v = fn_a(texts) + rng.normal(0, 2e-4, (len(texts), 384))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    assert FunctionEmbedder(noisy, name="noisy").fingerprint == a.fingerprint


def test_changed_function_never_serves_old_entries(tmp_path: Path) -> None:
    d = tmp_path / "c"
    with SemanticCache(d, embedder=FunctionEmbedder(fn_a, name="embed")) as cache:
        for i in range(200):
            cache.put(f"question {i}", f"answer {i}")
    with SemanticCache(d, embedder=FunctionEmbedder(fn_b, name="embed")) as cache:
        assert sum(bool(cache.get(f"question {i}")) for i in range(200)) == 0
        cache.put("question 0", "b's answer")
    with SemanticCache(d, embedder=FunctionEmbedder(fn_a, name="embed")) as cache:
        assert sum(bool(cache.get(f"question {i}")) for i in range(200)) == 200
        hit = cache.get("question 0")
        assert hit and hit.completion == "answer 0"


def test_256d_and_384d_on_one_directory(tmp_path: Path) -> None:
    d = tmp_path / "c"
    a = FunctionEmbedder(fn_a, name="embed")
    small = FunctionEmbedder(fn_256, name="embed")
    with SemanticCache(d, embedder=a) as cache:
        cache.put("q1", "a1")
    # Two caches open at once on one directory, one per width, both writing.
    with SemanticCache(d, embedder=small, fail_open=False) as c256, \
            SemanticCache(d, embedder=a, fail_open=False) as c384:
        c256.put("q2", "small answer")
        c384.put("q3", "a3")
        assert not c256.get("q1")  # never the other width's entry
        assert c384.get("q1") and c384.get("q3")
    for _ in range(2):  # every later open works, for both
        with SemanticCache(d, embedder=a, fail_open=False) as cache:
            assert [bool(cache.get(q)) for q in ("q1", "q2", "q3")] == [True, False, True]
            cache.put("q4", "a4")
        with SemanticCache(d, embedder=small, fail_open=False) as cache:
            hit = cache.get("q2")
            assert hit and hit.completion == "small answer" and not cache.get("q1")


def test_a_failing_probe_falls_back_to_the_name(caplog: pytest.LogCaptureFixture) -> None:
    table = {"known": [1.0, 0.0]}
    emb = FunctionEmbedder(lambda ts: np.array([table[t] for t in ts]), name="table")
    assert emb.fingerprint == "fn:table/unprobed"
    assert "probe" in caplog.text
    assert FunctionEmbedder(fn_a, name="x", probe=False).fingerprint == "fn:x/unprobed"


# ------------------------------------------------------------------ device and threads
def test_device_cpu_works_and_a_missing_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    emb = SentenceTransformerEmbedder(device="cpu")
    assert emb.encode(["hello"]).shape == (1, 384)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine, GPU or not
    with pytest.raises(ConfigError, match="CUDA"):
        SentenceTransformerEmbedder(device="cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        SentenceTransformerEmbedder(device="quantum")
    with pytest.raises(ConfigError, match="threads"):
        SentenceTransformerEmbedder(threads=-1)


class SameNameEmbedder:
    """A custom embedder whose fingerprint hides its width (what a FunctionEmbedder no longer does)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @property
    def fingerprint(self) -> str:
        return "custom:same-name"

    def encode(self, texts: list[str]) -> np.ndarray:
        return hash_vectors(list(texts), self.dim)


def test_a_width_hiding_embedder_never_reads_the_other_width_and_the_directory_stays_usable(
        tmp_path: Path) -> None:
    d = tmp_path / "c"
    big, small = SameNameEmbedder(384), SameNameEmbedder(256)
    with SemanticCache(d, embedder=big, fail_open=False) as c384:
        c384.put("q1", "a1")
    with SemanticCache(d, embedder=small, fail_open=False) as c256:
        assert not c256.get("q1")  # the 384-d entry is not this embedder's
        c256.put("q2", "a2")  # both widths now in one store
    for _ in range(2):
        with SemanticCache(d, embedder=big, fail_open=False) as cache:  # opens, serves its entry
            hit = cache.get("q1")
            assert hit and hit.completion == "a1"
            assert not cache.get("q2")
            cache.put("q3", "a3")
        with SemanticCache(d, embedder=small, fail_open=False) as cache:
            hit = cache.get("q2")
            assert hit and hit.completion == "a2"
            assert not cache.get("q1") and not cache.get("q3")
            cache.put("q4", "a4")
    with SemanticCache(d, embedder=big, fail_open=False) as cache:
        assert [bool(cache.get(q)) for q in ("q1", "q2", "q3", "q4")] == [True, False, True, False]
