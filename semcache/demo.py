"""``semcache demo``: replay real prompts through a cache in front of a stand-in LLM.

Two replays, each in its own scope of one cache on local disk:

CLINC150
    The cache is warmed with the train split (15,000 queries, each stored with
    the answer of its intent, as if an LLM had answered them), then test queries
    and out-of-scope queries go through ``@semantic_cache`` around a stand-in
    LLM. A hit is right when the served entry has the query's intent; every hit
    on an out-of-scope query is wrong; an in-scope miss is a miss that should
    have hit.
QQP
    For dev pairs, the first question is stored, then the second is asked. A hit
    on its own pair's question is right when the pair is labelled duplicate and
    wrong when labelled different; a hit on another pair's question has no label
    and is counted apart.

The stand-in LLM sleeps ``--llm-latency`` seconds per call (real LLM calls take
0.5-5 s; the default, 0.1 s, keeps the demo to a few minutes) and time saved is
measured, not assumed: the replay's wall time through the cache against the
queries times the stand-in's measured time per call.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semcache.scope import Scope

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="cache directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine threshold (default: the cache's)")
    parser.add_argument("--clinc", type=int, default=600,
                        help="CLINC150 test queries to replay (plus a fifth as many out-of-scope)")
    parser.add_argument("--qqp", type=int, default=400, help="QQP dev pairs to replay")
    parser.add_argument("--llm-latency", type=float, default=0.1,
                        help="seconds the stand-in LLM takes per call")
    parser.add_argument("--warm", type=int, default=None,
                        help="warm with only this many CLINC150 train queries (default: all 15,000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


@dataclass
class Tally:
    """Outcome counts of one replay."""

    name: str
    queries: int = 0
    hits: int = 0
    right: int = 0
    wrong: int = 0
    unlabelled: int = 0
    should_have_hit: int = 0
    llm_seconds: list[float] = field(default_factory=list)
    wall: float = 0.0

    def row(self) -> list[str]:
        judged = self.right + self.wrong
        return [
            self.name,
            str(self.queries),
            f"{self.hits / max(self.queries, 1):.1%}",
            f"{self.wrong / max(judged, 1):.1%}",
            str(self.unlabelled),
            str(self.should_have_hit),
        ]


def run(args: argparse.Namespace) -> int:
    from semcache.cache import SemanticCache
    from semcache.datasets import load_clinc150, load_qqp_pairs
    from semcache.decorator import semantic_cache
    from semcache.progress import progress
    from semcache.report import format_table

    rng = random.Random(args.seed)
    tmp = None
    directory = args.dir
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="semcache-demo-")
        directory = Path(tmp) / "cache"
    kwargs = {} if args.threshold is None else {"threshold": args.threshold}
    cache = SemanticCache(directory, **kwargs)
    print(f"semcache demo: cache at {directory}, threshold {cache.threshold}, "
          f"embedder {cache.fingerprint}")
    try:
        answers: dict[str, str] = {}
        calls: list[float] = []

        def stand_in_llm(prompt: str, dataset: str) -> str:
            """The 'LLM': slow, and it knows the right answer for every replayed prompt."""
            t0 = time.perf_counter()
            time.sleep(args.llm_latency)
            answer = answers[prompt]
            calls.append(time.perf_counter() - t0)
            return answer

        llm = semantic_cache(cache, prompt="prompt")(stand_in_llm)

        # ---- CLINC150 ---------------------------------------------------
        train = load_clinc150("train")
        if args.warm is not None:
            keep = sorted(rng.sample(range(len(train.texts)), min(args.warm, len(train.texts))))
            train = type(train)([train.texts[i] for i in keep], [train.intents[i] for i in keep])
        print(f"warming the cache with {len(train.texts)} CLINC150 train queries")
        warm_scope = _decorator_scope(llm, train.texts[0], "clinc")
        cache.put_many(train.texts, [_answer(i) for i in train.intents], scope=warm_scope,
                       progress=True)
        test = load_clinc150("test")
        oos = load_clinc150("oos_test")
        picks = rng.sample(range(len(test.texts)), min(args.clinc, len(test.texts)))
        oos_picks = rng.sample(range(len(oos.texts)), min(max(args.clinc // 5, 1), len(oos.texts)))
        replay = [(test.texts[i], test.intents[i]) for i in picks]
        replay += [(oos.texts[i], "oos") for i in oos_picks]
        rng.shuffle(replay)
        cache.reset_stats()
        clinc = Tally("CLINC150 test+oos")
        t0 = time.perf_counter()
        for text, intent in progress(replay, desc="CLINC150 replay", unit="q"):
            answers[text] = _answer(intent)
            n_calls = len(calls)
            out = llm(text, "clinc")
            clinc.queries += 1
            if len(calls) == n_calls:  # served from the cache
                clinc.hits += 1
                if out == _answer(intent) and intent != "oos":
                    clinc.right += 1
                else:
                    clinc.wrong += 1
            elif intent != "oos":
                clinc.should_have_hit += 1
        clinc.wall = time.perf_counter() - t0
        clinc.llm_seconds = calls[:]
        clinc_stats = cache.stats()

        # ---- QQP ----------------------------------------------------------
        pairs = load_qqp_pairs()
        chosen = rng.sample(pairs, min(args.qqp, len(pairs)))
        print(f"storing the first question of {len(chosen)} QQP dev pairs")
        own: dict[str, str] = {}
        for p in chosen:
            answers[p.text_a] = f"answer to: {p.text_a}"
            own[p.text_b] = p.text_a
        firsts = list(dict.fromkeys(p.text_a for p in chosen))
        cache.put_many(firsts, [answers[t] for t in firsts],
                       scope=_decorator_scope(llm, firsts[0], "qqp"), progress=True)
        calls.clear()
        cache.reset_stats()
        qqp = Tally("QQP dev pairs")
        t0 = time.perf_counter()
        for p in progress(chosen, desc="QQP replay", unit="q"):
            answers.setdefault(p.text_b, f"answer to: {p.text_b}")
            n_calls = len(calls)
            out = llm(p.text_b, "qqp")
            qqp.queries += 1
            if len(calls) == n_calls:
                qqp.hits += 1
                if out == answers[p.text_a]:
                    if p.label == 1:
                        qqp.right += 1
                    else:
                        qqp.wrong += 1
                else:
                    qqp.unlabelled += 1
            elif p.label == 1:
                qqp.should_have_hit += 1
        qqp.wall = time.perf_counter() - t0
        qqp.llm_seconds = calls[:]
        qqp_stats = cache.stats()
    finally:
        cache.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(format_table(
        ["replay", "queries", "hit rate", "wrong-hit rate", "unlabelled hits", "misses that should hit"],
        [clinc.row(), qqp.row()],
    ))
    print()
    rows = []
    for name, st in (("CLINC150", clinc_stats), ("QQP", qqp_stats)):
        for stage in ("embed", "index", "verify", "total"):
            if stage in st.latency_ms:
                p50, p99 = st.latency_ms[stage]
                rows.append([name, stage, f"{p50:.3f}", f"{p99:.3f}"])
    print("lookup latency (ms); 'total' includes the exact fast path, which embeds nothing")
    print(format_table(["replay", "stage", "p50", "p99"], rows))
    print()
    rows = []
    for t in (clinc, qqp):
        per_call = sum(t.llm_seconds) / max(len(t.llm_seconds), 1)
        without = t.queries * per_call
        rows.append([t.name, f"{without:.1f}", f"{t.wall:.1f}", f"{without - t.wall:.1f}",
                     f"{without / max(t.wall, 1e-9):.2f}x"])
    print(f"time with a {args.llm_latency * 1e3:.0f} ms stand-in LLM (s): every query calling the "
          "LLM vs the measured replay through the cache")
    print(format_table(["replay", "LLM only", "with cache", "saved", "speed-up"], rows))
    return 0


def _answer(intent: str) -> str:
    return f"[the answer for intent '{intent}']"


def _decorator_scope(fn: object, prompt: str, dataset: str) -> Scope:
    """The scope the decorated stand-in uses for ``dataset``, so warmed entries can hit."""
    key = fn.__cache_key__  # type: ignore[attr-defined]
    scope: Scope = key(prompt, dataset)[1]
    return scope
