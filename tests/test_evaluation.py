"""The evaluation harness: its numbers match brute force and the real cache (real model, real data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semcache import evaluation as ev
from semcache.cli import main as cli_main
from semcache.datasets import load_clinc150
from semcache.embedding import SentenceTransformerEmbedder
from semcache.guards import negation_guard, numbers_guard, order_guard

# Intents CLINC150 itself finds confusable (my name / your name, time / timezone,
# PTO balance / used): a slice where wrong hits actually happen.
INTENTS = ("user_name", "what_is_your_name", "time", "timezone", "pto_balance", "pto_used")


@pytest.fixture(scope="module")
def clinc_slice(embedder: SentenceTransformerEmbedder) -> ev.ReplayData:
    train, test, oos = load_clinc150("train"), load_clinc150("test"), load_clinc150("oos_test")
    keep = [i for i, it in enumerate(train.intents) if it in INTENTS]
    qkeep = [i for i, it in enumerate(test.intents) if it in INTENTS]
    queries = [test.texts[i] for i in qkeep] + oos.texts[:40]
    labels: list[str | None] = [test.intents[i] for i in qkeep] + [None] * 40
    return ev.replay_from_lists(
        "clinc_slice", [train.texts[i] for i in keep], [train.intents[i] for i in keep],
        queries, labels, embedder,
    )


def brute_force(data: ev.ReplayData, threshold: float) -> tuple[int, int, int]:
    """Hits, wrong hits and unlabelled hits by the definition, one query at a time."""
    hits = wrong = unlabelled = 0
    for q in range(len(data.queries)):
        scores = data.stored_vecs @ data.query_vecs[q]
        best = int(np.argmax(scores))
        if scores[best] >= threshold:
            hits += 1
            verdict = data.judge(q, best)
            wrong += verdict == 0
            unlabelled += verdict < 0
            assert (verdict == 1) == data.is_right(q, best)
    return hits, wrong, unlabelled


def test_sweep_matches_brute_force(clinc_slice: ev.ReplayData) -> None:
    top = ev.top_candidates(clinc_slice, k=5)
    s, r = ev.served(top)
    curve = ev.sweep("slice", s, r, int(clinc_slice.possible.sum()), (0.6, 0.7, 0.8, 0.9))
    for i, t in enumerate(curve.thresholds):
        hits, wrong, unlabelled = brute_force(clinc_slice, float(t))
        assert (int(curve.hits[i]), int(curve.wrong[i])) == (hits, wrong)
        assert unlabelled == 0  # CLINC labels every pair
    # The slice is confusable enough that the check is not vacuous.
    assert curve.wrong[0] > 0 and curve.hits[-1] > 0
    # Out-of-scope queries can never be right, and every in-scope query has a right entry.
    assert int(clinc_slice.possible.sum()) == int((clinc_slice.query_labels >= 0).sum())


def test_real_cache_agrees_with_sweep(
    clinc_slice: ev.ReplayData, embedder: SentenceTransformerEmbedder
) -> None:
    top = ev.top_candidates(clinc_slice, k=10)
    for guards in ((), (numbers_guard, negation_guard, order_guard)):
        veto = ev.guard_vetoes(clinc_slice, top, guards) if guards else None
        s, r = ev.served(top, veto)
        curve = ev.sweep("slice", s, r, int(clinc_slice.possible.sum()), (0.8,))
        res = ev.cache_replay(clinc_slice, embedder, threshold=0.8, guards=guards,
                              progress=False)
        assert (res.hits, res.wrong_hits) == (int(curve.hits[0]), int(curve.wrong[0]))
        assert res.queries == len(clinc_slice.queries)
        assert res.oos_queries == 40
        assert res.overhead_ms_p50 > 0


def test_guard_payoff_accounts_for_every_change(clinc_slice: ev.ReplayData) -> None:
    top = ev.top_candidates(clinc_slice, k=10)
    for r in ev.guard_payoff(clinc_slice, top, numbers_guard, (0.75, 0.85)):
        assert r["wrong"] - r["wrong_guarded"] == r["wrong_removed"]
        right0 = r["hits"] - r["wrong"]
        right1 = r["hits_guarded"] - r["wrong_guarded"]
        assert right0 - right1 == r["good_lost"]
        assert r["hits_guarded"] <= r["hits"]


def test_pair_curve_is_precision_and_recall(embedder: SentenceTransformerEmbedder,
                                            tmp_path: Path) -> None:
    pairs = ev.qqp_pairs(embedder, tmp_path, limit=120)
    curve = ev.pair_curve(pairs, (0.8,))
    called = pairs.cosine >= 0.8
    dup = pairs.labels == 1
    assert int(curve.hits[0]) == int(called.sum())
    assert curve.wrong_hit_rate[0] == pytest.approx(1 - (called & dup).sum() / called.sum())
    assert curve.recall[0] == pytest.approx((called & dup).sum() / dup.sum())
    # Cosines are the ones the cache computes: unit vectors of the normalised prompts.
    i = int(np.argmax(dup))
    va, vb = embedder.encode([pairs.text_a[i], pairs.text_b[i]])
    assert pairs.cosine[i] == pytest.approx(float(va @ vb), abs=1e-4)


def test_qqp_replay_labels_follow_duplicate_clusters(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    from semcache.datasets import load_qqp_pairs
    from semcache.prompts import normalize_prompt

    data = ev.qqp_replay(embedder, tmp_path, limit=120)
    pairs = load_qqp_pairs(120)
    label = dict(zip(data.stored, data.stored_labels.tolist(), strict=True))
    label.update(zip(data.queries, data.query_labels.tolist(), strict=True))
    row = {t: i for i, t in enumerate(data.stored)}
    qrow = {t: i for i, t in enumerate(data.queries)}
    for p in pairs:
        a, b = normalize_prompt(p.text_a), normalize_prompt(p.text_b)
        if p.label == 1:
            assert label[a] == label[b]
            assert data.judge(qrow[b], row[a]) == 1
        elif label[a] != label[b]:
            assert data.judge(qrow[b], row[a]) == 0  # a labelled different pair is wrong
    assert len(set(data.stored)) == len(data.stored)
    # The sweep agrees with brute force, unlabelled hits included.
    s, v = ev.served(ev.top_candidates(data, k=3))
    curve = ev.sweep("qqp", s, v, int(data.possible.sum()), (0.6, 0.8))
    for i, t in enumerate(curve.thresholds):
        assert brute_force(data, float(t)) == (
            int(curve.hits[i]), int(curve.wrong[i]), int(curve.unlabelled[i]))
    assert int(curve.unlabelled[0]) > 0  # other pairs' questions do get served


def test_feedback_lowers_wrong_hits(
    clinc_slice: ev.ReplayData, embedder: SentenceTransformerEmbedder
) -> None:
    runs = {fb: ev.feedback_replay(clinc_slice, embedder, threshold=0.75, feedback=fb,
                                   epochs=3, window=len(clinc_slice.queries), progress=False)
            for fb in (False, True)}
    base, fed = runs[False], runs[True]
    assert sum(base.wrong) > 0
    assert sum(fed.wrong) < sum(base.wrong)
    # Later passes are where feedback pays: the last window is cleaner with it.
    assert fed.wrong_hit_rate[-1] < base.wrong_hit_rate[-1]
    # ... and the cache still serves hits.
    assert fed.hit_rate[-1] > 0.5 * base.hit_rate[-1]


def test_cli_eval_writes_tables_plots_and_json(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               embedder: SentenceTransformerEmbedder) -> None:
    out = tmp_path / "eval.json"
    code = cli_main(["eval", "--data", "qqp", "--qqp-limit", "60", "--quiet",
                     "--embed-cache", str(tmp_path / "emb"), "--plots", str(tmp_path / "plots"),
                     "--json", str(out), "--threshold", "0.85"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrong-hit rate" in printed and "qqp_dev" in printed
    result = json.loads(out.read_text())
    assert {"qqp_dev_pairs", "qqp_dev"} <= set(result["curves"])
    assert result["replays"][0]["threshold"] == 0.85
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["precision_recall.png", "rates_vs_threshold.png"]


def test_precomputed_embedder_keeps_fingerprint_and_falls_back(
    embedder: SentenceTransformerEmbedder,
) -> None:
    vecs = embedder.encode(["what time is it"])
    pre = ev.PrecomputedEmbedder(["what time is it"], vecs, embedder)
    assert pre.fingerprint == embedder.fingerprint
    both = pre.encode(["what time is it", "what is my name"])
    assert np.allclose(both[0], vecs[0])
    assert np.allclose(both[1], embedder.encode(["what is my name"])[0], atol=1e-5)
