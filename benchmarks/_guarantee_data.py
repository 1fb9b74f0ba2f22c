"""Held-out streams for ``benchmarks/guarantee_bench.py`` (data only; embeddings cached).

Each stream is: prompts stored first (with their oracle answer), then queries
replayed in a shuffled order through the cache; the oracle answer of a prompt
names its QQP duplicate cluster, its CLINC150 intent or its GPTCache mock pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from common import embed_cached

from semcache.datasets import load_clinc150, load_gptcache_mock, load_qqp_pairs
from semcache.prompts import normalize_prompt

#: Seed of the QQP cluster split (the one ``benchmarks/verifier_bench.py`` uses).
SPLIT_SEED = 0


@dataclass
class Stream:
    """Stored prompts and queries with oracle answers and embeddings (unit rows)."""

    name: str
    stored: list[str]
    stored_answers: list[str]
    stored_vecs: np.ndarray
    queries: list[str]
    query_answers: list[str]
    query_vecs: np.ndarray
    note: str


def _find(parent: dict[str, str], x: str) -> str:
    while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x])
        x = parent[x]
    return x


def qqp_heldout(max_pairs: int, seed: int = 1) -> Stream:
    """QQP dev split by question clusters (half held out, as in verifier_bench.py);
    ``max_pairs`` held-out pairs drawn at random. Answer = duplicate cluster (label-1 pairs)."""
    pairs = [(normalize_prompt(p.text_a), normalize_prompt(p.text_b), p.label)
             for p in load_qqp_pairs()]
    # Connected components of *all* pairs define the split (no question on both sides).
    comp: dict[str, str] = {}
    for a, b, _ in pairs:
        ra, rb = _find(comp, a), _find(comp, b)
        if ra != rb:
            comp[ra] = rb
    roots = sorted({_find(comp, t) for a, b, _ in pairs for t in (a, b)})
    rng = np.random.default_rng(SPLIT_SEED)
    held_roots = {r for r, u in zip(roots, rng.random(len(roots)), strict=True) if u < 0.5}
    held = [p for p in pairs if _find(comp, p[0]) in held_roots]
    pick = np.random.default_rng(seed).permutation(len(held))[:max_pairs]
    held = [held[i] for i in sorted(pick.tolist())]
    dup: dict[str, str] = {}
    for a, b, lab in pairs:  # duplicate clusters from every label-1 pair
        if lab == 1:
            ra, rb = _find(dup, a), _find(dup, b)
            if ra != rb:
                dup[ra] = rb
    names: dict[str, str] = {}

    def answer(t: str) -> str:
        return names.setdefault(_find(dup, t), f"qqp-cluster-{len(names)}")

    stored = list(dict.fromkeys(a for a, _, _ in held))
    queries = list(dict.fromkeys(b for _, b, _ in held))
    return Stream(
        "qqp_heldout", stored, [answer(t) for t in stored],
        embed_cached(stored, "guarantee_qqp_stored"), queries, [answer(t) for t in queries],
        embed_cached(queries, "guarantee_qqp_queries"),
        f"{len(held)} random pairs of the held-out half of QQP pairs_dev (question-cluster split, "
        f"seed {SPLIT_SEED}); stored text_a, queried text_b",
    )


def clinc_test(per_intent: int, test_per_intent: int = 10_000, oos: int = 10_000) -> Stream:
    """CLINC150: ``per_intent`` train prompts per intent stored; the first
    ``test_per_intent`` test prompts per intent and ``oos`` of oos_test queried.

    An out-of-scope query's answer is its own (any hit on it is wrong)."""
    tr = load_clinc150("train")
    seen: dict[str, int] = {}
    stored: list[str] = []
    answers: list[str] = []
    for text, intent in zip(tr.texts, tr.intents, strict=True):
        t = normalize_prompt(text)
        if seen.get(intent, 0) >= per_intent or t in stored:
            continue
        seen[intent] = seen.get(intent, 0) + 1
        stored.append(t)
        answers.append(intent)
    queries: list[str] = []
    q_answers: list[str] = []
    taken: dict[str, int] = {}
    for split in ("test", "oos_test"):
        c = load_clinc150(split)
        for i, (text, intent) in enumerate(zip(c.texts, c.intents, strict=True)):
            cap = oos if split == "oos_test" else test_per_intent
            if taken.get(intent, 0) >= cap:
                continue
            taken[intent] = taken.get(intent, 0) + 1
            queries.append(normalize_prompt(text))
            q_answers.append(intent if intent != "oos" else f"oos-{split}-{i}")
    return Stream(
        "clinc150_test", stored, answers, embed_cached(stored, "guarantee_clinc_stored"),
        queries, q_answers, embed_cached(queries, "guarantee_clinc_queries"),
        f"CLINC150: first {per_intent} train prompts per intent stored; first {test_per_intent} "
        f"test prompts per intent and {oos} oos_test queried",
    )


def gptcache_mock() -> Stream:
    """GPTCache mock pairs: every origin stored, every ``similar`` queried; answer = pair."""
    rows = load_gptcache_mock()
    stored: list[str] = []
    answers: list[str] = []
    first: dict[str, str] = {}
    for i, (o, _) in enumerate(rows):
        t = normalize_prompt(o)
        if t not in first:
            first[t] = f"mock-{i}"
            stored.append(t)
            answers.append(first[t])
    queries = [normalize_prompt(s) for _, s in rows]
    q_answers = [first[normalize_prompt(o)] for o, _ in rows]
    return Stream(
        "gptcache_mock", stored, answers, embed_cached(stored, "guarantee_mock_stored"),
        queries, q_answers, embed_cached(queries, "guarantee_mock_queries"),
        "GPTCache mock_data.json: origins stored, similars queried",
    )


if __name__ == "__main__":
    import sys

    for s in (gptcache_mock(), clinc_test(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])),
              qqp_heldout(int(sys.argv[4]))):
        print(s.name, len(s.stored), len(s.queries), s.stored_vecs.shape)
