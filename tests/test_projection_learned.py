"""LearnedProjection: estimator contract, persistence, and that it beats PCA on real pairs."""

from __future__ import annotations

import numpy as np
import pytest

from semcache.errors import ConfigError, NotFittedError, ProjectionError
from semcache.projection import (
    PROJECTIONS,
    LearnedProjection,
    PCAProjection,
    dump_projection,
    load_projection,
)
from semcache.projection.learned import mine_pairs
from tests._index_data import qqp_embeddings


@pytest.fixture(scope="module")
def fitted() -> LearnedProjection:
    return LearnedProjection(n_components=16).fit(qqp_embeddings())


def test_fit_returns_self_and_sets_attributes() -> None:
    X = qqp_embeddings()
    p = LearnedProjection(n_components=8)
    assert p.fit(X) is p
    assert p.components_.shape == (8, X.shape[1])
    assert p.mean_.shape == (X.shape[1],)
    assert p.n_features_in_ == X.shape[1]
    assert p.n_components_out == 8
    assert p.n_pairs_ >= 20
    assert np.all(np.diff(p.eigenvalues_) <= 1e-6), "components come best first"
    assert p.get_params()["n_components"] == 8


def test_not_fitted_and_width_checks(fitted: LearnedProjection) -> None:
    with pytest.raises(NotFittedError):
        LearnedProjection().transform(np.zeros((2, 384), dtype=np.float32))
    with pytest.raises(NotFittedError):
        _ = LearnedProjection().n_components_out
    with pytest.raises(ProjectionError):
        fitted.transform(np.zeros((2, 100), dtype=np.float32))
    one = fitted.transform(qqp_embeddings()[0])
    assert one.shape == (16,) and one.dtype == np.float32


@pytest.mark.parametrize(
    "params", [{"n_components": 0}, {"n_components": 1000}, {"pair_threshold": 2.0},
               {"shrinkage": -1.0}, {"shrinkage": "x"}]
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LearnedProjection(**params).fit(qqp_embeddings()[:500])  # type: ignore[arg-type]


def test_persistence_round_trip(fitted: LearnedProjection) -> None:
    assert PROJECTIONS["learned"] is LearnedProjection
    back = load_projection(dump_projection(fitted))
    assert isinstance(back, LearnedProjection)
    X = qqp_embeddings()[:50]
    assert np.array_equal(back.transform(X), fitted.transform(X))


def test_no_pairs_falls_back_to_pca() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 40)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    p = LearnedProjection(n_components=4, pair_threshold=0.99).fit(X)
    assert p.n_pairs_ == 0
    pca = PCAProjection(n_components=4).fit(X)
    # Same subspace as PCA (signs and order of near-equal components aside).
    overlap = np.linalg.svd(p.components_ @ pca.components_.T, compute_uv=False)
    assert np.all(overlap > 0.99)


def test_mine_pairs_matches_brute_force() -> None:
    X = qqp_embeddings()[:800]
    a, b, cos = mine_pairs(X, 0.8)
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    nn = S.argmax(1)
    want = {(min(i, int(j)), max(i, int(j))) for i, j in enumerate(nn) if S[i, j] >= 0.8}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == want
    assert np.allclose(cos, np.einsum("ij,ij->i", X[a], X[b]), atol=1e-5)


def test_learned_keeps_held_out_paraphrases_closer_than_pca() -> None:
    """Fewer unrelated rows inside the ball holding 99% of held-out duplicates."""
    X = qqp_embeddings()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(X))
    train, test = X[perm[: len(X) // 2]], X[perm[len(X) // 2 :]]
    S = test @ test.T
    np.fill_diagonal(S, -np.inf)
    nn = S.argmax(1)
    q = np.flatnonzero(S[np.arange(len(test)), nn] >= 0.9)
    assert len(q) >= 30
    counts = {}
    for name, proj in (("pca", PCAProjection(8)), ("learned", LearnedProjection(8))):
        Z = proj.fit(train).transform(test)
        d2 = np.sum(Z * Z, 1)[None, :] + np.sum(Z[q] ** 2, 1)[:, None] - 2 * Z[q] @ Z.T
        r2 = np.quantile(d2[np.arange(len(q)), nn[q]], 0.99)
        counts[name] = float(np.mean(np.sum(d2 <= r2, axis=1)))
    assert counts["learned"] < counts["pca"], counts
