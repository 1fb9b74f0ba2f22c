"""``semcache info DIR``: what a cache directory holds, without loading a model."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from semcache.stores.sqlite import SQLiteStore

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="cache directory")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    store = SQLiteStore(args.directory)
    try:
        digests = store.load_digests()  # metadata only: no vectors, no completions
        scopes = {m.scope for m in digests.metas}
        embedders = Counter(m.fingerprint for m in digests.metas)
        report = {
            "directory": args.directory,
            "settings": store.load_settings(),
            "journal_position": digests.head,
            "entries": len(digests.ids),
            "invalid_records": digests.skipped,
            "scopes": len(scopes),
            "embedders": dict(embedders),
            "database_bytes": store.file_size(),
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>18}: {v}")
    return 0
