"""Scopes: the partitions of the cache's key space.

A stored completion is only valid for the exact setting it was produced in:
the same model, the same generation parameters that change the answer
(temperature, tools, response format, seed...), the same system prompt, the
same earlier conversation turns, the same tenant, and the same embedding
model. A :class:`Scope` names that setting; the cache turns it (together with
its embedder's fingerprint) into a scope id and never looks outside it. Two
scopes that differ in any field never share a hit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
from collections.abc import Mapping
from typing import Any

from semcache._types import JSONValue
from semcache.errors import ConfigError

__all__ = ["Scope", "canonical_json", "scope_id"]

_FIELDS = ("model", "params", "system", "tenant", "context", "namespace")


def _canonical(value: Any, path: str = "scope") -> JSONValue:
    """Normalise a JSON-like value so equal settings serialise equally.

    Integral floats become ints (``temperature=0`` and ``0.0`` are the same
    setting); mappings are sorted by the JSON encoder; tuples become lists.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{path} contains a non-finite number {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path} has a non-string key {k!r}")
            out[k] = _canonical(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(
        f"{path} holds a {type(value).__name__}; scope values must be JSON-like "
        "(str, number, bool, None, list, dict)"
    )


def _freeze(value: Any) -> Any:
    """A deep, read-only copy of a (validated) JSON-like value.

    Mappings become :class:`types.MappingProxyType` over a private dict and lists
    become tuples, so nothing the caller still holds can change a scope after
    its id was computed (a ``temperature=0`` scope must stay one).
    """
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value  # str, int, float, bool, None: immutable already


def _thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a frozen value (dicts and lists again)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Deterministic JSON text of a JSON-like value (sorted keys, no spaces)."""
    return json.dumps(
        _canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


@dataclasses.dataclass(frozen=True)
class Scope:
    """The setting a completion was produced in.

    Parameters
    ----------
    model : str, optional
        Model name, e.g. ``"gpt-4o-mini"``.
    params : mapping, optional
        Generation parameters that change the answer: temperature, top_p,
        max_tokens, tools, tool_choice, response_format, seed... JSON-like values.
        The scope keeps a deep read-only copy (nested mappings read-only, lists
        as tuples): changing the dict passed in afterwards does not change the
        scope, and ``scope.params`` cannot be changed in place.
    system : str, optional
        The system (or developer) prompt.
    tenant : str, optional
        Who may see the entry. Entries are never shared across tenants.
    context : str, optional
        A digest of earlier conversation turns (see :mod:`semcache.messages`), so a
        follow-up like "how old is he?" only hits inside the same conversation.
    namespace : str, optional
        Any other partition the application wants (a feature, a prompt template
        version).

    Examples
    --------
    >>> Scope(model="gpt-4o", params={"temperature": 0}) == Scope.from_value(
    ...     {"model": "gpt-4o", "temperature": 0.0})
    True
    """

    model: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    system: str | None = None
    tenant: str | None = None
    context: str | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        for name in ("model", "system", "tenant", "context", "namespace"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"Scope.{name} must be a str or None, not {type(v).__name__}")
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"Scope.params must be a mapping, not {type(self.params).__name__}")
        # Validate first (a bad value fails where it was written, not at lookup), then
        # keep a frozen deep copy: the id below must describe the params for good.
        _canonical(self.params, "scope.params")
        object.__setattr__(self, "params", _freeze(self.params))
        object.__setattr__(self, "_json", canonical_json(self.as_dict()))

    def as_dict(self) -> dict[str, Any]:
        """The non-empty fields as a plain dict (``params`` as a mutable deep copy)."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            v = getattr(self, name)
            if name == "params":
                if v:
                    out[name] = _thaw(v)
            elif v is not None:
                out[name] = v
        return out

    @property
    def json(self) -> str:
        """Canonical JSON of the scope (what the scope id hashes)."""
        return str(self.__dict__["_json"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.json == other.json

    def __hash__(self) -> int:
        return hash(self.json)

    def __reduce__(self) -> tuple[type[Scope], tuple[Any, ...]]:
        # A read-only mapping does not pickle; rebuild from plain values instead.
        return (type(self), (self.model, _thaw(self.params), self.system, self.tenant,
                             self.context, self.namespace))

    def replace(self, **changes: Any) -> Scope:
        """A copy with some fields changed; ``params`` given here are merged in."""
        if "params" in changes:
            changes["params"] = {**_thaw(self.params), **changes["params"]}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_value(cls, value: Scope | Mapping[str, Any] | str | None) -> Scope:
        """Build a scope from what users pass as ``scope=``.

        - None: the default (empty) scope;
        - a :class:`Scope`: itself;
        - a str: ``Scope(namespace=value)``;
        - a mapping: its ``model``, ``system``, ``tenant``, ``context``, ``namespace``
          keys fill those fields, ``params`` is merged, and every other key is a
          generation parameter (so ``{"model": "m", "temperature": 0}`` works).
        """
        if value is None:
            return cls()
        if isinstance(value, Scope):
            return value
        if isinstance(value, str):
            return cls(namespace=value)
        if isinstance(value, Mapping):
            fields: dict[str, Any] = {}
            params: dict[str, Any] = dict(value.get("params") or {})
            for k, v in value.items():
                if k == "params":
                    continue
                if k in _FIELDS:
                    fields[k] = v
                else:
                    params[k] = v
            return cls(params=params, **fields)
        raise ConfigError(
            f"scope must be a Scope, a mapping, a str or None, not {type(value).__name__}"
        )


def scope_id(scope: Scope, fingerprint: str) -> str:
    """The id of ``scope`` under an embedder ``fingerprint``: 32 hex chars of SHA-256."""
    h = hashlib.sha256()
    h.update(fingerprint.encode("utf-8"))
    h.update(b"\0")
    h.update(scope.json.encode("utf-8"))
    return h.hexdigest()[:32]
