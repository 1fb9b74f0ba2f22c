"""Which LSH family could make a distance-sensitive Bloom filter answer misses locally?

Decision-only experiment behind ``docs/dsbf.md`` (issue #26), on **dev data
only**: the first 20,000 corpus texts of ``dsbf_bench.py`` (distinct QQP
questions from the first ~10k ``pairs_dev`` pairs, in file order), 15,000
stored and 5,000 queries at random. Truth by exact search at cosine 0.9.

Each family gives every row ``m`` codes (one per array, a hash of ``k``/``L``
elementary hashes: the AND of the banding). A query's score is the number of
arrays where some stored row has its code. Two memories:

* ``inf-mem``: exact sets of codes (no Bloom collisions): the limit of the
  family with unbounded memory;
* ``~70 b/e``: each array a bit array of ``2**round(log2(64 n / m))`` bits.

``t`` is the oracle: the largest score threshold keeping <= 0.5% of the
queries' true hits (so these are upper bounds for a calibrated filter). Also
the "ideal" summaries scanned per entry: the exact learned-projection
distance (1024 bits/entry as float32) and SimHash / quantised learned codes
of 64-256 bits per entry with a linear scan (oracle radius).

Families: SimHash on the 384-d embedding; signs of random rotations of the
cache's learned projection (32 and 64 dims); signs of the learned coordinates
themselves (bit sampling); E2LSH grid cells (random directions, width ``w``)
and axis-aligned grid cells (the multiprobe grid's cells) of the learned
projection; cross-polytope (argmax of a random Gaussian map, with sign).

Run (heavy, ~6 min: under the lock)::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/lab/dsbf_families.py
"""

from __future__ import annotations

import _here  # noqa: F401

# isort: split
import numpy as np
from common import Timer, embed_cached, print_table, save_text
from dsbf_bench import CHUNK, corpus_texts
from tqdm import tqdm

from semcache.projection import LearnedProjection

THRESHOLD = 0.9
TARGET = 0.005
BPE = 64


def _mix(c: np.ndarray) -> np.ndarray:
    z = c.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def combine(cols: np.ndarray) -> np.ndarray:
    """One uint64 code per row from (n, k) integer hashes."""
    h = np.zeros(len(cols), np.uint64)
    with np.errstate(over="ignore"):
        for i in range(cols.shape[1]):
            h = _mix(h * np.uint64(31) + cols[:, i].astype(np.int64).astype(np.uint64) + np.uint64(i + 1))
    return h


def sign_codes(a: np.ndarray, w: np.ndarray, m: int, L: int) -> np.ndarray:
    p = a @ w
    pw = (np.uint64(1) << np.arange(L, dtype=np.uint64)).astype(np.uint64)
    return np.stack([np.where(p[:, j * L : (j + 1) * L] > 0, pw, np.uint64(0)).sum(1) for j in range(m)], 1)


class Eval:
    def __init__(self, s: np.ndarray, q: np.ndarray) -> None:
        self.s, self.q = s, q
        best = (q @ s.T).max(1)
        self.best = best
        self.near = best >= THRESHOLD
        self.miss = ~self.near
        self.rows: list[list[object]] = []

    def _oracle(self, sc: np.ndarray, m: int) -> tuple[int, float]:
        bt = 0
        for t in range(1, m + 1):
            if np.mean(sc[self.near] < t) <= TARGET:
                bt = t
            else:
                break
        return bt, float(np.mean(sc[self.miss] < bt)) if bt else 0.0

    def filt(self, name: str, cs: np.ndarray, cq: np.ndarray) -> None:
        n, m = cs.shape
        ex = np.zeros(len(cq), np.int32)
        bl = np.zeros(len(cq), np.int32)
        lb = max(6, round(np.log2(BPE * n / m)))
        for j in range(m):
            ex += np.isin(cq[:, j], cs[:, j])
            bits = np.zeros(1 << lb, bool)
            bits[(_mix(cs[:, j] + np.uint64(j)) >> np.uint64(64 - lb)).astype(np.int64)] = True
            bl += bits[(_mix(cq[:, j] + np.uint64(j)) >> np.uint64(64 - lb)).astype(np.int64)]
        t1, l1 = self._oracle(ex, m)
        t2, l2 = self._oracle(bl, m)
        self.rows.append([name, f"{t1}", f"{l1:.3f}", f"{m * (1 << lb) / n:.0f}", f"{t2}", f"{l2:.3f}"])

    def scan(self, name: str, dist_min: np.ndarray, bits: str) -> None:
        r = np.quantile(dist_min[self.near], 1 - TARGET, method="higher")
        self.rows.append([name, "scan", f"{np.mean(dist_min[self.miss] > r):.3f}", bits, "", ""])


def main() -> None:
    qqp, _, _ = corpus_texts()
    x = np.ascontiguousarray(embed_cached(qqp[:CHUNK], "dsbf_corpus_c0"), np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    s, q = x[perm[:15000]], x[perm[15000:]]
    ev = Eval(s, q)
    with Timer() as t:
        p32 = LearnedProjection(n_components=32).fit(s)
        p64 = LearnedProjection(n_components=64).fit(s)
        ps, pq = p32.transform(s), p32.transform(q)
        ps64, pq64 = p64.transform(s), p64.transform(q)
    print(f"projections fitted in {t.seconds:.1f}s", flush=True)
    jobs = []
    for m, L in [(8, 14), (32, 10), (64, 16), (128, 14), (128, 18), (256, 20)]:
        jobs.append((f"simhash-384 m={m} L={L}", "simhash", m, L))
    for m, L in [(8, 14), (64, 16), (128, 14), (128, 18), (256, 20)]:
        jobs.append((f"learned64-rot-sign m={m} L={L}", "lrot64", m, L))
    for m, L in [(64, 16), (128, 18)]:
        jobs.append((f"learned32-rot-sign m={m} L={L}", "lrot32", m, L))
    for m, L in [(64, 12), (256, 14)]:
        jobs.append((f"learned32-coord-sign m={m} L={L}", "lcoord", m, L))
    for m, k, w in [(16, 4, 8.0), (32, 4, 6.0), (128, 4, 8.0), (256, 6, 10.0)]:
        jobs.append((f"learned32-e2lsh m={m} k={k} w={w:g}", "e2lsh", m, (k, w)))
    for m, k, w in [(16, 4, 4.0), (32, 6, 6.0)]:
        jobs.append((f"learned32-axis-grid m={m} k={k} w={w:g}", "axis", m, (k, w)))
    for m, k, dd in [(64, 2, 64), (128, 2, 64), (128, 3, 128), (256, 3, 64)]:
        jobs.append((f"crosspolytope-384 m={m} k={k} d={dd}", "cp", m, (k, dd)))
    for name, fam, m, par in tqdm(jobs, desc="families"):
        if fam in ("simhash", "lrot64", "lrot32"):
            a, b = {"simhash": (s, q), "lrot64": (ps64, pq64), "lrot32": (ps, pq)}[fam]
            w = rng.standard_normal((a.shape[1], m * par)).astype(np.float32)
            ev.filt(name, sign_codes(a, w, m, par), sign_codes(b, w, m, par))
        elif fam == "lcoord":
            L = par
            idx = [rng.choice(32, L, replace=False) for _ in range(m)]
            pw = (np.uint64(1) << np.arange(L, dtype=np.uint64)).astype(np.uint64)
            cs = np.stack([np.where(ps[:, i] > 0, pw, np.uint64(0)).sum(1) for i in idx], 1)
            cq = np.stack([np.where(pq[:, i] > 0, pw, np.uint64(0)).sum(1) for i in idx], 1)
            ev.filt(name, cs, cq)
        elif fam == "e2lsh":
            k, wd = par
            w = rng.standard_normal((32, m * k)).astype(np.float32)
            off = rng.uniform(0, wd, m * k).astype(np.float32)
            gs = np.floor((ps @ w + off) / wd).astype(np.int64)
            gq = np.floor((pq @ w + off) / wd).astype(np.int64)
            cs = np.stack([combine(gs[:, j * k : (j + 1) * k]) for j in range(m)], 1)
            cq = np.stack([combine(gq[:, j * k : (j + 1) * k]) for j in range(m)], 1)
            ev.filt(name, cs, cq)
        elif fam == "axis":
            k, wd = par
            cs_l, cq_l = [], []
            for _ in range(m):
                dims = rng.choice(32, k, replace=False)
                off = rng.uniform(0, wd, k)
                cs_l.append(combine(np.floor((ps[:, dims] + off) / wd).astype(np.int64)))
                cq_l.append(combine(np.floor((pq[:, dims] + off) / wd).astype(np.int64)))
            ev.filt(name, np.stack(cs_l, 1), np.stack(cq_l, 1))
        else:
            k, dd = par
            cs_l, cq_l = [], []
            for _ in range(m):
                hs, hq = [], []
                for _ in range(k):
                    r = rng.standard_normal((384, dd)).astype(np.float32)
                    a, b = s @ r, q @ r
                    ia, ib = np.abs(a).argmax(1), np.abs(b).argmax(1)
                    hs.append(ia * 2 + (a[np.arange(len(a)), ia] > 0))
                    hq.append(ib * 2 + (b[np.arange(len(b)), ib] > 0))
                cs_l.append(combine(np.stack(hs, 1)))
                cq_l.append(combine(np.stack(hq, 1)))
            ev.filt(name, np.stack(cs_l, 1), np.stack(cq_l, 1))
    # Per-entry summaries with a linear scan (not Bloom filters): what the bits could tell at best.
    d2 = (pq**2).sum(1)[:, None] + (ps**2).sum(1)[None, :] - 2 * pq @ ps.T
    ev.scan("learned32 exact distance (float32)", d2.min(1), "1024")
    for nb in (64, 128, 256):
        w = rng.standard_normal((384, nb)).astype(np.float32)
        cs, cq = s @ w > 0, q @ w > 0
        ham = np.zeros((len(q), len(s)), np.int16)
        for b in range(nb):
            ham += cq[:, b][:, None] != cs[:, b][None, :]
        ev.scan(f"simhash-384 {nb}-bit code", ham.min(1), str(nb))
    for dims, bits in ((32, 2), (16, 4)):
        pr = LearnedProjection(n_components=dims).fit(s)
        a, b = pr.transform(s), pr.transform(q)
        lv = 1 << bits
        qs = np.quantile(a, np.linspace(0, 1, lv + 1)[1:-1], axis=0)
        codes = (a[:, None, :] > qs[None]).sum(1)
        cent = np.array(
            [
                [a[codes[:, d] == c, d].mean() if np.any(codes[:, d] == c) else 0.0 for c in range(lv)]
                for d in range(dims)
            ]
        )
        rec = cent[np.arange(dims)[None, :], codes]
        dd2 = (b**2).sum(1)[:, None] + (rec**2).sum(1)[None, :] - 2 * b @ rec.T
        ev.scan(f"learned{dims} x {bits}-bit quantised, asymmetric L2", dd2.min(1), str(dims * bits))
    pct = "/".join(f"{v:.3f}" for v in np.percentile(ev.best[ev.miss], [10, 50, 90]))
    head = (
        f"dev: 15000 stored / 5000 queries ({int(ev.near.sum())} true hits, {int(ev.miss.sum())} misses); "
        f"miss nearest cosine p10/p50/p90 = {pct}\n"
        "oracle t (<= 0.5% of true hits lost); 'miss local' = share of misses answered without the engine\n"
    )
    text = head + print_table(
        [
            "family (AND of k/L per array, t-of-m over arrays)",
            "t inf-mem",
            "miss local inf-mem",
            "bits/entry",
            "t",
            "miss local",
        ],
        ev.rows,
    )
    save_text(
        "dsbf_families.txt",
        "flock /work/coord/heavy.lock .venv/bin/python benchmarks/lab/dsbf_families.py",
        text,
    )


if __name__ == "__main__":
    main()
