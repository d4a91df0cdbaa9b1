"""Ingestion stage: landed files → `raw_events` in DuckDB, with quarantine and quality checks."""

import time
from functools import partial

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import (
    frame_metadata,
    range_check_results,
    record_partition_metadata,
)
from ct_assets.defs.resources import QuarantineResource, WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.config import Config
from ct_assets.lib.features import key_window
from ct_assets.lib.ingest import (
    FileCatalog,
    IngestResult,
    ingest_window,
    merge_results,
    partition_keys,
    plan_chunks,
)
from ct_assets.lib.partition_figures import (
    counts_by_partition,
    null_rates,
    span,
    split_by_partition,
)
from ct_assets.lib.quality import RAW_EVENTS_CHECKS, check_raw_events
from ct_assets.lib.reports import markdown_table
from ct_assets.lib.schema import bind_schema
from ct_assets.lib.validation import PARTITION


def build_ingest_assets(
    config: Config, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The `raw_events` asset for this configuration.

    With `dataset.columns` left out and no schema pinned when the definitions loaded, the
    first `raw_events` run infers and pins it (`bind_schema`), so the definitions load before
    any file has landed; the later steps of that run read the same columns.
    """

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
    @holds_warehouse
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
        still land. A range of partitions is read in chunks of whole partitions whose files
        hold about `CHUNK_BYTES` (`plan_chunks`), staged and replaced in one transaction
        (`replace_range_chunks`), so a run's memory does not grow with its range.

        Each partition's materialization carries its own rows, quarantined rows and null
        rates; the `run_*` entries describe the run's scan as a whole, and the checks judge
        all the run's partitions at once (named in their `judged_partitions`). Columns of a
        file that the schema does not have are left out, named in `run_unknown_columns` and a
        warning; its rows still land.
        """
        if config.dataset.schema_pending:
            bind_schema(config)
            context.log.info(f"dataset.columns: the schema pinned in "
                             f"{config.dataset.columns_pinned_in} (inferred from the landed "
                             "files after these definitions loaded)")
        dataset = config.dataset
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        catalog = FileCatalog(config.landing_catalog_path)
        store = warehouse.get()
        results: list[IngestResult] = []
        figures: dict[str, dict[str, object]] = {}

        def ingest(chunk: list[str]) -> pl.DataFrame:
            found = ingest_window(config, *key_window(config, chunk), catalog)
            figures.update(_partition_figures(config, chunk, found.rows, found.rejected_rows))
            rows, found.rows = found.rows, pl.DataFrame()  # not held after it is written
            results.append(found)
            return rows

        chunks = plan_chunks(config, catalog, keys)
        began = time.perf_counter()
        store.replace_range_chunks("raw_events", [partial(ingest, chunk) for chunk in chunks],
                                   dataset.timestamp, window.start, window.end)
        result = merge_results(results)
        written = time.perf_counter() - began - result.timings.get("read_validate_s", 0.0)
        quarantine.get().record_scan(
            keys, pl.concat([result.rejected_rows, *result.unplaced_rows.values()]),
            result.good_files, result.present_files, result.rejected_files)
        for file, reason in result.rejected_files:
            context.log.warning(f"quarantined file {file.relpath}: {reason}")
        for relpath, names in result.unknown_columns.items():
            context.log.warning(f"file {relpath}: column(s) {', '.join(names)} not in the "
                                f"schema ({_schema_origin(config)}): left out, its rows land")
        catalog.save()
        unplaced_count = sum(frame.height for frame in result.unplaced_rows.values())
        outcomes = check_raw_events(store, config, window.start, window.end,
                                    result.rejected_rows.height + unplaced_count)
        record_partition_metadata(context, figures)
        # Shared by every partition of the run: what the scan read and rejected as a whole.
        return dg.MaterializeResult(
            metadata={
                "run_partitions": span(keys),
                "run_unplaced_rows": unplaced_count,
                "run_rejected_files": len(result.rejected_files),
                "run_files_read": result.files_read,
                "run_files_skipped": result.files_skipped,
                "run_chunks": len(chunks),
                "run_rejected": dg.MetadataValue.md(_rejections(result)),
                "run_files_with_unknown_columns": len(result.unknown_columns),
                "run_unknown_columns": dg.MetadataValue.md(_unknown_columns(result)),
                "schema_source": _schema_origin(config),
                "read_validate_seconds": round(result.timings["read_validate_s"], 3),
                "write_seconds": round(written, 3),
            },
            check_results=range_check_results(outcomes, "raw_events", keys),
        )

    return [raw_events]


def _partition_figures(config: Config, keys: list[str], rows: pl.DataFrame,
                       rejected: pl.DataFrame) -> dict[str, dict[str, object]]:
    """Each partition's own rows, quarantined rows and null rates (the target not counted)."""
    columns = [name for name in config.dataset.column_types() if name != config.dataset.target]
    quarantined = counts_by_partition(rejected, keys)

    def figures(key: str, landed: pl.DataFrame) -> dict[str, object]:
        rates = null_rates(landed, columns)
        refused = quarantined[key]
        return {**frame_metadata(landed.drop(PARTITION)),
                "quarantined_rows": refused,
                "quarantine_share": refused / (landed.height + refused) if refused else 0.0,
                "max_null_rate": max(rates.values(), default=0.0),
                "null_rates": rates}

    return {key: figures(key, landed) for key, landed in split_by_partition(rows, keys).items()}


def _schema_origin(config: Config) -> str:
    """Where the columns come from: the pinned schema file, or `ct.yaml`."""
    pinned = config.dataset.columns_pinned_in
    return f"pinned in {pinned}" if pinned else f"declared in {config.path or 'ct.yaml'}"


def _unknown_columns(result: IngestResult) -> str:
    """A Markdown table of the files read with columns the schema does not have."""
    if not result.unknown_columns:
        return "Every file read has only the schema's columns."
    table = pl.DataFrame({"source_file": list(result.unknown_columns),
                          "columns not in the schema (left out)": [
                              ", ".join(names) for names in result.unknown_columns.values()]})
    return markdown_table(table, max_rows=50)


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
