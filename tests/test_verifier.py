"""PairVerifier: fit on a small QQP slice, persistence round trip, guard adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcache.embedding import SentenceTransformerEmbedder
from semcache.verifier import N_TEXT_FEATURES, PairVerifier, pair_features

PARAPHRASE = ("How do I learn Python quickly?", "What is the fastest way to learn Python?")
HARD_NEGATIVE = ("What is the capital of France?", "What is the capital of Germany?")


@pytest.fixture(scope="module")
def fitted(embedder: SentenceTransformerEmbedder) -> PairVerifier:
    from semcache.datasets import load_qqp_pairs
    from semcache.prompts import normalize_prompt

    pairs = load_qqp_pairs(400)
    a = [normalize_prompt(p.text_a) for p in pairs]
    b = [normalize_prompt(p.text_b) for p in pairs]
    v = embedder.encode(a + b)
    return PairVerifier("logistic", c=0.1).fit(v[: len(a)], v[len(a):], a, b,
                                                [p.label for p in pairs])


def test_features_shape_and_symmetry() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    ta, tb = ["top 10 movies", "a b", "x"], ["top 5 movies", "b a c", "x"]
    x = pair_features(a, b, ta, tb)
    assert x.shape == (3, 1 + 2 * 8 + N_TEXT_FEATURES)
    np.testing.assert_allclose(x, pair_features(b, a, tb, ta), rtol=1e-6)
    with pytest.raises(ValueError):
        pair_features(a, b[:2], ta, tb)


def test_unfitted_and_bad_labels() -> None:
    with pytest.raises(RuntimeError):
        PairVerifier().predict_proba_features(np.zeros((1, 4)))
    with pytest.raises(ValueError):
        PairVerifier().fit_features(np.zeros((3, 4)), [1, 1, 1])
    with pytest.raises(ValueError):
        PairVerifier("svm")


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_round_trip(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    m = PairVerifier(kind, hidden=(8,)).fit_features(x, y)
    path = tmp_path / "verifier.npz"
    m.save(path)
    back = PairVerifier.load(path)
    assert back.kind == kind
    np.testing.assert_allclose(back.predict_proba_features(x), m.predict_proba_features(x))
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)


def test_guard_vetoes_hard_negative_keeps_paraphrase(
    fitted: PairVerifier, embedder: SentenceTransformerEmbedder
) -> None:
    guard = fitted.as_guard(embedder, min_probability=0.5)
    assert guard(*PARAPHRASE, 0.92)
    assert not guard(*HARD_NEGATIVE, 0.66)
    memo_guard = fitted.as_guard(embedder, min_probability=0.5, memo=8)
    assert memo_guard(*PARAPHRASE, 0.92) and not memo_guard(*HARD_NEGATIVE, 0.66)
