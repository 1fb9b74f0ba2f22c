"""Thermal bloom index: a diffused occupancy field over a dense 1-3-d grid.

From the thermal bloom filter paper: the first ``m <= 3`` projected coordinates
are cut into ``G`` uniform cells per dimension; the occupancy of each cell is an
impulse; a Gaussian blur (``scipy.ndimage.gaussian_filter``, ``sigma`` in
cells) turns the impulses into a smooth field whose value at a cell says how
much is stored nearby. Rows are kept per cell (contiguous blocks, the same
layout and kernels as :class:`~semcache.index.grid.GridIndex`).

A lookup (``search="ball"``, the default)
    1. hashes the query to its cell;
    2. **fast negative**: the field at the query's cell is at least the kernel
       weight of every occupied cell within the kernel's reach. If it is below
       the smallest weight any cell that intersects the probe ball can have,
       no cell in the ball is occupied and the lookup returns nothing after one
       read (only possible while the ball stays within the kernel's reach;
       :meth:`ThermalIndex.fast_negative_reach` says whether it does);
    3. otherwise gathers the rows of the cells that intersect the probe ball
       (the same calibrated radius as the grid) and keeps those passing the
       exact filter of the grid module.

``search="climb"`` is the paper's own procedure, kept for comparison: gather a
radius-``r`` cell neighbourhood of the query's cell; if it is empty, climb
the field to a local maximum and gather around that. The reference code's climb
never checked that the field increased and oscillated until its step cap; here
each step goes to the highest of the 3^m - 1 neighbours only if it is strictly
higher, so it stops at a local maximum (:func:`~semcache.index.thermal_kernels.thermal_climb`).
Climbing finds the *nearest* stored rows, but for a cache lookup those are
beyond the threshold whenever the ball was empty, so it rarely adds a hit
(the benchmark measures how rarely).

Streaming inserts and deletes update the field locally: a cell whose occupancy
flips adds or subtracts one kernel patch (zero padding, so the result equals a
full re-blur exactly). Bounds are refitted, and the field rebuilt with
``gaussian_filter``, after the index grows ``recalibrate_growth`` times.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter

from semcache._types import FloatArray, IdArray
from semcache.errors import ConfigError
from semcache.index import grid_kernels as GK
from semcache.index import thermal_kernels as K
from semcache.index.grid import GridIndex

__all__ = ["ThermalIndex", "gaussian_weights"]

F64 = npt.NDArray[np.float64]


def gaussian_weights(sigma: float, truncate: float) -> F64:
    """The normalised 1-D kernel ``scipy.ndimage.gaussian_filter`` uses.

    Parameters
    ----------
    sigma : float
        Standard deviation in cells.
    truncate : float
        Kernel radius in standard deviations.

    Returns
    -------
    ndarray of float64, shape (2 * radius + 1,)
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * x * x / (sigma * sigma))
    out: F64 = w / w.sum()
    return out


class ThermalIndex(GridIndex):
    """Thermal bloom index over the first ``m <= 3`` projected coordinates.

    Parameters
    ----------
    m : int
        Field dimensions, 1 to 3.
    grid : int
        Cells per dimension ``G`` (the field has ``G**m`` cells).
    sigma : float
        Diffusion in cells.
    truncate : float
        Kernel reach in ``sigma`` (as in ``gaussian_filter``).
    search : {"ball", "climb"}
        See the module docstring.
    radius : int
        Neighbourhood radius in cells for ``search="climb"``.
    max_steps : int
        Step cap of the climb.
    bound_quantile : float
        Cells span the ``bound_quantile`` to ``1 - bound_quantile`` range of
        each coordinate; rows beyond fall into the outer cells.
    **kwargs
        Probe calibration and streaming parameters of
        :class:`~semcache.index.grid.GridIndex` (``probe``, ``probe_quantile``,
        ``probe_margin``, ``filter``, ``calibration_threshold``, ``min_pairs``,
        ``min_calibration``, ``recalibrate_growth``, ``slack``, ``random_state``).

    Attributes
    ----------
    fast_negatives : int
        Lookups answered by the field alone.
    lookups : int
        Lookups answered so far.
    climbs : int
        Lookups that climbed (``search="climb"`` only).
    """

    kind = "thermal"

    def __init__(
        self,
        m: int = 2,
        grid: int = 256,
        sigma: float = 1.0,
        truncate: float = 4.0,
        search: str = "ball",
        radius: int = 2,
        max_steps: int = 64,
        bound_quantile: float = 0.001,
        **kwargs: object,
    ) -> None:
        if not isinstance(m, int) or not 1 <= m <= 3:
            raise ConfigError(f"a thermal index has 1 to 3 dimensions, got m={m!r}")
        if not isinstance(grid, int) or grid < 2 or grid**m > 1 << 26:
            raise ConfigError(f"grid must be >= 2 with grid**m <= 2**26 cells, got {grid!r}")
        if sigma <= 0 or truncate <= 0:
            raise ConfigError("sigma and truncate must be positive")
        if search not in ("ball", "climb"):
            raise ConfigError(f"search must be 'ball' or 'climb', got {search!r}")
        if radius < 0 or max_steps < 0 or not 0.0 <= bound_quantile < 0.5:
            raise ConfigError("radius, max_steps must be >= 0 and bound_quantile in [0, 0.5)")
        if "probe" in kwargs and kwargs["probe"] == "orthant":
            raise ConfigError("the orthant probe is a grid option; use 'calibrated' or 'exact'")
        super().__init__(m=m, grid=grid, **kwargs)  # type: ignore[arg-type]
        self.sigma = sigma
        self.truncate = truncate
        self.search = search
        self.radius = radius
        self.max_steps = max_steps
        self.bound_quantile = bound_quantile
        self._w1d = gaussian_weights(sigma, truncate)
        self._lo = np.zeros(m, dtype=np.float64)
        self._cw = np.ones(m, dtype=np.float64)
        self._occ = np.zeros(1, dtype=np.int32)
        self._field = np.zeros(1, dtype=np.float64)
        self._kappa: dict[float, float] = {}
        self.fast_negatives = 0
        self.lookups = 0
        self.climbs = 0

    # ----------------------------------------------------------- calibration

    def _fit_edges(self, low_all: FloatArray, m: int) -> FloatArray:
        """Uniform cells between robust bounds (the field needs metric cells)."""
        if len(low_all) == 0:
            lo = np.zeros(m)
            hi = np.ones(m)
        else:
            x = low_all[:, :m].astype(np.float64)
            lo = np.quantile(x, self.bound_quantile, axis=0)
            hi = np.quantile(x, 1.0 - self.bound_quantile, axis=0)
        hi = np.maximum(hi, lo + 1e-6)
        self._lo = lo
        self._cw = (hi - lo) / self.grid
        inner = lo[:, None] + self._cw[:, None] * np.arange(1, self.grid)[None, :]
        self._kappa.clear()
        return np.ascontiguousarray(inner, dtype=np.float32)

    def _after_build(self) -> None:
        """Rebuild occupancy and field from the cell table (full re-blur)."""
        m = self._m_eff
        size = self.grid**m if m else 1
        self._occ = np.zeros(size, dtype=np.int32)
        n_cells = int(self._meta[1])
        if n_cells and m:
            codes = self._cells[:n_cells, 3]
            counts = self._cells[:n_cells, 1]
            self._occ[codes] = counts.astype(np.int32)
            impulses = (self._occ > 0).astype(np.float64).reshape((self.grid,) * m)
            field = gaussian_filter(
                impulses, sigma=self.sigma, mode="constant", cval=0.0, truncate=self.truncate
            )
            self._field = np.ascontiguousarray(field.reshape(-1), dtype=np.float64)
        else:
            self._field = np.zeros(size, dtype=np.float64)

    def _insert(self, ids: IdArray, low: FloatArray) -> None:
        super()._insert(ids, low)
        if self._m_eff:
            codes = GK.grid_codes(low, self._edges, self.grid)
            K.thermal_occupy(codes, 1, self._occ, self._field, self.grid, self._m_eff, self._w1d)

    def remove(self, ids: IdArray) -> None:
        """Remove entries (absent ids are ignored) and re-diffuse locally."""
        ids_a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids_a) == 0 or len(self) == 0:
            return
        if len(ids_a) > 1:
            # An id listed twice is removed once: its cell must be counted out once.
            ids_a = np.unique(ids_a)
        # Absent and negative ids get code -1, which thermal_occupy skips.
        codes = GK.codes_of_ids(ids_a, self._itab, self._cells)
        self._remove_checked(ids_a)
        if self._m_eff:
            K.thermal_occupy(codes, -1, self._occ, self._field, self.grid, self._m_eff, self._w1d)

    # ----------------------------------------------------------------- query

    def field(self) -> F64:
        """The diffused field, shape ``(G,) * m`` (last axis = first coordinate)."""
        m = max(1, self._m_eff)
        return self._field.reshape((self.grid,) * m) if self._m_eff else self._field.copy()

    def fast_negative_reach(self, threshold: float) -> float:
        """Smallest field value any occupied cell within the probe ball leaves at the query.

        Returns 0 when the ball reaches beyond the kernel (no fast negative is
        possible at this threshold).
        """
        if not self._m_eff:
            return 0.0
        key = round(float(threshold), 6)
        hit = self._kappa.get(key)
        if hit is not None:
            return hit
        probe_r2, _ = self.radii(threshold)
        rad = (len(self._w1d) - 1) // 2
        # Offsets (in cells) of cells whose box can come within the probe
        # radius of *some* point of the query's cell: per dimension the gap is
        # (|o| - 1) cell widths.
        reach = []
        for j in range(self._m_eff):
            r = math.sqrt(probe_r2) / self._cw[j] if math.isfinite(probe_r2) else math.inf
            reach.append(r)
        if any(not math.isfinite(r) or math.floor(r) + 1 > rad for r in reach):
            kappa = 0.0
        else:
            kappa = math.inf
            ranges = [range(-(math.floor(r) + 1), math.floor(r) + 2) for r in reach]
            for off in np.array(np.meshgrid(*ranges, indexing="ij")).reshape(self._m_eff, -1).T:
                gap2 = sum(
                    (max(0, abs(int(o)) - 1) * self._cw[j]) ** 2 for j, o in enumerate(off)
                )
                if gap2 <= probe_r2:
                    w = float(np.prod([self._w1d[int(o) + rad] for o in off]))
                    kappa = min(kappa, w)
            # Float rounding of the summed field: demand a clear margin.
            kappa *= 1.0 - 1e-9
        self._kappa[key] = kappa
        return kappa

    def candidates(self, q_low: FloatArray, q_full: FloatArray, threshold: float) -> IdArray:
        """Ids that may have ``cos >= threshold`` with the query (see the module docstring)."""
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        q = self._query_row(q_low)
        if not self._m_eff:
            # Not calibrated yet: a scan of the single cell, as the grid does.
            return super().candidates(q, q_full, threshold)
        self.lookups += 1
        probe_r2, filt_r2 = self.radii(threshold)
        home = int(GK.cell_code(q, self._edges, self.grid))
        if self.search == "ball":
            kappa = self.fast_negative_reach(threshold)
            if kappa > 0 and self._field[home] < kappa:
                self.fast_negatives += 1
                return np.zeros(0, dtype=np.int64)
            return self._gather(q, home, probe_r2, filt_r2, 0.0)
        got = self._gather(q, home, float(self.radius**2), math.inf, 1.0)
        if len(got) == 0 and self.max_steps > 0:
            self.climbs += 1
            top = int(K.thermal_climb(self._field, home, self.grid, self._m_eff, self.max_steps))
            got = self._gather(q, top, float(self.radius**2), math.inf, 1.0)
        return got

    def _gather(
        self, q: FloatArray, centre: int, r2: float, filt_r2: float, scale: float
    ) -> IdArray:
        while True:
            got = K.thermal_gather(
                q, self._b, self._T, self._mapped, self._qinv, self._lo, self._cw, self.grid,
                centre, r2, self._stored_r2(filt_r2), scale, self._occ, self._cells, self._pvec, self._pids,
                self._ctab, self._out,
            )
            if got >= 0:
                return self._out[:got].copy()
            self._out = np.empty(2 * (-got) + 64, dtype=np.int64)
