"""``semcache demo``: what the cache does, in about a minute, on real prompts.

Three short scenes, each printed as a small table:

1. **Replay.** A cache is warmed with the CLINC150 train queries of ``--intents``
   intents drawn at random (each stored with its intent's answer, as if an LLM had
   answered it), then held-out test queries of those intents and out-of-scope
   queries go through ``@semantic_cache`` around a stand-in LLM that sleeps
   ``--llm-latency`` seconds a call. A hit is right when the served entry has the
   query's intent; a hit on an out-of-scope query is wrong. Time saved is
   measured, not assumed: the replay's wall time through the cache (embedding,
   lookups, misses calling the LLM) against every query calling the stand-in.
2. **Wrong hits a guard catches.** Two QQP dev pairs labelled "different
   question" (swapped roles; another number) embed above the threshold; the
   cache without guards serves the stored answer, the default guards refuse it.
3. **A scope that isolates.** One tenant's answer is served to a paraphrase in the
   same tenant and model, and never to another tenant or another model.

The full numbers (thousands of labelled lookups, precision over the threshold,
guards, feedback) come from ``semcache eval``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from semcache.cache import SemanticCache

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intents", type=int, default=20,
                        help="CLINC150 intents drawn at random, of 150 (default 20: a minute on 2 cores)")
    parser.add_argument("--warm", type=int, default=100,
                        help="train queries stored per intent (default 100: all of them)")
    parser.add_argument("--queries", type=int, default=60,
                        help="held-out test queries of those intents replayed (plus a fifth as many "
                             "out-of-scope)")
    parser.add_argument("--llm-latency", type=float, default=0.5,
                        help="seconds the stand-in LLM takes per call (default 0.5; real calls take 0.5-5 s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine threshold (default: the cache's, 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="embedding threads (default: $SEMCACHE_THREADS, else 1: on a busy 2-core "
                             "machine one torch thread embedded a prompt in 34 ms p50, two in 252 ms)")


@dataclass
class Replay:
    """Outcome of the replay scene."""

    queries: int = 0
    hits: int = 0
    right: int = 0
    wrong: int = 0
    llm_calls: int = 0
    llm_seconds: float = 0.0
    wall: float = 0.0
    warm_entries: int = 0
    intents: int = 0
    warm_seconds: float = 0.0
    embed_ms: float = 0.0


def _answer(intent: str) -> str:
    return f"[the answer for intent '{intent}']"


def replay(cache: SemanticCache, args: argparse.Namespace) -> Replay:
    """Scene 1: warm from CLINC150 train, replay test + out-of-scope queries through the decorator."""
    from semcache.datasets import load_clinc150
    from semcache.decorator import semantic_cache

    rng = random.Random(args.seed)
    train = load_clinc150("train")
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in zip(train.texts, train.intents, strict=True):
        by_intent[intent].append(text)
    intents = set(rng.sample(sorted(by_intent), min(args.intents, len(by_intent))))
    warm = [(t, i) for i, texts in sorted(by_intent.items()) if i in intents
            for t in rng.sample(texts, min(args.warm, len(texts)))]
    test, oos = load_clinc150("test"), load_clinc150("oos_test")
    mine = [k for k, i in enumerate(test.intents) if i in intents]
    picks = rng.sample(mine, min(args.queries, len(mine)))
    lookups = [(test.texts[i], test.intents[i]) for i in picks]
    oos_n = min(max(args.queries // 5, 1), len(oos.texts))
    lookups += [(oos.texts[i], "oos") for i in rng.sample(range(len(oos.texts)), oos_n)]
    rng.shuffle(lookups)

    out = Replay()
    truth: dict[str, str] = {}

    def stand_in_llm(prompt: str) -> str:
        """The 'LLM': slow, and it knows the right answer to every replayed prompt."""
        t0 = time.perf_counter()
        time.sleep(args.llm_latency)
        out.llm_calls += 1
        out.llm_seconds += time.perf_counter() - t0
        return _answer(truth[prompt])

    llm = semantic_cache(cache)(stand_in_llm)
    scope = llm.__cache_key__(warm[0][0])[1]  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    cache.put_many([t for t, _ in warm], [_answer(i) for _, i in warm], scope=scope)
    out.warm_seconds = time.perf_counter() - t0
    out.warm_entries = len(warm)
    out.intents = len(intents)
    cache.reset_stats()
    t0 = time.perf_counter()
    for text, intent in lookups:
        truth[text] = intent
        calls = out.llm_calls
        answer = llm(text)
        out.queries += 1
        if out.llm_calls == calls:  # served from the cache
            out.hits += 1
            if intent != "oos" and answer == _answer(intent):
                out.right += 1
            else:
                out.wrong += 1
    out.wall = time.perf_counter() - t0
    out.embed_ms = cache.stats().latency_ms.get("embed", (0.0, 0.0))[0]
    return out


#: Scene 2: QQP dev pairs labelled "different question" that embed close together.
GUARD_PAIRS = (
    ("What happens when diesel is used in petrol engine?",
     "What happens if petrol is used in a diesel engine?"),
    ("How can I get 100000 followers on instagram?", "How can I get 50000 followers on Instagram?"),
)


def guard_scene(threshold: float | None) -> list[list[Any]]:
    """Scene 2: each pair's cosine, and its lookup without guards and with the default ones."""
    from semcache.cache import SemanticCache
    from semcache.embedding import default_embedder

    kwargs: dict[str, Any] = {} if threshold is None else {"threshold": threshold}
    rows: list[list[Any]] = []
    for stored, asked in GUARD_PAIRS:
        vecs = default_embedder().encode([stored, asked])
        row: list[Any] = [asked, f"{float(vecs[0] @ vecs[1]):.3f}"]
        for guards in ((), None):
            with SemanticCache(store="memory", guards=guards, **kwargs) as cache:
                cache.put(stored, f"answer to: {stored}")
                row.append("served: wrong" if cache.get(asked) else "miss")
        rows.append(row)
    return rows


def scope_scene(threshold: float | None) -> list[list[Any]]:
    """Scene 3: one tenant's entry, looked up from the same and from other scopes."""
    from semcache.cache import SemanticCache
    from semcache.scope import Scope

    kwargs: dict[str, Any] = {} if threshold is None else {"threshold": threshold}
    rows: list[list[Any]] = []
    with SemanticCache(store="memory", **kwargs) as cache:
        cache.put("What is your refund policy?", "acme: 30 days with a receipt",
                  scope=Scope(model="gpt-4o-mini", tenant="acme"))
        asks = (("acme", "gpt-4o-mini"), ("globex", "gpt-4o-mini"), ("acme", "gpt-4o"))
        for tenant, model in asks:
            hit = cache.get("what's the refund policy?", scope=Scope(model=model, tenant=tenant))
            rows.append([tenant, model, f"hit {hit.score:.3f}: '{hit.completion}'" if hit else "miss"])
    return rows


def run(args: argparse.Namespace) -> int:
    from semcache.cache import SemanticCache
    from semcache.report import format_table

    t_start = time.perf_counter()
    if args.threads is not None:
        # The embedders' one threads setting (every backend reads it when it is built).
        os.environ["SEMCACHE_THREADS"] = str(args.threads)
    kwargs: dict[str, Any] = {} if args.threshold is None else {"threshold": args.threshold}
    with SemanticCache(store="memory", **kwargs) as cache:
        print(f"semcache demo: threshold {cache.threshold} (cosine), embedder {cache.fingerprint}\n")
        r = replay(cache, args)
    # Every query calling the stand-in, at its measured time per call (sleep overshoots a little).
    without = r.queries * (r.llm_seconds / r.llm_calls if r.llm_calls else args.llm_latency)
    print(f"1. Replay: {r.warm_entries} CLINC150 train queries of {r.intents} intents stored "
          f"({r.warm_seconds:.1f} s to embed and index), then {r.queries} held-out queries (test queries "
          f"of those intents, a sixth of them out-of-scope) through @semantic_cache around a stand-in "
          f"LLM that takes {args.llm_latency:g} s a call")
    print(format_table(
        ["queries", "hits", "right", "wrong", "LLM calls", "LLM only (s)", "with cache (s)", "saved (s)"],
        [[r.queries, r.hits, r.right, r.wrong, r.llm_calls, f"{without:.1f}", f"{r.wall:.1f}",
          f"{without - r.wall:.1f}"]]))
    print(f"   A lookup embeds the prompt first ({r.embed_ms:.1f} ms p50 here) and a miss then pays the "
          f"LLM as well, so the cache saves time when hits x LLM time exceeds lookups x embedding time.\n")

    print("2. Wrong hits caught by a guard: each stored question, then its pair asked (QQP dev pairs "
          "labelled different)")
    for stored, _ in GUARD_PAIRS:
        print(f"   stored: {stored}")
    print(format_table(["asked", "cosine", "guards=()", "default guards"], guard_scene(args.threshold)))
    print()
    print("3. Scopes isolate: tenant acme stored 'What is your refund policy?' for gpt-4o-mini; "
          "'what's the refund policy?' asked by")
    print(format_table(["tenant", "model", "outcome"], scope_scene(args.threshold)))
    print(f"\ndemo took {time.perf_counter() - t_start:.0f} s. Full numbers on thousands of labelled "
          "lookups (hit rate, wrong-hit rate, guards, feedback): `semcache eval`")
    return 0
