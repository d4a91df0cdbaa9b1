"""Data drift between a reference sample and a current partition.

A `ReferenceProfile` is fitted once from the reference (the training window) with
`fit_reference`, stored next to the model as JSON (`to_json` / `from_json`, no pickle), and reused
for every partition: `compute_drift(profile, current)` costs a sort of each current column plus
`O(grid · log current)` searches, whatever the size of the history. `compute_drift` also accepts a
reference frame and fits the profile itself.

Methods (`DriftConfig.methods`, per column, per kind or for every column):

- `ks` (numeric): two-sample Kolmogorov-Smirnov statistic D and its two-sided p-value, computed as
  `scipy.stats.ks_2samp(method="auto")` does: exact when both samples have at most 10,000 values,
  else Smirnov's asymptotic distribution (`kstwo.sf(D, round(n·m / (n + m)))`).
- `wasserstein` (numeric): the first Wasserstein distance divided by the reference standard
  deviation (ddof 0), as Evidently's "normed" Wasserstein. A constant reference (std 0) gives the
  absolute distance instead, with a note.
- `jensen_shannon` (numeric and categorical): the Jensen-Shannon *distance* (the square root of
  the divergence, natural logarithm — `scipy.spatial.distance.jensenshannon`, as Evidently), in
  [0, sqrt(ln 2) ≈ 0.833]. Numeric columns are binned on the reference quantiles (`bins`, 10 by
  default, fixed at fit time); numeric columns with at most 5 distinct values use the values.
- `chisquare` (categorical; numeric on the same bins as above): Pearson's chi-square test of
  homogeneity of the 2 x k table of reference and current counts (`scipy.stats.chi2_contingency`
  without continuity correction); the p-value. Evidently instead runs the goodness-of-fit test
  `scipy.stats.chisquare(current, reference shares · m)`, which treats the reference shares as
  exact: its statistic is inflated by about 1 + m / n, so with a current sample as large as the
  reference it flags drift between two samples of one distribution far more often than 5 % of
  the time. Both agree when the reference is much larger than the current sample.
- `psi` (numeric and categorical): population stability index `Σ (c - r) · ln(c / r)` over the
  same bins, empty bins counted as a share of `PSI_EPSILON`. Bands: < 0.1 stable, 0.1-0.2 watch,
  >= 0.2 act; the band is given in `note`.

`auto` (the default) follows Evidently's defaults:

- reference with at most 1,000 values: numeric → `ks` (with more than 5 distinct values in
  reference and current together, else `chisquare` on the values); categorical → `chisquare`;
  drifted when p < 0.05;
- more than 1,000 values: numeric → `wasserstein` (drifted when >= 0.1; with at most 5 distinct
  values, `jensen_shannon` on the values); categorical → `jensen_shannon` (drifted when >= 0.1).

Default thresholds (`DEFAULT_THRESHOLDS`, overridden per method by `DriftConfig.thresholds`):
`ks` and `chisquare` 0.05 (drifted when p < threshold), `wasserstein`, `jensen_shannon` and `psi`
0.1 (drifted when statistic >= threshold). Unlike Evidently there is no z-test for binary columns:
`chisquare` is used.

Categories unseen in the reference (and, for numeric columns with at most 5 values, unseen
values) are bins of their own: the chi-square test of homogeneity and JS need no epsilon; PSI
counts the empty reference bin as a share of `PSI_EPSILON`.

Defined answers, never an exception on data: nulls (and NaN/±inf in numeric columns) are ignored
by the statistics, and `null_share_reference` / `null_share_current` report the share of such
values. A column with fewer than 2 values on either side (empty, all null, too few rows), missing
from `current`, or of an unsupported dtype gets `drifted` False, null statistic and p-value, and a
note saying why. A missing column is *not* drift: it is a schema problem the data-quality checks
catch, and retraining would not fix it.

Streaming detectors over a monitored series (Page-Hinkley) live in `ct_assets.lib.detectors`.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ct_assets.lib.config import DriftConfig

METHODS: tuple[str, ...] = ("ks", "wasserstein", "jensen_shannon", "chisquare", "psi")
NUMERIC_METHODS = frozenset(METHODS)
CATEGORICAL_METHODS = frozenset({"jensen_shannon", "chisquare", "psi"})
P_VALUE_METHODS = frozenset({"ks", "chisquare"})
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.05, "chisquare": 0.05, "wasserstein": 0.1, "jensen_shannon": 0.1, "psi": 0.1,
}
METHOD_ALIASES: dict[str, str] = {
    "kolmogorov_smirnov": "ks", "chi2": "chisquare", "chi_square": "chisquare",
    "jensenshannon": "jensen_shannon", "js": "jensen_shannon", "wasserstein_norm": "wasserstein",
}
AUTO_SMALL_REFERENCE = 1_000  # reference values at or below which auto uses p-value tests
AUTO_DISCRETE_VALUES = 5  # numeric columns with at most this many values are treated as discrete
PSI_WATCH, PSI_ACT = 0.1, 0.2
PSI_EPSILON = 1e-4
DEFAULT_BINS = 10
DEFAULT_QUANTILES = 10_000
MAX_EXACT_ROWS = 100_000
KS_EXACT_MAX_N = 10_000  # as scipy's ks_2samp(method="auto")
PROFILE_FORMAT = "ct_assets.drift.ReferenceProfile"
PROFILE_VERSION = 1
_PARALLEL_MIN_VALUES = 200_000

REPORT_SCHEMA: dict[str, pl.DataType] = {
    "feature": pl.String(), "kind": pl.String(), "method": pl.String(),
    "statistic": pl.Float64(), "p_value": pl.Float64(), "threshold": pl.Float64(),
    "drifted": pl.Boolean(), "reference_rows": pl.Int64(), "current_rows": pl.Int64(),
    "null_share_reference": pl.Float64(), "null_share_current": pl.Float64(), "note": pl.String(),
}


# --- the fitted reference -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NumericReference:
    """A numeric reference column: its distribution on a grid, with exact counts.

    Attributes:
        count: Values (not null, finite).
        missing: Null or non-finite values.
        mean: Mean of the values.
        std: Standard deviation of the values (ddof 0).
        grid: Sorted distinct values: every value when the reference is exact, else quantiles.
        at: Number of values equal to each grid point.
        between: Number of values strictly between consecutive grid points; None when exact.
        between_offsets: Sum over those values of (value - the grid point below); None when
            exact. With it the reference CDF's integral over each interval is exact.
        edges: Inner edges of the quantile bins used by JS, PSI and chi-square; right-closed
            bins `(-inf, e1], (e1, e2], …, (ek, inf)`.
        edge_counts: Reference values in each of those bins.
    """

    count: int
    missing: int
    mean: float
    std: float
    grid: np.ndarray
    at: np.ndarray
    between: np.ndarray | None
    between_offsets: np.ndarray | None
    edges: np.ndarray
    edge_counts: np.ndarray

    kind = "numeric"

    @property
    def exact(self) -> bool:
        """Whether the grid holds every reference value (statistics are then exact)."""
        return self.between is None

    @functools.cached_property
    def cum_lt(self) -> np.ndarray:
        """Number of reference values below each grid point."""
        steps = self.at[:-1] if self.between is None else self.at[:-1] + self.between
        return np.concatenate(([0], np.cumsum(steps))).astype(np.int64)

    @functools.cached_property
    def cum_le(self) -> np.ndarray:
        """Number of reference values at or below each grid point."""
        return self.cum_lt + self.at


@dataclass(frozen=True, eq=False)
class CategoricalReference:
    """A categorical reference column: category frequencies.

    Attributes:
        count: Non-null values.
        missing: Null values.
        categories: The categories seen, sorted.
        counts: Number of values of each category.
    """

    count: int
    missing: int
    categories: tuple[str, ...]
    counts: np.ndarray

    kind = "categorical"

    @functools.cached_property
    def index(self) -> pl.DataFrame:
        """Category → position, to align current counts with a join."""
        return pl.DataFrame({"value": list(self.categories),
                             "position": np.arange(len(self.categories), dtype=np.int64)},
                            schema={"value": pl.String, "position": pl.Int64})


@dataclass(frozen=True, eq=False)
class UnsupportedReference:
    """A reference column whose dtype drift does not handle (lists, structs, binary, …).

    Attributes:
        dtype: The dtype, as text.
        missing: Null values.
    """

    dtype: str
    missing: int

    kind = "unsupported"


ColumnReference = NumericReference | CategoricalReference | UnsupportedReference


def _encode(array: np.ndarray) -> dict[str, str]:
    """An array as little-endian bytes, zlib-compressed and base64-encoded."""
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    data = base64.b64encode(zlib.compress(little.tobytes(), 1)).decode("ascii")
    return {"dtype": little.dtype.str, "encoding": "zlib+base64", "data": data}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _decode(item: Mapping[str, str]) -> np.ndarray:
    array = np.frombuffer(zlib.decompress(base64.b64decode(item["data"])),
                          dtype=np.dtype(item["dtype"]))
    return array.astype(array.dtype.newbyteorder("="))


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """What drift needs of a reference sample, fitted once by `fit_reference`.

    Serialise it with `to_json` (arrays as zlib-compressed, base64-encoded little-endian bytes,
    so the round trip is exact) and read it back with `from_json`.

    Attributes:
        rows: Rows of the reference frame.
        columns: Column name → its fitted reference, in the frame's order.
        bins: Number of quantile bins of numeric columns.
    """

    rows: int
    columns: dict[str, ColumnReference]
    bins: int = DEFAULT_BINS

    @property
    def features(self) -> list[str]:
        """The profiled column names."""
        return list(self.columns)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of the profile."""
        columns = []
        for name, column in self.columns.items():
            item: dict[str, Any] = {"name": name, "kind": column.kind, "missing": column.missing}
            if isinstance(column, NumericReference):
                item.update(count=column.count, mean=_finite_or_none(column.mean),
                            std=_finite_or_none(column.std),
                            grid=_encode(column.grid), at=_encode(column.at),
                            between=None if column.between is None else _encode(column.between),
                            between_offsets=(None if column.between_offsets is None
                                             else _encode(column.between_offsets)),
                            edges=_encode(column.edges), edge_counts=_encode(column.edge_counts))
            elif isinstance(column, CategoricalReference):
                item.update(count=column.count, categories=list(column.categories),
                            counts=[int(value) for value in column.counts])
            else:
                item.update(dtype=column.dtype)
            columns.append(item)
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "rows": self.rows,
                "bins": self.bins, "columns": columns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Rebuild a profile from `to_dict` output.

        Raises:
            ValueError: the dict is not a profile of a known version.
        """
        if data.get("format") != PROFILE_FORMAT or data.get("version") != PROFILE_VERSION:
            raise ValueError(f"not a {PROFILE_FORMAT} version {PROFILE_VERSION}: "
                             f"format={data.get('format')!r}, version={data.get('version')!r}")
        columns: dict[str, ColumnReference] = {}
        for item in data["columns"]:
            if item["kind"] == "numeric":
                between, offsets = item["between"], item["between_offsets"]
                columns[item["name"]] = NumericReference(
                    count=int(item["count"]), missing=int(item["missing"]),
                    mean=_float_or_nan(item["mean"]), std=_float_or_nan(item["std"]),
                    grid=_decode(item["grid"]),
                    at=_decode(item["at"]), between=None if between is None else _decode(between),
                    between_offsets=None if offsets is None else _decode(offsets),
                    edges=_decode(item["edges"]), edge_counts=_decode(item["edge_counts"]))
            elif item["kind"] == "categorical":
                columns[item["name"]] = CategoricalReference(
                    count=int(item["count"]), missing=int(item["missing"]),
                    categories=tuple(item["categories"]),
                    counts=np.asarray(item["counts"], dtype=np.int64))
            else:
                columns[item["name"]] = UnsupportedReference(dtype=item["dtype"],
                                                             missing=int(item["missing"]))
        return cls(rows=int(data["rows"]), columns=columns, bins=int(data["bins"]))

    def to_json(self) -> str:
        """The profile as JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Read a profile written by `to_json`."""
        return cls.from_dict(json.loads(text))


def _column_kind(series: pl.Series, categorical: set[str]) -> str:
    dtype = series.dtype
    if dtype.is_nested() or dtype in (pl.Binary, pl.Object):
        return "unsupported"
    if series.name in categorical:
        return "categorical"
    if dtype.is_numeric() or dtype.is_temporal() or dtype == pl.Null:
        return "numeric"
    return "categorical"  # strings, categoricals, enums, booleans


def _as_float(series: pl.Series) -> pl.Series:
    """A numeric or temporal series as Float64 (temporal: microseconds / days); others parsed."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime | pl.Duration):
        series = series.dt.cast_time_unit("us").to_physical()
    elif dtype.is_temporal():
        series = series.to_physical()
    elif not dtype.is_numeric() and dtype != pl.Null:
        series = series.cast(pl.String, strict=False)
    return series.cast(pl.Float64, strict=False)


def _finite_sorted(series: pl.Series) -> tuple[np.ndarray, int]:
    """The finite values of a column, sorted, and the number of missing (null / non-finite)."""
    values = _as_float(series).to_numpy()
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    return np.sort(values), int(series.len() - values.size)


def _quantile_edges(grid: np.ndarray, cum_le: np.ndarray, count: int,
                    bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner edges of `bins` quantile bins taken from the grid, and the reference count per bin."""
    if bins < 2 or grid.size < 2:
        return np.empty(0), np.asarray([count], dtype=np.int64)
    targets = np.arange(1, bins, dtype=np.int64) * count  # bins · cum_le >= k · count
    positions = np.searchsorted(cum_le * bins, targets, side="left")
    positions = np.unique(np.minimum(positions, grid.size - 2))  # the last edge is below the max
    edges = grid[positions]
    counts = np.diff(np.concatenate(([0], cum_le[positions], [count]))).astype(np.int64)
    return edges, counts


def _fit_numeric(series: pl.Series, *, bins: int, max_exact_rows: int,
                 quantiles: int) -> NumericReference:
    values, missing = _finite_sorted(series)
    count = values.size
    if count == 0:
        empty = np.empty(0)
        return NumericReference(count=0, missing=missing, mean=math.nan, std=math.nan, grid=empty,
                                at=np.empty(0, dtype=np.int64), between=None,
                                between_offsets=None, edges=empty,
                                edge_counts=np.empty(0, dtype=np.int64))
    mean = float(values.mean())
    std = float(np.sqrt(np.mean(np.square(values - mean))))
    between: np.ndarray | None = None
    offsets: np.ndarray | None = None
    if count <= max_exact_rows:
        starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
        grid = values[starts]
        at = np.diff(np.append(starts, count)).astype(np.int64)
    else:
        # Quantile points, and data points evenly spread in value so that long tails get
        # narrow intervals too.
        by_rank = np.round(np.linspace(0, count - 1, quantiles + 1)).astype(np.int64)
        by_value = np.searchsorted(values, np.linspace(values[0], values[-1], quantiles + 1))
        grid = np.unique(values[np.concatenate((by_rank, np.minimum(by_value, count - 1)))])
        first = np.searchsorted(values, grid, side="left")
        after = np.searchsorted(values, grid, side="right")
        at = (after - first).astype(np.int64)
        between = (first[1:] - after[:-1]).astype(np.int64)
        if between.any():
            prefix = np.concatenate(([0.0], np.cumsum(values - mean)))
            sums = prefix[first[1:]] - prefix[after[:-1]]
            offsets = np.maximum(sums - between * (grid[:-1] - mean), 0.0)
        else:
            between = None
    edges, edge_counts = _quantile_edges(grid, np.cumsum(at) if between is None
                                         else np.cumsum(at + np.append(between, 0)),
                                         count, bins)
    return NumericReference(count=count, missing=missing, mean=mean, std=std, grid=grid, at=at,
                            between=between, between_offsets=offsets, edges=edges,
                            edge_counts=edge_counts)


def _fit_categorical(series: pl.Series) -> CategoricalReference:
    values = series.cast(pl.String)
    missing = values.null_count()
    counts = (values.drop_nulls().rename("value").value_counts(name="n").sort("value"))
    return CategoricalReference(count=values.len() - missing, missing=missing,
                                categories=tuple(counts["value"].to_list()),
                                counts=counts["n"].cast(pl.Int64).to_numpy())


def _map(function: Any, items: Sequence[Any], *, values: int) -> list[Any]:
    """`function` over items, on threads when there is enough data (numpy releases the GIL)."""
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2 or values < _PARALLEL_MIN_VALUES:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def fit_reference(reference: pl.DataFrame, *, categorical: Iterable[str] | None = None,
                  bins: int = DEFAULT_BINS, max_exact_rows: int = MAX_EXACT_ROWS,
                  quantiles: int = DEFAULT_QUANTILES) -> ReferenceProfile:
    """Fit the drift profile of a reference frame, once.

    Numeric columns keep every distinct value with its count when they have at most
    `max_exact_rows` values (statistics are then exact), else `quantiles + 1` quantile points with
    exact counts at and between them (KS within about 1 / `quantiles` of the exact value).
    Categorical columns keep their category counts.

    Args:
        reference: The reference sample; every column is profiled.
        categorical: Columns to treat as categorical; string, categorical, enum and boolean
            columns are categorical anyway, numeric and temporal columns are numeric.
        bins: Quantile bins of numeric columns for `jensen_shannon`, `psi` and `chisquare`.
        max_exact_rows: Largest number of values kept exactly per numeric column.
        quantiles: Quantile intervals kept per numeric column above `max_exact_rows`.

    Returns:
        The profile, reusable for every current partition and serialisable with `to_json`.
    """
    chosen = set(categorical or ())
    columns = reference.get_columns()

    def fit(series: pl.Series) -> ColumnReference:
        kind = _column_kind(series, chosen)
        if kind == "numeric":
            return _fit_numeric(series, bins=bins, max_exact_rows=max_exact_rows,
                                quantiles=quantiles)
        if kind == "categorical":
            return _fit_categorical(series)
        return UnsupportedReference(dtype=str(series.dtype), missing=series.null_count())

    fitted = _map(fit, columns, values=reference.height * len(columns))
    return ReferenceProfile(rows=reference.height,
                            columns={s.name: f for s, f in zip(columns, fitted, strict=True)},
                            bins=bins)


# --- statistics -------------------------------------------------------------------------------


def ks_pvalue(statistic: float, n: int, m: int) -> float:
    """Two-sided two-sample KS p-value, as `scipy.stats.ks_2samp(method="auto")`.

    Exact when both sizes are at most 10,000 (falling back to the asymptotic distribution if the
    exact computation fails), else `kstwo.sf(D, round(n·m / (n + m)))`.

    Args:
        statistic: The KS statistic D.
        n: Size of the first (reference) sample.
        m: Size of the second (current) sample.
    """
    if max(n, m) <= KS_EXACT_MAX_N:
        try:  # scipy's own exact computation (private; absent → asymptotic)
            from scipy.stats._stats_py import _attempt_exact_2kssamp

            ok, _, p_value = _attempt_exact_2kssamp(n, m, math.gcd(n, m), statistic,
                                                    "two-sided")
            if ok and np.isfinite(p_value):
                return float(np.clip(p_value, 0.0, 1.0))
        except (ImportError, TypeError, ValueError, ArithmeticError):
            pass
    effective = round(n * m / (n + m))
    from scipy import stats  # imported when first needed: 1.5 s of every process's start

    return float(np.clip(stats.kstwo.sf(statistic, effective), 0.0, 1.0))


def _ks_statistic(ref: NumericReference, current: np.ndarray) -> float:
    """KS statistic sup |F_ref - F_cur|: exact on an exact profile, else within a bin's share."""
    n, m = ref.count, current.size
    below = np.searchsorted(current, ref.grid, side="left")
    upto = np.searchsorted(current, ref.grid, side="right")
    at_points = np.abs(ref.cum_le / n - upto / m)
    left_limits = np.abs(ref.cum_lt / n - below / m)
    return float(max(at_points.max(), left_limits.max()))


def _inside_integral(ref: NumericReference, offset: np.ndarray, width: np.ndarray) -> np.ndarray:
    """∫ from each interval's low end to low + offset of (reference share inside, up to x).

    The values strictly inside a quantile interval are modelled as uniform on the sub-interval
    touching one end whose mean is their known mean, so the integral over the whole interval is
    exact. Zero on an exact profile.
    """
    if ref.between is None or ref.between_offsets is None:
        return np.zeros_like(offset)
    share = ref.between / ref.count
    mean_offset = np.clip(ref.between_offsets / np.maximum(ref.between, 1), 0.0, width)
    first = np.where(2 * mean_offset <= width, 0.0, 2 * mean_offset - width)
    last = np.where(2 * mean_offset <= width, 2 * mean_offset, width)
    spread = last - first
    ramp = np.clip(offset - first, 0.0, spread)
    partial = np.divide(ramp**2, 2 * spread, out=np.zeros_like(ramp), where=spread > 0)
    return share * (partial + np.maximum(offset - last, 0.0))


def _wasserstein_distance(ref: NumericReference, current: np.ndarray) -> float:
    """∫ |F_ref - F_cur| dx: exact on an exact profile, else see `_inside_integral`.

    Inside each reference interval the integral is split where the current count crosses the
    reference CDF; both parts come from prefix sums of the sorted current values, so the cost is
    O(m) for the prefix sums plus O(grid · log m) searches.
    """
    n, m = ref.count, current.size
    shift = ref.mean  # centring keeps the prefix sums small
    grid = ref.grid - shift
    values = current - shift
    prefix = np.concatenate(([0.0], np.cumsum(values)))
    below = np.searchsorted(values, grid, side="left")
    upto = np.searchsorted(values, grid, side="right")

    def count_integral(low: np.ndarray, high: np.ndarray, first: np.ndarray,
                       stop: np.ndarray) -> np.ndarray:
        # ∫_low^high #{c <= x} dx, with first = #{c <= low} and stop = #{c < high}.
        return (first * (high - low) + (stop - first) * high
                - (prefix[stop] - prefix[first]))

    total = (below[0] * grid[0] - prefix[below[0]]) / m
    total += (prefix[m] - prefix[upto[-1]] - (m - upto[-1]) * grid[-1]) / m
    if grid.size > 1:
        low, high = grid[:-1], grid[1:]
        width = high - low
        start = ref.cum_le[:-1] / n
        # Current count crossing the middle of the interval's reference CDF.
        crossing = (ref.cum_le[:-1] + ref.cum_lt[1:]) * m // (2 * n)
        split = np.where(crossing < m, values[np.minimum(crossing, m - 1)], high)
        split = np.clip(split, low, high)
        split_le = np.searchsorted(values, split, side="right")
        split_lt = np.searchsorted(values, split, side="left")
        ref_left = start * (split - low) + _inside_integral(ref, split - low, width)
        ref_all = start * width + _inside_integral(ref, width, width)
        below_part = ref_left - count_integral(low, split, upto[:-1], split_lt) / m
        above_part = count_integral(split, high, split_le, below[1:]) / m - (ref_all - ref_left)
        total += float(np.sum(below_part + above_part))
    return max(float(total), 0.0)


def _shares_distance(method: str, ref_counts: np.ndarray,
                     cur_counts: np.ndarray) -> tuple[float, float | None, str | None]:
    """Statistic, p-value and note of a binned method on aligned counts."""
    from scipy import special, stats  # imported when first needed (see `ks_pvalue`)

    ref_counts = ref_counts.astype(np.float64)
    cur_counts = cur_counts.astype(np.float64)
    ref_share = ref_counts / ref_counts.sum()
    cur_share = cur_counts / cur_counts.sum()
    if method == "jensen_shannon":
        middle = (ref_share + cur_share) / 2
        divergence = (special.rel_entr(ref_share, middle).sum()
                      + special.rel_entr(cur_share, middle).sum()) / 2
        return float(np.sqrt(max(divergence, 0.0))), None, None
    if method == "psi":
        ref_share = np.where(ref_share == 0, PSI_EPSILON, ref_share)
        cur_share = np.where(cur_share == 0, PSI_EPSILON, cur_share)
        value = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
        band = "stable" if value < PSI_WATCH else "watch" if value < PSI_ACT else "act"
        return value, None, f"psi band: {band} (watch >= {PSI_WATCH}, act >= {PSI_ACT})"
    # chisquare: Pearson's test of homogeneity of the 2 x k table (reference, current).
    if ref_counts.size < 2:
        return 0.0, 1.0, "a single category: no chi-square test"
    table = np.vstack((ref_counts, cur_counts))
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, ref_counts.size - 1)), None


# --- compute_drift ------------------------------------------------------------------------------


def _method_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = METHOD_ALIASES.get(key, key)
    if key != "auto" and key not in METHODS:
        raise ValueError(f"unknown drift method {name!r}; expected auto or one of "
                         f"{', '.join(METHODS)}")
    return key


def _thresholds(config: DriftConfig) -> dict[str, float]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    for name, value in config.thresholds.items():
        key = _method_name(name)
        if key == "auto":
            raise ValueError("drift.thresholds: give a threshold per method, not for 'auto'")
        thresholds[key] = float(value)
    return thresholds


def _requested_method(config: DriftConfig, name: str, kind: str) -> tuple[str, str | None]:
    """The configured method of a column ('auto' or a method) and a note when it was replaced."""
    allowed = NUMERIC_METHODS if kind == "numeric" else CATEGORICAL_METHODS
    if isinstance(config.methods, str):
        method = _method_name(config.methods)
        if method != "auto" and method not in allowed:
            return "auto", f"{method} does not apply to {kind} columns: auto used"
        return method, None
    raw = config.methods.get(name, config.methods.get(kind, "auto"))
    method = _method_name(raw)
    if method != "auto" and method not in allowed:
        raise ValueError(f"drift.methods: {method!r} does not apply to {kind} column {name!r}")
    return method, None


def _base_row(name: str, column: ColumnReference) -> dict[str, Any]:
    ref_total = column.missing + getattr(column, "count", 0)
    return {
        "feature": name, "kind": column.kind, "method": None, "statistic": None, "p_value": None,
        "threshold": None, "drifted": False, "reference_rows": getattr(column, "count", 0),
        "current_rows": 0,
        "null_share_reference": column.missing / ref_total if ref_total else None,
        "null_share_current": None, "note": None,
    }


def _defaulted(row: dict[str, Any], current_total: int) -> dict[str, Any] | None:
    """Set the note of a row that cannot be tested; None when the row can be tested."""
    n, m = row["reference_rows"], row["current_rows"]
    if n == 0:
        row["note"] = "all null in reference" if row["null_share_reference"] else "empty reference"
    elif current_total == 0:
        row["note"] = "no current rows"
    elif m == 0:
        row["note"] = "all null in current"
    elif n < 2 or m < 2:
        row["note"] = f"too few rows (reference {n}, current {m})"
    else:
        return None
    return row


def _finish(row: dict[str, Any], method: str, statistic: float, p_value: float | None,
            thresholds: Mapping[str, float], note: str | None) -> dict[str, Any]:
    threshold = thresholds[method]
    drifted = (p_value < threshold) if method in P_VALUE_METHODS else (statistic >= threshold)
    notes = [text for text in (row["note"], note) if text]
    row.update(method=method, statistic=float(statistic), p_value=p_value, threshold=threshold,
               drifted=bool(drifted), note="; ".join(notes) or None)
    return row


def _numeric_row(name: str, ref: NumericReference, series: pl.Series, requested: str,
                 thresholds: Mapping[str, float], note: str | None) -> dict[str, Any]:
    row = _base_row(name, ref)
    row["note"] = note
    values, missing = _finite_sorted(series)
    total = series.len()
    row["current_rows"] = values.size
    row["null_share_current"] = missing / total if total else None
    if _defaulted(row, total) is not None:
        return row
    n, m = ref.count, values.size
    discrete_values: np.ndarray | None = None  # unseen current values when the column is discrete
    if ref.exact and ref.grid.size <= AUTO_DISCRETE_VALUES:
        unseen = values[~np.isin(values, ref.grid)]
        distinct_unseen = np.unique(unseen)
        if ref.grid.size + distinct_unseen.size <= AUTO_DISCRETE_VALUES:
            discrete_values = unseen
    method = requested
    if method == "auto":
        if discrete_values is not None:
            method = "chisquare" if n <= AUTO_SMALL_REFERENCE else "jensen_shannon"
        else:
            method = "ks" if n <= AUTO_SMALL_REFERENCE else "wasserstein"
    if method == "ks":
        statistic = _ks_statistic(ref, values)
        return _finish(row, method, statistic, ks_pvalue(statistic, n, m), thresholds, None)
    if method == "wasserstein":
        distance = _wasserstein_distance(ref, values)
        if ref.std > 0:
            return _finish(row, method, distance / ref.std, None, thresholds, None)
        return _finish(row, method, distance, None, thresholds,
                       "constant reference: absolute distance")
    if discrete_values is not None:  # bins are the values
        upto = np.searchsorted(values, ref.grid, side="right")
        below = np.searchsorted(values, ref.grid, side="left")
        _, unseen_counts = np.unique(discrete_values, return_counts=True)
        ref_counts = np.concatenate((ref.at, np.zeros(unseen_counts.size, dtype=np.int64)))
        cur_counts = np.concatenate((upto - below, unseen_counts))
    else:  # bins are the reference quantile bins
        ref_counts = ref.edge_counts
        cur_counts = np.diff(np.concatenate(([0], np.searchsorted(values, ref.edges, "right"),
                                             [m])))
    statistic, p_value, method_note = _shares_distance(method, ref_counts, cur_counts)
    return _finish(row, method, statistic, p_value, thresholds, method_note)


def _categorical_row(name: str, ref: CategoricalReference, series: pl.Series, requested: str,
                     thresholds: Mapping[str, float], note: str | None) -> dict[str, Any]:
    row = _base_row(name, ref)
    row["note"] = note
    values = series.cast(pl.String, strict=False)
    total = values.len()
    missing = values.null_count()
    row["current_rows"] = total - missing
    row["null_share_current"] = missing / total if total else None
    if _defaulted(row, total) is not None:
        return row
    counts = (values.drop_nulls().rename("value").value_counts(name="n")
              .join(ref.index, on="value", how="left"))
    seen = counts.filter(pl.col("position").is_not_null())
    unseen = counts.filter(pl.col("position").is_null())["n"].cast(pl.Int64).to_numpy()
    cur_counts = np.zeros(len(ref.categories) + unseen.size, dtype=np.int64)
    cur_counts[seen["position"].to_numpy()] = seen["n"].cast(pl.Int64).to_numpy()
    cur_counts[len(ref.categories):] = unseen
    ref_counts = np.concatenate((ref.counts, np.zeros(unseen.size, dtype=np.int64)))
    method = requested
    if method == "auto":
        method = "chisquare" if ref.count <= AUTO_SMALL_REFERENCE else "jensen_shannon"
    statistic, p_value, method_note = _shares_distance(method, ref_counts, cur_counts)
    if unseen.size:
        method_note = "; ".join(filter(None, (method_note, f"{unseen.size} unseen categories")))
    return _finish(row, method, statistic, p_value, thresholds, method_note)


def compute_drift(reference: pl.DataFrame | ReferenceProfile, current: pl.DataFrame, *,
                  categorical: Iterable[str] | None = None,
                  config: DriftConfig | None = None) -> pl.DataFrame:
    """Per-feature drift of `current` against a reference.

    Every reference column is a feature (select the features before calling). The methods,
    `auto`'s choices and the default thresholds are described in the module docstring.

    Args:
        reference: The reference frame, or a profile fitted from it by `fit_reference` (fit it
            once and reuse it: the cost is then that of the current data only).
        current: The current partition; extra columns are ignored.
        categorical: Reference columns to treat as categorical (ignored with a profile, which
            knows its kinds); string, categorical, enum and boolean columns always are.
        config: Methods (`auto`, one method for every column it applies to — others use auto —
            or a dict column or kind ("numeric"/"categorical") → method), thresholds per method,
            share and critical features (used by `drift_summary`); None for the defaults.

    Returns:
        One row per feature: `feature`, `kind` (numeric, categorical or unsupported),
        `method`, `statistic`, `p_value` (null for distances), `threshold`, `drifted`,
        `reference_rows` / `current_rows` (values used: not null, finite),
        `null_share_reference` / `null_share_current` (share of null or non-finite values) and
        `note` (why a default answer was given, the PSI band, unseen categories).

    Raises:
        ValueError: the config names an unknown method, or a method that does not apply to a
            column named in `config.methods`.
    """
    config = config or DriftConfig()
    thresholds = _thresholds(config)
    profile = (reference if isinstance(reference, ReferenceProfile)
               else fit_reference(reference, categorical=categorical))
    present = set(current.columns)
    plans = []
    for name, column in profile.columns.items():
        if column.kind == "unsupported":
            plans.append((name, column, None, "auto", None))
            continue
        method, note = _requested_method(config, name, column.kind)
        plans.append((name, column, current.get_column(name) if name in present else None,
                      method, note))

    def evaluate(plan: tuple[str, ColumnReference, pl.Series | None, str, str | None],
                 ) -> dict[str, Any]:
        name, column, series, method, note = plan
        if isinstance(column, UnsupportedReference):
            row = _base_row(name, column)
            row["note"] = f"unsupported dtype {column.dtype}"
            return row
        if series is None:
            row = _base_row(name, column)
            row["note"] = "missing from current"
            return row
        if isinstance(column, NumericReference):
            return _numeric_row(name, column, series, method, thresholds, note)
        return _categorical_row(name, column, series, method, thresholds, note)

    rows = _map(evaluate, plans, values=current.height * len(plans))
    return pl.DataFrame(rows, schema=REPORT_SCHEMA)


def drift_summary(report: pl.DataFrame, *, share: float,
                  critical: Iterable[str] = ()) -> dict[str, Any]:
    """Dataset-level verdict of a `compute_drift` report.

    Args:
        report: The per-feature report.
        share: The dataset drifts when at least this share of the tested features drifted.
        critical: Features whose drift alone makes the dataset drift.

    Returns:
        `features` (rows of the report), `tested_features` (rows with a statistic: the share's
        denominator), `drifted_features` (names), `n_drifted`, `drifted_share`,
        `critical_drifted` (names), `untested_features` (names, with a note) and
        `dataset_drifted`.
    """
    drifted = report.filter(pl.col("drifted"))["feature"].to_list()
    tested = report.filter(pl.col("statistic").is_not_null())
    untested = report.filter(pl.col("statistic").is_null())["feature"].to_list()
    drifted_share = len(drifted) / tested.height if tested.height else 0.0
    critical_drifted = [name for name in critical if name in set(drifted)]
    return {
        "features": report.height,
        "tested_features": tested.height,
        "drifted_features": drifted,
        "n_drifted": len(drifted),
        "drifted_share": drifted_share,
        "critical_drifted": critical_drifted,
        "untested_features": untested,
        "dataset_drifted": bool((tested.height and drifted_share >= share) or critical_drifted),
    }
