"""Turn Elec2's `elec.csv` (no date column) into timestamped monthly CSV files in a landing dir.

The timestamp is rebuilt as the dataset README says: `1996-05-07 + day_index days +
round(period * 47) * 30 minutes`, where a new day starts each time `period` drops back to 0.
Each file is written under a hidden temporary name and renamed, so ingestion never reads a
half-written file.

    python examples/elec2/prepare.py [--source elec.csv] [--out examples/elec2/data/landing]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
SOURCE_VARIABLE = "CT_ELEC2_CSV"
# The shared data set sits beside the repository: <repo>/../shared/datasets/elec2/elec.csv.
# $CT_ELEC2_CSV overrides it; /work/shared is where this team's machines keep it.
CANDIDATES = [(HERE / "../../../shared/datasets/elec2/elec.csv").resolve(),
              Path("/work/shared/datasets/elec2/elec.csv")]


def source_paths() -> list[Path]:
    """Where `elec.csv` is looked for: `$CT_ELEC2_CSV` alone when set, else `CANDIDATES`."""
    override = os.environ.get(SOURCE_VARIABLE)
    return [Path(override)] if override else list(dict.fromkeys(CANDIDATES))


def find_source() -> Path:
    """The Elec2 `elec.csv` to read: the first of `source_paths()` that is a file.

    Raises:
        FileNotFoundError: none is; the one-line message names each path tried and
            `$CT_ELEC2_CSV`.
    """
    tried = source_paths()
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        where = (f"${SOURCE_VARIABLE} = {tried[0]}" if os.environ.get(SOURCE_VARIABLE)
                 else f"{', '.join(map(str, tried))} (${SOURCE_VARIABLE} is not set)")
        raise FileNotFoundError(f"Elec2's elec.csv not found: tried {where}; set "
                                f"{SOURCE_VARIABLE} to the file's path, or pass --source")
    return found


DEFAULT_OUT = HERE / "data" / "landing"
FIRST_DAY = dt.datetime(1996, 5, 7, tzinfo=dt.UTC)
TIMESTAMP = "timestamp"


def add_timestamps(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with a UTC `timestamp` column first, rebuilt from row order and `period`."""
    slot = (pl.col("period") * 47).round().cast(pl.Int64)
    new_day = (slot < slot.shift(1)).fill_null(False)
    day_index = new_day.cast(pl.Int64).cum_sum()
    offset = pl.duration(days=day_index, minutes=slot * 30)
    return frame.select((pl.lit(FIRST_DAY) + offset).alias(TIMESTAMP), pl.all())


def prepare(source: Path, out: Path) -> int:
    """Write `source` with timestamps into `out`, one CSV per month; returns the rows written.

    Raises:
        FileNotFoundError: `source` is not a file (naming it).
    """
    if not source.is_file():
        raise FileNotFoundError(f"Elec2's elec.csv not found: {source} is not a file")
    frame = add_timestamps(pl.read_csv(source))
    out.mkdir(parents=True, exist_ok=True)
    month = pl.col(TIMESTAMP).dt.strftime("%Y-%m")
    written = 0
    for (key,), part in frame.with_columns(month.alias("_month")).partition_by(
        "_month", as_dict=True, maintain_order=True
    ).items():
        final = out / f"elec2_{key}.csv"
        temporary = out / f".{final.name}.{os.getpid()}.tmp"
        part.drop("_month").with_columns(
            pl.col(TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        ).write_csv(temporary)
        os.replace(temporary, final)
        written += part.height
    return written


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help=f"Elec2 elec.csv (default: "
                        f"${SOURCE_VARIABLE}, else the first of "
                        f"{', '.join(map(str, dict.fromkeys(CANDIDATES)))})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="landing directory")
    args = parser.parse_args()
    try:
        source = args.source.resolve() if args.source else find_source()
        rows = prepare(source, args.out.resolve())
    except FileNotFoundError as error:  # one line, not a traceback: what to set
        sys.exit(f"prepare.py: {error}")
    print(f"wrote {rows} rows to {args.out.resolve()}")


if __name__ == "__main__":
    main()
