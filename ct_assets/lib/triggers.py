"""Retraining triggers: cooldown (in partitions), the wait for labels, and the trigger log.

A drift retrain waits for the labels of the partition where the drift began
(`awaiting_labels`), so that the model it deploys learns the drifted rows.

The log (`<storage>/trigger_log.jsonl`, one JSON object per line, appended) records every
decision a retraining trigger took on an event — launched, or skipped and why — so `ct status`
can say why a drift did not retrain, the same sentence the sensor's tick shows in the UI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ct_assets.lib.config import Config
from ct_assets.lib.ingest import keys_between

LOG_FILE = "trigger_log.jsonl"


def partition_distance(config: Config, earlier: str, later: str) -> int:
    """How many partitions `later` comes after `earlier` (negative when it comes before)."""
    if later < earlier:
        return -partition_distance(config, later, earlier)
    return len(keys_between(config, earlier, later)) - 1


def cooldown_reason(config: Config, partition: str, last_change: str | None) -> str | None:
    """Why an event in `partition` may not retrain yet, or None when it may.

    A retrain already answered a change at `last_change`; within `triggers.cooldown`
    partitions of it (or before it) another event is taken as the same change settling, not a
    new one, so the loop cannot thrash.
    """
    cooldown = config.triggers.cooldown
    if last_change is None or cooldown == 0 or partition == "?":
        return None
    distance = partition_distance(config, last_change, partition)
    if distance >= cooldown:
        return None
    return (f"cooldown: a retrain answered the change at {last_change}, {distance} "
            f"partition(s) before {partition} (triggers.cooldown {cooldown})")


def awaiting_labels(config: Config, partition: str, labelled: Collection[str],
                    landed: Collection[str]) -> str | None:
    """Why a drift retrain answering a change at `partition` waits for its labels, or None.

    A retrain launched the moment the inputs drift can learn nothing of the drifted rows
    while their labels are still to come: it would refit the old rows and only move the
    drift reference. So it waits until the labels of `partition` are known (its realised
    performance was measured: `labelled`), and then learns them, once. It goes without them
    when they come with the rows (`dataset.labels` unset and `triggers.label_delay` 0), when
    they are overdue (more than `label_delay` partitions `landed` after `partition` and still
    none known), and when `triggers.drift_waits_for_labels` is false.

    Args:
        config: the project configuration.
        partition: the first drifted partition (the change point).
        labelled: partitions whose labels are known.
        landed: partitions whose rows landed.
    """
    delay = config.triggers.label_delay
    if not config.triggers.drift_waits_for_labels or partition == "?" or partition in labelled \
            or (config.dataset.labels is None and delay == 0):
        return None
    since = sum(key > partition for key in landed)
    if since > delay:
        return None
    return (f"waiting for the labels of {partition} (due {delay} partition(s) after it, "
            f"{since} landed since), so that the retrain learns the drifted rows")


class TriggerLog:
    """The decisions of the retraining triggers, appended to a JSON-lines file."""

    def __init__(self, storage_dir: Path) -> None:
        self.path = Path(storage_dir) / LOG_FILE

    def record(self, trigger: str, decision: str, partition: str | None, detail: str) -> None:
        """Append one decision (`launched` or `skipped`) with its partition and detail."""
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "trigger": trigger, "decision": decision, "partition": partition,
                 "detail": detail}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded decision, oldest first (a torn last line is ignored)."""
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest decision of each trigger."""
        return {entry["trigger"]: entry for entry in self.entries()}


def followup_due(config: Config, regime_kind: str | None, regime_start: str | None,
                 learned: int, labelled: list[str]) -> bool:
    """Whether a model that answered a change of concept should be retrained once more.

    After a performance failure the deployed model learned the new concept from the few
    partitions since the change whose labels were known (the window is cut there). Once
    `training.holdout + 1` partitions of the new regime are labelled, a retrain can be both
    trained and validated on the new concept alone: one follow-up retrain is due then, if the
    deployed model learned fewer regime partitions than that. After a change of inputs
    (drift) the old relation still holds: no follow-up.

    Args:
        config: the project configuration.
        regime_kind: the deployed model's `regime_kind`.
        regime_start: the deployed model's `regime_start`.
        learned: how many partitions of the regime the deployed model was fitted on.
        labelled: partitions whose labels are known.
    """
    if regime_kind != "concept" or not regime_start:
        return False
    needed = config.training.holdout + 1
    return learned < needed <= sum(key >= regime_start for key in labelled)


def regime_partitions(manifest: dict) -> int:
    """How many partitions of its regime a version was fitted on (0 without a regime)."""
    start = manifest.get("regime_start")
    fitted = ((manifest.get("training_info") or {}).get("refit") or {}).get("partitions") or []
    return sum(key >= start for key in fitted) if start else 0


def describe_failure(check: str, partition: str, values: dict[str, Any]) -> str:
    """One line saying why a monitoring check failed, from its metadata (plain values).

    Names the partition, the rule (`rule` when the check records one) and what tripped it:
    the drifted features, share and target for `feature_drift`; the metric, its value and
    bound, a Page-Hinkley alarm or a degradation for `performance`.
    """
    if values.get("rule") not in (None, "", "none"):  # the check's own account says it all
        return f"{check} failed for {partition}: {str(values['rule']).strip().rstrip(';')}"
    parts = [f"{check} failed for {partition}"]
    features = values.get("drifted_features")
    if features not in (None, "", "none"):
        parts.append(f"drifted features: {features}")
    if check == "feature_drift":
        if values.get("observed") is not None and values.get("threshold") is not None:
            parts.append(f"drifted share {float(values['observed']):.2f} "
                         f"(threshold {float(values['threshold']):.2f})")
        if values.get("target_drifted") is True:
            parts.append("target drifted")
        if values.get("segments_drifted") not in (None, "", "none"):
            parts.append(f"segments: {values['segments_drifted']}")
    else:
        metric = values.get("metric") or "metric"
        if isinstance(values.get("observed"), int | float):
            bound = values.get("threshold")
            parts.append(f"{metric} {float(values['observed']):.4f}"
                         + (f" (floor {float(bound):.4f})" if isinstance(bound, int | float)
                            else ""))
        if values.get("page_hinkley_alarm") is True:
            parts.append("Page-Hinkley alarm on the error series")
        if values.get("degradation") not in (None, "", "none"):
            parts.append(str(values["degradation"]))
    return "; ".join(parts)


# Retrains launched by a trigger; one launched by hand (no reason) always trains.
TRIGGERED_REASONS = frozenset({"drift", "performance", "freshness", "schedule"})


def unchanged_training_reason(config: Config, reason: str | None, data_version: str,
                              champion: str | None, manifest: dict[str, Any] | None
                              ) -> str | None:
    """Why a triggered retrain need not train (the champion learned the same), or None.

    The same training data (`training_set`'s data version: rows, values, split and regime
    marks, drift reference) with the same model kind, parameters and seed gives the same
    model again: a retrain would only promote a copy of the champion. A retrain launched by
    hand, a champion without a data version (an online update) or other settings train.
    """
    if reason not in TRIGGERED_REASONS or champion is None or not manifest:
        return None
    training = config.training
    same = (manifest.get("training_set_version") == data_version
            and manifest.get("model") == training.model
            and manifest.get("params") == training.params
            and manifest.get("seed") == training.seed)
    if not same:
        return None
    return (f"training data unchanged: data version {data_version} is what the deployed model "
            f"{champion} was trained on, with the same {training.model} settings; a {reason} "
            "retrain would train the same model again, so none was trained")
