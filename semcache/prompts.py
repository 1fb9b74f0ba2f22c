"""Prompt validation, normalisation and the exact-match key."""

from __future__ import annotations

import hashlib
import unicodedata

from semcache.errors import InvalidPromptError

__all__ = ["normalize_prompt", "prompt_key"]


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
