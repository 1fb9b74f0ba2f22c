"""Cache correctness on labelled data: the harness behind ``semcache eval``.

Three measurements, all on real data from ``../shared/data``:

**QQP pair classification** (``qqp/pairs_dev``)
    The cosine of each labelled pair; a pair "hits" at threshold ``t`` when its
    cosine is at least ``t``. Precision/recall of label 1 over ``t``.

**QQP cache replay**
    Every distinct ``text_a`` is stored, every distinct ``text_b`` is looked up.
    A hit is right iff the served prompt is a labelled duplicate of the query:
    the same text, or in the same duplicate cluster (connected component of the
    label-1 pairs, so "A dup B, B dup C" makes a hit of C on A right). It is
    wrong iff a label-0 pair links the two clusters. A hit on another pair's
    question with no label either way is *unlabelled*: counted in the hit rate,
    reported apart, and left out of the wrong-hit rate (as ``semcache demo``
    does), since the data does not say whether its answer fits.

**CLINC150 replay**
    The cache is warmed with the ``train`` queries (each entry's answer is its
    intent); ``val`` (dev) or ``test`` (held out) queries are replayed together
    with the out-of-scope ones (``oos_val``/``oos_train`` or ``oos_test``). A hit
    is right iff the stored intent equals the query's; an out-of-scope query must
    miss, so any hit on it is wrong.

Reported per threshold: hit rate (hits / queries), wrong-hit rate (wrong hits /
labelled hits), and recall (right hits / queries that have a right entry in the
cache).

How the sweep is computed
    Running the cache once per threshold would repeat the same lookups 100 times.
    Instead every query's top-``k`` stored prompts are scored once (brute force
    cosine, which is exactly what the cache's verification computes); at
    threshold ``t`` the cache serves the best candidate with score >= ``t`` that
    no guard vetoes, so a single pass gives every threshold. The real
    :class:`~semcache.cache.SemanticCache` is then run at the chosen settings and
    both numbers are reported, so what is printed is what users get.

Embeddings are computed once per text set and kept as ``.npy`` files (same
naming as ``benchmarks/common.py``: ``<name>-<sha256(fingerprint, texts)[:16]>``),
and a :class:`PrecomputedEmbedder` carrying the real model's fingerprint feeds
them to the cache, so the replay does not embed twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache._types import FloatArray
from semcache.embedding import Embedder
from semcache.errors import ConfigError, EmbeddingError
from semcache.prompts import normalize_prompt
from semcache.report import format_table

__all__ = [
    "Curve",
    "PrecomputedEmbedder",
    "ReplayData",
    "ReplayResult",
    "TopK",
    "cache_replay",
    "clinc_feedback_stream",
    "clinc_replay",
    "configure",
    "embed_cached",
    "feedback_replay",
    "guard_payoff",
    "guard_vetoes",
    "join_queries",
    "metrics_at",
    "pair_curve",
    "plot_curves",
    "qqp_pairs",
    "qqp_replay",
    "replay_from_lists",
    "run",
    "served",
    "sweep",
    "top_candidates",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
F64Array = npt.NDArray[np.float64]
#: A guard: (new prompt, stored prompt, cosine) -> False to veto (see semcache.cache.Guard).
GuardFn = Callable[[str, str, float], bool]

_KEY = np.int64(1 << 32)


def _contains(sorted_keys: IntArray, keys: IntArray) -> BoolArray:
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    out: BoolArray = (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(
        keys.shape, dtype=bool)
    return out


#: Thresholds of every sweep: cosine 0.50 to 1.00 in steps of 0.005.
THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.005 * i, 3) for i in range(101))


# --------------------------------------------------------------------------- embeddings
def default_embed_dir() -> Path:
    """Where ``semcache eval`` keeps embeddings: ``$SEMCACHE_HOME/eval-embeddings``."""
    from semcache.cache import default_directory

    return default_directory("eval-embeddings")


def embed_cached(
    texts: Sequence[str],
    name: str,
    embedder: Embedder,
    cache_dir: Path,
    *,
    batch: int = 512,
    progress: bool = True,
) -> FloatArray:
    """Embeddings of ``texts`` (float32, (n, d), unit rows), computed once and kept on disk.

    Parameters
    ----------
    texts : sequence of str
        Texts to embed (already normalised: the cache embeds normalised prompts).
    name : str
        File name prefix.
    embedder : Embedder
        Its fingerprint is part of the file key, so another model never reuses them.
    cache_dir : Path
        Folder of the ``.npy`` files; ``benchmarks/.cache`` shares files with
        ``benchmarks/common.py``.
    batch : int
        Texts per ``encode`` call.
    progress : bool
        Show a tqdm bar while embedding.
    """
    h = hashlib.sha256(embedder.fingerprint.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = Path(cache_dir) / f"{name}-{h.hexdigest()[:16]}.npy"
    if path.is_file():
        loaded: FloatArray = np.load(path, allow_pickle=False)
        if loaded.shape[0] == len(texts):
            return loaded
    from tqdm import tqdm

    parts: list[FloatArray] = []
    for i in tqdm(range(0, len(texts), batch), desc=f"embedding {name}", unit="batch",
                  disable=not progress):
        parts.append(embedder.encode(list(texts[i : i + batch])))
    out = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)  # atomic: a killed run never leaves a truncated file behind
    return out


class PrecomputedEmbedder:
    """An embedder that serves vectors computed beforehand, under the real model's fingerprint.

    The replay feeds the cache the very vectors the sweep scored, so the cache's
    verification sees the same cosines, and embedding is not repeated. Texts it
    has no vector for go to ``fallback``.

    Parameters
    ----------
    texts : sequence of str
        Normalised texts.
    vectors : array (n, d)
        Their embeddings.
    fallback : Embedder
        The real model: supplies the fingerprint and embeds unknown texts.
    """

    def __init__(self, texts: Sequence[str], vectors: FloatArray, fallback: Embedder) -> None:
        if len(texts) != len(vectors):
            raise ConfigError("texts and vectors must have the same length")
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self.fallback = fallback
        #: Seconds the last :meth:`encode` took (to subtract embedding from a lookup's time).
        self.last_seconds = 0.0

    def add(self, texts: Sequence[str], vectors: FloatArray) -> None:
        """Make more precomputed vectors available."""
        base = len(self._vectors)
        self._vectors = np.concatenate([self._vectors, np.asarray(vectors, dtype=np.float32)])
        for i, t in enumerate(texts):
            self._rows.setdefault(t, base + i)

    @property
    def fingerprint(self) -> str:
        return self.fallback.fingerprint

    def encode(self, texts: Sequence[str]) -> FloatArray:
        t0 = time.perf_counter()
        rows = [self._rows.get(t) for t in texts]
        missing = [t for t, r in zip(texts, rows, strict=True) if r is None]
        if not missing:
            out: FloatArray = self._vectors[np.asarray(rows, dtype=np.int64)]
        else:
            extra = iter(self.fallback.encode(missing))
            out = np.stack([self._vectors[r] if r is not None else next(extra) for r in rows]
                           ).astype(np.float32)
        self.last_seconds = time.perf_counter() - t0
        return out


# --------------------------------------------------------------------------- data
@dataclass
class ReplayData:
    """A labelled replay: stored prompts, then lookups.

    A hit of query ``q`` on stored entry ``s`` is right iff
    ``query_labels[q] >= 0 and query_labels[q] == stored_labels[s]``;
    ``-1`` marks a query no stored entry may answer (out of scope). Otherwise it
    is wrong, unless ``negative_keys`` is given: then only label pairs listed
    there (and out-of-scope queries) are known wrong, and the rest are
    *unlabelled* hits, counted apart (QQP labels only the pairs it lists).

    Attributes
    ----------
    name : str
    stored, queries : list of str
        Normalised prompts; ``stored`` has no duplicates (a put of the same prompt
        replaces the entry in the cache).
    stored_labels, query_labels : int arrays
    stored_vecs, query_vecs : float32 arrays (n, d)
    stored_answers, query_answers : list of str
        The "completion" each prompt stands for (CLINC: its intent), used when the
        replay stores a query.
    negative_keys : int array, optional
        Sorted ``query_label * 2**32 + stored_label`` of label pairs known to be
        different answers; None: every pair that is not right is wrong.
    """

    name: str
    stored: list[str]
    stored_labels: IntArray
    stored_vecs: FloatArray
    queries: list[str]
    query_labels: IntArray
    query_vecs: FloatArray
    stored_answers: list[str] = field(default_factory=list)
    query_answers: list[str] = field(default_factory=list)
    negative_keys: IntArray | None = None

    def verdict(self, q: IntArray, s: IntArray) -> npt.NDArray[np.int8]:
        """Element-wise verdict of serving stored ``s`` to query ``q``: 1 right, 0 wrong,
        -1 unlabelled."""
        ql = self.query_labels[q]
        sl = self.stored_labels[s]
        right = (ql >= 0) & (ql == sl)
        out = np.where(right, 1, 0).astype(np.int8)
        if self.negative_keys is not None:
            known = right | (ql < 0) | _contains(self.negative_keys, ql * _KEY + sl)
            out[~known] = -1
        return out

    @property
    def possible(self) -> BoolArray:
        """Queries for which the cache holds at least one right entry."""
        present = np.isin(self.query_labels, self.stored_labels)
        out: BoolArray = (self.query_labels >= 0) & present
        return out

    def is_right(self, q: int, s: int) -> bool:
        """Whether stored entry ``s`` answers query ``q``."""
        lab = int(self.query_labels[q])
        return lab >= 0 and lab == int(self.stored_labels[s])

    def judge(self, q: int, s: int) -> int:
        """:meth:`verdict` of one pair: 1 right, 0 wrong, -1 unlabelled."""
        return int(self.verdict(np.array([q]), np.array([s]))[0])

    def subset(self, queries: Sequence[int]) -> ReplayData:
        """The same store with only some queries (tests, quick runs)."""
        idx = np.asarray(queries, dtype=np.int64)
        return ReplayData(
            self.name, self.stored, self.stored_labels, self.stored_vecs,
            [self.queries[i] for i in idx], self.query_labels[idx], self.query_vecs[idx],
            self.stored_answers,
            [self.query_answers[i] for i in idx] if self.query_answers else [],
            self.negative_keys,
        )


@dataclass
class PairData:
    """QQP pairs with their cosine."""

    text_a: list[str]
    text_b: list[str]
    labels: IntArray
    cosine: F64Array


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def _qqp_texts(limit: int | None) -> tuple[list[tuple[str, str, int]], list[str]]:
    from semcache.datasets import load_qqp_pairs

    pairs = [(normalize_prompt(p.text_a), normalize_prompt(p.text_b), p.label)
             for p in load_qqp_pairs(limit)]
    seen: dict[str, None] = {}
    for a, b, _ in pairs:
        seen.setdefault(a, None)
        seen.setdefault(b, None)
    return pairs, list(seen)


def _qqp_vectors(
    limit: int | None, embedder: Embedder, embed_dir: Path
) -> tuple[list[tuple[str, str, int]], dict[str, int], FloatArray]:
    pairs, texts = _qqp_texts(limit)
    name = "qqp_dev_texts" if limit is None else f"qqp_dev_texts_{limit}"
    vecs = embed_cached(texts, name, embedder, embed_dir)
    return pairs, {t: i for i, t in enumerate(texts)}, vecs


def qqp_pairs(embedder: Embedder, embed_dir: Path, limit: int | None = None) -> PairData:
    """QQP dev pairs with the cosine of each pair (embeddings cached on disk)."""
    pairs, row, vecs = _qqp_vectors(limit, embedder, embed_dir)
    ia = np.fromiter((row[a] for a, _, _ in pairs), np.int64, len(pairs))
    ib = np.fromiter((row[b] for _, b, _ in pairs), np.int64, len(pairs))
    cos = np.einsum("ij,ij->i", vecs[ia], vecs[ib]).astype(np.float64)
    return PairData([a for a, _, _ in pairs], [b for _, b, _ in pairs],
                    np.array([lab for _, _, lab in pairs], dtype=np.int64), cos)


def qqp_replay(embedder: Embedder, embed_dir: Path, limit: int | None = None) -> ReplayData:
    """Store every distinct ``text_a`` of QQP dev, look up every distinct ``text_b``.

    Labels are duplicate clusters: connected components of the label-1 pairs
    (each prompt is its own cluster otherwise), so identical or labelled
    duplicate prompts share a label. A hit is wrong when a label-0 pair links the
    query's cluster and the served prompt's; a hit on a prompt with no label
    either way is *unlabelled* and left out of the wrong-hit rate.
    """
    pairs, row, vecs = _qqp_vectors(limit, embedder, embed_dir)
    uf = _UnionFind()
    for a, b, lab in pairs:
        if lab == 1:
            uf.union(a, b)
    cluster: dict[str, int] = {}

    def label(t: str) -> int:
        return cluster.setdefault(uf.find(t), len(cluster))

    stored = list(dict.fromkeys(a for a, _, _ in pairs))
    queries = list(dict.fromkeys(b for _, b, _ in pairs))
    s_idx = np.fromiter((row[t] for t in stored), np.int64, len(stored))
    q_idx = np.fromiter((row[t] for t in queries), np.int64, len(queries))
    s_lab = np.fromiter((label(t) for t in stored), np.int64, len(stored))
    q_lab = np.fromiter((label(t) for t in queries), np.int64, len(queries))
    neg: set[int] = set()
    for a, b, lab in pairs:
        if lab == 0:
            la, lb = label(a), label(b)
            if la != lb:
                neg.add(la * int(_KEY) + lb)
                neg.add(lb * int(_KEY) + la)
    return ReplayData(
        "qqp_dev", stored, s_lab, vecs[s_idx], queries, q_lab, vecs[q_idx],
        [f"answer-{int(x)}" for x in s_lab], [f"answer-{int(x)}" for x in q_lab],
        np.array(sorted(neg), dtype=np.int64),
    )


def clinc_replay(
    embedder: Embedder, embed_dir: Path, split: str = "test"
) -> ReplayData:
    """CLINC150: the cache holds ``train``; replay ``split`` plus its out-of-scope queries.

    ``split="val"`` (dev) replays ``val`` + ``oos_val`` + ``oos_train``; ``"test"``
    (held out) replays ``test`` + ``oos_test``.
    """
    from semcache.datasets import load_clinc150

    if split not in ("val", "test"):
        raise ConfigError(f"CLINC150 replay split must be 'val' or 'test', not {split!r}")

    def load(s: str) -> tuple[list[str], list[str], FloatArray]:
        c = load_clinc150(s)
        texts = [normalize_prompt(t) for t in c.texts]
        return texts, c.intents, embed_cached(texts, f"clinc150_{s}", embedder, embed_dir)

    train_t, train_i, train_v = load("train")
    parts = [load(split)] + [load(s) for s in
                             (("oos_val", "oos_train") if split == "val" else ("oos_test",))]
    intents = sorted(set(train_i))
    code = {it: i for i, it in enumerate(intents)}
    # Repeated train prompts collapse to one entry in the cache, as they would with put().
    first: dict[str, int] = {}
    for i, t in enumerate(train_t):
        first.setdefault(t, i)
    keep = np.fromiter(first.values(), np.int64, len(first))
    q_t = [t for p in parts for t in p[0]]
    q_i = [it for p in parts for it in p[1]]
    return ReplayData(
        f"clinc150_{split}",
        [train_t[i] for i in keep],
        np.array([code[train_i[i]] for i in keep], dtype=np.int64),
        train_v[keep],
        q_t,
        np.array([code.get(it, -1) if it != "oos" else -1 for it in q_i], dtype=np.int64),
        np.concatenate([p[2] for p in parts]),
        [train_i[i] for i in keep],
        q_i,
    )


def replay_from_lists(
    name: str,
    stored: Sequence[str],
    stored_labels: Sequence[str],
    queries: Sequence[str],
    query_labels: Sequence[str | None],
    embedder: Embedder,
) -> ReplayData:
    """A :class:`ReplayData` from plain lists (small slices, tests, your own data).

    A hit is right iff the stored label equals the query's; a query label of None
    (or ``"oos"``) must miss. Prompts are normalised and embedded with ``embedder``;
    repeated stored prompts keep their first label, as ``put`` would keep one entry.
    """
    first: dict[str, str] = {}
    for t, lab in zip(stored, stored_labels, strict=True):
        first.setdefault(normalize_prompt(t), lab)
    s_texts = list(first)
    q_texts = [normalize_prompt(t) for t in queries]
    code: dict[str, int] = {}
    for lab in first.values():
        code.setdefault(lab, len(code))
    q_codes = [-1 if lab is None or lab == "oos" else code.get(lab, len(code) + i)
               for i, lab in enumerate(query_labels)]
    vecs = embedder.encode(s_texts + q_texts)
    return ReplayData(
        name, s_texts, np.array([code[first[t]] for t in s_texts], dtype=np.int64),
        vecs[: len(s_texts)], q_texts, np.array(q_codes, dtype=np.int64), vecs[len(s_texts):],
        [first[t] for t in s_texts], [lab or "oos" for lab in query_labels],
    )


# --------------------------------------------------------------------------- scoring
@dataclass
class TopK:
    """Each query's best ``k`` stored entries, best first."""

    index: IntArray  # (n_queries, k) stored indices
    score: FloatArray  # (n_queries, k) cosine
    verdict: npt.NDArray[np.int8]  # (n_queries, k): 1 right, 0 wrong, -1 unlabelled

    @property
    def right(self) -> BoolArray:
        out: BoolArray = self.verdict == 1
        return out


def top_candidates(data: ReplayData, k: int = 10, chunk: int = 2048) -> TopK:
    """Brute-force top-``k`` cosine of every query against every stored prompt."""
    n = len(data.queries)
    k = max(1, min(k, len(data.stored)))
    idx = np.zeros((n, k), dtype=np.int64)
    sc = np.zeros((n, k), dtype=np.float32)
    for s in range(0, n, chunk):
        S = data.query_vecs[s : s + chunk] @ data.stored_vecs.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else \
            np.tile(np.arange(S.shape[1]), (S.shape[0], 1))
        ps = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        sc[s : s + chunk] = np.take_along_axis(ps, order, axis=1)
    qrows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    return TopK(idx, sc, data.verdict(qrows, idx))


def guard_vetoes(
    data: ReplayData, top: TopK, guards: Sequence[GuardFn], *, min_score: float = 0.5
) -> BoolArray:
    """``vetoed[q, j]``: some guard rejects candidate ``j`` of query ``q``.

    Candidates below ``min_score`` are never served in a sweep from ``min_score``
    up, so they are not evaluated (guards are the slow part).
    """
    vetoed = np.zeros(top.index.shape, dtype=bool)
    if not guards:
        return vetoed
    for q in range(top.index.shape[0]):
        for j in range(top.index.shape[1]):
            score = float(top.score[q, j])
            if score < min_score:
                break
            stored = data.stored[int(top.index[q, j])]
            if stored == data.queries[q]:
                continue  # the exact fast path: guards never see it
            if not all(g(data.queries[q], stored, score) for g in guards):
                vetoed[q, j] = True
    return vetoed


@dataclass
class Curve:
    """Replay metrics at each threshold (arrays aligned with ``thresholds``)."""

    name: str
    thresholds: F64Array
    queries: int
    possible: int
    hits: IntArray
    wrong: IntArray
    #: Hits whose rightness the labels do not tell (QQP); not in the wrong-hit rate.
    unlabelled: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.unlabelled) != len(self.hits):
            self.unlabelled = np.zeros(len(self.hits), dtype=np.int64)

    @property
    def right(self) -> IntArray:
        out: IntArray = self.hits - self.wrong - self.unlabelled
        return out

    @property
    def hit_rate(self) -> F64Array:
        return np.asarray(self.hits / max(self.queries, 1), dtype=np.float64)

    @property
    def wrong_hit_rate(self) -> F64Array:
        """Wrong hits / labelled hits (all hits when every pair is labelled)."""
        judged = self.hits - self.unlabelled
        return np.asarray(np.where(judged > 0, self.wrong / np.maximum(judged, 1), 0.0),
                          dtype=np.float64)

    @property
    def recall(self) -> F64Array:
        return np.asarray(self.right / max(self.possible, 1), dtype=np.float64)

    def at(self, threshold: float) -> dict[str, float]:
        """Metrics at the sweep threshold nearest ``threshold``."""
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        return {
            "threshold": float(self.thresholds[i]),
            "hit_rate": float(self.hit_rate[i]),
            "wrong_hit_rate": float(self.wrong_hit_rate[i]),
            "recall": float(self.recall[i]),
            "hits": int(self.hits[i]),
            "wrong_hits": int(self.wrong[i]),
            "unlabelled_hits": int(self.unlabelled[i]),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "queries": self.queries, "possible": self.possible,
            "thresholds": self.thresholds.tolist(), "hits": self.hits.tolist(),
            "wrong": self.wrong.tolist(), "unlabelled": self.unlabelled.tolist(),
        }


def served(top: TopK, vetoed: BoolArray | None = None
           ) -> tuple[FloatArray, npt.NDArray[np.int8]]:
    """Score and verdict (1 right, 0 wrong, -1 unlabelled) of what the cache serves each query.

    The cache walks candidates best first and serves the first one a guard does
    not veto, if its score clears the threshold; since scores only fall along
    the walk, that candidate does not depend on the threshold. A query whose
    every candidate is vetoed gets score ``-inf`` (a miss at any threshold).
    """
    n = top.index.shape[0]
    if vetoed is None or not vetoed.any():
        return top.score[:, 0].copy(), top.verdict[:, 0].copy()
    ok = ~vetoed
    first = np.argmax(ok, axis=1)
    any_ok = ok.any(axis=1)
    rows = np.arange(n)
    score = np.where(any_ok, top.score[rows, first], -np.inf).astype(np.float32)
    verdict = np.where(any_ok, top.verdict[rows, first], 0).astype(np.int8)
    return score, verdict


def sweep(
    name: str,
    score: FloatArray,
    verdict: npt.NDArray[np.int8] | BoolArray,
    possible: int,
    thresholds: Iterable[float] = THRESHOLDS,
) -> Curve:
    """Hits and wrong hits at every threshold, from each query's served score and verdict.

    ``verdict`` is 1 right, 0 wrong, -1 unlabelled per query (a bool array: right
    or wrong).
    """
    th = np.asarray(list(thresholds), dtype=np.float64)
    s = score.astype(np.float64)
    v = np.asarray(verdict).astype(np.int8)
    hit = s[None, :] >= th[:, None]
    hits = hit.sum(axis=1).astype(np.int64)
    wrong = (hit & (v == 0)[None, :]).sum(axis=1).astype(np.int64)
    unl = (hit & (v < 0)[None, :]).sum(axis=1).astype(np.int64)
    return Curve(name, th, len(score), possible, hits, wrong, unl)


def pair_curve(pairs: PairData, thresholds: Iterable[float] = THRESHOLDS) -> Curve:
    """Pair classification as a :class:`Curve`: a pair is a hit when its cosine >= t.

    ``wrong_hit_rate`` is then 1 - precision and ``recall`` the recall of label 1.
    """
    right = pairs.labels == 1
    return sweep("qqp_dev_pairs", pairs.cosine.astype(np.float32), right, int(right.sum()),
                 thresholds)


def metrics_at(curve: Curve, threshold: float) -> dict[str, float]:
    """Shorthand for ``curve.at(threshold)``."""
    return curve.at(threshold)


def guard_payoff(
    data: ReplayData, top: TopK, guard: GuardFn, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """What one guard changes in a replay at each threshold.

    Returns, per threshold, ``wrong_removed`` (wrong hits without the guard minus
    with it), ``good_lost`` (right hits lost) and the hit/wrong counts both ways.
    With the guard a query may be served its next-best candidate instead, which
    is counted as it falls (right or wrong).
    """
    possible = int(data.possible.sum())
    s0, r0 = served(top)
    s1, r1 = served(top, guard_vetoes(data, top, [guard], min_score=min(thresholds)))
    c0 = sweep(data.name, s0, r0, possible, thresholds)
    c1 = sweep(data.name, s1, r1, possible, thresholds)
    out: list[dict[str, float]] = []
    for i, t in enumerate(c0.thresholds):
        right0 = int(c0.right[i])
        right1 = int(c1.right[i])
        out.append({
            "threshold": float(t),
            "hits": int(c0.hits[i]), "wrong": int(c0.wrong[i]),
            "hits_guarded": int(c1.hits[i]), "wrong_guarded": int(c1.wrong[i]),
            "wrong_removed": int(c0.wrong[i] - c1.wrong[i]),
            "good_lost": right0 - right1,
        })
    return out


# --------------------------------------------------------------------------- real cache
@dataclass
class ReplayResult:
    """What the real :class:`~semcache.cache.SemanticCache` did on a replay."""

    name: str
    threshold: float
    guards: list[str]
    queries: int
    hits: int
    wrong_hits: int
    possible: int
    oos_queries: int
    oos_hits: int
    overhead_ms_p50: float
    overhead_ms_p99: float
    unlabelled_hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def wrong_hit_rate(self) -> float:
        """Wrong hits / labelled hits."""
        judged = self.hits - self.unlabelled_hits
        return self.wrong_hits / judged if judged else 0.0

    @property
    def recall(self) -> float:
        right = self.hits - self.wrong_hits - self.unlabelled_hits
        return right / self.possible if self.possible else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(hit_rate=self.hit_rate, wrong_hit_rate=self.wrong_hit_rate, recall=self.recall)
        return d


def _guard_names(guards: Sequence[GuardFn]) -> list[str]:
    return [getattr(g, "__name__", type(g).__name__) for g in guards]


def cache_replay(
    data: ReplayData,
    embedder: Embedder,
    *,
    threshold: float,
    guards: Sequence[GuardFn] = (),
    progress: bool = True,
    directory: Path | None = None,
) -> ReplayResult:
    """Warm a real :class:`SemanticCache` with ``data.stored``, look up every query.

    The cache gets :class:`PrecomputedEmbedder` vectors under the real model's
    fingerprint; the overhead is each lookup's wall time minus the time spent in
    the embedder (that is, everything but the model). ``directory``: use the
    default disk store there (it must be new or empty) instead of the memory store.
    """
    from tqdm import tqdm

    from semcache.cache import Hit, SemanticCache

    pre = PrecomputedEmbedder(data.stored, data.stored_vecs, embedder)
    pre.add(data.queries, data.query_vecs)
    possible = data.possible
    row_of = {t: i for i, t in enumerate(data.stored)}
    hits = wrong = oos_hits = unlabelled = 0
    overhead: list[float] = []
    store: Any = "memory" if directory is None else "disk"
    with SemanticCache(directory, store=store, embedder=pre, threshold=threshold,
                       guards=guards) as cache:
        answers = data.stored_answers or [str(x) for x in data.stored_labels]
        cache.put_many(data.stored, list(answers), progress=progress)
        cache.reset_stats()
        for q in tqdm(range(len(data.queries)), desc=f"replay {data.name}", unit="q",
                      disable=not progress, mininterval=1.0):
            pre.last_seconds = 0.0
            t0 = time.perf_counter()
            hit = cache.get(data.queries[q])
            # Subtract the embedder's share (a dict lookup here) so only cache work is left.
            overhead.append(time.perf_counter() - t0 - pre.last_seconds)
            if isinstance(hit, Hit):
                hits += 1
                if data.query_labels[q] < 0:
                    oos_hits += 1
                verdict = data.judge(q, row_of[hit.prompt])
                wrong += verdict == 0
                unlabelled += verdict < 0
    ov = np.asarray(overhead) * 1e3
    return ReplayResult(
        data.name, threshold, _guard_names(guards), len(data.queries), hits, wrong,
        int(possible.sum()), int((data.query_labels < 0).sum()), oos_hits,
        float(np.percentile(ov, 50)) if len(ov) else 0.0,
        float(np.percentile(ov, 99)) if len(ov) else 0.0,
        unlabelled,
    )


# --------------------------------------------------------------------------- feedback
@dataclass
class FeedbackResult:
    """Per-window metrics of a feedback replay."""

    name: str
    feedback: bool
    window: int
    hits: list[int]
    wrong: list[int]
    queries: list[int]
    entries_deleted: int
    settings: dict[str, float]

    @property
    def wrong_hit_rate(self) -> list[float]:
        return [w / h if h else 0.0 for w, h in zip(self.wrong, self.hits, strict=True)]

    @property
    def hit_rate(self) -> list[float]:
        return [h / n if n else 0.0 for h, n in zip(self.hits, self.queries, strict=True)]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(wrong_hit_rate=self.wrong_hit_rate, hit_rate=self.hit_rate)
        return d


def feedback_replay(
    data: ReplayData,
    embedder: Embedder,
    *,
    threshold: float,
    feedback: bool = True,
    epochs: int = 3,
    window: int = 1000,
    seed: int = 0,
    guards: Sequence[GuardFn] = (),
    max_wrong: int = 2,
    feedback_margin: float = 1e-3,
    stream: Sequence[int] | None = None,
    store_misses: bool = False,
    progress: bool = True,
) -> FeedbackResult:
    """A live replay with simulated user feedback.

    The cache is warmed with ``data.stored``; then queries are looked up in the
    order of ``stream`` (indices into ``data.queries``; default: all queries,
    shuffled, ``epochs`` times). Each hit is reported right or wrong to
    :meth:`SemanticCache.feedback` when ``feedback`` is True. With
    ``store_misses`` a miss is answered by the "LLM" (the query's label) and
    stored, as an application would; the default keeps the store fixed, so
    later lookups measure what feedback changed rather than exact repeats of
    stored misses. Hits and wrong hits are counted per ``window`` lookups, to be
    compared with a run without feedback on the same stream.
    """
    from tqdm import tqdm

    from semcache.cache import Hit, SemanticCache

    pre = PrecomputedEmbedder(data.stored, data.stored_vecs, embedder)
    pre.add(data.queries, data.query_vecs)
    # Labels of whatever gets stored: train entries by cluster/intent, stored misses
    # by their own label (out-of-scope prompts get a fresh label each: no other prompt
    # shares their answer).
    label_of: dict[str, int] = {t: int(x) for t, x in zip(data.stored, data.stored_labels,
                                                           strict=True)}
    fresh = int(max(data.stored_labels.max(initial=0), data.query_labels.max(initial=0))) + 1
    if stream is None:
        order = list(range(len(data.queries)))
        rng = random.Random(seed)
        shuffled: list[int] = []
        for _ in range(epochs):
            rng.shuffle(order)
            shuffled.extend(order)
        stream = shuffled
    hits: list[int] = []
    wrong: list[int] = []
    counts: list[int] = []
    own: dict[str, int] = {}
    with SemanticCache(store="memory", embedder=pre, threshold=threshold, guards=guards,
                       max_wrong=max_wrong, feedback_margin=feedback_margin) as cache:
        answers = data.stored_answers or [str(x) for x in data.stored_labels]
        cache.put_many(data.stored, list(answers), progress=False)
        for n, q in enumerate(tqdm(stream, desc=f"feedback {data.name}", unit="q",
                                   disable=not progress, mininterval=1.0)):
            if n % window == 0:
                hits.append(0)
                wrong.append(0)
                counts.append(0)
            counts[-1] += 1
            text = data.queries[q]
            # A stored miss answers its own repeats: its label is the one it was stored with.
            lab = own.get(text, int(data.query_labels[q]))
            hit = cache.get(text)
            if isinstance(hit, Hit):
                hits[-1] += 1
                ok = lab >= 0 and label_of.get(hit.prompt) == lab
                if not ok:
                    wrong[-1] += 1
                if feedback:
                    cache.feedback(hit, ok)
            elif store_misses:
                if lab < 0:
                    lab = fresh
                    fresh += 1
                label_of[text] = own[text] = lab
                answer = data.query_answers[q] if data.query_answers else str(lab)
                cache.put(text, answer)
        deleted = cache.stats().deletes
    return FeedbackResult(data.name, feedback, window, hits, wrong, counts, deleted,
                          {"threshold": threshold, "lookups": len(stream), "max_wrong": max_wrong,
                           "feedback_margin": feedback_margin,
                           "store_misses": float(store_misses)})


def join_queries(first: ReplayData, second: ReplayData, name: str) -> ReplayData:
    """One replay whose queries are ``first``'s then ``second``'s (same stored side)."""
    if first.stored != second.stored:
        raise ConfigError("join_queries needs two replays of the same stored prompts")
    return ReplayData(
        name, first.stored, first.stored_labels, first.stored_vecs,
        first.queries + second.queries,
        np.concatenate([first.query_labels, second.query_labels]),
        np.concatenate([first.query_vecs, second.query_vecs]),
        first.stored_answers, first.query_answers + second.query_answers,
    )


def clinc_feedback_stream(
    embedder: Embedder, embed_dir: Path, *, seed: int = 0
) -> tuple[ReplayData, list[int], list[tuple[str, int]]]:
    """The feedback replay's stream: CLINC150 val, then test, then test again.

    Returns the joined replay (store: train), the lookup order (each phase
    shuffled) and the phases as ``(name, lookups)``. Phase 2 shows whether
    feedback given on dev queries helps on queries never seen before (held-out
    test); phase 3 what it does when test queries come again.
    """
    val = clinc_replay(embedder, embed_dir, "val")
    test = clinc_replay(embedder, embed_dir, "test")
    data = join_queries(val, test, "clinc150 val+test")
    rng = random.Random(seed)
    nv, nt = len(val.queries), len(test.queries)
    phases: list[list[int]] = [list(range(nv)), list(range(nv, nv + nt)),
                               list(range(nv, nv + nt))]
    for p in phases:
        rng.shuffle(p)
    names = ["val (dev)", "test, 1st pass", "test, 2nd pass"]
    return data, [i for p in phases for i in p], [(n, len(p)) for n, p in zip(names, phases,
                                                                              strict=True)]


def phase_rows(results: Sequence[FeedbackResult], phases: Sequence[tuple[str, int]]
               ) -> list[list[object]]:
    """Per-phase wrong-hit and hit rates of feedback replays whose window divides the phases."""
    rows: list[list[object]] = []
    for r in results:
        start = 0
        for name, n in phases:
            w0, w1 = start // r.window, (start + n) // r.window
            h = sum(r.hits[w0:w1])
            w = sum(r.wrong[w0:w1])
            q = sum(r.queries[w0:w1])
            rows.append([f"{'feedback' if r.feedback else 'no feedback'}", name,
                         h / q if q else 0.0, w / h if h else 0.0, w])
            start += n
    return rows


# --------------------------------------------------------------------------- plots
def plot_curves(curves: Sequence[Curve], out_dir: Path, *, prefix: str = "",
                marks: Sequence[float] = ()) -> list[Path]:
    """Save a precision/recall plot and a rates-vs-threshold plot (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for c in curves:
        ax.plot(c.recall, 1 - c.wrong_hit_rate, label=c.name)
        for m in marks:
            r = c.at(m)
            ax.scatter([r["recall"]], [1 - r["wrong_hit_rate"]], s=18)
            ax.annotate(f"{m:g}", (r["recall"], 1 - r["wrong_hit_rate"]), fontsize=7)
    ax.set_xlabel("recall (right hits / possible hits)")
    ax.set_ylabel("precision (1 - wrong-hit rate)")
    ax.set_title("Precision / recall over the cosine threshold (all-MiniLM-L6-v2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = out_dir / f"{prefix}precision_recall.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in curves:
        axes[0].plot(c.thresholds, c.hit_rate, label=c.name)
        axes[1].plot(c.thresholds, c.wrong_hit_rate, label=c.name)
    for ax, what in zip(axes, ("hit rate", "wrong-hit rate (wrong / labelled hits)"), strict=True):
        ax.set_xlabel("cosine threshold")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        for m in marks:
            ax.axvline(m, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    p = out_dir / f"{prefix}rates_vs_threshold.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def plot_feedback(results: Sequence[FeedbackResult], out_dir: Path, *, prefix: str = ""
                  ) -> Path:
    """Wrong-hit rate and hit rate per window, with and without feedback."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        x = np.arange(1, len(r.hits) + 1) * r.window
        lab = f"{r.name}, {'feedback' if r.feedback else 'no feedback'}"
        axes[0].plot(x, r.wrong_hit_rate, marker="o", ms=3, label=lab)
        axes[1].plot(x, r.hit_rate, marker="o", ms=3, label=lab)
    axes[0].set_ylabel("wrong-hit rate in window")
    axes[1].set_ylabel("hit rate in window")
    for ax in axes:
        ax.set_xlabel("lookups so far")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / f"{prefix}feedback.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


# --------------------------------------------------------------------------- tables
def curve_rows(curve: Curve, thresholds: Sequence[float]) -> list[list[object]]:
    """Table rows (threshold, hit rate, wrong-hit rate, recall, hits, wrong) of a curve."""
    rows: list[list[object]] = []
    for t in thresholds:
        m = curve.at(t)
        rows.append([curve.name, m["threshold"], m["hit_rate"], m["wrong_hit_rate"],
                     m["recall"], int(m["hits"]), int(m["wrong_hits"]),
                     int(m["unlabelled_hits"])])
    return rows


CURVE_HEADERS = ("data", "threshold", "hit rate", "wrong-hit rate", "recall", "hits", "wrong",
                 "unlabelled")


# --------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Everything one ``semcache eval`` run computed."""

    curves: dict[str, Curve] = field(default_factory=dict)
    replays: list[ReplayResult] = field(default_factory=list)
    feedback: list[FeedbackResult] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "curves": {k: c.to_json() for k, c in self.curves.items()},
            "replays": [r.to_json() for r in self.replays],
            "feedback": [f.to_json() for f in self.feedback],
            "plots": self.plots,
        }


def evaluate(
    *,
    embedder: Embedder,
    embed_dir: Path,
    datasets: Sequence[str] = ("qqp", "clinc150"),
    clinc_split: str = "test",
    threshold: float | None = None,
    guards: Sequence[GuardFn] | None = None,
    qqp_limit: int | None = None,
    real_cache: bool = True,
    with_feedback: bool = False,
    top_k: int = 10,
    plot_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Evaluation:
    """Run the measurements and print their tables (see the module docstring).

    ``threshold=None`` uses the cache's default; ``guards=None`` its default guards.
    """
    from semcache.cache import DEFAULT_THRESHOLD

    thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if guards is None:
        from semcache.guards import default_guards

        guards = default_guards()
    ev = Evaluation()
    show = sorted({0.7, 0.75, 0.8, 0.85, 0.9, 0.95, thr})
    datas: list[ReplayData] = []
    if "qqp" in datasets:
        pairs = qqp_pairs(embedder, embed_dir, qqp_limit)
        ev.curves["qqp_dev_pairs"] = pair_curve(pairs)
        datas.append(qqp_replay(embedder, embed_dir, qqp_limit))
    if "clinc150" in datasets:
        datas.append(clinc_replay(embedder, embed_dir, clinc_split))
    for data in datas:
        top = top_candidates(data, k=top_k)
        possible = int(data.possible.sum())
        s, r = served(top)
        ev.curves[data.name] = sweep(data.name, s, r, possible)
        if guards:
            veto = guard_vetoes(data, top, guards)
            gs, gr = served(top, veto)
            ev.curves[f"{data.name}+guards"] = sweep(f"{data.name}+guards", gs, gr, possible)
    log(f"\nSweep (brute-force best match; pair rows: wrong-hit rate = 1 - precision), "
        f"guards: {', '.join(_guard_names(guards)) or 'none'}")
    rows = [row for c in ev.curves.values() for row in curve_rows(c, show)]
    log(format_table(CURVE_HEADERS, rows))
    if real_cache:
        for data in datas:
            for gs_ in ((), tuple(guards)) if guards else ((),):
                res = cache_replay(data, embedder, threshold=thr, guards=gs_, progress=progress)
                ev.replays.append(res)
        log(f"\nReal SemanticCache at threshold {thr:g} (memory store; overhead = lookup time "
            "minus embedding)")
        log(format_table(
            ("data", "guards", "hit rate", "wrong-hit rate", "recall", "hits", "wrong",
             "unlabelled", "oos hit rate", "overhead p50 ms", "p99 ms"),
            [[r.name, "+".join(r.guards) or "none", r.hit_rate, r.wrong_hit_rate, r.recall,
              r.hits, r.wrong_hits, r.unlabelled_hits,
              r.oos_hits / r.oos_queries if r.oos_queries else "-",
              r.overhead_ms_p50, r.overhead_ms_p99] for r in ev.replays]))
    if with_feedback:
        fb_data, stream, phases = clinc_feedback_stream(embedder, embed_dir)
        window = math.gcd(*[n for _, n in phases])
        for fb in (False, True):
            ev.feedback.append(feedback_replay(fb_data, embedder, threshold=thr, feedback=fb,
                                               guards=guards, stream=stream, window=window,
                                               progress=progress))
        log("\nFeedback replay: cache warmed with CLINC150 train; stream = val, then test "
            "twice; each hit reported right/wrong")
        log(format_table(("run", "phase", "hit rate", "wrong-hit rate", "wrong hits"),
                         phase_rows(ev.feedback, phases)))
    if plot_dir is not None:
        paths = plot_curves(list(ev.curves.values()), plot_dir, marks=(thr,))
        if ev.feedback:
            paths.append(plot_feedback(ev.feedback, plot_dir))
        ev.plots = [str(p) for p in paths]
        log("\nplots: " + ", ".join(ev.plots))
    return ev


def feedback_table(results: Sequence[FeedbackResult]) -> str:
    """One row per run, one column pair per window."""
    n = max(len(r.hits) for r in results)
    headers = ["run", *[f"w{i + 1}" for i in range(n)], "deleted"]
    rows: list[list[object]] = []
    for r in results:
        cells: list[object] = [f"{r.name} {'fb' if r.feedback else 'no-fb'}"]
        for w, h in zip(r.wrong_hit_rate, r.hit_rate, strict=True):
            cells.append(f"{w:.3f}/{h:.3f}")
        cells += [""] * (n - len(r.hits)) + [r.entries_deleted]
        rows.append(cells)
    return format_table(headers, rows)


# --------------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``semcache eval``."""
    parser.add_argument("--data", choices=("all", "qqp", "clinc150"), default="all",
                        help="which labelled data to replay (default: all)")
    parser.add_argument("--clinc-split", choices=("val", "test"), default="test",
                        help="CLINC150 queries to replay: val (dev) or test (held out; default)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine threshold of the real-cache run (default: the cache default)")
    parser.add_argument("--guards", choices=("default", "none"), default="default",
                        help="guards to evaluate (default: semcache.guards.default_guards())")
    parser.add_argument("--qqp-limit", type=int, default=None,
                        help="use only the first N QQP dev pairs (quick runs)")
    parser.add_argument("--no-cache-run", action="store_true",
                        help="only the sweep; skip running the real SemanticCache")
    parser.add_argument("--feedback", action="store_true",
                        help="also run the CLINC150 replay with simulated feedback")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="save PNG plots to this folder")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write every number to this JSON file")
    parser.add_argument("--embed-cache", type=Path, default=None, metavar="DIR",
                        help="folder of cached embeddings "
                        "(default: $SEMCACHE_HOME/eval-embeddings)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/BLAS threads (default 1: the machine is shared)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _limit_threads(n: int) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, n))
    except ImportError:  # pragma: no cover - torch comes with sentence-transformers
        pass
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(max(1, n))
    except ImportError:  # pragma: no cover
        pass


def run(args: argparse.Namespace) -> int:
    """``semcache eval``: print the tables, optionally save plots and JSON."""
    from semcache.embedding import default_embedder

    _limit_threads(args.threads)
    if args.guards == "none":
        guards: list[GuardFn] = []
    else:
        from semcache.guards import default_guards

        guards = list(default_guards())
    datasets = ("qqp", "clinc150") if args.data == "all" else (args.data,)
    embedder = default_embedder()
    if args.threshold is not None and not (-1.0 <= args.threshold <= 1.0):
        print("semcache eval: --threshold must be a cosine in [-1, 1]", file=sys.stderr)
        return 2
    try:
        ev = evaluate(
            embedder=embedder,
            embed_dir=args.embed_cache or default_embed_dir(),
            datasets=datasets,
            clinc_split=args.clinc_split,
            threshold=args.threshold,
            guards=guards,
            qqp_limit=args.qqp_limit,
            real_cache=not args.no_cache_run,
            with_feedback=args.feedback,
            plot_dir=args.plots,
            progress=not args.quiet,
        )
    except (ConfigError, EmbeddingError) as exc:
        print(f"semcache eval: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(ev.to_json(), indent=1))
        print(f"results: {args.json}")
    return 0
