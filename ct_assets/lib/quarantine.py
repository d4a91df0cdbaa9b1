"""The quarantine: rejected rows and files, recorded with their reason, never silently dropped.

Kept as files under `<storage>/quarantine/` (not in DuckDB) so `ct quarantine` can read it while
a run holds the warehouse lock. Layout, each rewritten whole so re-ingesting is idempotent:
- `rows/partition=<key>.parquet`: rejected rows that belong to a partition;
- `rows/file=<id>.parquet`: rejected rows of a file whose timestamp is unusable (no partition);
- `files/<id>.json`: a file rejected whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from ct_assets.lib.files import ROW_NUMBER, SOURCE_FILE, LandedFile
from ct_assets.lib.validation import CHECK, PARTITION, REASON, REJECTED_SCHEMA


@dataclass(frozen=True)
class RejectedFile:
    """A landed file rejected whole."""

    source_file: str
    reason: str
    size: int
    detected_at: str


def _file_id(relpath: str) -> str:
    return hashlib.sha256(relpath.encode()).hexdigest()[:16]


def _safe_key(partition_key: str) -> str:
    return partition_key.replace(":", "")


def _atomic_write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(temporary)
    os.replace(temporary, path)


class Quarantine:
    """Records of what ingestion rejected, under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def replace_partition_rows(self, partition_keys: list[str], rejected: pl.DataFrame) -> None:
        """Make the recorded rejected rows of each partition in `partition_keys` exactly these."""
        for key in partition_keys:
            rows = rejected.filter(pl.col(PARTITION) == key)
            self._replace(self.directory / "rows" / f"partition={_safe_key(key)}.parquet", rows)

    def replace_unplaced_rows(self, source_file: str, rejected: pl.DataFrame) -> None:
        """Record the rows of `source_file` that have no usable timestamp (or none)."""
        self._replace(self.directory / "rows" / f"file={_file_id(source_file)}.parquet", rejected)

    def _replace(self, path: Path, rows: pl.DataFrame) -> None:
        if rows.is_empty():
            path.unlink(missing_ok=True)
        else:
            _atomic_write_parquet(rows.cast(REJECTED_SCHEMA), path)  # type: ignore[arg-type]

    def reject_file(self, source_file: str, reason: str, size: int) -> RejectedFile:
        """Record that `source_file` was rejected whole (dropping rows recorded for it unplaced)."""
        self.replace_unplaced_rows(source_file, pl.DataFrame(schema=REJECTED_SCHEMA))
        record = RejectedFile(source_file, reason, size, dt.datetime.now(dt.UTC).isoformat())
        path = self.directory / "files" / f"{_file_id(source_file)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(record)), encoding="utf-8")
        os.replace(temporary, path)
        return record

    def clear_file(self, source_file: str) -> None:
        """Forget a whole-file rejection (the file is readable now)."""
        (self.directory / "files" / f"{_file_id(source_file)}.json").unlink(missing_ok=True)

    def forget_missing_files(self, present: list[str]) -> None:
        """Drop whole-file rejections and unplaced rows of files no longer in the landing dir."""
        keep = set(present)
        for record in self.rejected_files():
            if record.source_file not in keep:
                self.clear_file(record.source_file)
        kept_ids = {_file_id(source_file) for source_file in keep}
        for path in (self.directory / "rows").glob("file=*.parquet"):
            if path.stem.removeprefix("file=") not in kept_ids:
                path.unlink(missing_ok=True)

    def record_scan(self, partition_keys: list[str], rejected: pl.DataFrame,
                    good_files: list[str], present_files: list[str],
                    rejected_files: list[tuple[LandedFile, str]]) -> None:
        """Make the records of one scan of a landing dir over `partition_keys` exactly these.

        Rejected rows with a partition replace those of their partition; rows without one
        (no usable time) replace those of their file, for every file read; files rejected
        whole are recorded, files readable again forgotten, files gone from the dir dropped.
        """
        placed = rejected.filter(pl.col(PARTITION).is_not_null())
        unplaced = rejected.filter(pl.col(PARTITION).is_null())
        self.replace_partition_rows(partition_keys, placed)
        for source_file in good_files:
            self.clear_file(source_file)
            self.replace_unplaced_rows(source_file,
                                       unplaced.filter(pl.col(SOURCE_FILE) == source_file))
        self.forget_missing_files(present_files)
        for file, reason in rejected_files:
            self.reject_file(file.relpath, reason, file.size)

    def rejected_rows(self) -> pl.DataFrame:
        """Every recorded rejected row."""
        files = sorted((self.directory / "rows").glob("*.parquet"))
        if not files:
            return pl.DataFrame(schema=REJECTED_SCHEMA)
        return pl.concat([pl.read_parquet(f) for f in files]).sort(SOURCE_FILE, ROW_NUMBER)

    def rejected_files(self) -> list[RejectedFile]:
        """Every file rejected whole."""
        paths = sorted((self.directory / "files").glob("*.json"))
        records = [RejectedFile(**json.loads(p.read_text(encoding="utf-8"))) for p in paths]
        return sorted(records, key=lambda record: record.source_file)

    def entries(self) -> list[dict[str, object]]:
        """What was rejected, one entry per file and reason kind.

        Each entry has `source_file`, `check`, `reason` (the first example), `rows` (null for a
        whole file), `partition` and `row_numbers` (up to 10).
        """
        entries: list[dict[str, object]] = [
            {"source_file": r.source_file, "check": "bad_file", "reason": r.reason, "rows": None,
             "partition": None, "row_numbers": [], "detected_at": r.detected_at}
            for r in self.rejected_files()
        ]
        grouped = (
            self.rejected_rows()
            .group_by(SOURCE_FILE, PARTITION, CHECK, maintain_order=True)
            .agg(pl.col(REASON).first(), pl.len().alias("rows"),
                 pl.col(ROW_NUMBER).head(10).alias("row_numbers"))
        )
        entries += [
            {"source_file": row[SOURCE_FILE], "check": row[CHECK], "reason": row[REASON],
             "rows": row["rows"], "partition": row[PARTITION], "row_numbers": row["row_numbers"]}
            for row in grouped.iter_rows(named=True)
        ]
        return entries
