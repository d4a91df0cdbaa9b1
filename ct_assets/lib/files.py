"""The files source: find landed CSV/Parquet files and read them, rejecting bad files whole."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

SUPPORTED_SUFFIXES = (".csv", ".parquet")
# Files still being written by a producer: never read, never rejected.
IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")

SOURCE_FILE = "_source_file"
ROW_NUMBER = "_row_number"


class BadFile(Exception):
    """A landed file that cannot be ingested at all; the message is the reason."""


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing dir, as seen on disk."""

    path: Path
    relpath: str
    size: int
    mtime_ns: int
    problem: str | None = None

    @property
    def fingerprint(self) -> str:
        """Identity of this version of the file (path, size, mtime)."""
        return f"{self.relpath}:{self.size}:{self.mtime_ns}"


def discover(landing_dir: Path) -> list[LandedFile]:
    """List every complete file under `landing_dir`, sorted by relative path.

    Hidden and in-flight files (`.x`, `*.tmp`, `*.part`) are skipped: a producer is still
    writing them. Symlinks, paths resolving outside the landing dir and unsupported file types
    come back with `problem` set, so they are quarantined rather than silently ignored.
    """
    root = landing_dir.resolve()
    if not root.is_dir():
        return []
    found: list[LandedFile] = []
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        found.extend(_problem(base / name, root, "symlinked directory (not followed)")
                     for name in sorted(dirnames) if (base / name).is_symlink())
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(IN_FLIGHT_SUFFIXES):
                continue
            found.append(_inspect(base / name, root))
    return sorted(found, key=lambda item: item.relpath)


def _problem(path: Path, root: Path, problem: str) -> LandedFile:
    return LandedFile(path, path.relative_to(root).as_posix(), 0, 0, problem)


def _inspect(path: Path, root: Path) -> LandedFile:
    if path.is_symlink():
        target = os.readlink(path)
        return _problem(path, root, f"symlink to {target!r} (symlinks are not followed)")
    if not path.resolve().is_relative_to(root):
        return _problem(path, root, "path resolves outside the landing dir")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return _problem(path, root, f"unsupported file type {path.suffix or '(none)'!r}; "
                                    f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    stat = path.stat()
    return LandedFile(path, path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns)


def read_landed_file(file: LandedFile, required: list[str], delimiter: str = ",") -> pl.DataFrame:
    """Read one landed file with its rows numbered from 1.

    CSV values stay text (the validation step casts them, row by row); Parquet keeps its types.

    Raises:
        BadFile: empty, not UTF-8, binary, wrong delimiter, corrupt or truncated Parquet, or a
            required column is missing.
    """
    if file.size == 0:
        raise BadFile("empty file (0 bytes)")
    if file.path.suffix.lower() == ".parquet":
        frame = _read_parquet(file.path)
    else:
        frame = _read_csv(file.path, delimiter)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        hint = _delimiter_hint(frame.columns, delimiter)
        raise BadFile(f"missing required column(s) {', '.join(missing)}{hint}")
    return frame.with_columns(
        pl.lit(file.relpath).alias(SOURCE_FILE),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW_NUMBER),
    )


def _read_parquet(path: Path) -> pl.DataFrame:
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(-4, os.SEEK_END)
        tail = handle.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise BadFile("not a Parquet file, or truncated (missing PAR1 magic bytes)")
    try:
        return pl.read_parquet(path)
    except Exception as error:  # polars raises several types for corrupt files
        raise BadFile(f"corrupt Parquet: {_one_line(error)}") from None


def _read_csv(path: Path, delimiter: str) -> pl.DataFrame:
    with path.open("rb") as handle:
        sample = handle.read(64 * 1024)
    if b"\x00" in sample:
        raise BadFile("not a CSV file (binary content)")
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(sample) - 4:  # a cut multi-byte character at the end is fine
            raise BadFile(f"not UTF-8 text (invalid byte at offset {error.start})") from None
    try:
        frame = pl.read_csv(path, separator=delimiter, infer_schema=False, encoding="utf8",
                            truncate_ragged_lines=False)
    except pl.exceptions.NoDataError:
        raise BadFile("empty file (no header)") from None
    except pl.exceptions.PolarsError as error:  # too many fields, or bad bytes further in
        message = _one_line(error)
        if "utf-8" in message.lower() or "utf8" in message.lower():
            raise BadFile("not UTF-8 text") from None
        return _read_ragged_csv(path, delimiter, message)
    if _has_short_rows(path, delimiter, len(frame.columns)):
        return _read_ragged_csv(path, delimiter, "rows with too few fields")
    header = csv_header(path, delimiter)
    if header is not None and len(header) == len(frame.columns) and header != frame.columns:
        frame.columns = header  # polars keeps a header's escaped quotes doubled (`a""b`)
    return frame


def csv_header(path: Path, delimiter: str) -> list[str] | None:
    """The column names of a CSV file as written, quoting undone (None: no readable header).

    Read with Python's csv module: polars leaves the doubled quotes of a quoted header field in
    the name (`"a""b"` becomes `a""b`, not `a"b`), so such a column would never be found.
    """
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle, delimiter=delimiter), None)
    except (UnicodeDecodeError, csv.Error):
        return None


def _has_short_rows(path: Path, delimiter: str, width: int) -> bool:
    """Whether some line has fewer delimiters than the header (polars pads those with nulls).

    Counting delimiters ignores quoting, so a quoted delimiter only sends the file down the
    exact (slower) path; it never hides a short row.
    """
    lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None,
                        infer_schema=False, new_columns=["line"], truncate_ragged_lines=True)
    body = lines["line"].slice(1).drop_nulls().str.strip_chars_end("\r")
    counts = body.filter(body != "").str.count_matches(delimiter, literal=True)
    return bool((counts < width - 1).any())


def _read_ragged_csv(path: Path, delimiter: str, first_error: str) -> pl.DataFrame:
    """Slow path for a CSV whose rows have a varying number of fields.

    Rows with the wrong field count are kept with the marker column `_field_count` so
    validation rejects them with a reason instead of losing the whole file.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise BadFile("empty file (no header)")
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise BadFile(f"not UTF-8 text (invalid byte at offset {error.start})") from None
    except csv.Error as error:
        raise BadFile(f"unreadable CSV: {error} (polars: {first_error})") from None
    width = len(header)
    columns = {
        name: [row[i] if len(row) == width and row[i] != "" else None for row in rows]
        for i, name in enumerate(header)
    }
    columns["_field_count"] = [len(row) for row in rows]
    return pl.DataFrame(columns, schema={**dict.fromkeys(header, pl.String),
                                         "_field_count": pl.Int64})


def _delimiter_hint(columns: list[str], delimiter: str) -> str:
    if len(columns) == 1:
        for other in (";", "\t", "|", ","):
            if other != delimiter and other in columns[0]:
                return f" (the header looks {other!r}-separated, expected {delimiter!r})"
    return ""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
