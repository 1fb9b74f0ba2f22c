"""Everyday commands on a cache directory: ``export``, ``import``, ``stats``, ``purge``.

``semcache export DIR`` writes the live entries as JSON Lines, one object a line::

    {"prompt": ..., "completion": ..., "scope_id": "9f2c...", "created": 1733600000.0,
     "expires": null, "embedder": "all-MiniLM-L6-v2+gt...@.../384/l2"}

``semcache import DIR FILE`` stores them into another cache (another machine, a
fresh directory): prompts are embedded again by the target cache, and each entry
keeps its scope id, creation time and expiry. A scope id hashes the embedder's
fingerprint, so lines written with another embedder are refused (nothing is
written) instead of being stored where no lookup could ever reach them.

A scope is stored as its hash plus its tenant: ``purge`` selects entries by
tenant, by scope id (``semcache stats`` lists them, ``--scope`` computes one from a
scope), by age, expiry or embedder. ``stats`` tells the hit rate over every process
that used the store (each adds its counts every few seconds and when it closes).

Every command takes a cache directory or a store URL (``postgresql://...``). They
open it as a :class:`~semcache.cache.SemanticCache` with the default embedder; only
``import`` loads the model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from semcache.cache import CacheEntry, SemanticCache
from semcache.errors import ConfigError, SemcacheError
from semcache.scope import Scope

__all__ = [
    "configure_export", "configure_import", "configure_purge", "configure_stats",
    "parse_duration", "read_export", "run_export", "run_import", "run_purge", "run_stats",
    "tenant_matches",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"30d"`` or ``"2w"``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 90m, 12h, 30d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _is_url(where: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", where) is not None


def _cache_at(where: str) -> SemanticCache:
    """A cache on a store URL or a directory (created if missing), errors raised."""
    if _is_url(where):
        return SemanticCache(store=where, fail_open=False)
    return SemanticCache(where, fail_open=False)


def _open(where: str) -> SemanticCache:
    if not _is_url(where) and not (Path(where) / "cache.db").is_file():
        raise ConfigError(f"{where} is not a semcache directory (no cache.db)")
    return _cache_at(where)


def tenant_matches(stored: str, name: str) -> bool:
    """Whether a scope's tenant ``stored`` belongs to tenant ``name``.

    True for ``Scope(tenant=name)`` and for the tenants the HTTP adapters write for
    it: ``tenant:name`` (a trusted tenant header), ``name`` narrowed by a tenant
    header (``name|tenant:team``, a ``--keys`` tenant) and any credential narrowed to
    ``tenant:name`` (``key:...|tenant:name``).
    """
    parts = stored.split("|")
    return stored == name or parts[0] == name or f"tenant:{name}" in parts


def _fail(command: str, exc: Exception) -> int:
    print(f"semcache {command}: {exc}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------ export
def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory or store URL")
    parser.add_argument("-o", "--output", default="-", help="JSON Lines file to write (default: stdout)")
    parser.add_argument("--scope-id", default=None, help="only this scope id (see `semcache stats`)")


def run_export(args: argparse.Namespace) -> int:
    """``semcache export DIR [-o FILE]``."""
    try:
        cache = _open(args.directory)
    except SemcacheError as exc:
        return _fail("export", exc)
    n = 0
    out: IO[str] = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for e in cache.entries():
            if args.scope_id is not None and e.scope_id != args.scope_id:
                continue
            record: dict[str, Any] = {"prompt": e.prompt, "completion": e.completion, "scope_id": e.scope_id,
                                      "created": e.created, "expires": e.expires,
                                      "embedder": cache.fingerprint}
            if e.tenant_known:
                record["tenant"] = e.tenant
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    finally:
        cache.close()
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} entries", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ import
def read_export(lines: Iterator[str]) -> Iterator[tuple[str, CacheEntry]]:
    """``(embedder fingerprint, entry)`` of each line of an export.

    Raises
    ------
    ConfigError
        A line that is not an export record (its number is in the message).
    """
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj: dict[str, Any] = json.loads(line)
            expires = obj["expires"]
            tenant = obj.get("tenant")
            if tenant is not None and not isinstance(tenant, str):
                raise TypeError(f"tenant is {type(tenant).__name__}, not a string")
            entry = CacheEntry(-1, str(obj["prompt"]), obj["completion"], str(obj["scope_id"]),
                               float(obj["created"]), None if expires is None else float(expires),
                               "tenant" in obj, tenant)
            yield str(obj["embedder"]), entry
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"line {no} is not a semcache export record: {exc!r}") from exc


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory (created if missing) or store URL")
    parser.add_argument("file", help="JSON Lines written by `semcache export` ('-': stdin)")


def run_import(args: argparse.Namespace) -> int:
    """``semcache import DIR FILE``: everything is checked before anything is written."""
    try:
        src: IO[str] = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with src:
            records = list(read_export(iter(src)))
        cache = _cache_at(args.directory)
    except (OSError, SemcacheError) as exc:
        return _fail("import", exc)
    try:
        embedders = Counter(fp for fp, _ in records)
        foreign = {fp: n for fp, n in embedders.items() if fp != cache.fingerprint}
        if foreign:
            raise ConfigError(
                f"{sum(foreign.values())} of {len(records)} entries were stored with another embedder "
                f"({', '.join(sorted(foreign))}; this cache uses {cache.fingerprint}); their scope "
                "ids would never match here, so nothing was imported")
        ids = cache.add_entries((e for _, e in records), fingerprint=cache.fingerprint)
    except SemcacheError as exc:
        return _fail("import", exc)
    finally:
        cache.close()
    skipped = len(records) - len(ids)
    print(f"imported {len(ids)} entries" + (f" ({skipped} already expired, skipped)" if skipped else ""),
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------- stats
def configure_stats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory or store URL")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--top", type=int, default=10,
                        help="scopes and tenants to list, largest first (default 10)")


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def run_stats(args: argparse.Namespace) -> int:
    """``semcache stats DIR``: size, hit rate, per-scope and per-tenant counts, ages."""
    try:
        cache = _open(args.directory)
    except SemcacheError as exc:
        return _fail("stats", exc)
    try:
        entries = list(cache.entries())
        st = cache.stats()
        totals, since = cache.store_counters()
    except SemcacheError as exc:
        return _fail("stats", exc)
    finally:
        cache.close()
    per_scope = Counter(e.scope_id for e in entries)
    per_tenant = Counter((e.tenant or "(none)") if e.tenant_known else "(unknown)" for e in entries)
    now = time.time()
    lookups = totals["hits"] + totals["misses"]
    url = _is_url(args.directory)
    report: dict[str, Any] = {
        "store": args.directory if url else str(Path(args.directory).absolute()),
        "embedder": cache.fingerprint,
        "entries": len(entries),
        "scopes": len(per_scope),
        "disk_bytes": None if url else _disk_bytes(Path(args.directory)),
        "with_ttl": sum(e.expires is not None for e in entries),
        "foreign_entries": st.foreign_entries,
        "oldest_age_s": round(now - min(e.created for e in entries), 1) if entries else None,
        "newest_age_s": round(now - max(e.created for e in entries), 1) if entries else None,
        "index_kinds": st.index_kinds,
        # Summed over every process that used the store (each adds its counts as it goes).
        "lookups": lookups,
        "hits": totals["hits"],
        "exact_hits": totals["exact_hits"],
        "misses": totals["misses"],
        "probes": totals["probes"],
        "puts": totals["puts"],
        "hit_rate": round(totals["hits"] / lookups, 4) if lookups else None,
        "counting_since": None if since is None
        else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since)),
        "largest_scopes": dict(per_scope.most_common(max(args.top, 0))),
        "largest_tenants": dict(per_tenant.most_common(max(args.top, 0))),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for k, v in report.items():
        if k in ("largest_scopes", "largest_tenants"):
            print(f"{k.replace('_', ' '):>16}:")
            for name, n in v.items():
                print(f"{'':>18}{name}  {n}")
        elif k == "hit_rate":
            print(f"{'hit rate':>16}: " + ("no lookups counted yet" if v is None else f"{v:.1%}"))
        else:
            print(f"{k.replace('_', ' '):>16}: {v}")
    return 0


# ------------------------------------------------------------------- purge
def configure_purge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory or store URL")
    parser.add_argument("--tenant", default=None, metavar="NAME",
                        help="every entry of this tenant, whatever its model or conversation: "
                             "Scope(tenant=NAME), and the adapters' tenant:NAME / --keys tenant NAME")
    parser.add_argument("--scope-id", default=None, help="entries of this scope id (see `semcache stats`)")
    parser.add_argument("--scope", default=None, metavar="JSON|NAME",
                        help='entries of this scope: JSON such as \'{"model": "gpt-4o-mini", "tenant": '
                             '"acme"}\' (the exact scope the entries were stored under), or a namespace')
    parser.add_argument("--older-than", type=parse_duration, default=None, metavar="DURATION",
                        help="entries stored longer ago than this (3600, 90m, 12h, 30d)")
    parser.add_argument("--expired", action="store_true", help="entries whose TTL has passed")
    parser.add_argument("--foreign", action="store_true", help="entries written with another embedder")
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")


def _scope_arg(text: str) -> Scope:
    try:
        value = json.loads(text)
    except ValueError:
        return Scope(namespace=text)
    if not isinstance(value, dict):
        raise ConfigError("--scope takes a JSON object or a namespace name")
    return Scope.from_value(value)


def run_purge(args: argparse.Namespace) -> int:
    """``semcache purge DIR --tenant/--scope-id/--scope/--older-than/--expired/--foreign``.

    The conditions are combined with AND (``--tenant acme --older-than 30d``: acme's
    old entries), except ``--foreign``, which adds the other embedder's entries.
    """
    if args.tenant is None and args.scope_id is None and args.scope is None \
            and args.older_than is None and not (args.expired or args.foreign):
        return _fail("purge", ConfigError("say what to purge: --tenant, --scope-id, --scope, "
                                          "--older-than, --expired or --foreign"))
    if args.tenant is not None and not args.tenant:
        return _fail("purge", ConfigError("--tenant needs a name"))
    try:
        cache = _open(args.directory)
    except SemcacheError as exc:
        return _fail("purge", exc)
    try:
        sids = {args.scope_id} if args.scope_id is not None else set()
        if args.scope is not None:
            sids.add(cache.scope_id(_scope_arg(args.scope)))
        if len(sids) > 1:
            raise ConfigError("--scope and --scope-id name different scopes")
        owned: set[str] | None = None
        if args.tenant is not None:
            owned = {sid for sid, t in cache.scope_tenants().items()
                     if t is not None and tenant_matches(t, args.tenant)}
        now = time.time()
        cutoff = None if args.older_than is None else now - args.older_than
        selective = bool(sids) or owned is not None or cutoff is not None or args.expired
        chosen: list[int] = []

        def pick(entry_id: int, meta: Any) -> bool:
            ok = (selective and (not sids or meta.scope in sids)
                  and (owned is None or meta.scope in owned)
                  and (cutoff is None or meta.created < cutoff)
                  and (not args.expired or (meta.expires is not None and meta.expires <= now)))
            if ok:
                chosen.append(entry_id)
            return ok and not args.dry_run

        n = cache.purge(predicate=pick, foreign=args.foreign and not args.dry_run)
        foreign = cache.stats().foreign_entries if args.dry_run and args.foreign else 0
    except SemcacheError as exc:
        return _fail("purge", exc)
    finally:
        cache.close()
    if args.dry_run:
        print(f"would delete {len(chosen) + foreign} entries")
    else:
        print(f"deleted {n} entries")
    return 0
