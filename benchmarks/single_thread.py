"""Pins numpy's BLAS, numba and faiss to one thread: the benchmarks are single-threaded.

The libraries read these variables when they load, so every benchmark script
imports this module before anything else (above an ``# isort: split``, which
keeps the import sorter from moving it below numpy).
"""

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"
