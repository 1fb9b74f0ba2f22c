"""The wheel ships the adapters as ``semcache.adapters`` and the calibration data, nothing top-level else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_layout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = tmp_path.glob("semcache-*.whl")
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
