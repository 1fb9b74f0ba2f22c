"""The ASGI types and request-header access the ASGI adapters share.

Spelled out here, with no framework imported, so the middleware needs no framework
installed and ``semcache serve`` (which imports the middleware only once it serves)
starts light.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

__all__ = ["ASGIApp", "ASGIScope", "Message", "Receive", "Send", "header_getter"]

Message: TypeAlias = MutableMapping[str, Any]
ASGIScope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[ASGIScope, Receive, Send], Awaitable[None]]


def header_getter(scope: ASGIScope) -> Callable[[str], str | None]:
    """``get(name)``: the first value of request header ``name`` (any case), or None."""
    raw: list[tuple[bytes, bytes]] = scope.get("headers") or []

    def get(name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for k, v in raw:
            if k.lower() == wanted:
                return v.decode("latin-1")
        return None

    return get
