"""A stand-in for the OpenAI API: ``/v1/chat/completions`` and ``/v1/responses``.

It answers like the API (JSON, or SSE when ``stream`` is true), counts calls,
and can be told to misbehave. The answer text names the call number, so a test
can tell a replayed answer from a fresh one: ``"Answer 1: <the prompt>"``.

Knobs (attributes, set by the test before a request):

- ``status``: an HTTP error status to return instead of an answer;
- ``finish``: ``"length"`` to truncate the answer (``status="incomplete"`` for
  the Responses API);
- ``tool_call``: answer with a call of the first tool in the request;
- ``cut_stream``: stop a stream half-way, without a final chunk;
- ``valid_keys``: a set of API keys; when set, any other ``Authorization``
  (or none) gets 401, like the real API (``/v1/models`` included);
- ``delay``: seconds to wait before answering (concurrency tests).

``auth`` records the ``Authorization`` header of every counted call, and
``models_calls`` the ``/v1/models`` requests. A body that is not JSON (or is
nested too deeply for the parser) gets a 400, as the API would answer.

The stream events are written out here by hand, independently of
:mod:`semcache.adapters.sse`, so the tests compare the adapters against an
independent account of the wire format.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from semcache import SemanticCache, StoreError

#: The model name and prompts the adapter tests share.
MODEL = "gpt-4o-mini"
Q = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"


class RaisingCache(SemanticCache):
    """A cache whose every lookup and store raises, as a broken store would."""

    def get(self, *a: Any, **k: Any) -> Any:
        raise StoreError("the store is gone")

    def put(self, *a: Any, **k: Any) -> Any:
        raise RuntimeError("unexpected failure")


def _last_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1].get("content") if messages else ""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return str(content or "")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class UpstreamStub:
    """The stub's state and its ASGI app (``stub.app``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.finish: str = "stop"
        self.tool_call = False
        self.cut_stream = False
        self.valid_keys: set[str] | None = None
        self.delay = 0.0
        self.auth: list[str | None] = []
        self.models_calls = 0
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    @property
    def count(self) -> int:
        """Number of answered requests (errors included)."""
        return len(self.calls)

    def reset(self) -> None:
        self.calls.clear()
        self.status = None
        self.finish = "stop"
        self.tool_call = False
        self.cut_stream = False
        self.valid_keys = None
        self.delay = 0.0
        self.auth.clear()
        self.models_calls = 0

    def _unauthorized(self, request: Request) -> Response | None:
        if self.valid_keys is None:
            return None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.valid_keys:
            return None
        return JSONResponse({"error": {"message": "Incorrect API key provided",
                                       "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}, status_code=401)

    async def _record(self, request: Request) -> tuple[int, dict[str, Any]]:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ValueError("not an object with a model")
        messages = body.get("messages", [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages is not a list of objects")
        with self._lock:
            self.calls.append((request.url.path, body))
            self.auth.append(request.headers.get("authorization"))
            n = len(self.calls)
        if self.delay:
            await asyncio.sleep(self.delay)
        return n, body

    async def _begin(self, request: Request) -> tuple[int, dict[str, Any]] | Response:
        """Authenticate and record a call, or the error answer to send instead."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            return await self._record(request)
        except (ValueError, RecursionError):
            return JSONResponse({"error": {"message": "We could not parse the JSON body, or "
                                                      "it is not a valid request",
                                           "type": "invalid_request_error", "code": None}},
                                status_code=400)

    def _error(self) -> Response | None:
        if self.status is None:
            return None
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse(
            {"error": {"message": f"stub error {self.status}", "type": kind, "code": None}},
            status_code=self.status,
        )

    async def models(self, request: Request) -> Response:
        self.models_calls += 1
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [{"id": "gpt-stub", "object": "model"}]})

    # ------------------------------------------------------------------ chat
    async def chat(self, request: Request) -> Response:
        begun = await self._begin(request)
        if isinstance(begun, Response):
            return begun
        n, body = begun
        err = self._error()
        if err is not None:
            return err
        text = f"Answer {n}: {_last_text(body['messages'])}"
        tools = body.get("tools") or []
        call = None
        if self.tool_call and tools:
            fn = {"name": tools[0]["function"]["name"], "arguments": '{"city": "Paris"}'}
            call = {"id": f"call_{n}", "type": "function", "function": fn}
        finish = "tool_calls" if call else self.finish
        head = {"id": f"chatcmpl-{n}", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_stub"}
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if call else text, "refusal": None}
            if call:
                message["tool_calls"] = [call]
            return JSONResponse({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cut = self.cut_stream

        async def gen() -> AsyncIterator[bytes]:
            base = {**head, "object": "chat.completion.chunk"}
            if include_usage:
                base["usage"] = None

            def chunk(delta: dict[str, Any], fr: str | None = None) -> bytes:
                return _sse({**base, "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}]})

            yield chunk({"role": "assistant", "content": None if call else "", "refusal": None})
            if call:
                yield chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"],
                                                          "arguments": ""}}]})
                yield chunk({"tool_calls": [{"index": 0, "function": {
                    "arguments": call["function"]["arguments"]}}]})
            else:
                words = text.split(" ")
                for i, w in enumerate(words):
                    if cut and i == len(words) // 2:
                        return
                    yield chunk({"content": w if i == 0 else " " + w})
                    await asyncio.sleep(0)
            yield chunk({}, finish)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    # ------------------------------------------------------------- responses
    async def responses(self, request: Request) -> Response:
        begun = await self._begin(request)
        if isinstance(begun, Response):
            return begun
        n, body = begun
        err = self._error()
        if err is not None:
            return err
        raw = body.get("input")
        prompt = raw if isinstance(raw, str) else _last_text(raw)
        text = f"Answer {n}: {prompt}"
        truncated = self.finish == "length"
        tools = body.get("tools") or []
        if self.tool_call and tools:
            item: dict[str, Any] = {"id": f"fc_{n}", "type": "function_call", "status": "completed",
                                    "call_id": f"call_{n}", "name": tools[0]["name"],
                                    "arguments": '{"city": "Paris"}'}
        else:
            item = {"id": f"msg_{n}", "type": "message", "role": "assistant",
                    "status": "incomplete" if truncated else "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": [],
                                 "logprobs": []}]}
        final = {
            "id": f"resp_{n}", "object": "response", "created_at": time.time(),
            "model": body["model"], "status": "incomplete" if truncated else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "error": None, "instructions": body.get("instructions"), "output": [item],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": tools,
            "temperature": body.get("temperature", 1.0), "top_p": 1.0,
            "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }
        if not body.get("stream"):
            return JSONResponse(final)
        cut = self.cut_stream

        async def gen() -> AsyncIterator[bytes]:
            seq = iter(range(1000))

            def ev(kind: str, **fields: Any) -> bytes:
                return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

            start = {**final, "status": "in_progress", "output": [], "usage": None,
                     "incomplete_details": None}
            yield ev("response.created", response=start)
            yield ev("response.in_progress", response=start)
            if item["type"] == "message":
                ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
                yield ev("response.output_item.added", output_index=0,
                         item={**item, "status": "in_progress", "content": []})
                empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                yield ev("response.content_part.added", **ids, part=empty)
                words = text.split(" ")
                for i, w in enumerate(words):
                    if cut and i == len(words) // 2:
                        return
                    yield ev("response.output_text.delta", **ids, delta=w if i == 0 else " " + w,
                             logprobs=[])
                yield ev("response.output_text.done", **ids, text=text, logprobs=[])
                yield ev("response.content_part.done", **ids, part=item["content"][0])
            else:
                yield ev("response.output_item.added", output_index=0,
                         item={**item, "status": "in_progress", "arguments": ""})
                yield ev("response.function_call_arguments.delta", item_id=item["id"],
                         output_index=0, delta=item["arguments"])
                yield ev("response.function_call_arguments.done", item_id=item["id"],
                         output_index=0, name=item["name"], arguments=item["arguments"])
            yield ev("response.output_item.done", output_index=0, item=item)
            yield ev("response.incomplete" if truncated else "response.completed", response=final)

        return StreamingResponse(gen(), media_type="text/event-stream")
