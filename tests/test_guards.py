"""Guards veto the wrong-hit shapes cosine cannot see, keep true paraphrases, and plug into the cache."""

from __future__ import annotations

import pytest

from semcache import SemanticCache
from semcache.cache import Hit
from semcache.datasets import load_qqp_pairs
from semcache.embedding import SentenceTransformerEmbedder
from semcache.guards import (
    ALL_GUARDS,
    antonym_guard,
    dates_guard,
    default_guards,
    entity_guard,
    negation_guard,
    numbers_guard,
    order_guard,
    person_guard,
    swap_guard,
)

VETO = [
    (numbers_guard, "What are the top 10 Bollywood movies of 2016?",
     "What are the top 10 Bollywood movies of 2017?"),
    (numbers_guard, "How can I lose 10 kg in a month?", "How can I lose twenty kg in a month?"),
    (dates_guard, "book a flight for Monday", "book a flight for Friday"),
    (negation_guard, "Can I take ibuprofen with coffee?", "Why can't I take ibuprofen with coffee?"),
    (entity_guard, "What is the best time to visit Paris?", "What is the best time to visit Rome?"),
    (order_guard, "How do I convert USD to EUR?", "How do I convert EUR to USD?"),
    (swap_guard, "Is Python faster than Java?", "Is Java faster than Python?"),
    (person_guard, "tell me my name", "tell me your name"),
    (antonym_guard, "turn the volume up", "turn the volume down"),
    (swap_guard, "What do people in Seattle think of Denver?",
     "What do people in Denver think of Seattle?"),
]

KEEP = [
    ("How can I lose weight fast?", "What is the fastest way to lose weight?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("please flip a coin", "flip a coin please"),
    ("Is it a cat or a dog?", "Is it a dog or a cat?"),
    ("What are the top 10 movies of 2016?", "Which are the 10 best movies of 2016?"),
    ("how much have i spent recently", "how much have i recently spent"),
]


@pytest.mark.parametrize(("guard", "new", "stored"), VETO,
                         ids=[f"{g.__name__}-{i}" for i, (g, _, _) in enumerate(VETO)])
def test_guard_vetoes_its_shape(guard: object, new: str, stored: str) -> None:
    assert callable(guard)
    assert guard(new, stored, 0.95) is False
    assert guard(stored, new, 0.95) is False  # symmetric
    assert guard(new, new, 1.0) is True  # never vetoes a prompt against itself


@pytest.mark.parametrize(("new", "stored"), KEEP)
def test_default_guards_keep_paraphrases(new: str, stored: str) -> None:
    assert default_guards(), "default_guards() should enable the guards that paid off"
    for g in default_guards():
        assert g(new, stored, 0.9), g.__name__


def test_default_guards_keep_most_labelled_duplicates() -> None:
    # The first 2,000 QQP dev pairs labelled duplicate: the default guards are measured
    # to cost few of them; if a change makes them veto one in ten, it is a regression.
    dups = [p for p in load_qqp_pairs(2000) if p.label == 1]
    guards = default_guards()
    kept = sum(all(g(p.text_b, p.text_a, 0.9) for g in guards) for p in dups)
    assert kept >= 0.9 * len(dups)


def test_every_guard_is_registered_and_typed() -> None:
    for name, g in ALL_GUARDS.items():
        assert callable(g), name
        assert g("same prompt", "same prompt", 1.0) is True


def test_guards_in_the_cache_veto_and_fall_through(embedder: SentenceTransformerEmbedder) -> None:
    with SemanticCache(store="memory", embedder=embedder, threshold=0.8,
                       guards=default_guards()) as guarded, \
            SemanticCache(store="memory", embedder=embedder, threshold=0.8, guards=()) as plain:
        for c in (guarded, plain):
            c.put("What do people in Seattle think of Denver?", "seattle-on-denver")
            c.put("What are the top 10 Bollywood movies of 2016?", "2016")
        q_swap = "What do people in Denver think of Seattle?"
        q_year = "What are the top 10 Bollywood movies of 2017?"
        assert isinstance(plain.get(q_swap), Hit)  # cosine alone serves the wrong answer
        assert isinstance(plain.get(q_year), Hit)
        assert not guarded.get(q_swap)
        assert not guarded.get(q_year)
        # A true paraphrase is still served through the guards.
        hit = guarded.get("What do people from Seattle think about Denver?")
        assert isinstance(hit, Hit) and hit.completion == "seattle-on-denver"
