"""Automation: sensors that turn landed files and monitoring signals into runs.

Sensors read the landing dir and the Dagster instance only — never the DuckDB warehouse, which
allows one writing process and may be held by a run.
"""

import datetime as dt
import os

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (  # no public export in 1.13
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from ct_assets.defs.metadata import CHANGE_POINT_TAG, REASON_TAG
from ct_assets.defs.runs import check_in_runs
from ct_assets.lib.config import Config, parse_duration
from ct_assets.lib.ingest import FileCatalog
from ct_assets.lib.landing import LandingCursor, LandingRun, plan_landing_runs, scan_landing
from ct_assets.lib.triggers import (
    TriggerLog,
    awaiting_labels,
    cooldown_reason,
    describe_failure,
    followup_due,
)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Every sensor's minimum interval; `$CT_SENSOR_INTERVAL_SECONDS` shortens it (end-to-end tests).
SENSOR_INTERVAL_ENV = "CT_SENSOR_INTERVAL_SECONDS"
SENSOR_INTERVAL_SECONDS = int(os.environ.get(SENSOR_INTERVAL_ENV) or 30)


MONITORED_ON_LANDING = ("predictions", "drift_report")


def build_label_sensor(config: Config, partitions_def: dg.PartitionsDefinition
                       ) -> dg.SensorDefinition:
    """The sensor that ingests new or changed label files (runs `labels_job`)."""

    @dg.sensor(job_name="labels_job", minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def label_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        """New, changed or removed label files → `labels` for the partitions they became known in.

        Compared, like data files, with the record of what `labels` ingested (whoever
        launched it: this sensor, `ct run` or `ct demo`), with the same generations in the
        cursor and the run keys (a label file going X → Y → X is ingested three times); the
        automation sensor then measures the performance of the partitions whose labels these
        are.
        """
        cursor = LandingCursor.parse(context.cursor)
        changes = scan_landing(config, cursor, FileCatalog(config.labels_catalog_path),
                               labels=True)
        runs, after = plan_landing_runs(cursor, changes, partitions_def.get_partition_keys(),
                                        kind="labels")
        if not changes.partitions:
            if after == cursor:
                return dg.SkipReason(f"every label file in {config.labels_dir} is ingested "
                                     "or asked for")
            return dg.SensorResult(skip_reason="nothing new to ingest", cursor=after.dump())
        requests = landing_requests("labels", runs, ["labels"])
        context.log.info(f"{len(changes.changed)} changed and {len(changes.removed)} removed "
                         f"label file(s) → {len(requests)} run(s) of labels "
                         f"(generation {after.generation})")
        return dg.SensorResult(run_requests=requests, cursor=after.dump())

    return label_sensor


def landing_requests(kind: str, runs: list[LandingRun], assets: list[str]
                     ) -> list[dg.RunRequest]:
    """One run request per planned range (`plan_landing_runs`), materializing `assets`."""
    return [dg.RunRequest(run_key=run.run_key,
                          asset_selection=[dg.AssetKey(asset) for asset in assets],
                          tags={RANGE_START_TAG: run.first, RANGE_END_TAG: run.last,
                                "ct/trigger": kind})
            for run in runs]


def build_landing_sensor(config: Config, partitions_def: dg.PartitionsDefinition
                         ) -> dg.SensorDefinition:
    """The sensor that ingests new or changed landed files (runs `landing_job`)."""

    @dg.sensor(job_name="landing_job", minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        """New, changed or removed complete files → `landing_job` for the partitions they cover.

        The landing dir is compared, by content (sha256), with the record of what
        `raw_events` ingested per partition (the file catalog, written by every ingestion:
        this sensor's runs, `ct run`, `ct demo`), so nothing `ct demo` ingested is ingested
        again, and a copy with an old mtime is still seen; files still being written are left
        for a later tick. The cursor (a cache of file hashes, the partitions asked for and not
        yet ingested, and a generation that grows with every tick that asks for a run) lives
        in the instance. Each run's key holds the generation and the contents it ingests: a
        content that comes back (X → Y → X) or a file landed again after its removal gets a
        new run, while a retried tick starts no second one. Once a model is deployed, the same
        run also scores the partitions and checks their drift, so a drifted file reaches
        `drift_sensor` without waiting for a tick of the automation sensor.
        """
        cursor = LandingCursor.parse(context.cursor)
        changes = scan_landing(config, cursor, FileCatalog(config.landing_catalog_path))
        ordered = partitions_def.get_partition_keys()
        runs, after = plan_landing_runs(cursor, changes, ordered)
        if not changes.partitions:
            if after == cursor:
                return dg.SkipReason(f"every file in {config.landing_dir} is ingested or "
                                     "asked for")
            return dg.SensorResult(skip_reason="nothing new to ingest", cursor=after.dump())
        outside = changes.partitions - set(ordered)
        if outside:
            context.log.warning(f"{len(outside)} landed partition(s) outside the partitions "
                                f"definition (e.g. {min(outside)}); ingestion will quarantine "
                                "their rows")
        assets = ["raw_events", "features"]
        if deployed_version(context.instance) is not None:
            assets += MONITORED_ON_LANDING
        requests = landing_requests("landing", runs, assets)
        context.log.info(f"{len(changes.changed)} changed and {len(changes.removed)} removed "
                         f"file(s) → {len(requests)} run(s) of {', '.join(assets)} "
                         f"(generation {after.generation})")
        return dg.SensorResult(run_requests=requests, cursor=after.dump())

    return landing_sensor


def deployed_version(instance: dg.DagsterInstance) -> str | None:
    """The deployed model's version as the instance last recorded it, or None (none yet)."""
    return _version_of(_deployed_metadata(instance))


def _version_of(metadata: dict) -> str | None:
    version = metadata["deployed_version"].value if "deployed_version" in metadata else None
    return None if version in (None, "none") else str(version)


def _deployed_metadata(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
    return dict(event.asset_materialization.metadata) if event and \
        event.asset_materialization else {}


ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                   dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
DETAIL_TAG = "ct/trigger_detail"
DETAIL_LENGTH = 400  # a run tag, shown whole in the UI's run page


def retrain_request(reason: str, run_key: str, detail: str, change_point: str | None = None
                    ) -> dg.RunRequest:
    """A `retrain_job` run that records why it was launched (read by `ct status`, manifests).

    `change_point` is the first partition of the change it answers (drift, performance).
    """
    tags = {REASON_TAG: reason, DETAIL_TAG: detail[:DETAIL_LENGTH]}
    if change_point:
        tags[CHANGE_POINT_TAG] = change_point
    return dg.RunRequest(run_key=run_key, job_name="retrain_job", tags=tags)


GATE_CHECK = dg.AssetCheckKey(dg.AssetKey("validation_report"), "gate")


def answered(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether a retrain run answers the events before it.

    It does when it is queued or running, succeeded, or ended with the gate's verdict on its
    candidate (a rejection is an answer); a crash before the gate is not, and leaves the
    events to be answered again.
    """
    if run.status in ACTIVE_STATUSES or run.status == dg.DagsterRunStatus.SUCCESS:
        return True
    return check_in_runs(instance, GATE_CHECK.asset_key.to_user_string(), GATE_CHECK.name,
                         [run.run_id]) is not None


def last_change_point(instance: dg.DagsterInstance) -> str | None:
    """The change the latest drift or performance retrain answered (its first partition).

    A retrain that crashed answered nothing, so it starts no cooldown.
    """
    for run in instance.get_runs(dg.RunsFilter(job_name="retrain_job"), limit=50):
        if CHANGE_POINT_TAG in run.tags and answered(instance, run):
            return run.tags[CHANGE_POINT_TAG]
    return None


def retrain_active(instance: dg.DagsterInstance) -> str | None:
    """Why no retrain may start now (one is queued or running), or None."""
    active = instance.get_runs(dg.RunsFilter(job_name="retrain_job", statuses=ACTIVE_STATUSES),
                               limit=1)
    return f"retrain run {active[0].run_id[:8]} is already queued or running" if active else None


def retrain_blocked(instance: dg.DagsterInstance, since: dt.datetime | None = None) -> str | None:
    """Why a new retrain must not start now, or None when it may.

    Blocked when a retrain is queued or running, or when one created after the event (`since`)
    answered it (`answered`), so two triggers for one event give one retrain.
    """
    active = retrain_active(instance)
    if active or since is None:
        return active
    for run in instance.get_runs(dg.RunsFilter(job_name="retrain_job", created_after=since),
                                 limit=20):
        if answered(instance, run):
            return f"retrain run {run.run_id[:8]} started after this event"
    return None


def build_freshness_sensor(config: Config) -> dg.SensorDefinition:
    """The sensor that retrains when no model is deployed or the deployed one is too old."""
    max_age = parse_duration(config.triggers.max_model_age)
    needed = config.training.holdout + 1
    status = (dg.DefaultSensorStatus.RUNNING if config.triggers.freshness
              else dg.DefaultSensorStatus.STOPPED)

    @dg.sensor(job_name="retrain_job", minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=status)
    def freshness_sensor(context: dg.SensorEvaluationContext
                         ) -> dg.RunRequest | dg.SkipReason:
        """No deployed model yet, or one older than `triggers.max_model_age` → retrain.

        Reads the latest `deployed_model` materialization from the instance. The first model
        waits until `training.holdout + 1` partitions of features exist.
        """
        instance = context.instance
        metadata = _deployed_metadata(instance)
        version = _version_of(metadata)
        if version is None:
            built = instance.get_materialized_partitions(dg.AssetKey("features"))
            if len(built) < needed:
                return dg.SkipReason(f"no model deployed; waiting for {needed} partitions of "
                                     f"features ({len(built)} so far)")
            latest = instance.fetch_materializations(dg.AssetKey("features"), limit=1).records
            marker = latest[0].storage_id if latest else 0
            blocked = retrain_blocked(instance)
            if blocked:
                return dg.SkipReason(blocked)
            return retrain_request("initial", f"freshness:initial:{marker}",
                                   "no model is deployed yet")
        promoted = dt.datetime.fromisoformat(str(metadata["promoted_at"].value))
        age = dt.datetime.now(dt.UTC) - promoted
        if age <= max_age:
            return dg.SkipReason(f"deployed model {version} is {age} old "
                                 f"(max {config.triggers.max_model_age})")
        blocked = retrain_blocked(instance)
        if blocked:
            return dg.SkipReason(blocked)
        period = int(age / max_age)
        return retrain_request("freshness", f"freshness:{version}:{period}",
                               f"deployed model {version} is {age} old")

    return freshness_sensor


def build_retrain_schedule(config: Config) -> dg.ScheduleDefinition:
    """The cron schedule that retrains regardless of signals (`triggers.schedule`)."""
    status = (dg.DefaultScheduleStatus.RUNNING if config.triggers.schedule
              else dg.DefaultScheduleStatus.STOPPED)

    @dg.schedule(cron_schedule=config.triggers.cron, job_name="retrain_job",
                 execution_timezone="UTC", default_status=status)
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Retrain on `triggers.cron` (UTC), tagged with reason `schedule`."""
        moment = context.scheduled_execution_time.isoformat()
        return retrain_request("schedule", f"schedule:{moment}", f"cron {config.triggers.cron}")

    return retrain_schedule


def follows_upstream() -> dg.AutomationCondition:
    """`AutomationCondition.eager()`, extended to every partition whose partitioned data changed.

    `eager` considers only the latest time partition, so a range of partitions landing at once
    (or data landing for an earlier day) would leave every partition but the newest unscored and
    unmonitored. Here a partition is also requested when a partitioned upstream (not the
    unpartitioned `deployed_model`) updated it: a new model re-scores the latest partition only,
    never the whole history.
    """
    condition = dg.AutomationCondition
    new_data = condition.any_deps_updated().ignore(dg.AssetSelection.assets("deployed_model"))
    return (
        ((condition.in_latest_time_window()
          & (condition.newly_missing() | condition.any_deps_updated())) | new_data)
        .since_last_handled()
        & ~condition.any_deps_missing()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label("eager, and every partition with new upstream data")


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the assets' automation conditions, on by default."""
    return dg.AutomationConditionSensorDefinition(
        "automation_sensor", target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        description="Keeps features, predictions and the monitoring assets following their "
                    "upstreams (`follows_upstream`: eager, plus every partition with new data).")


def build_check_sensor(config: Config, name: str, asset: str, check: str, reason: str,
                       enabled: bool) -> dg.SensorDefinition:
    """A sensor that retrains when a monitoring check fails (drift, performance).

    It reads failed evaluations of `asset`'s `check` from the instance, newest first, after its
    cursor (the last evaluation handled). Each failure gives at most one retrain: the run key
    names the partition and the evaluation, and a failure that a queued, running or later
    retrain already answers is skipped, as is one within `triggers.cooldown` partitions of
    the change the last drift or performance retrain answered. A drift retrain also waits
    (the failure stays pending) until the labels of the partition where the drift began are
    known (`awaiting_labels`), so the model it deploys has learned the drifted rows. Every
    decision is logged for `ct status`.
    """
    log = TriggerLog(config.storage_dir)
    check_key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    status = dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED

    @dg.sensor(name=name, job_name="retrain_job",
               minimum_interval_seconds=SENSOR_INTERVAL_SECONDS, default_status=status,
               description=f"A failed `{check}` check on `{asset}` → retrain_job "
                           f"(reason `{reason}`).")
    def check_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        last = int(context.cursor or 0)
        failed = AssetCheckExecutionRecordStatus.FAILED
        records = context.instance.event_log_storage.get_asset_check_execution_history(
            check_key, limit=20, status={failed})
        new = sorted((r for r in records if r.id > last), key=lambda r: r.id)
        if not new:
            followup = _concept_followup(context.instance) if reason == "performance" else None
            if followup is not None:
                log.record(name, "launched", followup.tags[CHANGE_POINT_TAG],
                           followup.tags[DETAIL_TAG])
                return dg.SensorResult(run_requests=[followup])
            return dg.SensorResult(skip_reason=f"no new failure of {asset}.{check}")
        # The newest failure and the ones before it are one change: it began at the earliest
        # partition they flagged (the change point), and the cursor moves past all of them.
        record = new[-1]
        flagged = {r.id: _first_flagged(r) for r in new}
        partition = min((key for key in flagged.values() if key != "?"), default="?")
        first = next((r for r in new if flagged[r.id] == partition), record)
        metadata = first.evaluation.metadata if first.evaluation else {}
        happened = dt.datetime.fromtimestamp(first.create_timestamp, dt.UTC)
        # A retrain created after the flagged partition's data landed has trained on it
        # already (e.g. the drift retrain itself, whose new model re-checks that partition):
        # another one would see the same data, so it answers this failure too.
        active = retrain_active(context.instance)
        if active:  # judged again once that run ends: if it crashes, this event still counts
            return dg.SensorResult(skip_reason=f"{asset}.{check} failed for {partition}: "
                                               f"{active}; judged again when it ends")
        landed = _landed_at(context.instance, partition)
        blocked = retrain_blocked(context.instance,
                                  since=min(happened, landed) if landed else happened)
        blocked = blocked or cooldown_reason(config, partition,
                                             last_change_point(context.instance))
        if blocked:
            skipped = f"{asset}.{check} failed for {partition}: {blocked}"
            log.record(name, "skipped", partition, skipped)
            return dg.SensorResult(skip_reason=skipped, cursor=str(record.id))
        instance = context.instance
        waiting = awaiting_labels(  # rows land as files, or as requests `ct serve` answered
            config, partition, instance.get_materialized_partitions(
                dg.AssetKey("model_performance")),
            instance.get_materialized_partitions(dg.AssetKey("raw_events"))
            | instance.get_materialized_partitions(dg.AssetKey("served_predictions"))
        ) if reason == "drift" else None
        if waiting:  # no cursor: the change stays pending, judged again at every tick
            skipped = f"{asset}.{check} failed for {partition}: {waiting}"
            if log.latest().get(name, {}).get("detail") != skipped:
                log.record(name, "waiting", partition, skipped)
            return dg.SensorResult(skip_reason=skipped)
        # The account of the flagged partition itself (per-partition checks: its own record).
        described = next((r.evaluation.metadata for r in new if r.evaluation and str(
            getattr(r.evaluation.metadata.get("partition"), "value", "")) == partition), metadata)
        detail = describe_failure(check, partition, {key: entry.value for key, entry
                                                     in described.items()})
        request = retrain_request(reason, f"{reason}:{partition}:{record.id}", detail,
                                  change_point=None if partition == "?" else partition)
        log.record(name, "launched", partition, detail)
        return dg.SensorResult(run_requests=[request], cursor=str(record.id))

    def _concept_followup(instance: dg.DagsterInstance) -> dg.RunRequest | None:
        """The one follow-up retrain after a change of concept (`followup_due`).

        Due once the regime can be learned and validated alone; not while a retrain is queued
        or running. Its run key names the regime, so it is launched once.
        """
        metadata = _deployed_metadata(instance)

        def value(key: str) -> object:
            return metadata[key].value if key in metadata else None

        start, kind = value("regime_start"), value("regime_kind")
        labelled = sorted(instance.get_materialized_partitions(
            dg.AssetKey("model_performance")))
        if not followup_due(config, str(kind), str(start), int(value("regime_partitions") or 0),
                            labelled) or retrain_blocked(instance):
            return None
        count = sum(key >= str(start) for key in labelled)
        return retrain_request(
            "performance", f"performance:followup:{start}",
            f"the change of concept at {start} has {count} labelled partitions now: learn "
            "and validate on them alone", change_point=str(start))

    return check_sensor


def _first_flagged(record: AssetCheckExecutionRecord) -> str:
    """The earliest partition a failed check evaluation flagged, or "?" (not recorded)."""
    metadata = record.evaluation.metadata if record.evaluation else {}
    return str(metadata["first_flagged"].value) if "first_flagged" in metadata else "?"


def _landed_at(instance: dg.DagsterInstance, partition: str) -> dt.datetime | None:
    """When `raw_events` of a partition was last written, or None (unknown partition)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_events"), asset_partitions=[partition]),
        limit=1).records
    return dt.datetime.fromtimestamp(records[0].timestamp, dt.UTC) if records else None
