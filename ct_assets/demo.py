"""`ct demo`: the whole continuous-training loop on the simulator, with its timeline.

History lands and a first model is trained; then days with a drift injected on a known day
land, the drift is detected, a retrain is launched for it and the new model is promoted.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from ct_assets.lib import simulator
from ct_assets.lib.config import (
    Config,
    ConfigError,
    record_simulated_days,
    with_simulated_start,
)
from ct_assets.lib.files import discover
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.monitoring import drift_verdict
from ct_assets.lib.reports import text_table
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse, quote_identifier
from ct_assets.runner import format_summary, run_pipeline


def run_demo(config: Config, *, history_days: int = 30, drifted_days: int = 10,
             drift_after: int = 3, rows_per_day: int = 2000, kind: str = "covariate",
             progress: bool = True) -> str:
    """Land history, train, land drifted days, detect, retrain; return the report text."""
    if config.dataset.source != "simulator":
        raise ConfigError(f"{config.path}: `ct demo` needs dataset.source: simulator")
    today = dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=history_days + drifted_days - 1)
    drift_day = start + dt.timedelta(days=history_days + drift_after)
    scenario = simulator.DriftScenario(kind, drift_day)
    out = [f"1. history: {history_days} days from {start} ({rows_per_day} rows/day)"]
    labels = {"labels_dir": config.labels_dir, "label_delay": config.triggers.label_delay}
    fresh = not discover(config.landing_dir)
    simulator.write_days(config.landing_dir, start=start, days=history_days,
                         rows_per_day=rows_per_day, drift=scenario, **labels)
    record_simulated_days(config.storage_dir, start, today, fresh=fresh)
    config = with_simulated_start(config)  # partitions from the first simulated day
    first = run_pipeline(config, progress=progress)
    out += [format_summary(first), "",
            f"2. {drifted_days} more days up to today, {kind} drift injected from {drift_day}"]
    simulator.write_days(config.landing_dir, start=start + dt.timedelta(days=history_days),
                         days=drifted_days, rows_per_day=rows_per_day, drift=scenario,
                         **labels)
    second = run_pipeline(config, progress=progress)
    out += [text_table(second["runs"], ["job", "what", "success", "seconds"]), "",
            "3. timeline (metric: the realised "
            f"{config.gate.metric} of each day's predictions, measured once its labels are "
            f"known: {_label_note(config)})",
            text_table(timeline(config, drift_day), TIMELINE_COLUMNS), "",
            "4. models", text_table(model_history(config), MODEL_COLUMNS)]
    return "\n".join(out)


TIMELINE_COLUMNS = ["partition", "rows", "drifted_features", "drift_share", "metric",
                    "scored_by", "event"]
MODEL_COLUMNS = ["version", "reason", "promoted_at", "holdout_before", "holdout_after",
                 "status"]


def timeline(config: Config, drift_day: dt.date | None = None) -> list[dict]:
    """One row per partition: rows, drift, realised metric, scoring model, and events."""
    warehouse = Warehouse(config.warehouse_path)
    metric, partition = quote_identifier(str(config.gate.metric)), quote_identifier(PARTITION)
    rows = warehouse.query(f"SELECT {partition} AS partition, count(*) AS rows FROM raw_events "
                           "GROUP BY 1")
    reports = warehouse.query(
        f"SELECT {partition} AS partition, segment, feature, statistic, drifted "
        "FROM drift_report")
    verdicts = {key: drift_verdict(report, config) for (key,), report
                in reports.partition_by("partition", as_dict=True).items()}
    drift = pl.DataFrame(
        [{"partition": key, "drifted_features": len(verdict["drifted_features"]),
          "drift_share": verdict["drifted_share"], "drift_detected": verdict["drifted"]}
         for key, verdict in verdicts.items()],
        schema={"partition": pl.String, "drifted_features": pl.Int64,
                "drift_share": pl.Float64, "drift_detected": pl.Boolean})
    performance = warehouse.query(
        f"SELECT {partition} AS partition, {metric} AS metric FROM model_performance")
    scored = warehouse.query(
        f"SELECT {partition} AS partition, min(model_version) AS scored_by FROM predictions "
        "GROUP BY 1")
    table = (rows.join(drift, on="partition", how="left")
             .join(performance, on="partition", how="left")
             .join(scored, on="partition", how="left").sort("partition"))
    promotions = {}
    for record in ModelStore(config.models_dir).pointer()["history"]:
        promotions.setdefault(record["promoted_at"][:10], []).append(
            f"{record['reason']} → {record['version']}")
    result = []
    for row in table.iter_rows(named=True):
        events = []
        if drift_day and row["partition"] == drift_day.isoformat():
            events.append("drift injected")
        if row["drift_detected"]:
            events.append("drift detected")
        result.append({**row, "drift_share": _round(row["drift_share"]),
                       "metric": _round(row["metric"]), "event": "; ".join(events)})
    if promotions:
        result.append({"partition": "(today)", "event": "; ".join(
            "; ".join(items) for _, items in sorted(promotions.items()))})
    return result


def model_history(config: Config) -> list[dict]:
    """Every promotion with the gate metric of the model before and after, on one holdout."""
    store = ModelStore(config.models_dir)
    rows = []
    for record in store.pointer()["history"]:
        decision = store.decision(record["version"]) or {}
        rows.append({"version": record["version"], "reason": record["reason"],
                     "promoted_at": record["promoted_at"],
                     "holdout_before": _round(decision.get("champion_value")),
                     "holdout_after": _round(decision.get("candidate_value")),
                     "status": store.status(record["version"])})
    return rows


def _label_note(config: Config) -> str:
    delay = config.triggers.label_delay
    if config.dataset.labels is not None:
        return (f"they land {delay} day(s) after their rows, in {config.labels_dir}, so the "
                f"newest {delay} day(s) were scored before any label existed")
    return f"labels come with the rows and count as known {delay} day(s) later"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)

