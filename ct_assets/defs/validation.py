"""Validation stage: candidate vs champion on the same holdout, and the blocking gate."""

import datetime as dt
import math
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import polars as pl

from ct_assets.defs.metadata import CHANGE_POINT_TAG
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.defs.runs import duckdb_slot, materialization_in_runs, run_lineage
from ct_assets.lib.candidate import EVALUATION_DIR, judge_candidate
from ct_assets.lib.config import Config
from ct_assets.lib.evaluation import (
    OPERATING_THRESHOLD,
    bootstrap_interval,
    calibration_table,
    slice_metrics,
)
from ct_assets.lib.features import feature_schema
from ct_assets.lib.inline_charts import holdout_svg, svg_markdown
from ct_assets.lib.model_store import ModelStore, ModelStoreError
from ct_assets.lib.partition_figures import rounded
from ct_assets.lib.reports import comparison_chart_png, markdown_image, markdown_table
from ct_assets.lib.serving import canary_problems, load_verified, schema_problems
from ct_assets.lib.training import SPEC_FILE, load_model
from ct_assets.lib.training_set import SPLIT
from ct_assets.lib.warehouse import quote_identifier

CANARY_ROWS = 256


def build_validation_assets(config: Config) -> list[dg.AssetsDefinition]:
    """The `validation_report` asset with its blocking `gate` check."""
    dataset, gate = config.dataset, config.gate
    target, task = dataset.target, dataset.task
    assert target is not None

    @dg.asset(
        deps=["candidate_model", "training_set"], group_name="validation",
        # No pool on the step: the canary and the bootstrap take a while; the step holds
        # `duckdb` only while it reads the holdout and while it writes the report.
        kinds={"duckdb", "matplotlib"},
        check_specs=[dg.AssetCheckSpec(
            "gate", asset="validation_report", blocking=True,
            description="Blocks promotion unless the candidate's gate metric is finite, at "
                        "least gate.min_value, not worse than the champion's by more than "
                        "gate.max_regression, its feature schema matches serving and the "
                        "stored artifact reproduces its predictions in a fresh process.")],
        metadata={"dagster/table_name": "warehouse.main.validation_report"},
    )
    def validation_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                          model_store: ModelStoreResource):
        """Candidate and champion scored on the same holdout, side by side, with the verdict.

        Metrics for the task, per-segment slices, a calibration table, a bootstrap interval of
        the gate metric and a chart; written to DuckDB and shown here as Markdown. The
        candidate is the one `candidate_model` trained in this run (or the run it re-executes);
        only when this run trained none, the latest candidate, and the report says so. When the
        champion cannot be loaded, the candidate is refused unless `gate.on_champion_error` is
        `approve`. The verdict is sealed in the model store, with this run's id.
        """
        store = model_store.get()
        version, source = candidate_of_run(context)
        candidate, manifest = load_verified(store, version,
                                            evaluated_part(store.describe(version)))
        with duckdb_slot(context):
            holdout = warehouse.get().query(
                f"SELECT * FROM training_set WHERE {quote_identifier(SPLIT)} = ? "
                f"ORDER BY {quote_identifier(dataset.timestamp)}", ["holdout"])
        # The deployable (refitted) model must match serving's schema and reproduce its own
        # scores when loaded from disk in a fresh process.
        problems = schema_problems(manifest, feature_schema(config))
        deployable = load_model(store.path(version))  # its files were verified just above
        canary = holdout.head(CANARY_ROWS)
        problems += canary_problems(store, version, canary, deployable.predict(canary))
        champion = store.deployed()
        champion_model, champion_threshold, unscored = None, None, []
        if champion:
            try:
                judged_as = evaluated_version(store, champion["version"])
                champion_model, champion_manifest = load_verified(
                    store, judged_as, evaluated_part(store.describe(judged_as)))
                champion_threshold = _threshold(champion_manifest)
                if judged_as != champion["version"]:
                    unscored.append(f"champion {champion['version']} is an online update that "
                                    f"learned the holdout; it is judged as {judged_as}, the "
                                    "batch model it continues, fitted without the holdout")
            except (ModelStoreError, OSError, ValueError, KeyError) as error:
                if gate.on_champion_error == "refuse":
                    problems.append(f"champion {champion['version']} could not be loaded, so "
                                    "the candidate cannot be compared with it and is refused "
                                    f"(gate.on_champion_error: refuse): {error}")
                else:
                    unscored.append(f"champion {champion['version']} could not be scored, so "
                                    "the candidate is judged on gate.min_value alone "
                                    f"(gate.on_champion_error: approve): {error}")
        judged = judge_candidate(holdout, candidate, _threshold(manifest), champion_model,
                                 champion_threshold, config, problems,
                                 after_change=CHANGE_POINT_TAG in context.run.tags)
        decision, y, scores, metrics = judged.decision, judged.y, judged.scores, judged.metrics
        holdout, notes = judged.holdout, [*source.notes, *unscored, *judged.notes]
        thresholds = {"candidate": _threshold(manifest), "champion": champion_threshold}
        intervals = {role: bootstrap_interval(y, values, task, gate.metric,
                                              seed=config.training.seed)
                     for role, values in scores.items()}
        segments = (holdout[dataset.segment].to_numpy() if dataset.segment
                    else np.full(len(y), "all"))
        slices = {role: slice_metrics(y, values, segments, task, thresholds[role])
                  for role, values in scores.items()}
        store.record_decision(version, {
            "approved": decision.approved, "reasons": decision.reasons, "metric": gate.metric,
            "candidate_value": decision.candidate_value,
            "champion_value": decision.champion_value,
            "champion_version": champion["version"] if champion else None,
            "metrics": metrics["candidate"], "notes": notes,
            "run_id": context.run.run_id, "candidate_from_run": source.run_id,
        })
        with duckdb_slot(context):
            _write_report(warehouse, version, champion, metrics, slices)
        labels = {"candidate": f"candidate {version}",
                  "champion": f"champion {champion['version']}" if champion else "champion"}
        chart = comparison_chart_png(y, {labels[r]: s for r, s in scores.items()}, task)
        report = _markdown(version, champion, decision.summary(), notes, metrics, intervals,
                           slices, y, scores, task, gate.metric, chart)
        values = {role: metrics[role].get(str(gate.metric), math.nan) for role in scores}
        picture = svg_markdown(
            holdout_svg(y, scores, task, values, str(gate.metric)),  # n/a when not finite
            "holdout comparison", f"{'ROC' if task == 'binary' else gate.metric} on the same "
            f"{len(y)} holdout rows")
        yield dg.MaterializeResult(metadata={
            "holdout_chart": dg.MetadataValue.md(picture),
            "candidate_version": version,
            "candidate_from_run": source.run_id,
            "champion_version": champion["version"] if champion else "none",
            "verdict": decision.summary(),
            "holdout_rows": len(y),
            # Shown rounded (NaN and infinities as None); DuckDB and decision.json keep them whole.
            **rounded({f"candidate_{k}": v for k, v in metrics["candidate"].items()}),
            **rounded({f"champion_{k}": v for k, v in metrics.get("champion", {}).items()}),
            "report": dg.MetadataValue.md(report),
        })
        yield dg.AssetCheckResult(
            check_name="gate", passed=decision.approved,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=rounded({"observed": decision.candidate_value,
                              "threshold": gate.min_value,
                              "champion_value": decision.champion_value,
                              "max_regression": gate.max_regression, "metric": gate.metric,
                              "candidate_version": version,
                              "verdict": decision.summary()}),
        )

    return [validation_report]


@dataclass
class CandidateSource:
    """Which run trained the candidate a validation judges, and what the report should say."""

    run_id: str
    notes: list[str] = field(default_factory=list)


def candidate_of_run(context: dg.AssetExecutionContext) -> tuple[str, CandidateSource]:
    """The candidate version `candidate_model` produced in this run or the run it re-executes.

    Never "the latest candidate" while this run trained one: another retrain may have trained
    a newer one meanwhile. Only a run that trained none (`validation_report` materialized on
    its own) validates the latest candidate, and says so.

    Raises:
        dg.Failure: no candidate was ever trained.
    """
    lineage = run_lineage(context)
    found = materialization_in_runs(context.instance, "candidate_model", lineage)
    if found is not None and found[1].get("version"):
        return str(found[1]["version"]), CandidateSource(found[0])
    event = context.instance.get_latest_materialization_event(dg.AssetKey("candidate_model"))
    entry = (event.asset_materialization.metadata.get("version")
             if event is not None and event.asset_materialization is not None else None)
    if event is None or entry is None:
        raise dg.Failure("no candidate_model materialization found; train a candidate first")
    return str(entry.value), CandidateSource(event.run_id, [
        f"candidate_model was not materialized in this run; validating the latest candidate, "
        f"{entry.value}, trained by run {event.run_id}"])


def evaluated_version(store: ModelStore, version: str) -> str:
    """The version whose evaluation model stands for `version` on a holdout.

    Itself, unless it is an online update (it learned the newest partitions, the holdout's):
    then the batch version its updates continue.
    """
    seen = set()
    while version not in seen:
        seen.add(version)
        manifest = store.describe(version)
        if manifest.get("reason") != "online" or not manifest.get("parent"):
            return version
        version = manifest["parent"]
    return version


def evaluated_part(manifest: dict) -> str | None:
    """The model of a version that is judged on a holdout (None: the deployable one).

    That is its evaluation model, fitted without the holdout, when it has one; versions made
    before models were refitted hold only one model.
    """
    files = manifest.get("files") or {}
    return EVALUATION_DIR if f"{EVALUATION_DIR}/{SPEC_FILE}" in files else None


def _threshold(manifest: dict) -> float:
    return manifest.get("operating_threshold") or OPERATING_THRESHOLD


def _write_report(warehouse: WarehouseResource, version: str, champion: dict | None,
                  metrics: dict, slices: dict) -> None:
    evaluated_at = dt.datetime.now(dt.UTC)
    rows = []
    for role, values in metrics.items():
        model = version if role == "candidate" else (champion or {}).get("version")
        rows += [{"role": role, "model_version": model, "segment": "all", "metric": k,
                  "value": v} for k, v in values.items()]
        for segment in slices[role]:
            rows += [{"role": role, "model_version": model, "segment": segment["segment"],
                      "metric": k, "value": v} for k, v in segment.items()
                     if k not in ("segment", "rows")]
    frame = pl.DataFrame(rows).with_columns(
        pl.lit(version).alias("candidate_version"), pl.lit(evaluated_at).alias("evaluated_at"))
    with warehouse.get().connect() as connection:
        connection.register("incoming", frame.to_arrow())
        # One transaction: a failure between the delete and the insert must not lose the
        # candidate's previous report.
        connection.execute("BEGIN TRANSACTION")
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS validation_report AS "
                               "SELECT * FROM incoming LIMIT 0")
            connection.execute("DELETE FROM validation_report WHERE candidate_version = ?",
                               [version])
            connection.execute("INSERT INTO validation_report BY NAME SELECT * FROM incoming")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


def _markdown(version, champion, verdict, notes, metrics, intervals, slices, y, scores, task,
              metric, chart) -> str:
    roles = list(metrics)
    table = pl.DataFrame({"metric": list(metrics["candidate"]),
                          **{role: list(metrics[role].values()) for role in roles}})
    ci = ", ".join(f"{role} [{low:.4f}, {high:.4f}]"
                   for role, (low, high) in intervals.items())
    lines = [f"## {verdict}", "",
             f"Candidate `{version}` vs champion "
             f"`{champion['version'] if champion else 'none (first model)'}` on the same "
             f"holdout of {len(y)} rows.", "", *[f"> {note}" for note in notes], "",
             markdown_table(table, 20), "", f"95% bootstrap interval of {metric}: {ci}", "",
             markdown_image(chart, "holdout comparison"), "", "### Per segment (candidate)",
             markdown_table(pl.DataFrame(slices["candidate"]), 30)]
    if task == "binary":
        lines += ["", "### Calibration (candidate)",
                  markdown_table(calibration_table(y, scores["candidate"]), 10)]
    return "\n".join(lines)
