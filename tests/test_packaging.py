"""The wheel: distribution ``semcache-llm`` (``semcache`` on PyPI is another project), import package
``semcache`` with the adapters as ``semcache.adapters`` and the calibration data, nothing top-level else,
and no setuptools warning about packages missing from the configuration."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_layout(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    # A data-only folder left out of ``packages`` makes setuptools warn on every install.
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("semcache_llm-*.whl")
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    assert "Name: semcache-llm" in zipfile.ZipFile(wheel).read(meta).decode()
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"semcache", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for module in ("openai", "middleware", "server", "langchain", "requests", "sse"):
        assert f"semcache/adapters/{module}.py" in names
    assert "semcache/py.typed" in names
    assert "semcache/data/calibration.json" in names
    assert not any(n.startswith("adapters/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "semcache = semcache.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
