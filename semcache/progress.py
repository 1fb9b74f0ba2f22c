"""Progress bars for long work (bulk imports, replays, evaluation, benchmarks).

On a terminal the bar redraws twice a second; in a log (CI, a pipe) it prints a
line every 15 seconds instead of flooding the log with redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, unit: str = "it",
             total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar suited to where stderr goes."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar: Iterator[T] = tqdm(
        iterable, desc=desc, unit=unit, total=total, mininterval=0.5 if tty else 15.0,
        dynamic_ncols=tty,
    )
    return bar
