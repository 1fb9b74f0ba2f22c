"""Long prompts: what the embedder cannot read still decides a hit (issue 25, item 7).

all-MiniLM-L6-v2 reads 256 tokens. Prompts sharing a long context and ending
with different questions (RAG, chat) used to embed identically and hit each
other at score 1.0. These tests use long real prompts from
``prompts/real_prompts.jsonl.gz`` as the shared context and the real model.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from semcache import MISS, Hit, SemanticCache
from semcache.datasets import load_real_prompts
from semcache.embedding import SentenceTransformerEmbedder
from semcache.prompts import DEFAULT_WINDOW_CHARS, Window, differing_spans, normalize_prompt
from tests.conftest import HashEmbedder

#: Questions and a paraphrase of each that the cache serves as short prompts (checked below).
PARAPHRASES = [
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I learn to play the guitar?", "How can I learn to play guitar?"),
]
OTHER = ["What is the capital of Germany?", "How do I change my email address?",
         "How do I learn to play the piano?"]


@functools.cache
def contexts(n: int = 3, min_chars: int = 4000) -> list[str]:
    return [r["prompt"] for r in load_real_prompts() if len(r["prompt"]) >= min_chars][:n]


def rag(context: str, question: str) -> str:
    return f"{context}\n\nQuestion: {question}"


@pytest.fixture
def cache(embedder: SentenceTransformerEmbedder) -> Any:
    with SemanticCache(store="memory", embedder=embedder) as c:
        yield c


def test_the_short_questions_hit_as_short_prompts(cache: SemanticCache) -> None:
    """The reference the long-prompt tests compare with."""
    for q, _ in PARAPHRASES:
        cache.put(q, q)
    for (q, para), other in zip(PARAPHRASES, OTHER, strict=True):
        hit = cache.get(para)
        assert isinstance(hit, Hit) and hit.completion == q, (para, hit)
        assert cache.get(other) is MISS


def test_shared_context_different_question_misses(cache: SemanticCache) -> None:
    """The reported failure: 3 of 3 hit at 1.0 before."""
    for ctx in contexts():
        cache.put(rag(ctx, PARAPHRASES[0][0]), "Paris")
        for other in OTHER:
            assert cache.get(rag(ctx, other)) is MISS, other


def test_shared_context_paraphrased_question_hits(cache: SemanticCache) -> None:
    for i, ctx in enumerate(contexts()):
        q, para = PARAPHRASES[i]
        cache.put(rag(ctx, q), q)
        hit = cache.get(rag(ctx, para))
        assert isinstance(hit, Hit) and hit.completion == q and not hit.exact
        # The score is the cosine of the differing parts (the questions), not of the contexts.
        short = cache.embedder.encode([q, para])
        expected = float(short[0] @ short[1])
        assert -1.0 <= hit.score <= 1.0
        assert hit.score == pytest.approx(expected, abs=2e-3), (hit.score, expected)


def test_same_question_in_another_context_misses(cache: SemanticCache) -> None:
    a, b, c = contexts()
    cache.put(rag(a, PARAPHRASES[0][0]), "about a")
    assert cache.get(rag(b, PARAPHRASES[0][0])) is MISS
    assert cache.get(rag(c, PARAPHRASES[0][1])) is MISS
    # A sentence of the context replaced, far from where the embedder reads: the
    # replaced sentences are compared by the embedder, like two short prompts.
    first = a.index(". ") + 2
    edited = "Write a short poem about cats in winter. " + a[first:]
    assert cache.get(rag(edited, PARAPHRASES[0][0])) is MISS


def test_question_before_a_long_fixed_suffix(cache: SemanticCache) -> None:
    """Templates that append long instructions after the user's text."""
    rules = contexts()[0]
    q, para = PARAPHRASES[1]
    cache.put(f"User asks: {q}\n\nFollow these rules: {rules}", "reset link")
    hit = cache.get(f"User asks: {para}\n\nFollow these rules: {rules}")
    assert isinstance(hit, Hit) and hit.completion == "reset link"
    assert cache.get(f"User asks: {OTHER[1]}\n\nFollow these rules: {rules}") is MISS


def test_one_prompt_extending_the_other_misses(cache: SemanticCache) -> None:
    ctx = contexts()[0]
    cache.put(rag(ctx, PARAPHRASES[0][0]), "Paris")
    assert cache.get(rag(ctx, PARAPHRASES[0][0]) + " Also, what is its population?") is MISS
    assert cache.get(ctx) is MISS


def test_long_query_against_short_entry_misses(cache: SemanticCache) -> None:
    cache.put(PARAPHRASES[0][0], "Paris")
    assert cache.get(rag(contexts()[0], PARAPHRASES[0][1])) is MISS


def test_window_of_the_bundled_model(embedder: SentenceTransformerEmbedder) -> None:
    # 600 characters, a token each: a fresh window asks the tokenizer, not a character guess.
    assert not Window(embedder).fits("中文" * 300)
    w = Window(embedder)
    long = normalize_prompt(rag(contexts()[0], PARAPHRASES[0][0]))
    assert not w.fits(long)
    view = w.view(long)
    assert w.fits(view) and long.endswith(view) and view.endswith(PARAPHRASES[0][0])
    tokens = embedder.model.tokenizer(view, add_special_tokens=True)["input_ids"]
    assert len(tokens) <= embedder.model.max_seq_length
    # Most of the window is used: the view is not a needlessly short tail.
    assert len(tokens) >= embedder.model.max_seq_length - 16
    assert w.fits("short question?") and w.view("short question?") == "short question?"
    # Embedding the view is what the model reads of the whole prompt's end.
    v_view, v_tail = embedder.encode([view, long[-len(view):]])
    assert float(v_view @ v_tail) > 0.999


def test_window_of_other_embedders() -> None:
    class Declares(HashEmbedder):
        max_tokens = 64

    assert Window(HashEmbedder()).chars == DEFAULT_WINDOW_CHARS
    w = Window(Declares())
    assert w.chars == 62
    text = "word " * 100
    assert not w.fits(text.strip()) and len(w.view(text.strip())) <= 62
    assert Window(HashEmbedder()).fits("x" * DEFAULT_WINDOW_CHARS)
    assert not Window(HashEmbedder()).fits("x" * (DEFAULT_WINDOW_CHARS + 1))


def test_long_prompts_with_a_hash_embedder_decide_by_the_differing_part() -> None:
    """No model: the same mechanism with the default 1,024-character window."""
    ctx = "Some shared context sentence. " * 100
    with SemanticCache(store="memory", embedder=HashEmbedder(), guards=()) as cache:
        cache.put(ctx + "Question: what is x?", "x")
        assert cache.get(ctx + "Question: what is y?") is MISS
        hit = cache.get(ctx + "Question: what is x?")
        assert isinstance(hit, Hit) and hit.exact


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Doc one. What is X?", "Doc one. What is Y?", ("What is X?", "What is Y?")),
        ("Doc. Who wrote it? Thanks.", "Doc. Who is the author? Thanks.",
         ("Who wrote it? ", "Who is the author? ")),
        ("same", "same", ("", "")),
        ("A. B. C.", "A. B. D. C.", ("C.", "D. C.")),
        ("no boundaries here", "no boundaries there", ("no boundaries here", "no boundaries there")),
    ],
)
def test_differing_spans(a: str, b: str, expected: tuple[str, str]) -> None:
    assert differing_spans(a, b) == expected
    sa, sb = differing_spans(a, b)
    # Outside the spans the two texts are identical.
    i = a.find(sa) if sa else 0
    assert a[:i] == b[:i] and a[i + len(sa):] == b[i + len(sb):]


def test_differing_spans_of_a_megabyte_is_fast() -> None:
    import time

    big = "The quick brown fox jumps over the lazy dog. " * 23_000
    t0 = time.perf_counter()
    assert differing_spans(big + "What?", big + "Why?") == ("What?", "Why?")
    assert time.perf_counter() - t0 < 1.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = "".join(rng.choice(list("ab. ?"), size=int(rng.integers(0, 30))))
        t = "".join(rng.choice(list("ab. ?"), size=int(rng.integers(0, 30))))
        sa, sb = differing_spans(s, t)
        i = s.find(sa) if sa else len(s)
        if s != t:
            assert s[:i] == t[:i] and s[i + len(sa):] == t[i + len(sb):], (s, t, sa, sb)
