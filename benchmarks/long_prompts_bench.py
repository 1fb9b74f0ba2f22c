"""Long prompts that differ only at the end: does the cache tell them apart?

Each case is a long real prompt (``prompts/real_prompts.jsonl.gz``, >= 4,000
characters: ShareGPT and Arena-Hard conversations, documents, code) used as the
context of a RAG-style prompt ``context + "\\n\\nQuestion: " + q``. The cache
stores the prompt with the question ``a`` of a QQP dev pair and is asked:

* ``paraphrase``: the same context with ``b`` of a *duplicate* pair (should hit,
  as often as the short questions alone do);
* ``other question``: the same context with ``b`` of a *non-duplicate* pair
  (QQP's hard negatives: related but different questions; must not hit);
* ``other question, other case``: the next case's context with this case's
  question ``a``, for which the cache holds no answer in that context (must not
  hit; the entries of that context answer other questions).

The baseline, measured in the same run on the same caches, is the cache as it
was before (the embedder reads the head of the prompt, and nothing checks the
rest). The reference row is the same questions as short prompts, no context.

Run::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/long_prompts_bench.py --cases 120

Writes ``benchmarks/results/long_prompts.txt`` and ``long_prompts.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from tqdm import tqdm  # noqa: E402

from semcache import MISS, SemanticCache  # noqa: E402
from semcache.datasets import load_qqp_pairs, load_real_prompts  # noqa: E402
from semcache.embedding import default_embedder  # noqa: E402

RESULTS = ROOT / "results"


def build_cases(n: int, min_chars: int = 4000) -> list[dict[str, str]]:
    """``n`` cases: a long context, a duplicate pair and a non-duplicate pair of questions."""
    contexts = [r["prompt"] for r in load_real_prompts() if len(r["prompt"]) >= min_chars][:n]
    pairs = load_qqp_pairs(limit=4000)
    dup = [p for p in pairs if p.label == 1]
    neg = [p for p in pairs if p.label == 0]
    return [
        {"context": c, "a": dup[i].text_a, "b": dup[i].text_b,
         "na": neg[i].text_a, "nb": neg[i].text_b}
        for i, c in enumerate(contexts)
    ]


def rag(context: str, question: str) -> str:
    return f"{context}\n\nQuestion: {question}"


def old_behaviour(cache: SemanticCache) -> None:
    """The cache before this change: the embedder reads the head, nothing checks the rest."""
    cache._window.view = lambda text: text  # type: ignore[method-assign]
    cache._long_prompt_score = lambda query, stored: None  # type: ignore[method-assign]


def run(cases: list[dict[str, str]], mode: str, threshold: float) -> dict[str, Any]:
    """Counts of hits per kind of query for one cache ``mode``: new, old or short."""
    cache = SemanticCache(store="memory", embedder=default_embedder(), threshold=threshold)
    if mode == "old":
        old_behaviour(cache)
    short = mode == "short"
    counts = {"paraphrase": 0, "other question": 0, "other question, other case": 0}
    t0 = time.perf_counter()
    for c in tqdm(cases, desc=f"{mode}: put", leave=False):
        cache.put(c["a"] if short else rag(c["context"], c["a"]), "answer to a")
        cache.put(c["na"] if short else rag(c["context"], c["na"]), "answer to na")
    lookups = 0
    for i, c in enumerate(tqdm(cases, desc=f"{mode}: get", leave=False)):
        queries = {
            "paraphrase": c["b"] if short else rag(c["context"], c["b"]),
            "other question": c["nb"] if short else rag(c["context"], c["nb"]),
        }
        if not short:
            other = cases[(i + 1) % len(cases)]["context"]
            queries["other question, other case"] = rag(other, c["a"])
        for kind, q in queries.items():
            hit = cache.get(q)
            lookups += 1
            if hit is not MISS:
                counts[kind] += 1
    seconds = time.perf_counter() - t0
    cache.close()
    return {"mode": mode, "n": len(cases), "seconds": seconds, "lookups": lookups, **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=120)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args()
    cases = build_cases(args.cases)
    rows = [run(cases, mode, args.threshold) for mode in ("short", "old", "new")]
    lines = [
        f"long_prompts_bench: {len(cases)} long real prompts (>= 4,000 chars) as contexts, "
        f"QQP dev questions appended, threshold {args.threshold}, default guards",
        "hits out of n per kind of query (paraphrase should hit; the others must not)",
        "",
        f"{'cache':<34}{'paraphrase':>12}{'other question':>16}{'question of case i+1':>22}{'s':>8}",
    ]
    label = {"short": "reference: questions alone", "old": "before: head embedded, no check",
             "new": "after: end embedded + span check"}
    for r in rows:
        oc = "-" if r["mode"] == "short" else f"{r['other question, other case']}/{r['n']}"
        lines.append(f"{label[r['mode']]:<34}{r['paraphrase']:>8}/{r['n']:<3}"
                     f"{r['other question']:>12}/{r['n']:<3}{oc:>22}{r['seconds']:>8.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "long_prompts.txt").write_text(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["paraphrase", "other question", "other question, other case"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.27
    for j, r in enumerate(rows):
        vals = [0.0 if r["mode"] == "short" and k == kinds[2] else r[k] / r["n"] for k in kinds]
        ax.bar([i + (j - 1) * width for i in range(3)], vals, width, label=label[r["mode"]])
    ax.set_xticks(range(3), ["paraphrase\n(should hit)", "other question\n(must miss)",
                             "question of\nanother case (must miss)"])
    ax.set_ylabel("share of lookups that hit")
    ax.set_title(f"Long RAG-style prompts ({len(cases)} real contexts >= 4k chars)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "long_prompts.png", dpi=120)


if __name__ == "__main__":
    main()
