"""The ``semcache`` command: the demo (small), ``info``, ``export``/``import``, ``stats``, ``purge``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semcache import Scope, SemanticCache
from semcache.cli import main
from semcache.embedding import SentenceTransformerEmbedder
from tests.conftest import HashEmbedder


def test_demo_runs_end_to_end_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--intents", "10", "--warm", "20", "--queries", "20", "--llm-latency", "0"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # Scene 1: the replay's counts add up (the row under the table's header).
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["queries", "hits"])
    queries, hits, right, wrong, calls = (int(x) for x in lines[head + 2].split()[:5])
    assert queries == 24  # 20 held-out + a fifth as many out-of-scope
    assert hits == right + wrong and hits + calls == queries
    assert "200 CLINC150 train queries of 10 intents stored" in out
    # Scene 2: both pairs served without guards (above the threshold), refused by the default ones.
    guarded = [line for line in lines if "served: wrong" in line]
    assert len(guarded) == 2 and all(line.split()[-1] == "miss" for line in guarded)
    assert all(float(line.split()[-4]) >= 0.9 for line in guarded)
    # Scene 3: the same tenant and model hits; another tenant or model does not.
    outcomes = {tuple(line.split()[:2]): line.split()[2] for line in lines
                if line.split()[:1] in (["acme"], ["globex"])}
    assert outcomes == {("acme", "gpt-4o-mini"): "hit", ("globex", "gpt-4o-mini"): "miss",
                        ("acme", "gpt-4o"): "miss"}
    assert "semcache eval" in out


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
    for cmd in ("demo", "info", "stats", "export", "import", "purge", "eval", "calibrate", "serve"):
        assert cmd in out


PAIRS = [
    ("What is the capital of France?", "Paris", "what's France's capital city?"),
    ("How do I reverse a list in Python?", "lst[::-1]", "how can I reverse a python list"),
    ("Who wrote Pride and Prejudice?", "Jane Austen", "who wrote the novel Pride and Prejudice?"),
]


def _filled(directory: Path, embedder: SentenceTransformerEmbedder) -> None:
    with SemanticCache(directory, embedder=embedder) as cache:
        for prompt, answer, _ in PAIRS:
            cache.put(prompt, answer, scope=Scope(model="m", tenant="acme"))
        cache.put("What is the capital of France?", "Paris (beta)", scope=Scope(model="m", tenant="beta"))
        cache.put("short-lived", {"a": [1, 2]}, scope="ns", ttl=3600)


def test_export_import_round_trip_serves_the_same_hits(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, capsys: pytest.CaptureFixture[str],
) -> None:
    _filled(tmp_path / "a", embedder)
    dump = tmp_path / "dump.jsonl"
    assert main(["export", str(tmp_path / "a"), "-o", str(dump)]) == 0
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(lines) == 5
    assert {x["embedder"] for x in lines} == {embedder.fingerprint}
    assert sum(x["expires"] is not None for x in lines) == 1

    assert main(["import", str(tmp_path / "b"), str(dump)]) == 0
    with SemanticCache(tmp_path / "a", embedder=embedder) as a, \
            SemanticCache(tmp_path / "b", embedder=embedder) as b:
        assert len(b) == 5
        for _, answer, paraphrase in PAIRS:
            for scope in (Scope(model="m", tenant="acme"), Scope(model="m", tenant="beta"), None):
                ha, hb = a.get(paraphrase, scope=scope), b.get(paraphrase, scope=scope)
                assert bool(ha) == bool(hb)
                if scope == Scope(model="m", tenant="acme"):  # the paraphrase hits its own answer
                    assert hb and hb.completion == answer
                if ha and hb:
                    assert (hb.completion, hb.prompt) == (ha.completion, ha.prompt)
                    assert hb.score == pytest.approx(ha.score, abs=1e-5)
        # Scopes survive the trip: the other tenant still gets its own answer, never acme's.
        beta = b.get("what's France's capital city?", scope=Scope(model="m", tenant="beta"))
        assert beta and beta.completion == "Paris (beta)"
        by_text = {(e.prompt, json.dumps(e.completion)): e for e in a.entries()}
        for e in b.entries():
            src = by_text[(e.prompt, json.dumps(e.completion))]
            assert (e.scope_id, e.created, e.expires, e.completion) == (
                src.scope_id, src.created, src.expires, src.completion)


def test_import_refuses_entries_of_another_embedder(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, capsys: pytest.CaptureFixture[str],
) -> None:
    line = {"prompt": "p", "completion": "c", "scope_id": "0" * 32, "created": 1.0, "expires": None,
            "embedder": "some-other-model@0000/384/l2"}
    dump = tmp_path / "other.jsonl"
    dump.write_text(json.dumps(line) + "\n")
    assert main(["import", str(tmp_path / "b"), str(dump)]) == 2
    err = capsys.readouterr().err
    assert "another embedder" in err and "nothing was imported" in err
    with SemanticCache(tmp_path / "b", embedder=embedder) as b:
        assert len(b) == 0
    dump.write_text('{"prompt": "p"}\n')
    assert main(["import", str(tmp_path / "b"), str(dump)]) == 2
    assert "line 1 is not a semcache export record" in capsys.readouterr().err


def test_stats_and_purge(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                         capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", embedder)
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "a"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entries"] == 5 and report["scopes"] == 3 and report["with_ttl"] == 1
    with SemanticCache(tmp_path / "a", embedder=embedder) as cache:
        acme = cache.scope_id(Scope(model="m", tenant="acme"))
    assert report["largest_scopes"][acme] == 3

    # Nothing is old yet; a dry run deletes nothing; a scope given as JSON is the stored one.
    assert main(["purge", str(tmp_path / "a"), "--older-than", "1h"]) == 0
    assert "deleted 0 entries" in capsys.readouterr().out
    scope_json = '{"model": "m", "tenant": "acme"}'
    assert main(["purge", str(tmp_path / "a"), "--scope", scope_json, "--dry-run"]) == 0
    assert "would delete 3 entries" in capsys.readouterr().out
    assert main(["purge", str(tmp_path / "a"), "--scope", scope_json]) == 0
    assert "deleted 3 entries" in capsys.readouterr().out
    with SemanticCache(tmp_path / "a", embedder=embedder) as cache:
        assert len(cache) == 2
        assert not cache.get("What is the capital of France?", scope=Scope(model="m", tenant="acme"))
        assert cache.get("What is the capital of France?", scope=Scope(model="m", tenant="beta"))
    assert main(["purge", str(tmp_path / "a")]) == 2  # says what is missing, deletes nothing
    assert "say what to purge" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "nowhere")]) == 2
    assert "not a semcache directory" in capsys.readouterr().err
