"""Helpers that turn lib results into Dagster metadata and check results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import dagster as dg
import polars as pl

from ct_assets.lib.partition_figures import rounded, span
from ct_assets.lib.quality import CheckOutcome
from ct_assets.lib.reports import markdown_table

_TABLE_TYPES = {pl.Float64: "float", pl.Float32: "float", pl.Int64: "int", pl.Int32: "int",
                pl.Int8: "int", pl.Boolean: "bool", pl.String: "string"}


def column_schema(frame: pl.DataFrame, descriptions: dict[str, str] | None = None
                  ) -> dg.TableSchema:
    """The frame's columns as a Dagster table schema."""
    notes = descriptions or {}
    return dg.TableSchema(columns=[
        dg.TableColumn(name, _TABLE_TYPES.get(dtype, str(dtype)), description=notes.get(name))
        for name, dtype in frame.schema.items()
    ])


def frame_metadata(frame: pl.DataFrame, preview_rows: int = 5) -> dict[str, object]:
    """Row count, column schema and a small preview: what every table asset reports."""
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": column_schema(frame),
        "preview": dg.MetadataValue.md(markdown_table(frame, preview_rows)),
    }


def check_result(outcome: CheckOutcome, asset: str) -> dg.AssetCheckResult:
    """A check result carrying the observed value and the threshold."""
    severity = dg.AssetCheckSeverity.WARN if outcome.warn_only else dg.AssetCheckSeverity.ERROR
    metadata: dict[str, object] = {"observed": outcome.observed, "threshold": outcome.threshold}
    for key, value in outcome.details.items():
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
    return dg.AssetCheckResult(
        asset_key=asset, check_name=outcome.name, passed=outcome.passed,
        severity=severity, metadata=metadata,
    )


def range_check_results(outcomes: list[CheckOutcome], asset: str, keys: list[str]
                        ) -> list[dg.AssetCheckResult]:
    """Check results of checks judged once over the run's partitions, which they name.

    A range run evaluates each check once over all its partitions: `judged_partitions` says
    which, so a verdict is not read as one partition's. Floats keep four significant digits.
    """
    judged = span(keys)
    return [check_result(replace(outcome, observed=rounded(outcome.observed),
                                 details={**rounded(outcome.details),
                                          "judged_partitions": judged}), asset)
            for outcome in outcomes]


def record_partition_metadata(context: dg.AssetExecutionContext,
                              figures: Mapping[str, Mapping[str, object]]) -> None:
    """Put each partition's own figures on that partition's materialization of this run.

    A run over a range materializes every partition of it from one `MaterializeResult`, whose
    metadata every partition shares; the figures given here (partition key → metadata) are
    added to one partition's event alone and take precedence over the shared entries of the
    same name. Floats keep four significant digits.
    """
    for key, values in figures.items():
        context.add_asset_metadata(rounded(dict(values)), partition_key=key)


REASON_TAG = "ct/reason"  # why a retrain run was launched: drift, performance, freshness, …
# The first partition of the change a drift or performance retrain answers: the retrain
# emphasises the rows from there on, and takes its drift reference from them.
CHANGE_POINT_TAG = "ct/change_point"


def latest_metadata(context: dg.AssetExecutionContext, asset: str, key: str) -> object | None:
    """A metadata value of the latest materialization of `asset`, or None.

    This is how assets learn what an upstream asset produced (e.g. the candidate's version)
    without passing values through an IO manager.
    """
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    entry = event.asset_materialization.metadata.get(key)
    return None if entry is None else entry.value
