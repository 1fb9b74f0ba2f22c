"""Reopen time of a disk cache at 10k / 50k / 200k live entries (with half as many deleted).

For each size the store is filled directly (``SQLiteStore.put_many``, 384-d random
unit vectors, 16 scopes, one 200-byte completion each), then half as many entries
as stay live are deleted, so the change log holds 1.5 n puts and 0.5 n deletes.
Then, each timed in a fresh ``SemanticCache`` with a stub embedder (no model):

* ``open, no snapshot``: the snapshot file removed; open = ``load_all()`` + bulk index;
* ``close (writes snapshot)``: the close that writes the snapshot;
* ``open, snapshot``: open with the snapshot (ids, vectors and metadata), verified
  against the store's seal (the sum of every row's digest, kept by the store in each
  write transaction) plus the changes logged after it;
* ``open, snapshot, new process``: the same in a fresh Python process (only the
  open is timed). On this machine (a VM) memory a process touches for the first
  time is slow to get (~1.7 s for 300 MB, 0.05 s when reused), so this column pays
  that first-touch cost and the in-process one does not.

The issue's numbers for the old diskcache journal replay (not re-measured here):
5k/10k/20k/40k puts with half deleted reopened in 1.2/3.5/11.8/33.3 s, and 200k
live entries in 1,112 s.

Run under the shared lock::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/reopen_bench.py

Writes ``benchmarks/results/reopen_bench.txt`` and ``.png``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from semcache import SemanticCache  # noqa: E402
from semcache.report import format_table  # noqa: E402
from semcache.snapshot import FILENAME  # noqa: E402
from semcache.stores import EntryMeta  # noqa: E402
from semcache.stores.sqlite import SQLiteStore  # noqa: E402

RESULTS = ROOT / "results"
DIM = 384


class RandomEmbedder:
    """A stand-in embedder: random unit vectors (nothing is embedded when reopening)."""

    fingerprint = "bench:random/384/l2"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)

    def encode(self, texts: list[str]) -> np.ndarray:
        v = self.rng.standard_normal((len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(directory: Path, live: int, scopes: int, seed: int) -> None:
    """Put 1.5 x ``live`` entries and delete 0.5 x ``live`` of them, in batches."""
    rng = np.random.default_rng(seed)
    fp = RandomEmbedder.fingerprint
    # The cache creates the settings (store id, format) the way it always does.
    SemanticCache(directory, embedder=RandomEmbedder(), index="exact").close()
    store = SQLiteStore(directory)
    total = live + live // 2
    sids = [hashlib.sha256(f"scope-{s}".encode()).hexdigest()[:32] for s in range(scopes)]
    ids: list[int] = []
    batch = 5_000
    now = time.time()
    for s in tqdm(range(0, total, batch), desc=f"fill {live:,}", unit="batch", leave=False):
        n = min(batch, total - s)
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = [
            (EntryMeta(sids[(s + k) % scopes], hashlib.sha256(f"p{s + k}".encode()).hexdigest()[:32], fp,
                       now, None), vecs[k], f"prompt number {s + k}", "c" * 200)
            for k in range(n)
        ]
        ids.extend(store.put_many(rows))
    victims = rng.choice(np.array(ids), size=total - live, replace=False).tolist()
    for s in range(0, len(victims), batch):
        store.delete(victims[s : s + batch])
    store.close()


def timed_open(directory: Path, index: str) -> tuple[float, SemanticCache]:
    gc.collect()
    t0 = time.perf_counter()
    cache = SemanticCache(directory, embedder=RandomEmbedder(), index=index, snapshot_min_entries=1)
    return time.perf_counter() - t0, cache


def open_in_new_process(directory: Path, index: str) -> float:
    """Seconds a fresh process takes to open ``directory`` (interpreter start not counted)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import reopen_bench as rb; "
            f"from pathlib import Path; t, c = rb.timed_open(Path({str(directory)!r}), {index!r}); "
            "assert c._snapshot_seq > 0; print(t); c.close()")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--scopes", type=int, default=16)
    ap.add_argument("--index", default="exact", help="index= of the cache (exact: store cost alone)")
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="reopen-bench-"))
    rows = []
    try:
        for live in args.sizes:
            directory = work / f"c{live}"
            shutil.rmtree(directory, ignore_errors=True)
            t0 = time.perf_counter()
            fill(directory, live, args.scopes, seed=live)
            fill_s = time.perf_counter() - t0
            (directory / FILENAME).unlink(missing_ok=True)
            cold, cache = timed_open(directory, args.index)
            assert len(cache) == live, (len(cache), live)
            t0 = time.perf_counter()
            cache.close()
            close_s = time.perf_counter() - t0
            warm, cache = timed_open(directory, args.index)
            used = cache._snapshot_seq > 0
            assert len(cache) == live and used
            cache.close()
            fresh = open_in_new_process(directory, args.index)
            size_mb = sum(f.stat().st_size for f in directory.iterdir()) / 2**20
            rows.append((live, live // 2, round(fill_s, 1), round(cold, 2), round(close_s, 2),
                         round(warm, 2), round(fresh, 2), round(size_mb)))
            print(f"{live:>8,} live: open {cold:.2f} s without snapshot, {warm:.2f} s with one "
                  f"({fresh:.2f} s in a new process)", flush=True)
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    headers = ["live", "deleted", "fill_s", "open_no_snapshot_s", "close_writes_snapshot_s",
               "open_with_snapshot_s", "same_new_process_s", "dir_MB"]
    table = format_table(headers, rows)
    header = (f"reopen_bench: SQLite store, {DIM}-d random unit vectors, {args.scopes} scopes, "
              f"index={args.index!r}, this machine (2 shared cores)\n"
              "old diskcache journal replay (issue #25, not re-measured): 10k puts half deleted 3.5 s, "
              "40k 33.3 s, 200k live 1,112 s\n"
              "previous session (snapshot verified row by row, metadata from the store): 200k live "
              "6.87 s without snapshot, 6.92 s with one\n"
              f"command: flock /work/coord/heavy.lock .venv/bin/python benchmarks/reopen_bench.py "
              f"--sizes {' '.join(map(str, args.sizes))} --index {args.index}\n\n")
    print(table)
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.index == "exact" else f"_{args.index}"
    (RESULTS / f"reopen_bench{suffix}.txt").write_text(header + table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install 'semcache-llm[plots]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r[0] for r in rows]
    ax.plot(xs, [r[3] for r in rows], "o-", label="open without snapshot (load_all)")
    ax.plot(xs, [r[5] for r in rows], "s-", label="open with verified snapshot")
    ax.plot(xs, [r[6] for r in rows], "^--", label="same, in a new process")
    ax.axhline(10, color="grey", ls=":", label="target without snapshot (10 s)")
    ax.axhline(2, color="grey", ls="--", label="target with snapshot (2 s)")
    ax.set_xlabel("live entries (plus half as many deleted)")
    ax.set_ylabel("seconds")
    ax.set_xscale("log")
    ax.set_title(f"semcache reopen time (index={args.index})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"reopen_bench{suffix}.png", dpi=120)


if __name__ == "__main__":
    main()
