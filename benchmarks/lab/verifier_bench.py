"""Does a learned pair verifier on MiniLM features cut wrong hits at the same hit rate?

Protocol (one run, all numbers from the same embeddings as ``quality_bench.py``):

1. QQP dev pairs are split by *connected question clusters* (components of the
   graph of all labelled pairs, label 0 or 1): a question and every question it is
   paired with land on the same side, so the held-out part shares no question
   with the training part. Half the clusters train, half are held out.
2. :class:`pair_verifier.PairVerifier` (logistic regression and a small MLP; in this folder) is
   fitted on the train-part pairs; variant ``+clinc`` also sees CLINC150 pairs
   mined from train -> val (+ oos_val, oos_train) top-5 candidates (same intent =
   1, other intent or out of scope = 0). CLINC150 test is never seen.
3. Replays: held-out QQP (store the held-out ``text_a``, look up the held-out
   ``text_b``) and CLINC150 train -> test + oos_test. Baseline: cosine + the
   default guards (today's semcache); "cosine alone" is shown too (what GPTCache
   does). Verifier: candidates with cosine >= a pre-filter threshold, default
   guards, then the verifier vetoes candidates with ``P < p_min``; the cache walks
   to the next candidate as it does for any guard. ``p_min`` is swept.
4. At the hit rate of the baseline at thresholds 0.85 / 0.9 / 0.95, the wrong
   hits of each curve are read off (linear interpolation along the curve) and the
   ratio verifier / baseline is printed (goal of issue #5: <= 0.5).
5. Cost: the guard adapter (embeds both prompts per candidate) vs the vector path
   (features from vectors the cache already holds), per candidate.

Run: ``.venv/bin/python benchmarks/lab/verifier_bench.py``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # benchmarks/
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from common import CACHE_DIR, RESULTS_DIR, print_table  # noqa: E402
from pair_verifier import PairVerifier, pair_features  # noqa: E402

from semcache import evaluation as ev  # noqa: E402
from semcache.datasets import load_qqp_pairs  # noqa: E402
from semcache.embedding import default_embedder  # noqa: E402
from semcache.guards import default_guards  # noqa: E402
from semcache.prompts import normalize_prompt  # noqa: E402

K = 5
PREFILTERS = (0.75, 0.8, 0.85)
BASE_THRESHOLDS = (0.85, 0.9, 0.95)
P_GRID = np.round(np.linspace(0.0, 1.0, 401), 4)
SEED = 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data
def qqp_split(full: ev.ReplayData) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]],
                                            ev.ReplayData]:
    """Train pairs, held-out pairs, and the held-out replay (split by question clusters)."""
    pairs = [(normalize_prompt(p.text_a), normalize_prompt(p.text_b), p.label)
             for p in load_qqp_pairs()]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    roots = sorted({find(t) for a, b, _ in pairs for t in (a, b)})
    rng = np.random.default_rng(SEED)
    held_roots = {r for r, u in zip(roots, rng.random(len(roots)), strict=True) if u < 0.5}
    sizes: dict[str, int] = {}
    for a, _, _ in pairs:
        sizes[find(a)] = sizes.get(find(a), 0) + 1
    log(f"QQP: {len(pairs)} pairs, {len(roots)} clusters, largest {max(sizes.values())} pairs")
    train = [p for p in pairs if find(p[0]) not in held_roots]
    held = [p for p in pairs if find(p[0]) in held_roots]
    held_texts = {t for a, b, _ in held for t in (a, b)}
    s_keep = [i for i, t in enumerate(full.stored) if t in held_texts]
    q_keep = [i for i, t in enumerate(full.queries) if t in held_texts]
    si, qi = np.array(s_keep), np.array(q_keep)
    replay = ev.ReplayData(
        "qqp_heldout", [full.stored[i] for i in s_keep], full.stored_labels[si],
        full.stored_vecs[si], [full.queries[i] for i in q_keep], full.query_labels[qi],
        full.query_vecs[qi], [full.stored_answers[i] for i in s_keep],
        [full.query_answers[i] for i in q_keep], full.negative_keys)
    return train, held, replay


def text_vectors(data: ev.ReplayData) -> dict[str, np.ndarray]:
    out = {t: data.stored_vecs[i] for i, t in enumerate(data.stored)}
    out.update({t: data.query_vecs[i] for i, t in enumerate(data.queries)})
    return out


def features_of_pairs(pairs: list[tuple[str, str, int]], vec: dict[str, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    a = np.stack([vec[p[0]] for p in pairs])
    b = np.stack([vec[p[1]] for p in pairs])
    x = pair_features(a, b, [p[0] for p in pairs], [p[1] for p in pairs])
    return x, np.array([p[2] for p in pairs])


def candidate_features(data: ev.ReplayData, top: ev.TopK, min_score: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Features of every top-k candidate with cosine >= min_score; (rows, cols) index them."""
    q, j = np.nonzero(top.score >= min_score)
    s = top.index[q, j]
    x = pair_features(data.query_vecs[q], data.stored_vecs[s], [data.queries[i] for i in q],
                      [data.stored[i] for i in s])
    return x, np.stack([q, j])


def clinc_train_pairs() -> tuple[np.ndarray, np.ndarray]:
    """CLINC150 train -> val (+ oos_val, oos_train) top-5 candidates as labelled pairs."""
    data = ev.clinc_replay(default_embedder(), CACHE_DIR, "val")
    top = ev.top_candidates(data, k=K)
    x, (q, j) = candidate_features(data, top, 0.5)
    y = (top.verdict[q, j] == 1).astype(np.int64)
    return x, y


# --------------------------------------------------------------------------- curves
def curve_points(top: ev.TopK, vetoed: np.ndarray, thresholds: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits, wrong, unlabelled) at each cosine threshold for one veto matrix."""
    score, verdict = ev.served(top, vetoed)
    hit = score[None, :] >= thresholds[:, None]
    return (hit.sum(1), (hit & (verdict == 0)[None, :]).sum(1),
            (hit & (verdict == -1)[None, :]).sum(1))


def verifier_curve(top: ev.TopK, guard_veto: np.ndarray, proba: np.ndarray, prefilter: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits, wrong, unlabelled) over P_GRID at a fixed cosine pre-filter."""
    hits, wrong, unl = [], [], []
    for p in P_GRID:
        v = guard_veto | (proba < p)
        h, w, u = curve_points(top, v, np.array([prefilter]))
        hits.append(h[0])
        wrong.append(w[0])
        unl.append(u[0])
    return np.array(hits), np.array(wrong), np.array(unl)


def wrong_at(hits: np.ndarray, wrong: np.ndarray, target: float) -> float:
    """Wrong hits at ``target`` hits along a curve (interpolated); nan if out of reach."""
    order = np.argsort(hits, kind="stable")
    h, w = hits[order].astype(float), wrong[order].astype(float)
    if target > h[-1] or target < h[0]:
        return float("nan")
    return float(np.interp(target, h, w))


def judged_at(hits: np.ndarray, unl: np.ndarray, target: float) -> float:
    order = np.argsort(hits, kind="stable")
    return float(target - np.interp(target, hits[order].astype(float), unl[order].astype(float)))


# --------------------------------------------------------------------------- run
def evaluate(data: ev.ReplayData, models: dict[str, PairVerifier], rows: list[list[object]],
             plot: dict[str, Any]) -> dict[str, Any]:
    log(f"{data.name}: {len(data.stored)} stored, {len(data.queries)} queries; top-{K}")
    top = ev.top_candidates(data, k=K)
    cos_t = np.array(ev.THRESHOLDS)
    none = np.zeros(top.index.shape, dtype=bool)
    gveto = ev.guard_vetoes(data, top, default_guards(), min_score=min(PREFILTERS))
    base = curve_points(top, gveto, cos_t)
    alone = curve_points(top, none, cos_t)
    x, (q, j) = candidate_features(data, top, min(PREFILTERS))
    out: dict[str, Any] = {"queries": len(data.queries), "curves": {}}
    plot[data.name] = {"cosine+guards": base, "cosine alone": alone}
    nq = len(data.queries)
    for mname, model in models.items():
        proba = np.zeros(top.index.shape)  # below the pre-filter: never served anyway
        proba[q, j] = model.predict_proba_features(x)
        best: dict[float, tuple[float, float, str]] = {}
        for pre in PREFILTERS:
            curve = verifier_curve(top, gveto, proba, pre)
            plot[data.name][f"{mname} pre={pre}"] = curve
            out["curves"][f"{mname}@{pre}"] = [c.tolist() for c in curve]
            for t in BASE_THRESHOLDS:
                i = int(np.argmin(np.abs(cos_t - t)))
                target = float(base[0][i])
                w = wrong_at(curve[0], curve[1], target)
                if np.isfinite(w) and (t not in best or w < best[t][0]):
                    best[t] = (w, judged_at(curve[0], curve[2], target), f"{pre}")
        for t in BASE_THRESHOLDS:
            i = int(np.argmin(np.abs(cos_t - t)))
            bh, bw, bu = (float(base[k][i]) for k in range(3))
            aw = wrong_at(alone[0], alone[1], bh)
            aj = judged_at(alone[0], alone[2], bh)
            if t not in best:
                rows.append([data.name, mname, t, f"{bh / nq:.1%}", f"{bw / max(bh - bu, 1):.1%}",
                             f"{aw / max(aj, 1):.1%}", "n/a", "-", "-", "-"])
                continue
            w, judged, pre = best[t]
            rows.append([data.name, mname, t, f"{bh / nq:.1%}", f"{bw / max(bh - bu, 1):.1%}",
                         f"{aw / max(aj, 1):.1%}", f"{w / max(judged, 1):.1%}", pre,
                         f"{(w / max(judged, 1)) / max(bw / max(bh - bu, 1), 1e-9):.2f}",
                         f"{(w / max(judged, 1)) / max(aw / max(aj, 1), 1e-9):.2f}"])
    return out


def cost(model: PairVerifier, data: ev.ReplayData, n: int = 200) -> list[list[object]]:
    emb = default_embedder()
    emb.encode(["warm up"])
    guard = model.as_guard(emb, 0.5)
    pairs = [(data.queries[i], data.stored[i % len(data.stored)]) for i in range(n)]
    t0 = time.perf_counter()
    for a, b in pairs:
        guard(a, b, 0.9)
    per_guard = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for a, _ in pairs:
        emb.encode([a])
    per_embed = (time.perf_counter() - t0) / n
    va, vb = data.query_vecs[:n], data.stored_vecs[np.arange(n) % len(data.stored)]
    t0 = time.perf_counter()
    for i, (a, b) in enumerate(pairs):
        model.predict_proba(va[i : i + 1], vb[i : i + 1], [a], [b])
    per_vec = (time.perf_counter() - t0) / n
    guards = default_guards()
    t0 = time.perf_counter()
    for a, b in pairs:
        all(g(a, b, 0.9) for g in guards)
    per_rules = (time.perf_counter() - t0) / n
    return [["query embed (1 text, the lookup's own cost)", f"{per_embed * 1e3:.2f}"],
            ["verifier as guard (embeds 2 texts + predict)", f"{per_guard * 1e3:.2f}"],
            ["verifier on vectors the cache holds (predict only)", f"{per_vec * 1e3:.3f}"],
            ["default rule guards", f"{per_rules * 1e3:.4f}"]]


def main() -> int:
    t_start = time.time()
    emb = default_embedder()
    full = ev.qqp_replay(emb, CACHE_DIR)
    train, held, qqp_held = qqp_split(full)
    vec = text_vectors(full)
    log(f"QQP split: {len(train)} train pairs, {len(held)} held-out pairs; held-out replay "
        f"{len(qqp_held.stored)} stored / {len(qqp_held.queries)} queries")
    shared = {t for a, b, _ in train for t in (a, b)} & {t for a, b, _ in held for t in (a, b)}
    assert not shared, "cluster split leaked questions"
    xq, yq = features_of_pairs(train, vec)
    xc, yc = clinc_train_pairs()
    log(f"features: QQP train {xq.shape} ({yq.mean():.2f} positive), CLINC train->val {xc.shape} "
        f"({yc.mean():.2f} positive)")
    models: dict[str, PairVerifier] = {}
    fit_s: dict[str, float] = {}
    for name, kind, x, y in (
        ("logreg qqp", "logistic", xq, yq),
        ("mlp qqp", "mlp", xq, yq),
        ("mlp qqp+clinc", "mlp", np.concatenate([xq, xc]), np.concatenate([yq, yc])),
    ):
        t0 = time.time()
        models[name] = PairVerifier(kind, c=0.1, hidden=(64,), alpha=1e-2).fit_features(x, y)
        fit_s[name] = time.time() - t0
        log(f"fitted {name} in {fit_s[name]:.1f}s")
    # Pair-level sanity check on held-out QQP pairs (AUC of cosine vs verifier).
    from sklearn.metrics import roc_auc_score

    xh, yh = features_of_pairs(held, vec)
    auc_rows = [["cosine", f"{roc_auc_score(yh, xh[:, 0]):.3f}"]]
    auc_rows += [[n, f"{roc_auc_score(yh, m.predict_proba_features(xh)):.3f}"]
                 for n, m in models.items()]
    rows: list[list[object]] = []
    plot: dict[str, Any] = {}
    results = {
        "qqp_heldout": evaluate(qqp_held, models, rows, plot),
        "clinc150_test": evaluate(ev.clinc_replay(emb, CACHE_DIR, "test"), models, rows, plot),
    }
    print("\nHeld-out QQP pair classification, ROC AUC")
    auc_txt = print_table(("scorer", "AUC"), auc_rows)
    print("\nWrong-hit rate at equal hit rate (target = cosine + default guards at threshold t;"
          " verifier: best pre-filter of " + "/".join(map(str, PREFILTERS)) + ", p_min swept)")
    headers = ("data", "verifier", "t", "hit rate", "wrong: cos+guards", "wrong: cos alone",
               "wrong: verifier", "pre", "ratio vs cos+guards", "ratio vs cos alone")
    table = print_table(headers, rows)
    cost_rows = cost(models["mlp qqp"], qqp_held)
    print("\nPer-candidate cost (ms, 2 cores, all-MiniLM-L6-v2)")
    cost_txt = print_table(("step", "ms"), cost_rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "verifier_bench.txt").write_text(
        f"AUC\n{auc_txt}\n\nEqual hit rate\n{table}\n\nCost\n{cost_txt}\n", encoding="utf-8")
    results.update({"auc": auc_rows, "table": rows, "cost": cost_rows, "fit_seconds": fit_s})
    (RESULTS_DIR / "verifier_bench.json").write_text(json.dumps(results), encoding="utf-8")
    save_plot(plot, {k: v["queries"] for k, v in results.items() if isinstance(v, dict)
                     and "queries" in v})
    log(f"done in {time.time() - t_start:.0f}s")
    return 0


def save_plot(plot: dict[str, Any], queries: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plot), figsize=(6 * len(plot), 4.5))
    for ax, (name, curves) in zip(np.atleast_1d(axes), plot.items(), strict=True):
        nq = queries[name]
        for label, (h, w, u) in curves.items():
            if "pre=" in label and not label.endswith(f"pre={PREFILTERS[0]}"):
                continue
            judged = np.maximum(h - u, 1)
            ax.plot(h / nq, w / judged, label=label, lw=1.5 if "cos" in label else 1.0)
        ax.set_xlabel("hit rate")
        ax.set_ylabel("wrong-hit rate")
        ax.set_title(name)
        ax.set_ylim(0, 0.4)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "verifier_bench.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
