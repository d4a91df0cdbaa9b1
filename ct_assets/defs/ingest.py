"""Ingestion stage: landed files → `raw_events` in DuckDB, with quarantine and quality checks."""

import time

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import check_result, frame_metadata
from ct_assets.defs.resources import QuarantineResource, WarehouseResource
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import FileCatalog, IngestResult, ingest_window, partition_keys
from ct_assets.lib.quality import RAW_EVENTS_CHECKS, check_raw_events
from ct_assets.lib.reports import markdown_table
from ct_assets.lib.validation import PARTITION

MAX_PARTITIONS_LISTED = 31


def build_ingest_assets(
    config: Config, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The `raw_events` asset for this configuration."""
    dataset = config.dataset

    @dg.asset(
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="ingestion",
        kinds={"duckdb", "polars"},
        pool="duckdb",
        check_specs=[dg.AssetCheckSpec(name, asset="raw_events", description=text)
                     for name, text in RAW_EVENTS_CHECKS.items()],
        metadata={"dagster/table_name": "warehouse.main.raw_events"},
    )
    def raw_events(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        quarantine: QuarantineResource,
    ) -> dg.MaterializeResult:
        """Landed rows of each partition, typed and validated; bad rows and files quarantined.

        Reads every CSV/Parquet file under the landing dir that may hold rows of the partition
        (a file catalog skips the others), casts them to the declared types and replaces the
        partition in DuckDB in one transaction. Rejected rows and files are recorded in the
        quarantine with their reason, source file and row number; good rows of the same file
        still land. A range of partitions is one scan.
        """
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        catalog = FileCatalog(config.landing_catalog_path)
        result = ingest_window(config, window.start, window.end, catalog)
        rows = result.rows
        began = time.perf_counter()
        store = warehouse.get()
        store.replace_range("raw_events", rows, dataset.timestamp, window.start, window.end)
        written = time.perf_counter() - began
        quarantine.get().record_scan(
            keys, pl.concat([result.rejected_rows, *result.unplaced_rows.values()]),
            result.good_files, result.present_files, result.rejected_files)
        for file, reason in result.rejected_files:
            context.log.warning(f"quarantined file {file.relpath}: {reason}")
        catalog.save()
        unplaced_count = sum(frame.height for frame in result.unplaced_rows.values())
        outcomes = check_raw_events(store, config, window.start, window.end,
                                    result.rejected_rows.height + unplaced_count)
        per_partition = _per_partition(keys, rows, result.rejected_rows)
        return dg.MaterializeResult(
            metadata={
                **frame_metadata(rows.drop(PARTITION)),
                "partitions": len(keys),
                "quarantined_rows": result.rejected_rows.height,
                "unplaced_rows": unplaced_count,
                "rejected_files": len(result.rejected_files),
                "files_read": result.files_read,
                "files_skipped": result.files_skipped,
                # The same metadata is stored on every partition of a range run: keep the
                # per-partition table for short ranges only, or storage grows quadratically.
                **({"rows_by_partition": dg.MetadataValue.json(per_partition)}
                   if len(keys) <= MAX_PARTITIONS_LISTED else {}),
                "rejected": dg.MetadataValue.md(_rejections(result)),
                "read_validate_seconds": round(result.timings["read_validate_s"], 3),
                "write_seconds": round(written, 3),
            },
            check_results=[check_result(outcome, "raw_events") for outcome in outcomes],
        )

    return [raw_events]


def _per_partition(keys: list[str], rows: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    landed = dict(rows.group_by(PARTITION).len().iter_rows()) if rows.height else {}
    refused = dict(rejected.group_by(PARTITION).len().iter_rows()) if rejected.height else {}
    return {key: {"rows": landed.get(key, 0), "quarantined": refused.get(key, 0)} for key in keys}


def _rejections(result: IngestResult) -> str:
    """A Markdown table of what this run rejected: whole files, then rows by file and check."""
    files = [{"source_file": f.relpath, "check": "bad_file", "rows": "whole file",
              "reason": reason} for f, reason in result.rejected_files]
    rows = pl.concat([result.rejected_rows, *result.unplaced_rows.values()])
    grouped = (rows.group_by("_source_file", "check", maintain_order=True)
               .agg(pl.len().alias("rows"), pl.col("reason").first())
               .rename({"_source_file": "source_file"}))
    table = pl.DataFrame(files, schema={c: pl.String for c in ("source_file", "check", "rows",
                                                             "reason")})
    table = pl.concat([table, grouped.with_columns(pl.col("rows").cast(pl.String))])
    return markdown_table(table, max_rows=50) if table.height else "Nothing rejected."
