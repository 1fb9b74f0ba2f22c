"""Real embeddings shared by the index and projection tests (imported, not a conftest).

A few thousand QQP questions (both sides of the first labelled pairs, so many
queries have a real paraphrase in the index) are embedded once per test
session with the bundled MiniLM, then split into indexed rows and held-out
queries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from semcache._types import FloatArray, IdArray
from semcache.datasets import load_qqp_pairs
from semcache.embedding import default_embedder
from semcache.index.exact import ExactIndex
from semcache.projection import PCAProjection

THRESHOLDS = (0.85, 0.9, 0.95)


@dataclass(frozen=True)
class Corpus:
    """Indexed rows and held-out queries with their projections (PCA, k=32)."""

    full: FloatArray  # (n, 384)
    low: FloatArray  # (n, 32)
    ids: IdArray  # (n,)
    q_full: FloatArray  # (q, 384)
    q_low: FloatArray  # (q, 32)
    proj: PCAProjection


@functools.cache
def qqp_embeddings(n_pairs: int = 1800) -> FloatArray:
    """Embeddings of the distinct questions of the first ``n_pairs`` QQP pairs."""
    seen: dict[str, None] = {}
    for p in load_qqp_pairs(limit=n_pairs):
        seen.setdefault(p.text_a, None)
        seen.setdefault(p.text_b, None)
    return default_embedder().encode(list(seen))


@functools.cache
def corpus(n_queries: int = 400, seed: int = 0) -> Corpus:
    """The test corpus: PCA fitted on the indexed rows only."""
    X = qqp_embeddings()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    q, rows = perm[:n_queries], perm[n_queries:]
    full = np.ascontiguousarray(X[rows])
    proj = PCAProjection(n_components=32).fit(full)
    return Corpus(
        full=full,
        low=proj.transform(full),
        ids=np.arange(len(rows), dtype=np.int64) * 3 + 7,  # not 0..n-1: ids are opaque
        q_full=np.ascontiguousarray(X[q]),
        q_low=proj.transform(X[q]),
        proj=proj,
    )


def exact_of(c: Corpus) -> ExactIndex:
    """ExactIndex over the corpus rows."""
    ex = ExactIndex()
    ex.add(c.ids, c.low, c.full)
    return ex


def recall(index: object, exact: ExactIndex, q_low: FloatArray, q_full: FloatArray,
           threshold: float) -> tuple[float, int, float]:
    """Share of queries whose exact best match at/above ``threshold`` is a candidate.

    Returns
    -------
    recall : float
    hits : int
        Queries with a match at or above the threshold.
    mean_candidates : float
    """
    hits = found = 0
    n_cand = 0
    for i in range(len(q_low)):
        truth = exact.candidates(q_low[i], q_full[i], threshold)
        got = index.candidates(q_low[i], q_full[i], threshold)  # type: ignore[attr-defined]
        n_cand += len(got)
        assert len(np.unique(got)) == len(got), "candidates must not repeat"
        if len(truth):
            hits += 1
            found += int(truth[0] in set(got.tolist()))
    return (found / hits if hits else float("nan")), hits, n_cand / max(1, len(q_low))
