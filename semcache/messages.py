"""Turn OpenAI-style chat ``messages`` into a cache key: a prompt and a scope.

The prompt is the text of the last message (normally the user's new turn); the
system prompt goes into :attr:`Scope.system`; everything said before the last
message goes into :attr:`Scope.context` as a digest. So "how old is he?" asked
after a conversation about Obama never hits the same words asked after a
conversation about Biden, while the same follow-up in the same conversation does.

Content may be a string, None, or a list of parts (``{"type": "text", "text": ...}``,
images, audio...). Text parts form the prompt; every non-text part is hashed into
the context, so the same words about a different image never hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semcache.errors import InvalidPromptError
from semcache.scope import Scope, canonical_json

__all__ = ["MessageKey", "message_text", "split_messages"]

_SYSTEM_ROLES = frozenset({"system", "developer"})
_NON_TEXT = "[non-text content]"


@dataclass(frozen=True)
class MessageKey:
    """What a list of messages is cached under.

    Attributes
    ----------
    prompt : str
        Text of the last message: what is embedded and compared.
    system : str or None
        The system/developer prompts, joined.
    context : str or None
        SHA-256 of everything else that shapes the answer (earlier turns, the last
        message's role if not ``user``, its non-text parts, tool calls), or None for
        a single user turn.
    context_text : str or None
        The earlier turns as text (``"user: ...\nassistant: ..."``) when they are
        all plain text turns of a user and an assistant and the last message is a
        plain user turn: what a cache with ``context_match="semantic"`` compares.
        None otherwise (such a conversation is matched by :attr:`context` only).
    """

    prompt: str
    system: str | None
    context: str | None
    context_text: str | None = None

    def scope(self, base: Scope | None = None, *, semantic: bool = False) -> Scope:
        """``base`` (default: empty) with :attr:`system` and :attr:`context` filled in.

        With ``semantic=True`` (a cache whose ``context_match`` is ``"semantic"``)
        the context is :attr:`context_text` when there is one, so the cache can match
        a paraphrased conversation; the digest otherwise.
        """
        context = self.context_text if semantic and self.context_text is not None else self.context
        return (base or Scope()).replace(system=self.system, context=context)


def _parts(content: Any, where: str) -> tuple[list[str], list[Any]]:
    """Split message content into its text pieces and its other parts."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        texts: list[str] = []
        other: list[Any] = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                text = part.get("text")
                if kind in ("text", "input_text", "output_text") and isinstance(text, str):
                    texts.append(text)
                else:
                    other.append(part)
            else:
                raise InvalidPromptError(f"{where}.content[{i}] is a {type(part).__name__}")
        return texts, other
    raise InvalidPromptError(f"{where}.content is a {type(content).__name__}")


def message_text(content: Any) -> str:
    """The text of a message's content (text parts joined by newlines)."""
    texts, _ = _parts(content, "message")
    return "\n".join(texts)


def _digest(obj: Any) -> str:
    try:
        text = canonical_json(obj)
    except Exception as exc:  # a non-JSON value inside a message
        raise InvalidPromptError(f"messages are not JSON-like: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_messages(messages: Any) -> MessageKey:
    """Build the cache key of a chat request's ``messages``.

    Raises
    ------
    InvalidPromptError
        ``messages`` is not a non-empty list of dicts with a string ``role``, or
        the last message has no text at all and no other content.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise InvalidPromptError("messages must be a non-empty list of message dicts")
    system: list[str] = []
    turns: list[Any] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            raise InvalidPromptError(f"messages[{i}] must be a dict with a string 'role'")
        if msg["role"] in _SYSTEM_ROLES:
            texts, other = _parts(msg.get("content"), f"messages[{i}]")
            system.append("\n".join(texts))
            if other:
                turns.append({"system_parts": other})
        else:
            turns.append(dict(msg))
    if not turns:
        raise InvalidPromptError("messages hold only system prompts; there is nothing to answer")
    last = turns[-1]
    texts, other = _parts(last.get("content"), f"messages[{len(messages) - 1}]")
    prompt = "\n".join(texts)
    # What else about the last message shapes the answer: its role when not a user
    # turn, non-text parts, tool calls, a tool-call id, a name.
    extra = {k: v for k, v in last.items() if k not in ("content",)}
    if extra.get("role") == "user":
        extra.pop("role")
    if other:
        extra["parts"] = other
    if not prompt.strip():
        if not other and not extra:
            raise InvalidPromptError("the last message has no content")
        prompt = _NON_TEXT
    earlier = turns[:-1]
    context = _digest({"earlier": earlier, "last": extra}) if (earlier or extra) else None
    return MessageKey(prompt=prompt, system="\n\n".join(system) if system else None, context=context,
                      context_text=None if extra else _plain_text(earlier))


def _plain_text(turns: list[Any]) -> str | None:
    """Earlier turns as ``role: text`` lines, or None if any is more than a plain text turn."""
    lines: list[str] = []
    for turn in turns:
        if set(turn) - {"role", "content"} or turn["role"] not in ("user", "assistant"):
            return None
        content = turn.get("content")
        if not isinstance(content, str):
            texts, other = _parts(content, "message")
            if other:
                return None
            content = "\n".join(texts)
        lines.append(f"{turn['role']}: {content}")
    return "\n".join(lines) if lines else None
