"""Follow-up questions in paraphrased and in different conversations: exact vs semantic context.

A chatbot's follow-up ("what gas is released as a byproduct?") means something only in
its conversation. With ``context_match="exact"`` (the default) a follow-up hits only
when every earlier turn is the same text; with ``"semantic"`` a paraphrased
conversation shares it. This replays the multi-turn sets of ``../shared/data/multiturn``
(held out: nothing was tuned on them) through the real OpenAI-style ``messages`` path
(:func:`semcache.split_messages`) and counts, for each mode in the same run:

- **paraphrased conversations** (``new_claude.json``: each conversation has a paraphrase
  of its first and of its follow-up question): the stored conversation is
  ``[u0, answer0, u1]``; the lookups are ``[u0', answer0, u1']`` (both paraphrased) and
  ``[u0', answer0, u1]`` (only the first turn paraphrased). A hit must return answer1.
- **different conversations** (every file): the follow-up of conversation i asked after
  the first turn of conversation j != i (sampled pairs). Any hit serves an answer given
  in another conversation: it is counted wrong.

Run: ``python benchmarks/multiturn_bench.py`` (about a minute on 2 cores). Writes
``benchmarks/results/multiturn_bench.txt`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from semcache import SemanticCache, split_messages
from semcache.datasets import load_multiturn
from semcache.progress import progress

RESULTS = Path(__file__).resolve().parent / "results"
CONTEXT_FILES = ("contextual_queries.json", "d1.json", "context2.json", "Synthetic_Dataset_Diverse.json")


def _conv(first: str, answer: str, follow: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
            {"role": "user", "content": follow}]


def _put(cache: SemanticCache, messages: list[dict[str, str]], answer: str) -> None:
    key = split_messages(messages)
    cache.put(key.prompt, answer, scope=key.scope(semantic=cache.context_match == "semantic"))


def _get(cache: SemanticCache, messages: list[dict[str, str]]) -> Any:
    key = split_messages(messages)
    return cache.get(key.prompt, scope=key.scope(semantic=cache.context_match == "semantic"))


def paraphrased(mode: str, rows: list[dict[str, str]]) -> dict[str, int]:
    """Hits and wrong hits of paraphrased conversations (new_claude.json)."""
    out = {"lookups": 0, "hits_both": 0, "wrong_both": 0, "hits_first": 0, "wrong_first": 0}
    with SemanticCache(store="memory", context_match=mode) as cache:
        for r in rows:
            _put(cache, [{"role": "user", "content": r["u0"]}], r["system_q0"])
            _put(cache, _conv(r["u0"], r["system_q0"], r["u1"]), r["system_q1"])
        for r in progress(rows, desc=f"paraphrased ({mode})"):
            out["lookups"] += 1
            for name, follow in (("both", r["u1_duplicate"]), ("first", r["u1"])):
                hit = _get(cache, _conv(r["u0_duplicate"], r["system_q0"], follow))
                if hit:
                    out[f"hits_{name}"] += 1
                    out[f"wrong_{name}"] += hit.completion != r["system_q1"]
    return out


def different(mode: str, rows: list[dict[str, str]], pairs: int, seed: int) -> dict[str, int]:
    """Wrong hits when a follow-up is asked after another conversation's first turn."""
    rng = random.Random(seed)
    out = {"lookups": 0, "hits": 0}
    with SemanticCache(store="memory", context_match=mode) as cache:
        for r in rows:
            _put(cache, _conv(r["Main Query"], r["Main Query Response"], r["Follow-Up Query"]),
                 r["Follow Up Query Response"])
        n = len(rows)
        drawn = ((rng.randrange(n), rng.randrange(n)) for _ in range(pairs * 2))
        chosen = [(i, j) for i, j in drawn if i != j]
        for i, j in chosen[:pairs]:
            a, b = rows[i], rows[j]
            if a["Follow-Up Query"] == b["Follow-Up Query"] and a["Main Query"] == b["Main Query"]:
                continue
            out["lookups"] += 1
            hit = _get(cache, _conv(b["Main Query"], b["Main Query Response"], a["Follow-Up Query"]))
            if hit and hit.completion != b["Follow Up Query Response"]:
                out["hits"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=300, help="different-conversation lookups per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="multiturn_bench")
    args = ap.parse_args()
    t0 = time.time()
    para_rows = load_multiturn("new_claude.json")
    lines = ["# Follow-ups across conversations: context_match exact vs semantic",
             f"# python benchmarks/multiturn_bench.py --pairs {args.pairs} --seed {args.seed}", ""]
    results: dict[str, Any] = {}
    for mode in ("exact", "semantic"):
        results[mode] = {"paraphrased": paraphrased(mode, para_rows)}
        for name in CONTEXT_FILES:
            rows = [r for r in load_multiturn(name) if isinstance(r, dict) and "Follow-Up Query" in r]
            results[mode][name] = different(mode, rows, args.pairs, args.seed)
    lines.append(f"paraphrased conversations (new_claude.json, {len(para_rows)} conversations): "
                 "follow-up hits (wrong) after a paraphrased first turn")
    lines.append(f"{'mode':>9} | {'follow-up paraphrased':>22} | {'follow-up same words':>21}")
    for mode in ("exact", "semantic"):
        p = results[mode]["paraphrased"]
        lines.append(f"{mode:>9} | {p['hits_both']:>4} / {p['lookups']} ({p['wrong_both']} wrong)"
                     f"{'':>6} | {p['hits_first']:>4} / {p['lookups']} ({p['wrong_first']} wrong)")
    lines += ["", "different conversations: a follow-up asked after another conversation's first turn "
              "(every hit is wrong)"]
    lines.append(f"{'file':>32} | " + " | ".join(f"{m:>16}" for m in ("exact", "semantic")))
    for name in CONTEXT_FILES:
        cells = [f"{results[m][name]['hits']:>4} / {results[m][name]['lookups']:<4} wrong" for m in
                 ("exact", "semantic")]
        lines.append(f"{name:>32} | " + " | ".join(f"{c:>16}" for c in cells))
    lines += ["", f"wall time {time.time() - t0:.0f} s"]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.txt").write_text(text + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, RESULTS / f"{args.out}.png")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    modes = ("exact", "semantic")
    p = [results[m]["paraphrased"] for m in modes]
    x = range(len(modes))
    ax1.bar([i - 0.2 for i in x], [q["hits_both"] - q["wrong_both"] for q in p], 0.4, label="right hits")
    ax1.bar([i + 0.2 for i in x], [q["wrong_both"] for q in p], 0.4, label="wrong hits", color="tab:red")
    ax1.set_xticks(list(x), modes)
    ax1.set_title(f"paraphrased conversations ({p[0]['lookups']})")
    ax1.legend()
    wrong = [sum(results[m][f]["hits"] for f in CONTEXT_FILES) for m in modes]
    total = [sum(results[m][f]["lookups"] for f in CONTEXT_FILES) for m in modes]
    ax2.bar(list(x), wrong, color="tab:red")
    ax2.set_xticks(list(x), modes)
    ax2.set_title(f"different conversations: wrong hits of {total[0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
