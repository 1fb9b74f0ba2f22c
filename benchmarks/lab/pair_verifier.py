"""A small learned pair verifier on bi-encoder features (experimental, issue #5).

Cosine similarity of two sentence embeddings is one number; the embeddings
themselves say more. :class:`PairVerifier` learns ``P(same answer | pair)`` from
labelled pairs with features built from the two unit vectors ``a`` and ``b`` the
cache already has, plus a few cheap text features:

* ``cos(a, b)``; ``|a - b|`` and ``a * b`` element-wise (2 x d, symmetric in a, b);
* text: absolute log length ratio, token Jaccard, share of tokens only on one
  side, whether both / exactly one hold numbers and whether the numbers differ,
  whether the first (question) word matches.

The model is a logistic regression or a small MLP (scikit-learn, used for
fitting only); it is persisted as plain numpy arrays (``np.savez``, loaded with
``allow_pickle=False``), and prediction is a numpy forward pass.

:meth:`PairVerifier.as_guard` adapts it to the guard protocol of
:class:`~semcache.cache.SemanticCache` (``guard(new, stored, score) -> bool``).
A guard only receives texts, so the adapter embeds both prompts again: one extra
embedder call per candidate checked. Measured by ``benchmarks/lab/verifier_bench.py``.

Measured result (``python benchmarks/lab/verifier_bench.py``; QQP dev split by question
clusters, half trained and half held out; CLINC150 test fully held out): pair AUC
0.889 vs 0.870 for cosine on held-out QQP, but at equal hit rate it removes at most
6-9% of wrong hits on QQP (t = 0.85-0.9) and adds wrong hits on CLINC150 test. The
features come from the same vectors as cosine, so the model cannot see what cosine
misses (word order, for one). It is therefore not used by default; it stays here as
an option and as the baseline a stronger verifier has to beat.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache.embedding import Embedder

__all__ = ["N_TEXT_FEATURES", "PairVerifier", "pair_features", "text_features"]

F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

_WORD = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")
_FORMAT = 1
#: Number of text features appended after the vector features.
N_TEXT_FEATURES = 8


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _WORD.findall(text)]


def text_features(a: str, b: str) -> list[float]:
    """Cheap symmetric features of two prompts (see the module docstring)."""
    ta, tb = _tokens(a), _tokens(b)
    sa, sb = set(ta), set(tb)
    union = sa | sb
    jac = len(sa & sb) / len(union) if union else 1.0
    only = len(sa ^ sb) / len(union) if union else 0.0
    na = sorted(t for t in ta if t[0].isdigit())
    nb = sorted(t for t in tb if t[0].isdigit())
    both_num = float(bool(na) and bool(nb))
    one_num = float(bool(na) != bool(nb))
    num_diff = float(bool(na) and bool(nb) and na != nb)
    first = float(bool(ta) and bool(tb) and ta[0] == tb[0])
    lr = abs(math.log((len(a) + 1) / (len(b) + 1)))
    tok_diff = abs(len(ta) - len(tb)) / max(len(ta), len(tb), 1)
    return [lr, jac, only, both_num, one_num, num_diff, first, tok_diff]


def pair_features(
    vec_a: npt.ArrayLike, vec_b: npt.ArrayLike, text_a: Sequence[str], text_b: Sequence[str]
) -> F32Array:
    """Feature rows ``[cos, |a-b|, a*b, text features]`` of aligned pairs, shape (n, 2d + 9)."""
    a = np.atleast_2d(np.asarray(vec_a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(vec_b, dtype=np.float32))
    if a.shape != b.shape or len(text_a) != len(a) or len(text_b) != len(a):
        raise ValueError("vec_a, vec_b, text_a and text_b must describe the same pairs")
    prod = a * b
    cos = prod.sum(axis=1, keepdims=True)
    txt = np.array([text_features(x, y) for x, y in zip(text_a, text_b, strict=True)],
                   dtype=np.float32).reshape(len(a), N_TEXT_FEATURES)
    out: F32Array = np.concatenate([cos, np.abs(a - b), prod, txt], axis=1)
    return out


def _sigmoid(z: F64Array) -> F64Array:
    out: F64Array = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
    return out


class PairVerifier:
    """``P(same answer)`` of a prompt pair from bi-encoder vectors and text features.

    Parameters
    ----------
    kind : {"logistic", "mlp"}
        Logistic regression, or an MLP with ReLU hidden layers ``hidden``.
    hidden : tuple of int
        Hidden layer sizes of the MLP.
    c : float
        Inverse L2 strength of the logistic regression.
    alpha : float
        L2 strength of the MLP.
    seed : int
        Random seed of the MLP.
    """

    def __init__(self, kind: str = "logistic", *, hidden: tuple[int, ...] = (64,), c: float = 1.0,
                 alpha: float = 1e-3, seed: int = 0) -> None:
        if kind not in ("logistic", "mlp"):
            raise ValueError(f"kind must be 'logistic' or 'mlp', not {kind!r}")
        self.kind = kind
        self.hidden = hidden
        self.c = c
        self.alpha = alpha
        self.seed = seed
        self.mean: F64Array | None = None
        self.scale: F64Array | None = None
        self.weights: list[F64Array] = []
        self.biases: list[F64Array] = []

    @property
    def fitted(self) -> bool:
        return self.mean is not None and bool(self.weights)

    def fit(self, vec_a: npt.ArrayLike, vec_b: npt.ArrayLike, text_a: Sequence[str],
            text_b: Sequence[str], labels: npt.ArrayLike) -> PairVerifier:
        """Learn from aligned pairs; ``labels`` 1 = same answer, 0 = different."""
        return self.fit_features(pair_features(vec_a, vec_b, text_a, text_b), labels)

    def fit_features(self, x: npt.ArrayLike, labels: npt.ArrayLike) -> PairVerifier:
        """Learn from precomputed :func:`pair_features` rows."""
        xs = np.asarray(x, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if len(np.unique(y)) != 2:
            raise ValueError("labels must hold both classes 0 and 1")
        self.mean = xs.mean(axis=0)
        sd = xs.std(axis=0)
        self.scale = np.where(sd > 1e-8, sd, 1.0)
        z = (xs - self.mean) / self.scale
        if self.kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=self.c, max_iter=2000)
            lr.fit(z, y)
            self.weights = [np.asarray(lr.coef_, dtype=np.float64).T]
            self.biases = [np.asarray(lr.intercept_, dtype=np.float64)]
        else:
            from sklearn.neural_network import MLPClassifier

            mlp = MLPClassifier(hidden_layer_sizes=self.hidden, alpha=self.alpha,
                                early_stopping=True, max_iter=200, random_state=self.seed)
            mlp.fit(z, y)
            self.weights = [np.asarray(w, dtype=np.float64) for w in mlp.coefs_]
            self.biases = [np.asarray(b, dtype=np.float64) for b in mlp.intercepts_]
        return self

    def predict_proba_features(self, x: npt.ArrayLike) -> F64Array:
        """``P(same answer)`` of precomputed feature rows, shape (n,)."""
        if self.mean is None or self.scale is None or not self.weights:
            raise RuntimeError("PairVerifier is not fitted")
        h = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        out: F64Array = _sigmoid((h @ self.weights[-1] + self.biases[-1])[:, 0])
        return out

    def predict_proba(self, vec_a: npt.ArrayLike, vec_b: npt.ArrayLike, text_a: Sequence[str],
                      text_b: Sequence[str]) -> F64Array:
        """``P(same answer)`` of aligned pairs, shape (n,)."""
        return self.predict_proba_features(pair_features(vec_a, vec_b, text_a, text_b))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the model as plain arrays (``np.savez``; no pickle)."""
        if self.mean is None or self.scale is None or not self.weights:
            raise RuntimeError("PairVerifier is not fitted")
        arrays: dict[str, Any] = {
            "format": np.array([_FORMAT], dtype=np.int64),
            "kind": np.array([0 if self.kind == "logistic" else 1], dtype=np.int64),
            "hidden": np.array(self.hidden, dtype=np.int64),
            "mean": self.mean, "scale": self.scale,
            "n_layers": np.array([len(self.weights)], dtype=np.int64),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        with Path(path).open("wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> PairVerifier:
        """Read a model written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["format"][0]) != _FORMAT:
                raise ValueError(f"unsupported PairVerifier format {int(z['format'][0])}")
            kind = "logistic" if int(z["kind"][0]) == 0 else "mlp"
            out = cls(kind, hidden=tuple(int(h) for h in z["hidden"]))
            out.mean = np.asarray(z["mean"], dtype=np.float64)
            out.scale = np.asarray(z["scale"], dtype=np.float64)
            n = int(z["n_layers"][0])
            out.weights = [np.asarray(z[f"w{i}"], dtype=np.float64) for i in range(n)]
            out.biases = [np.asarray(z[f"b{i}"], dtype=np.float64) for i in range(n)]
        return out

    # ------------------------------------------------------------------ guard adapter
    def as_guard(self, embedder: Embedder, min_probability: float = 0.5, *,
                 memo: int = 0) -> Callable[[str, str, float], bool]:
        """A cache guard: veto a candidate whose ``P(same answer)`` is below ``min_probability``.

        The guard sees only the two prompts, so it embeds both with ``embedder``
        (one ``encode`` call of up to two texts per candidate; this is the cost).
        ``memo > 0`` keeps that many recent vectors to skip re-embedding a prompt
        seen before (e.g. the same query against several candidates).
        """
        if not self.fitted:
            raise RuntimeError("PairVerifier is not fitted")
        cache: OrderedDict[str, F32Array] = OrderedDict()

        def vectors(texts: list[str]) -> list[F32Array]:
            if memo <= 0:
                return list(np.asarray(embedder.encode(texts), dtype=np.float32))
            missing = [t for t in dict.fromkeys(texts) if t not in cache]
            if missing:
                for t, v in zip(missing, np.asarray(embedder.encode(missing), dtype=np.float32),
                                strict=True):
                    cache[t] = v
            out = [cache[t] for t in texts]
            for t in texts:
                cache.move_to_end(t)
            while len(cache) > memo:
                cache.popitem(last=False)
            return out

        def guard(new: str, stored: str, score: float) -> bool:
            va, vb = vectors([new, stored])
            p = self.predict_proba(va[None, :], vb[None, :], [new], [stored])
            return bool(p[0] >= min_probability)

        guard.__name__ = f"verifier_guard_{min_probability:g}"
        return guard
