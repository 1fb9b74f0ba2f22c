"""What every numba kernel module shares: the compile decorator, the id and cell hash tables, prefetching.

The kernels themselves sit beside the structure they serve:
:mod:`semcache.index.grid_kernels` (the grid and its lookup plans),
:mod:`semcache.index.multigrid_kernels` (the two-table grid's insert buffer),
:mod:`semcache.index.thermal_kernels` (the thermal field) and
:mod:`semcache.projection.kernels` (projecting a few rows).

Every kernel is a pure function of contiguous NumPy arrays with an explicit
signature, compiled ahead of first use and cached on disk (``cache=True``), the
way pynndescent organises its kernels: the Python classes in
:mod:`semcache.index.grid` and :mod:`semcache.index.thermal` own the arrays,
grow them when a kernel reports that it ran out of room, and call a kernel for
every loop over entries, cells or coordinates. The one exception is
:func:`~semcache.index.grid_kernels.grid_lookup`, which takes a table's arrays as a row of their addresses
(a lookup plan, see its section) because passing them one by one cost more
than the probing.

Two open-addressing hash tables (linear probing, ``-1`` marks an empty key,
backward-shift deletion so there are no tombstones) map

* entry id -> the entry's pool row, as ``(cell << 32) | pos``: the number of
  the cell it belongs to and its position in the pool (see :func:`_pack`), and
* grid cell code -> cell number,

so neither structure costs Python objects per entry: a Python ``dict`` of ints
costs ~100 bytes per entry, more than the whole memory budget of the index.

Each table is a single int64 array of ``2 * slots`` (``slots`` a power of two)
with the key of slot ``s`` at ``2 * s`` and its value at ``2 * s + 1``. At 1M
entries the id table is far larger than the CPU caches, so every lookup misses:
with keys and values interleaved a lookup touches one cache line (and one
page) instead of one in a key array and another in a value array. The id
table's value holds the row's cell as well as its position, so the pool needs
no per-row cell array: an insert writes the row's vector, its id and its id
table slot (three random places per row, where a separate value array and cell
array made five), and a remove finds the row's cell block without reading one.

Kernels that may run out of room return a negative status *before* mutating
anything, so the caller can grow the arrays and call again.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "NEED_CELLS",
    "NEED_CTAB",
    "NEED_ITAB",
    "NEED_POOL",
    "entry_point",
    "table_find",
    "table_rehash",
    "table_slots",
]

_F = TypeVar("_F", bound=Callable[..., Any])

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
#: Scalar ints as kernels see them: Python ints or NumPy int64.
Int = int | np.integer[Any]


def _kernel(signature: str, *, reassoc: bool = False) -> Callable[[_F], _F]:
    """``numba.njit`` with an explicit signature, typed for mypy.

    ``cache=True`` keeps the machine code on disk so a new process does not pay
    the compile time again; ``nogil=True`` lets a multi-threaded server run
    lookups of different partitions in parallel. ``reassoc=True`` lets LLVM
    reorder float sums, which is what turns the per-row distance loops into
    SIMD code (a strict left-to-right sum cannot be vectorised). Only the
    reassociation flags are set, not ``nnan``/``ninf``: radii may be ``inf``.

    A kernel's call of another stays a call (numba 0.68 with LLVM 20 does not
    inline compiled callees; numba issue #10757), ~10-25 ns each with array
    arguments. Inlining the twelve per-row helpers (hash table, row copy,
    quantisation, cell code) in numba's IR (``inline="always"``) measured
    inserts 1.5-3.4% faster at 10k, lookups unchanged, and the module's cold
    compile 2-3 s longer (~18 instead of ~15 s), so they are left as calls.
    """
    if reassoc:
        flags = {"reassoc", "contract", "nsz", "arcp"}
        return cast(
            Callable[[_F], _F], nb.njit(signature, cache=True, nogil=True, fastmath=flags)
        )
    return cast(Callable[[_F], _F], nb.njit(signature, cache=True, nogil=True))


def entry_point(kernel: _F) -> _F:
    """The compiled code of a one-signature kernel, called without the dispatcher.

    A call through the dispatcher first types every argument to pick an
    overload: with the 28 arguments of a table's lookup kernel that was
    0.35 us of the 2.6 us a one-cell lookup took. The entry point only
    unboxes them, so it trusts their types: use it only with arrays the index
    allocated itself (a float32 array where int64 is expected would be read
    as int64).
    Without a compiled overload (``NUMBA_DISABLE_JIT``) the kernel itself is
    returned.
    """
    overloads = getattr(kernel, "overloads", None)
    if not overloads or len(overloads) != 1:
        return kernel
    return cast(_F, next(iter(overloads.values())).entry_point)


# Status codes returned by kernels that need the caller to grow an array.
NEED_POOL = -1
NEED_CELLS = -2
NEED_CTAB = -3
NEED_ITAB = -4

_EMPTY = -1



# ---------------------------------------------------------------------------
# Hash tables (int64 key -> int64 value): one int64 array, slot s = (key at
# 2s, value at 2s + 1), the number of slots a power of two.
# ---------------------------------------------------------------------------


@_kernel("uint64(int64)")
def _mix(key: Int) -> np.uint64:
    # splitmix64 finaliser: ids and cell codes are often sequential, and linear
    # probing degrades badly on clustered hashes.
    x = np.uint64(key)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@_kernel("int64(int64[::1])")
def table_slots(table: I64) -> int:
    """Number of slots of a table (half its length).

    Parameters
    ----------
    table : ndarray of int64, shape (2 * slots,)
        Interleaved keys and values (see the module docstring).
    """
    return int(table.shape[0] >> 1)


@_kernel("int64(int64[::1], int64)")
def table_find(table: I64, key: Int) -> int:
    """Slot holding ``key`` in a table, or -1; its value is ``table[2 * slot + 1]``.

    Parameters
    ----------
    table : ndarray of int64, shape (2 * slots,)
        Key of slot ``s`` at ``2 * s`` (``-1`` where empty), value at
        ``2 * s + 1``; ``slots`` is a power of two.
    key : int
        Any int; a negative one is never found.
    """
    if key < 0:
        # Never stored, and -1 is the key of an empty slot, which it would match.
        return -1
    mask = np.uint64(table_slots(table) - 1)
    s = np.int64(_mix(key) & mask)
    while True:
        k = table[2 * s]
        if k == key:
            return int(s)
        if k == _EMPTY:
            return -1
        s = np.int64((np.uint64(s) + np.uint64(1)) & mask)


@_kernel("int64(int64[::1], int64, int64)")
def _table_put(table: I64, key: Int, val: Int) -> int:
    # The caller guarantees a free slot exists (load factor kept <= 3/4).
    mask = np.uint64(table_slots(table) - 1)
    s = np.int64(_mix(key) & mask)
    while True:
        k = table[2 * s]
        if k == key or k == _EMPTY:  # noqa: SIM109 - numba compiles plain comparisons best
            table[2 * s] = key
            table[2 * s + 1] = val
            return int(s)
        s = np.int64((np.uint64(s) + np.uint64(1)) & mask)


@_kernel("void(int64[::1], int64)")
def _table_delete_slot(table: I64, slot: int) -> None:
    # Backward-shift deletion: pull later members of the probe run into the
    # hole so lookups never need tombstones.
    mask = np.uint64(table_slots(table) - 1)
    hole = np.uint64(slot)
    s = hole
    while True:
        s = (s + np.uint64(1)) & mask
        k = table[2 * np.int64(s)]
        if k == _EMPTY:
            break
        home = _mix(k) & mask
        # Move k into the hole unless its home lies cyclically in (hole, s].
        stays = (hole < home <= s) if hole <= s else (home > hole or home <= s)
        if not stays:
            table[2 * np.int64(hole)] = k
            table[2 * np.int64(hole) + 1] = table[2 * np.int64(s) + 1]
            hole = s
    table[2 * np.int64(hole)] = _EMPTY
    table[2 * np.int64(hole) + 1] = _EMPTY


@_kernel("void(int64[::1], int64[::1])")
def table_rehash(old: I64, new: I64) -> None:
    """Move every key of a table into a new (empty) one with room for them all.

    Parameters
    ----------
    old : ndarray of int64, shape (2 * slots,)
    new : ndarray of int64, shape (2 * new_slots,)
        Filled with -1 by the caller; ``new_slots`` a power of two.
    """
    for s in range(table_slots(old)):
        k = old[2 * s]
        if k != _EMPTY:
            _table_put(new, k, old[2 * s + 1])


@_kernel("int64(int64, int64)")
def _pack(cell: Int, offset: Int) -> int:
    """Id table value of row ``offset`` of cell ``cell``'s block: ``(cell << 32) | offset``.

    The offset counts from the block's start, not the pool's, so moving a
    block (a full cell's relocation, a compaction) leaves every value valid
    and touches no id table slot. Offsets are below ``2**32`` and cell numbers
    below ``2**31``, so the value is non-negative.
    """
    return int((np.int64(cell) << np.int64(32)) | np.int64(offset))


@_kernel("int64(int64)")
def _cell_of(val: Int) -> int:
    """Cell number of a packed id table value (see :func:`_pack`)."""
    return int(np.int64(val) >> np.int64(32))


@_kernel("int64(int64)")
def _offset_of(val: Int) -> int:
    """Row offset within its cell's block of a packed id table value (see :func:`_pack`)."""
    return int(np.int64(val) & np.int64(0xFFFFFFFF))


# ---------------------------------------------------------------------------
# Prefetching: loads started early, where the next addresses are known before
# the data is needed and the arrays are far larger than the caches.
# ---------------------------------------------------------------------------


def _prefetch(addr: Int) -> None:
    """Ask the CPU to start loading the cache line at ``addr``: a hint, never a fault.

    This Python version, which does nothing, runs under ``NUMBA_DISABLE_JIT``;
    compiled code gets a ``prefetcht0`` (LLVM's ``llvm.prefetch``).
    """


@intrinsic
def _prefetch_compiled(typingctx: Any, addr: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        # llvmlite names it for the pointer mode of its LLVM (llvm.prefetch.p0 or .p0i8).
        fn = builder.module.declare_intrinsic("llvm.prefetch", [cgutils.voidptr_t], fnty)
        # A read (0), to be kept in every cache level (3), of data (1).
        builder.call(fn, [builder.inttoptr(args[0], cgutils.voidptr_t), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return nb.types.void(nb.types.int64), codegen


_prefetch_line: Any = _prefetch_compiled


@overload(_prefetch)
def _prefetch_overload(addr: Any) -> Callable[[Any], Any]:
    def impl(addr: Any) -> None:
        _prefetch_line(addr)

    return impl


#: Pools (for a lookup's walk) and id tables (for a batch insert) of fewer
#: bytes are not prefetched: they stay in the caches (1 MiB is a core's L2
#: here), and the prefetches only add instructions. Measured on two-table
#: lookups of real rows: 10k rows (320 KB a table) were 4% slower with
#: prefetching, 92k rows (3 MB) 9% faster.
_PREFETCH_BYTES = 1 << 20


@_kernel("void(int8[:, ::1], int64, int64)")
def _prefetch_rows(pvec: I8, start: int, count: int) -> None:
    """Start loading pool rows ``start .. start + count`` (their stored vectors) into the caches.

    A walk prefetches the next cell's block while it scans the current one.
    At 1M entries a lookup reads ~24k rows in ~165 blocks scattered over the
    pool, and memory is half its time: the same lookup repeated, its blocks
    in cache, took 105 instead of 225 us. Prefetching one block ahead took
    5% off the lookups at 1M and 9% at 92k (same candidates, in one process
    against the walk without it); three blocks ahead did no better.
    """
    w = pvec.shape[1]
    first = pvec.ctypes.data + start * w
    for off in range(0, count * w, 64):
        _prefetch(first + off)


def _address(addr: int) -> ctypes.c_void_p:
    """A raw address as a pointer: this Python version runs under ``NUMBA_DISABLE_JIT``."""
    return ctypes.c_void_p(int(addr))


@intrinsic
def _address_compiled(typingctx: Any, addr: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return nb.types.voidptr(nb.types.int64), codegen


# The intrinsic as compiled code calls it (mypy sees its typing signature).
_to_pointer: Any = _address_compiled


@overload(_address)
def _address_overload(addr: Any) -> Callable[[Any], Any]:
    # numba wants the implementation's parameters annotated as the typing one's.
    def impl(addr: Any) -> Any:
        return _to_pointer(addr)

    return impl

