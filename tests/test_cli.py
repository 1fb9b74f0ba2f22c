"""The ``semcache`` command: the demo job end to end (small), and ``info``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from semcache import SemanticCache
from semcache.cli import main
from tests.conftest import HashEmbedder


def test_demo_runs_end_to_end_and_reports(tmp_path: Path, capsys: object) -> None:
    code = main(["demo", "--dir", str(tmp_path / "c"), "--warm", "600", "--clinc", "40",
                 "--qqp", "40", "--llm-latency", "0"])
    assert code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "CLINC150 test+oos" in out and "QQP dev pairs" in out
    for stage in ("embed", "index", "verify", "total"):
        assert stage in out
    clinc_row = next(line for line in out.splitlines() if line.strip().startswith("CLINC150 test+oos"))
    queries = int(clinc_row.split()[2])
    assert queries == 48  # 40 in-scope + a fifth as many out-of-scope
    # The cache directory holds what the demo stored: the warm set and the QQP firsts.
    with SemanticCache(tmp_path / "c") as cache:
        assert len(cache) >= 600


def test_info_reports_entries_and_scopes(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    with SemanticCache(tmp_path / "c", embedder=hash_embedder) as cache:
        cache.put("a", 1, scope="s1")
        b = cache.put("b", 2, scope="s2")
        cache.put("c", 3, scope="s2")
        assert b is not None
        cache.delete(b)
    out = subprocess.run([sys.executable, "-m", "semcache.cli", "info", str(tmp_path / "c"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["entries"] == 2 and report["scopes"] == 2
    assert report["embedders"] == {hash_embedder.fingerprint: 2}


def test_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "semcache.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("demo", "info", "eval", "calibrate", "serve"):
        assert cmd in out
