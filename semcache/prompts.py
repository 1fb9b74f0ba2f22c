"""Prompt validation, normalisation and the exact-match key."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from typing import Any

from semcache.errors import InvalidPromptError

__all__ = ["DEFAULT_WINDOW_CHARS", "Window", "differing_spans", "normalize_prompt", "prompt_key"]


def normalize_prompt(prompt: object) -> str:
    """Validate a prompt and return its normal form.

    The normal form is NFKC with runs of white space folded to one space and
    the ends stripped: prompts that differ only in spacing or Unicode width are
    the same prompt. Case is kept ("US" and "us" are different words).

    Raises
    ------
    InvalidPromptError
        Not a str, or nothing but white space.
    """
    if not isinstance(prompt, str):
        raise InvalidPromptError(f"a prompt must be a str, not {type(prompt).__name__}")
    norm = " ".join(unicodedata.normalize("NFKC", prompt).split())
    if not norm:
        raise InvalidPromptError("the prompt is empty")
    return norm


def prompt_key(normalized: str) -> str:
    """Exact-match key of a normalised prompt: 32 hex chars of SHA-256 over the whole text."""
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --------------------------------------------------------------------------- long prompts
#: Characters of a text an embedder that declares nothing is assumed to read. Most
#: sentence embedders read 256-512 tokens, rarely fewer than 1,000 characters of text.
DEFAULT_WINDOW_CHARS = 1024

#: Where a changed part of a prompt is widened to (sentence ends in normalised text,
#: where line breaks have become spaces), so its embedding sees whole sentences.
_BOUNDARIES = (". ", "? ", "! ", ": ", "; ", "\u3002", "\uff1f", "\uff01")


def _has_offsets(embedder: object) -> bool:
    """An embedder that counts its own tokens (``token_offsets`` + ``max_seq_length``)."""
    tokens = getattr(embedder, "max_seq_length", None)
    return callable(getattr(embedder, "token_offsets", None)) and isinstance(tokens, int) and tokens > 2


class Window:
    """What an embedder reads of a text, and the part of a long prompt it is shown.

    A sentence embedder reads a bounded number of tokens (all-MiniLM-L6-v2: 256)
    and ignores the rest. Prompts that share a long context and end with different
    questions (RAG, chat) would then embed identically, so the cache shows the
    embedder the *end* of a long prompt (where the question is) and decides a hit
    between long prompts with :func:`differing_spans`: what differs must be
    visible to the embedder, and everything else must be identical.

    Parameters
    ----------
    embedder : object
        A :class:`~semcache.embedding.SentenceTransformerEmbedder` is asked for its
        model's ``max_seq_length`` and tokenizer (exact token counts), an embedder
        with ``token_offsets(text)`` and ``max_seq_length`` (the ONNX one) for those. Any other
        embedder may expose ``max_tokens`` (an int): then a text of at most
        ``max_tokens - 2`` characters fits (a token covers at least one character).
        Otherwise :data:`DEFAULT_WINDOW_CHARS` characters are assumed.
    """

    def __init__(self, embedder: object) -> None:
        self._embedder = embedder
        self._tokenizer: object | None = None
        self._max_tokens: int | None = None
        self._resolved = False
        self.chars: int = DEFAULT_WINDOW_CHARS
        tokens = getattr(embedder, "max_tokens", None)
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 2:
            self.chars = tokens - 2
        from semcache.embedding import SentenceTransformerEmbedder

        self._offsets_fn: Callable[[str], list[tuple[int, int]]] | None = None
        if isinstance(embedder, SentenceTransformerEmbedder) or _has_offsets(embedder):
            # Nothing is known to fit until the model's tokenizer says so (first use).
            self.chars = 0

    def _resolve(self) -> None:
        """Ask a sentence-transformers embedder for its tokenizer (loads the model once)."""
        if self._resolved:
            return
        from semcache.embedding import SentenceTransformerEmbedder

        if isinstance(self._embedder, SentenceTransformerEmbedder):
            model = self._embedder.model
            tokens = int(getattr(model, "max_seq_length", 0) or 0)
            tok = getattr(model, "tokenizer", None)
            if tokens > 2 and tok is not None and getattr(tok, "is_fast", False):
                self._tokenizer, self._max_tokens = tok, tokens - 2  # [CLS] and [SEP]
            # Anything up to this many characters fits without counting tokens.
            self.chars = min(tokens - 2 if tokens > 2 else DEFAULT_WINDOW_CHARS,
                             self._embedder.max_chars)
        elif _has_offsets(self._embedder):
            emb: Any = self._embedder
            tokens = int(emb.max_seq_length)
            self._offsets_fn, self._max_tokens = emb.token_offsets, tokens - 2
            self._tokenizer = emb  # resolved: token counts are exact
            self.chars = min(tokens - 2, int(getattr(emb, "max_chars", tokens - 2)))
        self._resolved = True

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        if self._offsets_fn is not None:
            return self._offsets_fn(text)
        tok: Any = self._tokenizer
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                  verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    def fits(self, text: str) -> bool:
        """Whether the embedder reads all of ``text``."""
        if len(text) <= self.chars:
            return True
        self._resolve()
        if self._tokenizer is None or self._max_tokens is None:
            return len(text) <= self.chars
        if len(text) > 16 * self._max_tokens:  # no tokenizer packs 16 characters a token
            return False
        return len(self._offsets(text)) <= self._max_tokens

    def view(self, text: str) -> str:
        """What to embed: the whole text when it fits, else its end that fits."""
        if self.fits(text):
            return text
        if self._tokenizer is None or self._max_tokens is None:
            start = len(text) - self.chars
        else:
            # Tokenise only the end (a 1 MB prompt must not cost a second).
            base = max(0, len(text) - 16 * self._max_tokens)
            offsets = self._offsets(text[base:])
            start = base + offsets[-self._max_tokens][0]
        # Start at a word, so the same end of two prompts is embedded the same way.
        space = text.find(" ", start, start + 32)
        return text[space + 1 if space >= 0 else start:]


def _common_length(a: str, b: str, n: int, part: Callable[[str, int], str]) -> int:
    """Largest ``m <= n`` with ``part(a, m) == part(b, m)``, by bisection.

    Each comparison runs in C, so a megabyte prompt costs ~20 of them rather
    than a Python loop over a million characters.
    """
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if part(a, mid) == part(b, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def differing_spans(a: str, b: str) -> tuple[str, str]:
    """The parts of two texts that differ, widened to whole sentences.

    ``a`` and ``b`` are equal outside ``a[i:j]`` and ``b[i:k]``; the spans start
    after the sentence boundary before the first difference and end after the
    sentence boundary following the last one, both found in the common text.

    Examples
    --------
    >>> differing_spans("Doc. Q: Who wrote it? Thanks.", "Doc. Q: Who is the author? Thanks.")
    ('Who wrote it? ', 'Who is the author? ')
    """
    if a == b:
        return "", ""
    n = min(len(a), len(b))
    i = _common_length(a, b, n, lambda t, m: t[:m])
    s = _common_length(a, b, n - i, lambda t, m: t[len(t) - m:])
    head = a[:i]
    start = max((head.rfind(sep) + len(sep) for sep in _BOUNDARIES if head.rfind(sep) >= 0), default=0)
    tail = a[len(a) - s:]
    ends = [tail.find(sep) + len(sep) for sep in _BOUNDARIES if tail.find(sep) >= 0]
    keep = s - min(ends) if ends else 0  # common characters after the widened span
    return a[start:len(a) - keep], b[start:len(b) - keep]
