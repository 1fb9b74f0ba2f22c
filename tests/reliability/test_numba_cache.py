"""semcache's numba kernels work from a read-only install with no writable $HOME (issue 25, item 8).

numba's ``cache=True`` raises "no locator available" at import when neither the
source's ``__pycache__`` nor the user-wide cache folder is writable. The tests
copy the package to a folder that is then made read-only (a read-only bind mount
in a private mount namespace when running as root, whom permission bits do not
stop; ``chmod`` otherwise), point ``$HOME`` into it, and import from that copy in
a subprocess: first reproducing the failure without semcache's fallback, then
showing the fallback fixes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import semcache

PACKAGE = Path(semcache.__file__).resolve().parent

#: A kernel defined next to the index kernels: numba decides where to cache it exactly as
#: for them (same directory, same user-wide folder), but it compiles in a second.
PROBE = '''
import numba as nb

@nb.njit("int64(int64)", cache=True)
def plus_one(x):
    return x + 1
'''


def _copy_package(dest: Path) -> None:
    shutil.copytree(PACKAGE, dest / "site" / "semcache",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    (dest / "site" / "semcache" / "index" / "_probe.py").write_text(PROBE)
    (dest / "home").mkdir()


def _run_read_only(root: Path, code: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``root`` read-only, ``$HOME`` inside it and the package copy first on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(root / "home"), PYTHONPATH=str(root / "site"), TMPDIR=str(tmpdir))
    py = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a folder read-only for root")
        q = str(root)
        cmd = ["unshare", "-m", "sh", "-c",
               f'mount --bind "{q}" "{q}" && mount -o remount,ro,bind "{q}" && exec "$@"', "sh", *py]
    else:
        for path in [*sorted(root.rglob("*"), reverse=True), root]:
            path.chmod(path.stat().st_mode & ~0o222)
        cmd = py
    try:
        return subprocess.run(cmd, env=env, cwd=str(tmpdir), capture_output=True, text=True,
                              timeout=600)
    finally:
        if os.geteuid() != 0:
            for path in [root, *root.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)


def _check_read_only(root: Path, tmpdir: Path) -> None:
    """The simulation holds: nothing under ``root`` can be written, the way numba tries it."""
    res = _run_read_only(root, f"import tempfile; tempfile.TemporaryFile(dir={str(root / 'home')!r})",
                         tmpdir)
    if res.returncode != 0 and res.stderr.startswith("mount"):
        pytest.skip(f"cannot make a read-only mount here: {res.stderr.strip()[-200:]}")
    assert res.returncode != 0, "the read-only simulation is writable"
    assert "Read-only file system" in res.stderr or "Permission denied" in res.stderr, res.stderr


def test_reproduce_then_fix_with_a_probe_kernel(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    _copy_package(root)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    _check_read_only(root, tmpdir)

    # Without the fallback: numba finds no place to cache and the import fails.
    bare = _run_read_only(root, "import importlib.util, sys\n"
                                "spec = importlib.util.spec_from_file_location('probe', "
                                f"{str(root / 'site' / 'semcache' / 'index' / '_probe.py')!r})\n"
                                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)",
                          tmpdir)
    assert bare.returncode != 0
    assert "no locator available" in bare.stderr, bare.stderr[-2000:]

    # With it: semcache.index sets NUMBA_CACHE_DIR to a private temp folder first.
    fixed = _run_read_only(root, "import semcache, semcache.index, os, stat\n"
                                 "from semcache._numba_cache import CACHE_DIR\n"
                                 "from semcache.index._probe import plus_one\n"
                                 "assert semcache.__file__.startswith(" f"{str(root)!r}" ")\n"
                                 "assert plus_one(41) == 42\n"
                                 "assert os.environ['NUMBA_CACHE_DIR'] == str(CACHE_DIR)\n"
                                 "assert not os.stat(CACHE_DIR).st_mode & 0o022\n"
                                 "print(CACHE_DIR)", tmpdir)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    chosen = Path(fixed.stdout.strip())
    assert chosen.parent == tmpdir and chosen.name.startswith("semcache-numba-")
    assert any(chosen.rglob("*.nbi")), "numba cached nothing in the fallback folder"


def test_fallback_refuses_a_folder_someone_else_can_write(tmp_path: Path) -> None:
    """numba's cache index is a pickle: a world-writable cache folder would be code execution."""
    root = tmp_path / "ro"
    _copy_package(root)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    _check_read_only(root, tmpdir)
    planted = tmpdir / f"semcache-numba-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    res = _run_read_only(root, "import semcache.index\n"
                               "from semcache._numba_cache import CACHE_DIR\nprint(CACHE_DIR)", tmpdir)
    assert res.returncode == 0, res.stderr[-3000:]
    chosen = Path(res.stdout.strip())
    assert chosen != planted and chosen.parent == tmpdir
    assert oct(chosen.stat().st_mode & 0o777) == oct(0o700)


def test_writable_install_is_left_alone(tmp_path: Path) -> None:
    code = ("import os, semcache.index\nfrom semcache._numba_cache import CACHE_DIR\n"
            "print(CACHE_DIR, os.environ.get('NUMBA_CACHE_DIR'))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert res.stdout.split() == ["None", "None"]
    env["NUMBA_CACHE_DIR"] = str(tmp_path)  # the user's own choice always wins
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert res.stdout.split() == ["None", str(tmp_path)]


def test_real_index_kernels_from_a_read_only_install() -> None:
    """The real kernels (not a probe) compile and run from the read-only copy.

    Compiling every kernel takes about a minute, so the copy lives at a stable
    path keyed by the sources' hash (mtimes kept) and the fallback folder is the
    real per-user one: numba reuses that machine code on later runs.
    """
    digest = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*.py")):
        digest.update(f.read_bytes())
    base = Path(tempfile.gettempdir()) / f"semcache-ro-test-{digest.hexdigest()[:12]}"
    root = base / "ro"
    if not (root / "site" / "semcache" / "index" / "_probe.py").is_file():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        staging = base / "staging"
        _copy_package(staging)
        staging.rename(root)
    code = ("import numpy as np\nfrom semcache.index import make_index\n"
            "rng = np.random.default_rng(0)\n"
            "x = rng.standard_normal((500, 32)).astype(np.float32)\n"
            "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
            "ix = make_index('multigrid')\n"
            "ix.add(np.arange(500), x, x)\n"
            "c = ix.candidates(x[7], x[7], 0.99)\n"
            "assert 7 in set(int(i) for i in c), c\n"
            "print('ok')")
    res = _run_read_only(root, code, Path(tempfile.gettempdir()))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
