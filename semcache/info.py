"""``semcache info DIR``: what a cache directory holds, without loading a model."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from semcache.store import DiskKV, RecordStore

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    store = RecordStore(DiskKV(args.directory), args.directory)
    try:
        head = store.seq()
        live: dict[int, tuple[str, str]] = {}
        for entry_id, entry in store.changes(0, head):
            if entry is None:
                live.pop(entry_id, None)
            else:  # an update replays an entry again; the dict keeps one
                live[entry_id] = (entry.meta.scope, entry.meta.fingerprint)
        scopes = {s for s, _ in live.values()}
        embedders = Counter(fp for _, fp in live.values())
        report = {
            "directory": args.directory,
            "settings": store.load_settings(),
            "journal_position": head,
            "entries": len(live),
            "scopes": len(scopes),
            "embedders": dict(embedders),
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>18}: {v}")
    return 0
