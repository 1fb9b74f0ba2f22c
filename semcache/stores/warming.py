"""The store a remote-store cache holds while it connects and loads in the background.

``SemanticCache(store="postgresql://…")`` (with ``fail_open``) does not make its caller wait
for the engine: a background thread connects, checks the settings and loads the replica,
while the cache holds this placeholder. It is never usable, so lookups answer MISS and
puts return None (both counted as errors and logged, as any store failure); every other
call raises :class:`~semcache.errors.StoreError`. See ``docs/postgres.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from semcache._types import JSONValue
from semcache.errors import StoreError
from semcache.stores.base import ChangeBatch, EntryMeta, Loaded, Row, Store

__all__ = ["WarmingStore"]


class WarmingStore(Store):
    """Stands in for a remote store until it is connected and loaded (never usable)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        netloc = (f"{parts.username}@" if parts.username else "") + (parts.hostname or "")
        netloc += f":{parts.port}" if parts.port else ""
        self.where = urlunsplit((parts.scheme, netloc, parts.path, "", ""))  # no password

    def _fail(self) -> NoReturn:
        raise StoreError(f"the store at {self.where} is still connecting/loading in the background")

    def usable(self) -> bool:
        return False

    def load_settings(self) -> dict[str, Any] | None:
        self._fail()

    def init_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        self._fail()

    def save_settings(self, settings: dict[str, Any]) -> None:
        self._fail()

    def get_blob(self, name: str) -> bytes | None:
        self._fail()

    def set_blob(self, name: str, data: bytes) -> None:
        self._fail()

    def put_many(self, rows: list[Row]) -> list[int]:
        self._fail()

    def delete(self, ids: Sequence[int]) -> list[int]:
        self._fail()

    def update_meta(self, entry_id: int, meta: EntryMeta) -> bool:
        self._fail()

    def get_completion(self, entry_id: int) -> tuple[str, JSONValue] | None:
        self._fail()

    def clear(self) -> None:
        self._fail()

    def close(self) -> None:
        pass

    def head(self) -> int:
        return 0

    def changes(self, since: int) -> ChangeBatch:
        self._fail()

    def load_all(self, dim: int | None = None, fingerprint: str | None = None) -> Loaded:
        self._fail()

    def note_scopes(self, tenants: Mapping[str, str | None]) -> None:
        self._fail()

    def scope_tenants(self) -> dict[str, str | None]:
        self._fail()

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        self._fail()

    def load_counters(self) -> tuple[dict[str, int], float | None]:
        self._fail()
