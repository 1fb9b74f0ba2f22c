"""Adapters: semcache in front of the tools users already have.

Each adapter lives in its own module and needs an optional extra:

- ``semcache.adapters.openai``: httpx transports for ``OpenAI(http_client=...)``;
  ``pip install 'semcache-llm[openai]'``.
- ``semcache.adapters.middleware``: ASGI middleware for OpenAI-compatible chat
  servers; no extra.
- ``semcache.adapters.server``: ``semcache serve``, a caching proxy;
  ``pip install 'semcache-llm[server]'``.
- ``semcache.adapters.langchain``: a LangChain ``BaseCache``;
  ``pip install 'semcache-llm[langchain]'``.

:mod:`semcache.adapters.requests` (how an OpenAI request becomes a cache key)
and :mod:`semcache.adapters.sse` (assembling and replaying streams) need no
extra. Modules are not imported here, so importing this package never pulls in
an optional dependency.
"""

from __future__ import annotations

import importlib
from types import ModuleType

if __name__ != "semcache.adapters":  # pragma: no cover - guards a packaging mistake
    # The source folder is called ``adapters``; it only exists as ``semcache.adapters``.
    raise ImportError("import semcache.adapters, not a top-level 'adapters' package")

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise an ImportError naming the extra.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"httpx"``.
    extra : str
        The semcache extra that installs it, e.g. ``"openai"``.

    Returns
    -------
    module

    Raises
    ------
    ImportError
        The module is missing; the message holds the ``pip install`` command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this semcache adapter needs {module!r}: pip install 'semcache-llm[{extra}]'"
        ) from exc
