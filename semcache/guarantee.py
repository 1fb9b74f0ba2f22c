"""An online wrong-hit guarantee: serve a semantic hit only when its wrong rate is provably low.

A static cosine threshold calibrated on some data sets does not carry to others
(issue #24: ``target_wrong_hit_rate=0.05`` served 10.9% wrong hits on held-out
QQP and 47.5% on adversarial word order). :class:`WrongRateLearner` instead
learns, from the deployment's own labelled evidence, the lowest similarity
*cut* ``c`` above which the share of wrong hits is at most ``r`` with stated
confidence, and answers for each would-be hit ``serve`` or ``probe``:

* **Evidence** is a pair ``(score, correct)``: a would-be hit at cosine
  ``score`` whose stored answer was (or was not) the right one. It comes from
  *probes* (the cache returns a miss instead of the would-be hit; the caller's
  LLM answers, and the fresh answer is compared with the stored one) and from
  explicit :meth:`~semcache.cache.SemanticCache.feedback`. Counts are kept in
  bins of width ``bin_width`` between ``floor`` and 1.
* **Bound.** For a cut ``c``, with ``n(c)`` labels at scores ``>= c`` of which
  ``k(c)`` wrong, the Clopper-Pearson upper bound ``U(k, n, a)`` (exact
  binomial, one-sided level ``a``) bounds the wrong rate of hits at scores
  ``>= c``. The learner tests a fixed grid of ``m`` cuts (chosen before any
  evidence: an even grid plus the static calibration's thresholds, the prior)
  at level ``a = delta_j / m`` (Bonferroni: every cut's bound holds at once), and
  serves at the lowest cut whose bound is ``<= r``.
* **Over time.** The cut is recomputed only at evidence checkpoints
  ``n_j = ceil(first * growth**j)`` with ``delta_j = delta / ((j + 1)(j + 2))``,
  which sums to ``delta`` over all checkpoints: with probability at least
  ``1 - delta`` (``confidence``) every cut the learner ever serves at has a
  true wrong rate ``<= r``.
* **Audits.** Above the cut a would-be hit is still probed with probability
  ``max(min_audit, audit / (audit + n(cut)))``, so evidence keeps arriving from
  the served region (drift is noticed) while probes grow rarer as evidence grows.

Assumptions, stated plainly: labels are right (an answer comparison that
calls a wrong answer right breaks the promise; one that calls a right answer
wrong only costs hits); and evidence at scores ``>= c`` is at least as bad as
the hits served there. The second holds when the chance of a wrong hit does not
grow with the score: probes sample the region just above the current cut more
densely (every would-be hit below the cut is probed, above it only audits), so
the evidence leans to lower scores than the served hits do. With exchangeable
traffic the union of the two statements is the guarantee; it is *not* robust
to an adversary who changes the traffic after the cut was certified, except
through the audits.

The learner is pure (numpy + scipy, no I/O); :meth:`to_bytes` /
:meth:`from_bytes` / :meth:`merge_delta` let the cache persist and share it.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy.stats import beta

from semcache.errors import ConfigError

__all__ = [
    "AnswerMatcher",
    "Decision",
    "EvidenceStore",
    "WrongRateLearner",
    "clopper_pearson_upper",
    "prior_cuts",
]

IntArray = npt.NDArray[np.int64]

#: Lowest cosine the learner ever considers (below it a candidate is a plain miss).
DEFAULT_FLOOR: Final = 0.5
_FORMAT: Final = 1


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided exact upper confidence bound of a binomial rate.

    Parameters
    ----------
    k, n : int
        Wrong labels among ``n`` labels (``0 <= k <= n``).
    alpha : float
        Level: the true rate exceeds the bound with probability at most ``alpha``.

    Returns
    -------
    float
        In [0, 1]; 1.0 when ``n == 0`` or ``k == n``.
    """
    if n <= 0 or k >= n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a would-be hit.

    Attributes
    ----------
    action : {"serve", "probe"}
    cut : float or None
        The certified cut (None: nothing certified yet).
    bound : float
        Upper bound on the wrong rate of hits served at the cut (1.0 when uncertified).
    """

    action: Literal["serve", "probe"]
    cut: float | None
    bound: float


def prior_cuts(prior: Sequence[float] = (), floor: float = DEFAULT_FLOOR,
               step: float = 0.05) -> list[float]:
    """The fixed grid of cuts tested: ``floor, floor + step, ..., < 1`` plus prior thresholds.

    The grid must not depend on the evidence (it sets the Bonferroni factor), so
    it is chosen up front from the static calibration (``prior``).
    """
    grid = {round(floor + step * i, 4) for i in range(int((1.0 - floor) / step) + 1)}
    grid |= {round(float(p), 4) for p in prior if floor <= p < 1.0}
    return sorted(c for c in grid if c < 1.0)


class WrongRateLearner:
    """Learns the lowest cosine cut whose wrong-hit rate is provably at most ``target``.

    Parameters
    ----------
    target : float
        ``r``: allowed share of wrong hits, in (0, 1).
    confidence : float
        ``1 - delta``: probability that every cut served at meets ``target``.
    cuts : sequence of float, optional
        Candidate cuts (default :func:`prior_cuts` ``()``); fixed up front.
    floor : float
        Scores below it are not learned from (a candidate below is a plain miss).
    bin_width : float
        Width of the evidence bins; cuts are snapped down to bin edges.
    first, growth : float
        Checkpoints at ``ceil(first * growth**j)`` labels.
    audit, min_audit : float
        Probe probability above the cut: ``max(min_audit, audit / (audit + n(cut)))``.
    seed : int, optional
        Seed of the audit coin (tests).
    """

    def __init__(
        self,
        target: float,
        *,
        confidence: float = 0.95,
        cuts: Sequence[float] | None = None,
        floor: float = DEFAULT_FLOOR,
        bin_width: float = 0.005,
        first: float = 10.0,
        growth: float = 1.5,
        audit: float = 10.0,
        min_audit: float = 0.005,
        seed: int | None = None,
    ) -> None:
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target < 1:
            raise ConfigError(f"target_wrong_hit_rate must be a number in (0, 1), got {target!r}")
        if not 0.5 <= confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {confidence!r}")
        if not -1.0 <= floor < 1.0 or not 0 < bin_width <= 0.1:
            raise ConfigError("floor must be in [-1, 1) and bin_width in (0, 0.1]")
        if first < 1 or growth <= 1 or audit < 0 or not 0 <= min_audit <= 1:
            raise ConfigError("need first >= 1, growth > 1, audit >= 0, 0 <= min_audit <= 1")
        self.target = float(target)
        self.confidence = float(confidence)
        self.floor = float(floor)
        self.bin_width = float(bin_width)
        self.n_bins = math.ceil((1.0 - self.floor) / self.bin_width - 1e-9)
        raw = prior_cuts((), self.floor) if cuts is None else list(cuts)
        idx = sorted({self._bin(c) for c in raw if self.floor <= c < 1.0})
        if not idx:
            raise ConfigError("no cut in [floor, 1)")
        self._cut_bins: IntArray = np.array(idx, dtype=np.int64)
        self.first = float(first)
        self.growth = float(growth)
        self.audit = float(audit)
        self.min_audit = float(min_audit)
        self._rng = random.Random(seed)
        self.right: IntArray = np.zeros(self.n_bins, dtype=np.int64)
        self.wrong: IntArray = np.zeros(self.n_bins, dtype=np.int64)
        self._checkpoint = -1
        self._cut_bin: int | None = None
        self._cut_bound = 1.0
        self._n = 0
        self._tail: list[int] | None = None

    # ----------------------------------------------------------- evidence
    def bin_of(self, score: float) -> int:
        """Evidence bin of a cosine (clipped to the bins)."""
        return self._bin(score)

    def _bin(self, score: float) -> int:
        i = math.floor((float(score) - self.floor) / self.bin_width + 1e-9)
        return min(max(i, 0), self.n_bins - 1)

    def edge(self, b: int) -> float:
        """Lower edge (a cosine) of bin ``b``."""
        return round(self.floor + b * self.bin_width, 6)

    @property
    def n(self) -> int:
        """Labels seen."""
        return self._n

    @property
    def n_tail(self) -> list[int]:
        """``n_tail[b]``: labels in bins ``>= b``."""
        if self._tail is None:
            self._tail = np.cumsum((self.right + self.wrong)[::-1])[::-1].tolist()
        return self._tail

    def add(self, score: float, correct: bool, count: int = 1) -> None:
        """Record ``count`` labels of would-be hits at cosine ``score`` (ignored below ``floor``)."""
        if not math.isfinite(score) or score < self.floor:
            return
        b = self._bin(score)
        (self.right if correct else self.wrong)[b] += int(count)
        self._changed()

    def add_counts(self, right: IntArray, wrong: IntArray) -> None:
        """Add per-bin label counts (another process's evidence)."""
        self.right += np.asarray(right, dtype=np.int64)
        self.wrong += np.asarray(wrong, dtype=np.int64)
        self._changed()

    def _changed(self) -> None:
        self._n = int(self.right.sum() + self.wrong.sum())
        self._tail = None
        self._update()

    # -------------------------------------------------------------- bound
    def checkpoint_of(self, n: int) -> int:
        """Index ``j`` of the last checkpoint ``ceil(first * growth**j) <= n`` (-1: none)."""
        if n < self.first:
            return -1
        j = math.floor(math.log(n / self.first) / math.log(self.growth) + 1e-12)
        while math.ceil(self.first * self.growth ** (j + 1)) <= n:
            j += 1
        while j >= 0 and math.ceil(self.first * self.growth**j) > n:
            j -= 1
        return j

    def alpha(self, j: int) -> float:
        """Per-cut level at checkpoint ``j``: ``delta / ((j + 1)(j + 2)) / m``."""
        delta = 1.0 - self.confidence
        return delta / ((j + 1) * (j + 2)) / len(self._cut_bins)

    def counts_above(self, cut: float) -> tuple[int, int]:
        """``(n, k)``: labels and wrong labels at scores ``>= cut``."""
        b = self._bin(cut)
        return int(self.right[b:].sum() + self.wrong[b:].sum()), int(self.wrong[b:].sum())

    def bound(self, cut: float, j: int | None = None) -> float:
        """Upper bound on the wrong rate at scores ``>= cut`` at checkpoint ``j``'s level
        (default: the current checkpoint)."""
        jj = max(0, self._checkpoint if j is None else j)
        n, k = self.counts_above(cut)
        return clopper_pearson_upper(k, n, self.alpha(jj))

    def _update(self) -> None:
        j = self.checkpoint_of(self.n)
        if j <= self._checkpoint:
            return
        self._checkpoint = j
        tail_w = np.cumsum(self.wrong[::-1])[::-1][self._cut_bins]
        tail_n = np.cumsum((self.right + self.wrong)[::-1])[::-1][self._cut_bins]
        ok = (tail_n > 0) & (tail_w < tail_n)
        upper = np.ones(len(self._cut_bins))
        if ok.any():  # one vectorised Clopper-Pearson call for every cut
            upper[ok] = beta.ppf(1.0 - self.alpha(j), tail_w[ok] + 1, tail_n[ok] - tail_w[ok])
        passing = np.flatnonzero(upper <= self.target)
        self._cut_bin, self._cut_bound = None, 1.0
        if len(passing):  # the lowest passing cut: every cut's bound holds at once
            i = int(passing[0])
            self._cut_bin, self._cut_bound = int(self._cut_bins[i]), float(upper[i])

    @property
    def cut(self) -> float | None:
        """The certified cut, or None."""
        return None if self._cut_bin is None else self.edge(self._cut_bin)

    @property
    def cut_bound(self) -> float:
        """The bound certified at :attr:`cut` (1.0 when none)."""
        return self._cut_bound

    def audit_rate(self) -> float:
        """Probability of probing a would-be hit above the cut."""
        if self._cut_bin is None:
            return 1.0
        n_above = self.n_tail[self._cut_bin]
        return max(self.min_audit, self.audit / (self.audit + n_above)) if self.audit else \
            self.min_audit

    def decide(self, score: float) -> Decision:
        """Serve a would-be hit at cosine ``score``, or probe it."""
        cut = self.cut
        if cut is None or score < cut - 1e-9:
            return Decision("probe", cut, self._cut_bound)
        if self._rng.random() < self.audit_rate():
            return Decision("probe", cut, self._cut_bound)
        return Decision("serve", cut, self._cut_bound)

    # -------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """Evidence as JSON (what processes share; the cut is recomputed from it)."""
        return json.dumps({
            "format": _FORMAT, "floor": self.floor, "bin_width": self.bin_width,
            "right": self.right.tolist(), "wrong": self.wrong.tolist(),
        }).encode()

    @staticmethod
    def counts_from_bytes(raw: bytes, floor: float, bin_width: float
                          ) -> tuple[IntArray, IntArray] | None:
        """Per-bin ``(right, wrong)`` counts from :meth:`to_bytes`, or None when unreadable or
        binned differently."""
        try:
            d: dict[str, Any] = json.loads(raw)
            if (d.get("format") != _FORMAT or d.get("floor") != floor
                    or d.get("bin_width") != bin_width):
                return None
            right = np.asarray(d["right"], dtype=np.int64)
            wrong = np.asarray(d["wrong"], dtype=np.int64)
        except (ValueError, KeyError, TypeError):
            return None
        if right.shape != wrong.shape or right.ndim != 1 or (right < 0).any() or (wrong < 0).any():
            return None
        return right, wrong

    def load_counts(self, right: IntArray, wrong: IntArray) -> None:
        """Replace the evidence (a fresh read of the shared state)."""
        if right.shape != (self.n_bins,) or wrong.shape != (self.n_bins,):
            raise ConfigError("evidence has another number of bins")
        shrank = int(right.sum() + wrong.sum()) < self.n
        self.right = right.astype(np.int64, copy=True)
        self.wrong = wrong.astype(np.int64, copy=True)
        if shrank:  # the store was cleared: start over
            self._checkpoint, self._cut_bin, self._cut_bound = -1, None, 1.0
        self._changed()


class EvidenceStore(Protocol):
    """Where learners keep their evidence: the cache's store blobs."""

    def get_blob(self, name: str) -> bytes | None: ...

    def set_blob(self, name: str, data: bytes) -> None: ...


# ------------------------------------------------------------------ answers
_WS = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def _answer_text(value: Any) -> str:
    """The text of a completion: a string, an OpenAI chat/completion dict, or canonical JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            c0 = choices[0]
            msg = c0.get("message")
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                return str(msg["content"])
            if isinstance(c0.get("text"), str):
                return str(c0["text"])
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def normalize_answer(value: Any) -> str:
    """NFKC, case-folded, white space folded, punctuation trimmed at both ends."""
    t = unicodedata.normalize("NFKC", _answer_text(value)).casefold()
    return _EDGE_PUNCT.sub("", _WS.sub(" ", t).strip())


class AnswerMatcher:
    """Default ``answers_match(cached, fresh) -> bool``.

    Short answers (at most ``short_words`` words after :func:`normalize_answer`)
    match only when equal: labels, numbers, yes/no, JSON. Longer free text
    matches when the cosine of the two answers' embeddings is at least ``cut``
    (sampling noise at temperature > 0 rewords an answer; it rarely changes what
    it says). The cut is deliberately high: calling a wrong answer right would
    break the promise, calling a right one wrong only costs a hit.

    Parameters
    ----------
    embed : callable, optional
        ``list[str] -> (n, d)`` unit rows; None: free text must match exactly too.
    cut : float
        Cosine two long answers need to count as the same answer.
    short_words : int
        Answers up to this many words are compared exactly.
    """

    def __init__(self, embed: Callable[[list[str]], Any] | None = None, *, cut: float = 0.9,
                 short_words: int = 12) -> None:
        if not -1.0 <= cut <= 1.0:
            raise ConfigError(f"answer cut must be a cosine in [-1, 1], got {cut!r}")
        self.embed = embed
        self.cut = float(cut)
        self.short_words = int(short_words)

    def __call__(self, cached: Any, fresh: Any) -> bool:
        a, b = normalize_answer(cached), normalize_answer(fresh)
        if a == b:
            return True
        if self.embed is None or max(len(a.split()), len(b.split())) <= self.short_words:
            return False
        v = np.asarray(self.embed([a, b]), dtype=np.float64)
        return bool(float(v[0] @ v[1]) >= self.cut)
