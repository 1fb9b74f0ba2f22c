"""Approximate index recall on a distinct-prompt store, with and without the cache's audit.

The store: QQP dev ``text_a`` questions (first 6,500 pairs), thinned so that no two
are within cosine 0.9 (what a cache at threshold 0.9 keeps: paraphrases hit instead
of being stored). The queries: ``text_b`` of the duplicate pairs. Reference: exact
search. ``index="multigrid"``, learned projection, no guards, one scope. "audit off"
is the cache before this change (the approximate index's answer is final), measured in
the same run on the same data.

Run::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/recall_distinct_bench.py

Writes ``benchmarks/results/recall_distinct.txt`` and ``recall_distinct.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from semcache import MISS  # noqa: E402
from tests.reliability.test_recall_distinct import _build, _reference, distinct_store  # noqa: E402

RESULTS = ROOT / "results"
THRESHOLDS = (0.85, 0.9)


def main() -> None:
    data = distinct_store()
    texts = data["texts"]
    lines = [
        f"recall_distinct_bench: {len(data['stored'])} stored QQP questions (pairwise cosine < 0.9), "
        f"{len(data['queries'])} queries (text_b of duplicate pairs), index=multigrid",
        "",
        f"{'cache':<12}{'threshold':>10}{'exact hits':>12}{'cache hits':>12}{'recall':>9}"
        f"{'ms/lookup':>11}",
    ]
    recalls: dict[str, list[float]] = {}
    for audit in (False, True):
        name = "audit on" if audit else "audit off"
        cache = _build(data, audit=audit)
        for thr in THRESHOLDS:
            ref = _reference(data, thr)
            t0 = time.perf_counter()
            got = np.array([cache.get(texts[q], threshold=thr) is not MISS
                            for q in tqdm(data["queries"], desc=f"{name} {thr}", leave=False)])
            ms = (time.perf_counter() - t0) / len(got) * 1e3
            assert not (got & ~ref).any()
            rec = float((got & ref).sum() / ref.sum())
            recalls.setdefault(name, []).append(rec)
            lines.append(f"{name:<12}{thr:>10}{int(ref.sum()):>12}{int((got & ref).sum()):>12}"
                         f"{rec:>9.4f}{ms:>11.3f}")
        part = next(iter(cache._parts.values()))
        lines.append(f"{'':<12}partition evidence after both passes: found={part.found} "
                     f"missed={part.missed} trusted={part.trusted}")
        cache.close()
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recall_distinct.txt").write_text(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for j, (name, vals) in enumerate(recalls.items()):
        ax.bar([i + (j - 0.5) * 0.35 for i in range(len(THRESHOLDS))], vals, 0.35, label=name)
    ax.axhline(0.995, color="k", lw=0.8, ls="--", label="target 0.995")
    ax.set_xticks(range(len(THRESHOLDS)), [f"cosine >= {t}" for t in THRESHOLDS])
    ax.set_ylim(0.9, 1.001)
    ax.set_ylabel("recall of exact hits")
    ax.set_title("multigrid on a distinct-prompt store (QQP)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "recall_distinct.png", dpi=120)


if __name__ == "__main__":
    main()
