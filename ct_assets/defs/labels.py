"""Labels stage: label files → `labels` in DuckDB, joined to their rows by id, with checks."""

from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import range_check_results, record_partition_metadata
from ct_assets.defs.resources import QuarantineResource, WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import FileCatalog, partition_keys
from ct_assets.lib.labels import (
    KNOWN_AT,
    LABEL_CHECKS,
    LABELLED_PARTITION,
    count_by_check,
    match_labels,
    read_labels,
)
from ct_assets.lib.partition_figures import span, split_by_partition
from ct_assets.lib.quality import CheckOutcome
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.served import logged_rows
from ct_assets.lib.validation import CHECK, PARTITION
from ct_assets.lib.warehouse import quote_identifier

LABELS_FOLDER = "labels"  # label rejections live in `<quarantine>/labels/`


def build_label_assets(config: Config, partitions_def: dg.PartitionsDefinition
                       ) -> list[dg.AssetsDefinition]:
    """The `labels` asset, when labels land apart from their rows (`dataset.labels`)."""
    dataset = config.dataset
    if dataset.labels is None:
        return []
    key, target = str(dataset.id), str(dataset.target)

    @dg.asset(
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep("raw_events", partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-config.triggers.label_delay,
            allow_nonexistent_upstream_partitions=True))],
        group_name="ingestion",
        kinds={"duckdb", "polars"},
        pool="duckdb",
        check_specs=[dg.AssetCheckSpec(name, asset="labels", description=text)
                     for name, text in LABEL_CHECKS.items()],
        metadata={"dagster/table_name": "warehouse.main.labels"},
    )
    @holds_warehouse
    def labels(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
               quarantine: QuarantineResource) -> dg.MaterializeResult:
        """Labels that became known in each partition, joined to their rows by id.

        Partitioned by when a label became known (`known_at`, else its file's modification
        time), so a label landing today belongs to today whatever day its row is from; the
        row's partition is kept as `labelled_partition`. A label's row is a landed row or one
        `ct serve` answered (`served_predictions`; its labels come from `POST /feedback`).
        Bad labels are quarantined with a reason (null, wrong type, unknown id, known before
        its row, duplicate, conflicting);
        the good labels of the same file still land. Performance monitoring and training use
        the labels known by then. Each partition's materialization carries its own labels,
        the partitions of their rows and its rejections; the checks judge all the run's
        partitions at once (named in their `judged_partitions`).
        """
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        catalog = FileCatalog(config.labels_catalog_path)
        batch = read_labels(config, window.start, window.end, catalog)
        store = warehouse.get()
        stored, served = store.table_exists("labels"), store.table_exists("served_predictions")
        with store.connect() as connection:
            connection.register("incoming", batch.labels.select(key).unique().to_arrow())
            quoted_key, known_at = quote_identifier(key), quote_identifier(KNOWN_AT)
            columns = (f"r.{quoted_key}, r.{quote_identifier(PARTITION)}, "
                       f"r.{quote_identifier(str(dataset.timestamp))}")
            rows = connection.execute(f"SELECT {columns} FROM raw_events r "
                                      f"SEMI JOIN incoming USING ({quoted_key})").pl()
            if served:  # rows `ct serve` answered
                answered = connection.execute(
                    f"SELECT {columns} FROM served_predictions r "
                    f"SEMI JOIN incoming USING ({quoted_key})").pl()
                rows = pl.concat([rows, answered.cast({key: rows.schema[key]}, strict=False)
                                  .drop_nulls(key)], how="vertical_relaxed")
            earlier = connection.execute(
                f"SELECT l.* FROM labels l SEMI JOIN incoming USING ({quoted_key}) "
                f"WHERE l.{known_at} < ? OR l.{known_at} >= ?", [window.start, window.end]
            ).pl() if stored else pl.DataFrame(
                schema={key: batch.labels.schema[key], target: batch.labels.schema[target],
                        "_source_file": pl.String, "_row_number": pl.Int64})
        # Rows the server logged that the serving sensor has not taken in yet.
        logged = logged_rows(config.serving_dir, config, batch.labels[key])
        rows = pl.concat([rows, logged.cast(dict(rows.schema))], how="vertical_relaxed")
        accepted, unmatched = match_labels(batch.labels, rows, earlier, config)
        store.replace_range("labels", accepted, KNOWN_AT, window.start, window.end)
        rejected = pl.concat([batch.rejected_rows, unmatched])
        Quarantine(Path(quarantine.directory) / LABELS_FOLDER).record_scan(
            keys, rejected, batch.good_files, batch.present_files, batch.rejected_files)
        for file, reason in batch.rejected_files:
            context.log.warning(f"quarantined label file {file.relpath}: {reason}")
        catalog.save()
        counts = count_by_check(rejected)
        outcomes = [CheckOutcome(name, counts[name] == 0, counts[name], 0, warn_only=True)
                    for name in LABEL_CHECKS]
        record_partition_metadata(context, _partition_figures(keys, accepted, rejected))
        # Shared by every partition of the run: what it read and could not place.
        return dg.MaterializeResult(
            metadata={
                "run_partitions": span(keys),
                "run_unplaced_labels": rejected.filter(pl.col(PARTITION).is_null()).height,
                "run_rejected_files": len(batch.rejected_files),
                "run_files_read": batch.files_read,
            },
            check_results=range_check_results(outcomes, "labels", keys),
        )

    return [labels]


def _partition_figures(keys: list[str], accepted: pl.DataFrame, rejected: pl.DataFrame
                       ) -> dict[str, dict[str, object]]:
    """Each arrival partition's labels, the partitions of their rows, and its rejections."""
    refused = split_by_partition(rejected, keys)

    def figures(key: str, labels: pl.DataFrame) -> dict[str, object]:
        return {"dagster/row_count": labels.height, "labels": labels.height,
                "quarantined_labels": refused[key].height,
                "labelled_partitions": dict(labels.group_by(LABELLED_PARTITION).len()
                                            .sort(LABELLED_PARTITION).iter_rows()),
                "rejected_by_check": dict(refused[key].group_by(CHECK).len().sort(CHECK)
                                          .iter_rows())}

    return {key: figures(key, labels)
            for key, labels in split_by_partition(accepted, keys).items()}
