"""PCA and identity projections: the scikit-learn estimator contract, against sklearn itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from semcache import ConfigError, NotFittedError, ProjectionError
from semcache.projection import IdentityProjection, PCAProjection, dump_projection, load_projection


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 48)) @ rng.standard_normal((48, 48))
    return (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)


def test_pca_matches_scikit_learn(X: np.ndarray) -> None:
    ours = PCAProjection(n_components=8)
    assert ours.fit(X) is ours  # fit returns self
    ref = PCA(n_components=8, random_state=0).fit(X)
    Z, R = ours.transform(X), ref.transform(X)
    # Components are defined up to sign.
    signs = np.sign(np.sum(Z * R, axis=0))
    np.testing.assert_allclose(Z, R * signs, atol=1e-4)
    assert ours.n_components_out == 8 and ours.n_features_in_ == 48
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    one = ours.transform(X[0])
    assert one.shape == (8,) and np.allclose(one, Z[0], atol=1e-6)


def test_init_only_stores_parameters_and_checks_happen_at_use(X: np.ndarray) -> None:
    p = PCAProjection(n_components=8)
    assert p.get_params() == {"n_components": 8, "max_samples": 50_000, "random_state": 0}
    assert not [k for k in vars(p) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        p.transform(X)
    p.fit(X)
    with pytest.raises(ProjectionError, match="48-d"):
        p.transform(X[:, :10])
    with pytest.raises(ProjectionError):
        PCAProjection(n_components=8).fit(np.full((10, 48), np.nan, dtype=np.float32))
    with pytest.raises(ConfigError):
        PCAProjection(n_components=100).fit(X)


def test_a_few_rows_project_as_the_batch_does_and_bad_rows_are_refused(X: np.ndarray) -> None:
    """Up to eight rows take a compiled pass, more take BLAS: both match the formula.

    The compiled pass checks finiteness on its outputs, so a NaN or an
    infinity anywhere in a row (also where a component is 0) must still be refused.
    """
    p = PCAProjection(n_components=8).fit(X)
    ref = (X.astype(np.float64) - p.mean_) @ p.components_.T.astype(np.float64)
    np.testing.assert_allclose(p.transform(X), ref, atol=1e-5)
    for rows in (X[:1], X[5:8], X[10:18], X[3]):
        got = p.transform(rows)
        want = p.transform(np.vstack([np.atleast_2d(rows), X[:20]]))[: len(np.atleast_2d(rows))]
        np.testing.assert_allclose(np.atleast_2d(got), want, atol=1e-5)
        assert got.shape == (*rows.shape[:-1], 8) and got.dtype == np.float32
    # A strided view and float64 input are converted, not misread.
    np.testing.assert_allclose(p.transform(X[:4:2]), ref[:4:2], atol=1e-5)
    np.testing.assert_allclose(p.transform(X[:2].astype(np.float64)), ref[:2], atol=1e-5)
    zeroed = PCAProjection(n_components=8).fit(X)
    zeroed.components_ = zeroed.components_.copy()
    zeroed.components_[:, 0] = 0.0
    for bad in (np.nan, np.inf, -np.inf):
        for rows in (X[:1].copy(), X[:30].copy()):
            rows[-1, 0] = bad
            for proj in (p, zeroed):
                with pytest.raises(ProjectionError, match="NaN or infinite"):
                    proj.transform(rows)


def test_round_trip_without_pickle(X: np.ndarray) -> None:
    p = PCAProjection(n_components=6).fit(X)
    blob = dump_projection(p)
    q = load_projection(blob)
    assert isinstance(q, PCAProjection)
    np.testing.assert_array_equal(p.transform(X), q.transform(X))
    with pytest.raises(ProjectionError):
        load_projection(b"garbage")


def test_prefix_of_a_wider_pca_is_the_narrower_pca(X: np.ndarray) -> None:
    wide = PCAProjection(n_components=16).fit(X).transform(X)
    narrow = PCAProjection(n_components=4).fit(X).transform(X)
    signs = np.sign(np.sum(wide[:, :4] * narrow, axis=0))
    np.testing.assert_allclose(wide[:, :4], narrow * signs, atol=1e-4)


def test_identity(X: np.ndarray) -> None:
    p = IdentityProjection().fit(X)
    np.testing.assert_array_equal(p.transform(X), X)
    with pytest.raises(ProjectionError):
        p.transform(X[:, :3])
    assert isinstance(load_projection(dump_projection(p)), IdentityProjection)
