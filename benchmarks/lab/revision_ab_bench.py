"""This checkout's two-table grid against another revision's, alternating in one process.

Two runs of the same code on this machine differ by 10-50% (see the header of
``results/index_bench.txt``), more than most changes to the index are worth. So a
change is measured against the code before it in one process, taking turns, where
both see the same moments of the machine. ``--against REV`` is extracted with
``git archive`` into ``benchmarks/.cache/revisions/<commit>/`` as the package
``semcache_rev`` (its imports rewritten), so both import side by side; its numba
kernels compile there on the first run (~15 s) and are cached for the next.

Per size, on the rows of ``index_bench.py`` (same seed and split, learned
projection of width 32), both indexes are built from the same projected rows.
Then, in ``--chunks`` turns, the side going first alternating, each side:

* looks up ``--ops`` held-out questions (candidates only; the chunk's median);
* inserts ``--ops`` rows of the unseen prompt stream one at a time, each after a
  lookup, as a cache inserts after a miss (the chunk's mean, flushes included);
* deletes those rows one at a time (the chunk's median).

The table gives each side's median over the chunks and the median of the
per-chunk ratios (this checkout / REV: below 1 is faster).

Run: ``python benchmarks/lab/revision_ab_bench.py --against bb08c0c [--sizes 10k,100k]
[--chunks 30] [--ops 200]``
"""

from __future__ import annotations

import _here  # noqa: F401  (benchmarks/ on the path, one thread: see its docstring)

# isort: split

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import time
from typing import Any

import numpy as np
from common import CACHE_DIR, ROOT, print_table, save_text
from index_bench import corpus_of_size, load_real_corpus, split_corpus
from tqdm import tqdm

from semcache.index import MultiGridIndex
from semcache.projection import LearnedProjection

# Module names in import statements and in strings ("semcache.index.grid"), not
# the distribution name ("semcache" alone) that package metadata looks up.
_IMPORT = re.compile(r"\b(from|import) semcache\b|(?<=[\"'])semcache(?=\.)")


def git(*args: str) -> str:
    """Output of a git command run in this checkout."""
    return subprocess.run(["git", *args], cwd=ROOT.parent, check=True, capture_output=True,
                          text=True).stdout.strip()


def revision_package(rev: str) -> Any:
    """The ``semcache.index`` module of git revision ``rev``, imported as ``semcache_rev.index``."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    home = CACHE_DIR / "revisions" / commit
    pkg = home / "semcache_rev"
    if not pkg.exists():
        tar = subprocess.run(["git", "archive", commit, "semcache"], cwd=ROOT.parent,
                             check=True, capture_output=True).stdout
        tmp = home / "extract"
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(tmp, filter="data")
        for f in (tmp / "semcache").rglob("*.py"):
            f.write_text(_IMPORT.sub(
                lambda m: f"{m.group(1)} semcache_rev" if m.group(1) else "semcache_rev",
                f.read_text()))
        (tmp / "semcache").rename(pkg)
        tmp.rmdir()
    sys.path.insert(0, str(home))
    return importlib.import_module("semcache_rev.index")


def turns(sides: dict[str, Any], low: np.ndarray, full: np.ndarray, q_low: np.ndarray,
          q_full: np.ndarray, chunks: int, ops: int, label: str) -> dict[str, dict[str, list[float]]]:
    """Per side, per operation: one value per chunk (seconds)."""
    out: dict[str, dict[str, list[float]]] = {
        s: {"lookup": [], "insert": [], "delete": []} for s in sides
    }
    first_id = 10**9
    names = list(sides)
    for c in tqdm(range(chunks), desc=f"{label} turns", unit="chunk"):
        for name in names if c % 2 == 0 else names[::-1]:
            idx = sides[name]
            t_look = []
            for j in range(ops):
                r = (c * ops + j) % len(q_low)
                t0 = time.perf_counter()
                idx.candidates(q_low[r], q_full[r], 0.85)
                t_look.append(time.perf_counter() - t0)
            t_ins = 0.0
            base = first_id + c * ops
            for j in range(ops):
                r = (c * ops + j) % len(low)
                idx.candidates(low[r], full[r], 0.85)
                t0 = time.perf_counter()
                idx.add(base + j, low[r : r + 1], full[r : r + 1])
                t_ins += time.perf_counter() - t0
            t_del = []
            for j in range(ops):
                one = np.array([base + j], dtype=np.int64)
                t0 = time.perf_counter()
                idx.remove(one)
                t_del.append(time.perf_counter() - t0)
            out[name]["lookup"].append(float(np.median(t_look)))
            out[name]["insert"].append(t_ins / ops)
            out[name]["delete"].append(float(np.median(t_del)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision to compare with")
    ap.add_argument("--sizes", default="10k,100k")
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    old = revision_package(args.against)
    # The checkout's side is named by its commit, "-dirty" with uncommitted changes.
    this = git("describe", "--always", "--dirty")
    data = load_real_corpus()
    rng, Q, real, p_stream = split_corpus(data, args.queries)
    stream = np.ascontiguousarray(data["prompts"][p_stream])
    rows: list[list[Any]] = []
    for label in args.sizes.split(","):
        X = corpus_of_size(label, real, rng)
        proj = LearnedProjection(32).fit(X)
        low, q_low, s_low = (proj.transform(a) for a in (X, Q, stream))
        sides = {this: MultiGridIndex(), args.against: old.MultiGridIndex()}
        for idx in sides.values():
            idx.add(np.arange(len(X), dtype=np.int64), low, X)
        got = turns(sides, s_low, stream, q_low, Q, args.chunks, args.ops, label)
        new, ref = got[this], got[args.against]
        for op, unit, scale in (("lookup", "ms", 1e3), ("insert", "us", 1e6),
                                ("delete", "us", 1e6)):
            ratio = float(np.median(np.divide(new[op], ref[op])))
            rows.append([label, f"{op} {unit}", scale * float(np.median(new[op])),
                         scale * float(np.median(ref[op])), ratio])
    text = print_table(["N", "operation", f"{this} (checkout)", args.against,
                        "ratio (median)"], rows)
    save_text("revision_ab_bench.txt", "python benchmarks/lab/revision_ab_bench.py "
              + " ".join(sys.argv[1:]), text)


if __name__ == "__main__":
    main()
