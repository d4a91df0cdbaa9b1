"""Assembles the Dagster definitions from the project's configuration."""

from __future__ import annotations

import dagster as dg

from ct_assets.defs.automation import (
    MONITORED_ON_LANDING,
    build_automation_sensor,
    build_check_sensor,
    build_freshness_sensor,
    build_label_sensor,
    build_landing_sensor,
    build_retrain_schedule,
)
from ct_assets.defs.deployment import build_deployment_assets
from ct_assets.defs.evaluation import build_evaluation_assets
from ct_assets.defs.features import build_feature_assets
from ct_assets.defs.ingest import build_ingest_assets
from ct_assets.defs.labels import build_label_assets
from ct_assets.defs.monitoring import build_monitoring_assets, label_dependencies
from ct_assets.defs.online import build_online_assets
from ct_assets.defs.partitions import build_partitions
from ct_assets.defs.resources import build_resources
from ct_assets.defs.runs import RETRAIN_TAG
from ct_assets.defs.serving import (
    SERVED_JOB,
    build_serving_assets,
    build_serving_sensor,
    served_assets,
)
from ct_assets.defs.training import build_training_assets
from ct_assets.defs.validation import build_validation_assets
from ct_assets.lib.config import Config, load_config

RETRAIN_ASSETS = ("training_set", "candidate_model", "validation_report", "deployed_model")


def build_definitions(config: Config) -> dg.Definitions:
    """Every asset, check, job and resource for one configuration.

    Built from the configuration alone, never from landed data: a bad landed file (renamed
    columns, say) is quarantined with its reason when `raw_events` reads it; it must not stop
    the code location from loading, which would take every sensor down with it.
    """
    partitions_def = build_partitions(config)
    assets = [
        *build_ingest_assets(config, partitions_def),
        *build_label_assets(config, partitions_def),
        *build_feature_assets(config, partitions_def),
        *build_training_assets(config),
        *build_validation_assets(config),
        *build_deployment_assets(config, partitions_def),
        *build_serving_assets(config, partitions_def),
        *build_monitoring_assets(config, partitions_def),
        *build_evaluation_assets(config),
        *build_online_assets(config, partitions_def, label_dependencies(config)[1]),
    ]
    data_job = dg.define_asset_job(
        "data_job", selection=dg.AssetSelection.assets("raw_events", "features"),
    )
    features_job = dg.define_asset_job(
        "features_job", selection=dg.AssetSelection.assets("features"),
        description="Rebuild features only: the partitions after late data, whose recent means "
                    "read the partitions it changed.")
    landing_job = dg.define_asset_job(
        "landing_job", selection=dg.AssetSelection.assets(
            "raw_events", "features", *MONITORED_ON_LANDING),
        description="What landing_sensor runs for newly landed partitions: ingest and "
                    "featurise them and, once a model is deployed, score them and check drift.")
    retrain_job = dg.define_asset_job(
        "retrain_job", selection=dg.AssetSelection.assets(*RETRAIN_ASSETS),
        description="Train a candidate, validate it against the champion, promote if approved.",
        tags={RETRAIN_TAG: "true"},  # dagster.yaml runs one run with this tag at a time
    )
    scoring_job = dg.define_asset_job(
        "scoring_job", selection=dg.AssetSelection.assets("predictions"))
    drift_job = dg.define_asset_job(
        "drift_job", selection=dg.AssetSelection.assets("drift_report"))
    performance_job = dg.define_asset_job(
        "performance_job", selection=dg.AssetSelection.assets("model_performance"))
    served_job = dg.define_asset_job(
        SERVED_JOB, selection=dg.AssetSelection.assets(*served_assets(config)),
        description="What serving_log_sensor runs for new request-log rows of `ct serve`: "
                    "take them in and, with drift.on: served, judge their drift.")
    jobs = [data_job, features_job, landing_job, retrain_job, scoring_job, drift_job,
            performance_job, served_job]
    triggers = config.triggers
    sensors = [build_landing_sensor(config, partitions_def),
               build_serving_sensor(config, partitions_def)]
    if config.training.strategy == "online":
        jobs.append(dg.define_asset_job(
            "online_job", selection=dg.AssetSelection.assets("model_update"),
            description="Continue the deployed model on newly labelled partitions, through "
                        "the gate (training.strategy: online)."))
    if config.dataset.labels is not None:
        jobs.append(dg.define_asset_job(
            "labels_job", selection=dg.AssetSelection.assets("labels"),
            description="What label_sensor runs for label files: ingest the labels known in "
                        "those partitions."))
        sensors.append(build_label_sensor(config, partitions_def))
    sensors += [
        build_check_sensor(config, "drift_sensor", "drift_report", "feature_drift", "drift",
                           triggers.drift),
        build_check_sensor(config, "performance_sensor", "model_performance", "performance",
                           "performance", triggers.performance),
        build_freshness_sensor(config),
        build_automation_sensor(),
    ]
    # One process per run, not per step: a step costs no Python start-up and re-import, which
    # is most of a small partition's run time (steps share the one-writer `duckdb` pool anyway).
    return dg.Definitions(assets=assets, jobs=jobs,
                          sensors=sensors, schedules=[build_retrain_schedule(config)],
                          resources=build_resources(config), executor=dg.in_process_executor)


@dg.definitions
def defs() -> dg.Definitions:
    """Definitions for `ct.yaml` (or `$CT_CONFIG`), loaded by `dagster` and the `ct` command."""
    return build_definitions(load_config())
