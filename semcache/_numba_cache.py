"""Give numba a writable cache directory before any kernel is compiled.

The index kernels are compiled with ``cache=True``. numba looks for a place to
keep the machine code next to the source (``semcache/index/__pycache__``), then
in the user-wide cache (``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``), and
when neither is writable (a read-only site-packages in a container image, with
a read-only or nonexistent ``$HOME``) it raises ``RuntimeError: cannot cache
function ...: no locator available`` at import. :func:`ensure_cache_dir` checks
those two places the way numba does and, when both fail, points numba at a
private directory under the system temp folder instead.

The directory must be private: numba's cache index is a pickle, so a cache
directory another user can write would let that user run code in this process.
A per-user folder is used only when it is owned by us and not writable by
anyone else; otherwise a fresh ``mkdtemp`` folder (private by construction).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_DIR", "ensure_cache_dir"]

#: Where numba's in-tree locator keeps the index kernels' cache.
_IN_TREE = Path(__file__).resolve().parent / "index" / "__pycache__"


def _writable(path: Path) -> bool:
    """What numba's locators test: the directory can be created and written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _user_wide() -> Path | None:
    """numba's user-wide cache directory (its ``appdirs.user_cache_dir("numba")``)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return Path(base) / "numba" / "Cache" if base else None
    if sys.platform == "darwin":
        return Path("~/Library/Caches/numba").expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "numba"


def _private_temp_dir() -> Path:
    """A temp folder only this user can write: a stable per-user one when safe, else a fresh one."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    tag = str(uid) if uid is not None else (os.environ.get("USERNAME") or "user")
    path = Path(tempfile.gettempdir()) / f"semcache-numba-{tag}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        safe = (
            stat.S_ISDIR(st.st_mode)
            and (uid is None or st.st_uid == uid)
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        )
        if safe and _writable(path):
            return path
    except OSError:
        pass
    # Someone else made that folder (or it is a link, or unwritable): use a fresh one,
    # which costs a recompilation per process but never trusts another user's files.
    return Path(tempfile.mkdtemp(prefix="semcache-numba-"))


def ensure_cache_dir() -> Path | None:
    """Point numba at a writable cache directory when its own choices are not writable.

    Returns the directory chosen, or None when nothing had to change (numba can
    cache next to the source or in the user-wide folder, or ``NUMBA_CACHE_DIR``
    is already set by the user).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(_IN_TREE):
        return None
    user = _user_wide()
    if user is not None and _writable(user):
        return None
    try:
        chosen = _private_temp_dir()
    except OSError:
        return None  # no writable temp folder either: numba reports its own error
    os.environ["NUMBA_CACHE_DIR"] = str(chosen)
    config = sys.modules.get("numba.core.config")
    if config is not None:
        # numba was imported before semcache and read its environment already; its
        # locators read the setting at compile time, so set it there as well.
        config.CACHE_DIR = str(chosen)  # type: ignore[attr-defined]
    return chosen


#: Run once, on import (``semcache.index`` imports this module first): the folder
#: chosen, or None when numba's own locations were writable or the user chose one.
CACHE_DIR: Path | None = ensure_cache_dir()
