"""Automation: sensors that turn landed files and monitoring signals into runs.

Sensors read the landing dir and the Dagster instance only — never the DuckDB warehouse, which
allows one writing process and may be held by a run.
"""

import hashlib
import json

import dagster as dg

from ct_assets.lib.config import Config
from ct_assets.lib.ingest import contiguous_ranges
from ct_assets.lib.landing import scan_landing

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
LANDING_INTERVAL_SECONDS = 30


def build_landing_sensor(config: Config, partitions_def: dg.PartitionsDefinition
                         ) -> dg.SensorDefinition:
    """The sensor that ingests new or changed landed files (runs `data_job`)."""

    @dg.sensor(job_name="data_job", minimum_interval_seconds=LANDING_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        """New, changed or removed complete files → `data_job` for the partitions they cover.

        Files are tracked by content (sha256), so a file is taken once per content and a copy
        with an old mtime is still seen; files still being written are left for a later tick.
        The cursor (what was seen) lives in the instance and survives daemon restarts; each
        run's key is derived from the contents it ingests, so a retried tick starts no second
        run.
        """
        known = json.loads(context.cursor) if context.cursor else {}
        changes = scan_landing(config, known)
        if not changes.changed and not changes.removed:
            return dg.SkipReason(f"no new or changed files in {config.landing_dir}"
                                 if changes.state == known else "only metadata changed")
        ordered = partitions_def.get_partition_keys()
        outside = changes.partitions - set(ordered)
        if outside:
            context.log.warning(f"{len(outside)} landed partition(s) outside the partitions "
                                f"definition (e.g. {min(outside)}); ingestion will quarantine "
                                "their rows")
        content = hashlib.sha256("\n".join(sorted(changes.content_ids)).encode()).hexdigest()
        requests = [
            dg.RunRequest(run_key=f"landing:{content[:16]}:{first}:{last}",
                          tags={RANGE_START_TAG: first, RANGE_END_TAG: last,
                                "ct/trigger": "landing"})
            for first, last in contiguous_ranges(changes.partitions, ordered)
        ]
        context.log.info(f"{len(changes.changed)} changed and {len(changes.removed)} removed "
                         f"file(s) → {len(requests)} run(s)")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(changes.state))

    return landing_sensor
