"""Puts ``benchmarks/`` on ``sys.path`` and pins the libraries to one thread.

The scripts in ``benchmarks/lab/`` measured one design decision each (their finding is
in ``docs/decisions.md``); they reuse the helpers of ``benchmarks/`` (``common``,
``index_bench``), so each imports this module first (above an ``# isort: split``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import single_thread  # noqa: F401  (before numpy: see its docstring)
