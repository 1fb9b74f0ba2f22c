"""Server-sent event streams of the OpenAI API: assemble them, and replay them.

A streamed answer is stored as the final response it adds up to (the same
``chat.completion`` or ``response`` object a non-streamed request returns), so
streamed and plain requests share entries. A hit for a streamed request is
replayed as chunks of the shape the upstream sends:

- Chat Completions: ``data: {chat.completion.chunk}`` lines (a role chunk, the
  content word by word, tool-call fragments, a final chunk with
  ``finish_reason``, a usage chunk when ``stream_options.include_usage`` asked
  for one), then ``data: [DONE]``.
- Responses: ``event: <type>`` / ``data: {...}`` pairs with increasing
  ``sequence_number``: ``response.created``, ``response.in_progress``, per
  output item ``response.output_item.added``, ``response.content_part.added``,
  ``response.output_text.delta`` (or refusal / function-call argument deltas)
  and the matching ``.done`` events, then ``response.completed`` carrying the
  whole stored response.

Nothing here needs an optional dependency.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .requests import Endpoint

__all__ = [
    "ChatAssembler",
    "Event",
    "ResponsesAssembler",
    "SSEDecoder",
    "StreamCapture",
    "assemble",
    "chat_chunks",
    "encode_event",
    "replay",
    "responses_events",
]

_EOL: Final = re.compile(rb"\r\n|\r|\n")
_PIECES: Final = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``event:`` name (or None) and its ``data:`` text."""

    event: str | None
    data: str


class SSEDecoder:
    """Incremental ``text/event-stream`` parser (bytes in, events out).

    Lines may end in LF, CRLF or CR, and a chunk may end anywhere, even inside
    a UTF-8 character or between the CR and LF of one line ending.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_lf = False
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse a chunk; returns the events it completed."""
        out: list[Event] = []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self._buf += chunk
        while True:
            m = _EOL.search(self._buf)
            if m is None:
                break
            line = bytes(self._buf[: m.start()])
            # Read the match before the buffer changes under it.
            lone_cr_at_end = m.group() == b"\r" and m.end() == len(self._buf)
            del self._buf[: m.end()]
            if lone_cr_at_end:
                # The LF of a CRLF may be the first byte of the next chunk.
                self._skip_lf = True
            self._line(line.decode("utf-8", "replace"), out)
        return out

    def flush(self) -> list[Event]:
        """End of stream: complete a last line and event left without a blank line."""
        out: list[Event] = []
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._line(line.decode("utf-8", "replace"), out)
        self._line("", out)
        return out

    def _line(self, line: str, out: list[Event]) -> None:
        if not line:
            if self._data:
                out.append(Event(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
            return
        if line.startswith(":"):
            return  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value or None
        elif name == "data":
            self._data.append(value)


class Assembler(Protocol):
    """Builds the final response of one stream from its events."""

    done: bool
    failed: bool

    def add(self, event: Event) -> None: ...

    def result(self) -> dict[str, Any] | None: ...


def _accumulate(acc: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Merge one chat ``delta`` into the message built so far.

    Strings concatenate, mappings merge, lists of indexed objects (tool-call
    fragments) merge by their ``index``, other lists extend; ``index`` and
    ``type`` are identifiers and are replaced, not concatenated.
    """
    for key, value in delta.items():
        old = acc.get(key)
        if value is None:
            acc.setdefault(key, None)
        elif old is None:
            if isinstance(value, list) and _indexed(value):
                merged: list[Any] = []
                _merge_indexed(merged, value)
                acc[key] = merged
            else:
                acc[key] = copy.deepcopy(value)
        elif key in ("index", "type", "id"):
            acc[key] = value
        elif isinstance(old, str) and isinstance(value, str):
            acc[key] = old + value
        elif isinstance(old, dict) and isinstance(value, Mapping):
            _accumulate(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            if _indexed(value):
                _merge_indexed(old, value)
            else:
                old.extend(copy.deepcopy(value))
        else:
            acc[key] = value


def _indexed(values: list[Any]) -> bool:
    """Whether a delta list holds fragments addressed by ``index`` (tool calls)."""
    return any(isinstance(v, Mapping) and "index" in v for v in values)


def _merge_indexed(acc: list[Any], fragments: list[Any]) -> None:
    for frag in fragments:
        if not isinstance(frag, Mapping) or not isinstance(frag.get("index"), int):
            acc.append(copy.deepcopy(frag))
            continue
        idx = frag["index"]
        target = next((t for t in acc if isinstance(t, dict) and t.get("index") == idx), None)
        if target is None:
            target = {}
            acc.append(target)
        _accumulate(target, frag)


class ChatAssembler:
    """Assembles ``chat.completion.chunk`` events into a ``chat.completion`` dict."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.done = False
        self.failed = False

    def add(self, event: Event) -> None:
        """Take one event; ``[DONE]`` ends the stream, an error event fails it."""
        if self.done or self.failed:
            return
        if event.data.strip() == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(event.data)
        except ValueError:
            self.failed = True
            return
        if event.event == "error" or not isinstance(chunk, dict) or chunk.get("error"):
            self.failed = True
            return
        for key, value in chunk.items():
            if key in ("choices", "object"):
                continue
            if value is not None or key not in self.head:
                self.head[key] = value
        for c in chunk.get("choices") or []:
            if not isinstance(c, Mapping):
                self.failed = True
                return
            idx = c.get("index", 0)
            state = self.choices.setdefault(
                idx, {"index": idx, "message": {}, "logprobs": None, "finish_reason": None}
            )
            delta = c.get("delta")
            if isinstance(delta, Mapping):
                _accumulate(state["message"], delta)
            if c.get("finish_reason") is not None:
                state["finish_reason"] = c["finish_reason"]
            lp = c.get("logprobs")
            if isinstance(lp, Mapping):
                if state["logprobs"] is None:
                    state["logprobs"] = {}
                for k, v in lp.items():
                    if isinstance(v, list):
                        state["logprobs"].setdefault(k, [])
                        if state["logprobs"][k] is None:
                            state["logprobs"][k] = []
                        state["logprobs"][k].extend(v)
                    else:
                        state["logprobs"].setdefault(k, v)
            for k, v in c.items():
                if k not in ("index", "delta", "finish_reason", "logprobs"):
                    state[k] = v

    def result(self) -> dict[str, Any] | None:
        """The final response, or None unless every choice finished and nothing failed."""
        if self.failed or not self.choices:
            return None
        choices = []
        for idx in sorted(self.choices):
            state = copy.deepcopy(self.choices[idx])
            if state["finish_reason"] is None:
                return None  # the stream was cut off
            msg = state["message"]
            msg.setdefault("role", "assistant")
            msg.setdefault("content", None)
            msg.setdefault("refusal", None)
            tool_calls = msg.get("tool_calls")
            if isinstance(tool_calls, list):
                tool_calls.sort(key=lambda t: t.get("index", 0) if isinstance(t, dict) else 0)
                for t in tool_calls:
                    if isinstance(t, dict):
                        t.pop("index", None)
                        t.setdefault("type", "function")
            choices.append(state)
        head = dict(self.head)
        out: dict[str, Any] = {
            "id": head.pop("id", None),
            "object": "chat.completion",
            "created": head.pop("created", None),
            "model": head.pop("model", None),
            "choices": choices,
        }
        out.update(head)
        return out


class ResponsesAssembler:
    """Takes the final ``response`` of a Responses API stream from its terminal event."""

    _TERMINAL: Final = ("response.completed", "response.incomplete", "response.failed")

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.done = False
        self.failed = False

    def add(self, event: Event) -> None:
        """Take one event; ``response.completed``/``incomplete``/``failed`` end the stream."""
        if self.done or self.failed:
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            self.failed = True
            return
        if not isinstance(data, dict):
            self.failed = True
            return
        kind = data.get("type") or event.event
        if kind == "error" or event.event == "error":
            self.failed = True
        elif kind in self._TERMINAL:
            response = data.get("response")
            if isinstance(response, dict):
                self.final = response
            else:
                self.failed = True
            self.done = True

    def result(self) -> dict[str, Any] | None:
        """The final response (whatever its status; see :func:`~.requests.storable`)."""
        return None if self.failed else self.final


class StreamCapture:
    """Follows a stream chunk by chunk while it is passed on, and assembles it.

    Examples
    --------
    >>> cap = StreamCapture("chat")
    >>> for chunk in upstream_chunks:          # doctest: +SKIP
    ...     ended = cap.feed(chunk)
    >>> final = cap.finish()                   # doctest: +SKIP
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.decoder = SSEDecoder()
        self.assembler: Assembler = ChatAssembler() if endpoint == "chat" else ResponsesAssembler()

    @property
    def done(self) -> bool:
        """The terminal event (``[DONE]``, ``response.completed``...) has been seen."""
        return self.assembler.done

    def feed(self, chunk: bytes) -> bool:
        """Parse a chunk; returns True once the terminal event has been seen."""
        for event in self.decoder.feed(chunk):
            self.assembler.add(event)
        return self.assembler.done

    def finish(self) -> dict[str, Any] | None:
        """End of stream: the assembled final response, or None if incomplete or failed."""
        for event in self.decoder.flush():
            self.assembler.add(event)
        return self.assembler.result()


def assemble(endpoint: Endpoint, body: bytes) -> dict[str, Any] | None:
    """Assemble a whole recorded stream (see :class:`StreamCapture`)."""
    cap = StreamCapture(endpoint)
    cap.feed(body)
    return cap.finish()


# ------------------------------------------------------------------- replay
def _pieces(text: str) -> list[str]:
    """Split text into word-sized deltas whose concatenation is the text."""
    return _PIECES.findall(text) or [text]


def chat_chunks(
    completion: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that add up to a stored ``chat.completion``.

    Parameters
    ----------
    completion : mapping
        A ``chat.completion`` object.
    include_usage : bool
        Add ``"usage": null`` to every chunk and a last chunk with no choices and
        the usage, as the API does for ``stream_options={"include_usage": true}``.
    """
    base: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for key in ("system_fingerprint", "service_tier"):
        if completion.get(key) is not None:
            base[key] = completion[key]
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: Any = None, logprobs: Any = None
              ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [choice]}

    out: list[dict[str, Any]] = []
    for pos, choice in enumerate(completion.get("choices") or []):
        index = choice.get("index", pos)
        msg: Mapping[str, Any] = choice.get("message") or {}
        content = msg.get("content")
        first: dict[str, Any] = {
            "role": msg.get("role", "assistant"),
            "content": "" if isinstance(content, str) else None,
            "refusal": None,
        }
        out.append(chunk(index, first))
        if isinstance(content, str):
            out.extend(chunk(index, {"content": p}) for p in _pieces(content) if p)
        refusal = msg.get("refusal")
        if isinstance(refusal, str):
            out.extend(chunk(index, {"refusal": p}) for p in _pieces(refusal) if p)
        for i, call in enumerate(msg.get("tool_calls") or []):
            fn = call.get("function") or {}
            head = {
                "index": i,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": fn.get("name"), "arguments": ""},
            }
            out.append(chunk(index, {"tool_calls": [head]}))
            out.extend(
                chunk(index, {"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                for p in _pieces(fn.get("arguments") or "")
                if p
            )
        legacy = msg.get("function_call")
        if isinstance(legacy, Mapping):
            named = {"name": legacy.get("name"), "arguments": ""}
            out.append(chunk(index, {"function_call": named}))
            out.extend(
                chunk(index, {"function_call": {"arguments": p}})
                for p in _pieces(legacy.get("arguments") or "")
                if p
            )
        for key, value in msg.items():
            # Anything else the message carries (annotations, audio...), whole.
            if key not in ("role", "content", "refusal", "tool_calls", "function_call") and value:
                out.append(chunk(index, {key: value}))
        if choice.get("logprobs"):
            out.append(chunk(index, {}, logprobs=choice["logprobs"]))
        out.append(chunk(index, {}, finish=choice.get("finish_reason")))
    if include_usage:
        out.append({**base, "choices": [], "usage": completion.get("usage")})
    return out


def responses_events(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Responses API stream events that end in a stored ``response``."""
    seq = 0
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        events.append({"type": kind, "sequence_number": seq, **fields})
        seq += 1

    start = dict(copy.deepcopy(response))
    start.update(status="in_progress", output=[], usage=None, incomplete_details=None)
    if "completed_at" in start:
        start["completed_at"] = None
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for out_i, item in enumerate(response.get("output") or []):
        kind = item.get("type")
        item_id = item.get("id")
        added = dict(copy.deepcopy(item))
        if "status" in added:
            added["status"] = "in_progress"
        if kind == "message":
            added["content"] = []
        elif kind == "function_call":
            added["arguments"] = ""
        emit("response.output_item.added", output_index=out_i, item=added)
        if kind == "message":
            for c_i, part in enumerate(item.get("content") or []):
                ids = {"item_id": item_id, "output_index": out_i, "content_index": c_i}
                ptype = part.get("type")
                if ptype == "output_text":
                    text = part.get("text") or ""
                    empty = {**part, "text": "", "annotations": []}
                    if "logprobs" in part:
                        empty["logprobs"] = []
                    emit("response.content_part.added", **ids, part=empty)
                    for p in _pieces(text) if text else []:
                        emit("response.output_text.delta", **ids, delta=p, logprobs=[])
                    emit("response.output_text.done", **ids, text=text,
                         logprobs=part.get("logprobs") or [])
                elif ptype == "refusal":
                    text = part.get("refusal") or ""
                    emit("response.content_part.added", **ids, part={**part, "refusal": ""})
                    for p in _pieces(text) if text else []:
                        emit("response.refusal.delta", **ids, delta=p)
                    emit("response.refusal.done", **ids, refusal=text)
                else:
                    emit("response.content_part.added", **ids, part=part)
                emit("response.content_part.done", **ids, part=part)
        elif kind == "function_call":
            args = item.get("arguments") or ""
            for p in _pieces(args) if args else []:
                emit("response.function_call_arguments.delta", item_id=item_id,
                     output_index=out_i, delta=p)
            emit("response.function_call_arguments.done", item_id=item_id, output_index=out_i,
                 name=item.get("name"), arguments=args)
        emit("response.output_item.done", output_index=out_i, item=item)
    status = response.get("status")
    terminal = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        status if isinstance(status, str) else "", "response.completed"
    )
    emit(terminal, response=dict(response))
    return events


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event as bytes (compact JSON data)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def replay(endpoint: Endpoint, completion: Mapping[str, Any], *, include_usage: bool = False
           ) -> Iterator[bytes]:
    """A stored final response as the SSE byte chunks (one per event) the upstream sends."""
    if endpoint == "chat":
        for c in chat_chunks(completion, include_usage=include_usage):
            yield encode_event(c)
        yield b"data: [DONE]\n\n"
    else:
        for e in responses_events(completion):
            yield encode_event(e, e["type"])
