"""Labels stage: label files → `labels` in DuckDB, joined to their rows by id, with checks."""

from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import check_result
from ct_assets.defs.resources import QuarantineResource, WarehouseResource
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
from ct_assets.lib.quality import CheckOutcome
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.validation import PARTITION
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
    def labels(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
               quarantine: QuarantineResource) -> dg.MaterializeResult:
        """Labels that became known in each partition, joined to their rows by id.

        Partitioned by when a label became known (`known_at`, else its file's modification
        time), so a label landing today belongs to today whatever day its row is from; the
        row's partition is kept as `labelled_partition`. Bad labels are quarantined with a
        reason (null, wrong type, unknown id, known before its row, duplicate, conflicting);
        the good labels of the same file still land. Performance monitoring and training use
        the labels known by then.
        """
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        catalog = FileCatalog(config.labels_catalog_path)
        batch = read_labels(config, window.start, window.end, catalog)
        store = warehouse.get()
        stored = store.table_exists("labels")
        with store.connect() as connection:
            connection.register("incoming", batch.labels.select(key).unique().to_arrow())
            quoted_key, known_at = quote_identifier(key), quote_identifier(KNOWN_AT)
            rows = connection.execute(
                f"SELECT r.{quoted_key}, r.{quote_identifier(PARTITION)}, "
                f"r.{quote_identifier(str(dataset.timestamp))} FROM raw_events r "
                f"SEMI JOIN incoming USING ({quoted_key})").pl()
            earlier = connection.execute(
                f"SELECT l.* FROM labels l SEMI JOIN incoming USING ({quoted_key}) "
                f"WHERE l.{known_at} < ? OR l.{known_at} >= ?", [window.start, window.end]
            ).pl() if stored else pl.DataFrame(
                schema={key: batch.labels.schema[key], target: batch.labels.schema[target],
                        "_source_file": pl.String, "_row_number": pl.Int64})
        accepted, unmatched = match_labels(batch.labels, rows, earlier, config)
        store.replace_range("labels", accepted, KNOWN_AT, window.start, window.end)
        rejected = pl.concat([batch.rejected_rows, unmatched])
        Quarantine(Path(quarantine.directory) / LABELS_FOLDER).record_scan(
            keys, rejected, batch.good_files, batch.present_files, batch.rejected_files)
        for file, reason in batch.rejected_files:
            context.log.warning(f"quarantined label file {file.relpath}: {reason}")
        catalog.save()
        counts = count_by_check(rejected)
        by_partition = dict(accepted.group_by(LABELLED_PARTITION).len().sort(LABELLED_PARTITION)
                            .iter_rows())
        outcomes = [CheckOutcome(name, counts[name] == 0, counts[name], 0, warn_only=True)
                    for name in LABEL_CHECKS]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": accepted.height,
                "labels": accepted.height,
                "quarantined_labels": rejected.height,
                "rejected_files": len(batch.rejected_files),
                "files_read": batch.files_read,
                "labelled_partitions": dg.MetadataValue.json(by_partition),
                "rejected_by_check": dg.MetadataValue.json(
                    dict(rejected.group_by("check").len().iter_rows())),
            },
            check_results=[check_result(outcome, "labels") for outcome in outcomes],
        )

    return [labels]

