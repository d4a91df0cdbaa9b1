"""Retraining policies replayed over the landed history, partition by partition.

The history is read from the landing dir with the same code as `raw_events`, `features` and
`labels`, in memory (the live warehouse, model store and Dagster instance are never touched).
A simulated clock then walks the partitions; at the end of each one, every policy does what
the live loop would:

1. the deployed model scores the partition (its realised metric is measured later, once its
   labels are known: each partition is judged by the model deployed before they were visible);
2. drift of the partition against the deployed model's reference (`partition_drift`);
3. the labels that became known in the partition complete older partitions: their realised
   metrics, the performance check (floor, Page-Hinkley on the model's error series);
4. the policy's trigger, the cooldown (`cooldown_reason`), the wait of a drift retrain for
   the drifted partition's labels (`awaiting_labels`), the follow-up after a change of
   concept (`followup_due`, as `performance_sensor`), and a retrain through the same plan,
   fit and gate as `retrain_job` (`plan_training_set`, `fit_candidate`, `judge_candidate`), its
   drift reference fitted as `training_set` does; or, for `online`, the deployed model continued
   on the newly labelled partition (`continue_model`), promoted through the gate after being
   judged, with the champion, on the next labelled partition neither has seen.

Policies: `never`, `schedule` (every N partitions), `drift`, `performance`,
`drift+performance`, `online`. All start from the same first model.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ct_assets.lib.candidate import fit_candidate, judge_candidate
from ct_assets.lib.config import Config, worse_than
from ct_assets.lib.evaluation import OPERATING_THRESHOLD, compute_metrics
from ct_assets.lib.features import build_features, offset_partitions
from ct_assets.lib.ingest import FileCatalog, ingest_window, keys_between
from ct_assets.lib.monitoring import (
    degradation,
    error_of,
    fit_profiles,
    partition_drift,
    performance_alarm,
)
from ct_assets.lib.progress import Progress
from ct_assets.lib.training import TrainedModel, encode_labels
from ct_assets.lib.training_set import apply_plan, choose_reference, plan_training_set
from ct_assets.lib.triggers import awaiting_labels, cooldown_reason, followup_due
from ct_assets.lib.validation import PARTITION

POLICIES = ("never", "schedule", "drift", "performance", "drift+performance", "online")
KNOWN = "_label_known"  # the partition at whose end a row's label is known (null: never)


@dataclass
class History:
    """The landed history: features of every row, the label where ever known, and when."""

    rows: pl.DataFrame
    keys: list[str]  # every partition from the first to the last with data, in time order


def load_history(config: Config, scratch: Path) -> History:
    """Read every landed file (and label file) as the live assets do, into memory."""
    every = config.partitions.truncate_every
    start = dt.datetime.combine(config.partitions.start, dt.time(), tzinfo=dt.UTC)
    now = pl.Series([dt.datetime.now(dt.UTC)]).dt.truncate(every).item()
    end = offset_partitions(config, now, 2)
    raw = ingest_window(config, start, end, FileCatalog(scratch / "catalog.json")).rows
    if raw.is_empty():
        raise ValueError(f"nothing has landed in {config.landing_dir}: no history to replay")
    keys = keys_between(config, raw[PARTITION].min(), raw[PARTITION].max())
    features = build_features(raw, config, keys)
    target, delay = str(config.dataset.target), config.triggers.label_delay
    later = {key: keys[i + delay] if i + delay < len(keys) else None
             for i, key in enumerate(keys)}
    known = pl.when(pl.col(target).is_not_null()).then(
        pl.col(PARTITION).replace_strict(later, default=None, return_dtype=pl.String))
    features = features.with_columns(known.alias(KNOWN))
    if config.dataset.labels is not None:
        from ct_assets.lib.labels import match_labels, read_labels

        batch = read_labels(config, start, end, FileCatalog(scratch / "labels_catalog.json"))
        key = str(config.dataset.id)
        accepted, _ = match_labels(batch.labels, raw.select(key, PARTITION,
                                                            config.dataset.timestamp),
                                   batch.labels.head(0), config)
        given = accepted.select(key, pl.col(target).alias("__label"),
                                pl.col(PARTITION).alias("__known"))
        features = (features.join(given, on=key, how="left", maintain_order="left")
                    .with_columns(pl.coalesce(target, "__label").alias(target),
                                  pl.coalesce(KNOWN, "__known").alias(KNOWN))
                    .drop("__label", "__known"))
    return History(features, keys)


@dataclass
class Deployed:
    """What a policy has in production: the model, its evaluation twin, threshold, reference."""

    name: str
    model: TrainedModel
    evaluation: TrainedModel
    threshold: float | None
    profiles: dict[str, Any]
    regime: tuple[str | None, str | None] = (None, None)
    regime_partitions: int = 0  # partitions of its regime it was fitted on
    validated: float | None = None  # its gate metric on the holdout it was judged on


@dataclass
class PolicyResult:
    """One policy's replay: realised metrics per partition, retrains, refusals, time."""

    policy: str
    measured: list[dict[str, Any]] = field(default_factory=list)
    retrains: Counter = field(default_factory=Counter)
    refusals: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    pooled: dict[str, float] = field(default_factory=dict)

    def summary(self, metric: str) -> dict[str, Any]:
        """The row of the policies table."""
        values = [row[metric] for row in self.measured if math.isfinite(row[metric])]
        return {"policy": self.policy, f"mean_{metric}": _mean(values),
                f"worst_{metric}": min(values) if values else None,
                "partitions": len(self.measured),
                "retrains": sum(self.retrains.values()),
                "by_reason": dict(self.retrains), "refusals": self.refusals,
                "seconds": round(self.seconds, 2),
                **{f"pooled_{name}": value for name, value in self.pooled.items()}}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class Replay:
    """The simulated clock over one history; runs policies from a shared first model."""

    def __init__(self, history: History, config: Config, every: int) -> None:
        self.history, self.config, self.every = history, config, every
        self.target = str(config.dataset.target)
        self.metric = str(config.gate.metric)
        self.by_key = history.rows.partition_by(PARTITION, as_dict=True)
        self.index = {key: i for i, key in enumerate(history.keys)}
        self.first, self.initial = self._first_model()

    def part(self, key: str) -> pl.DataFrame:
        """Rows of one partition (empty frame when none landed)."""
        return self.by_key.get((key,), self.history.rows.head(0))

    def known_by(self, key: str, rows: pl.DataFrame | None = None) -> pl.DataFrame:
        """Rows up to `key` (or `rows`), each label kept only where known by the end of `key`.

        Nothing a policy sees at a step may hold a label from its future.
        """
        if rows is None:
            rows = self.history.rows.filter(pl.col(PARTITION) <= key)
        return rows.with_columns(pl.when(pl.col(KNOWN) <= key).then(pl.col(self.target))
                                 .alias(self.target))

    def retrain(self, step: int, deployed: Deployed | None, reason: str,
                change: str | None) -> tuple[Deployed | None, bool]:
        """A retrain at the end of partition `step`: plan, fit, gate; the new deployment."""
        keys, config = self.history.keys, self.config
        now = keys[step]
        cutoff_index = step + 1 - config.triggers.label_delay
        cutoff = keys[cutoff_index] if cutoff_index < len(keys) else offset_partitions(
            config, dt.datetime.strptime(now, config.partitions.key_format)
            .replace(tzinfo=dt.UTC), 1).strftime(config.partitions.key_format)
        rows = self.known_by(now)
        available = rows.filter(pl.col(self.target).is_not_null())[PARTITION].unique()
        plan = plan_training_set(sorted(available.to_list()), config, cutoff=cutoff,
                                 change=change, reason=reason,
                                 inherited=deployed.regime if deployed else (None, None))
        frame = apply_plan(rows, plan, PARTITION, self.target)
        candidate = fit_candidate(frame, config)
        judged = judge_candidate(frame.filter(pl.col("split") == "holdout"),
                                 candidate.evaluation, candidate.threshold,
                                 deployed.evaluation if deployed else None,
                                 deployed.threshold if deployed else None, config,
                                 after_change=change is not None)
        if not judged.decision.approved:
            return deployed, False
        recent = (rows.filter(pl.col(PARTITION) >= plan.reference_start)
                  if plan.reference_start else None)
        reference, labelled, _ = choose_reference(recent, frame, self.target)
        profiles = fit_profiles(reference, config, labelled)
        name = f"{reason}@{now}"
        learned = sum(key >= plan.regime_start for key in candidate.info["refit"]["partitions"]
                      ) if plan.regime_start else 0
        return Deployed(name, candidate.final, candidate.evaluation, candidate.threshold,
                        profiles, (plan.regime_start, plan.regime_kind), learned,
                        judged.decision.candidate_value), True

    def _first_model(self) -> tuple[int, Deployed]:
        """The first partition at whose end a full window can be trained, and that model."""
        window = self.config.training.window
        for step, key in enumerate(self.history.keys):
            known = self.history.rows.filter(pl.col(KNOWN) <= key)
            if known[PARTITION].n_unique() >= window:
                deployed, approved = self.retrain(step, None, "initial", None)
                if approved and deployed is not None:
                    return step, deployed
        raise ValueError(f"the history never holds training.window ({window}) labelled "
                         "partitions, or the first model never passes the gate")

    def run(self, policy: str, progress: Progress | None = None) -> PolicyResult:
        """Replay one policy from the first model to the end of the history.

        Each partition is a step of `progress`, named `policy partition`, its note what the
        policy did at its end (a retrain, a refusal, an event skipped in the cooldown).
        """
        progress = progress if progress is not None else Progress(enabled=False)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of "
                             f"{', '.join(POLICIES)}")
        config, keys = self.config, self.history.keys
        result = PolicyResult(policy)
        deployed, last_change = self.initial, None
        scored: dict[str, tuple[Deployed, np.ndarray]] = {}
        errors: dict[str, list[float]] = {}
        values_of: dict[str, list[float]] = {}
        pending: Deployed | None = None
        waiting: str | None = None  # a drift change whose retrain waits for its labels
        followed: set[str | None] = set()  # regimes whose follow-up was launched (run key)
        pooled_y, pooled_scores = [], []
        delay = config.triggers.label_delay
        began = time.perf_counter()
        for step in range(self.first + 1, len(keys)):
            key = keys[step]
            progress.start(f"{policy} {key}")
            rows = self.known_by(key, self.part(key))
            if rows.height:
                scored[key] = (deployed, deployed.model.predict(rows))
            events: list[tuple[str, str]] = []
            if policy in ("drift", "drift+performance") and rows.height:
                _, verdict = partition_drift(deployed.profiles, rows, config)
                if verdict["drifted"]:
                    events.append(("drift", key))
            labelled_key = keys[step - delay] if step - delay > self.first else None
            if labelled_key in scored:
                model, scores = scored.pop(labelled_key)
                part = self.part(labelled_key)
                known = (part[KNOWN] <= key).fill_null(False).to_numpy()
                if known.any():
                    y, _ = encode_labels(part.filter(pl.Series(known))[self.target],
                                         config.dataset.task, model.model.classes)
                    values = compute_metrics(y, scores[known], config.dataset.task,
                                             model.threshold or OPERATING_THRESHOLD)
                    result.measured.append({"partition": labelled_key, "model": model.name,
                                            "rows": int(known.sum()), **values})
                    pooled_y.append(y)
                    pooled_scores.append(scores[known])
                    series = errors.setdefault(model.name, [])
                    series.append(error_of(values, config))
                    floor = config.triggers.min_performance
                    low = floor is not None and math.isfinite(values[self.metric]) and \
                        worse_than(config.dataset.task, self.metric, values[self.metric], floor)
                    alarm = performance_alarm(series, **config.drift.page_hinkley.model_dump())
                    realised = values_of.setdefault(model.name, [])
                    realised.append(values[self.metric])
                    alarm = alarm or degradation(realised, model.validated, config) is not None
                    if policy in ("performance", "drift+performance") and (low or alarm):
                        events.append(("performance", labelled_key))
                    if policy == "online":
                        labelled = part.filter(pl.Series(known))
                        deployed, pending = self._online(deployed, pending, labelled, result,
                                                         labelled_key)
            events, waiting = self._await_labels(step, events, waiting, last_change, result)
            reason, change = self._decide(policy, step, events, last_change)
            start = deployed.regime[0]
            if reason is None and policy in ("performance", "drift+performance") \
                    and start not in followed and followup_due(
                        config, deployed.regime[1], start, deployed.regime_partitions,
                        [row["partition"] for row in result.measured]):
                reason, change = "performance", start  # as performance_sensor's follow-up
                followed.add(start)
            if reason is None:
                for kind, partition in events:
                    result.events.append({"partition": partition, "event": kind,
                                          "action": "skipped (cooldown)"})
                progress.done(", ".join(f"{kind} skipped (cooldown)" for kind, _ in events))
                continue
            deployed, approved = self.retrain(step, deployed, reason, change)
            result.events.append({"partition": key, "event": reason,
                                  "action": "retrained" if approved else "refused"})
            if approved:
                result.retrains[reason] += 1
            else:
                result.refusals += 1
            if change is not None:
                last_change = change
            progress.done(f"{reason}: {'retrained' if approved else 'refused by the gate'}")
        result.seconds = time.perf_counter() - began
        if pooled_y:
            y, scores = np.concatenate(pooled_y), np.concatenate(pooled_scores)
            every_metric = compute_metrics(y, scores, config.dataset.task)
            result.pooled = {name: every_metric[name] for name in ("accuracy", "roc_auc")
                             if name in every_metric}
        return result

    def _await_labels(self, step: int, events: list[tuple[str, str]], waiting: str | None,
                      last_change: str | None, result: PolicyResult
                      ) -> tuple[list[tuple[str, str]], str | None]:
        """The events to decide on at `step`, and the drift change still waiting for labels.

        As `drift_sensor` does (`awaiting_labels`): a drift outside the cooldown starts a
        change that waits until its first partition's labels are known (measured), then asks
        for its retrain; drifts while it waits are the same change.
        """
        drifted = next((key for kind, key in events if kind == "drift"), None)
        if drifted is not None and (waiting is not None or cooldown_reason(
                self.config, drifted, last_change) is None):
            events = [event for event in events if event[0] != "drift"]
            if waiting is None:
                waiting = drifted
                result.events.append({"partition": drifted, "event": "drift",
                                      "action": "waiting for labels"})
        if waiting is not None and awaiting_labels(
                self.config, waiting, {row["partition"] for row in result.measured},
                self.history.keys[:step + 1]) is None:
            return [("drift", waiting), *events], None
        return events, waiting

    def _decide(self, policy: str, step: int, events: list[tuple[str, str]],
                last_change: str | None) -> tuple[str | None, str | None]:
        """Whether the policy retrains at the end of `step`, why, and on which change."""
        if policy == "schedule":
            due = (step - self.first) % self.every == 0
            return ("schedule", None) if due else (None, None)
        for kind, partition in events:
            if cooldown_reason(self.config, partition, last_change) is None:
                return kind, partition
        return None, None

    def _online(self, deployed: Deployed, pending: Deployed | None, labelled: pl.DataFrame,
                result: PolicyResult, key: str) -> tuple[Deployed, Deployed | None]:
        """Judge the pending update on `labelled` (unseen by both), then learn `labelled`."""
        from ct_assets.lib.online import continue_model, judge_update

        config, task = self.config, self.config.dataset.task
        if pending is not None and labelled.height:
            decision, _ = judge_update(pending.model, pending.threshold, deployed.model,
                                       deployed.threshold, labelled, config)
            if decision.approved:
                deployed = pending
                result.retrains["online"] += 1
            else:
                result.refusals += 1
        if labelled.filter(pl.col(self.target).is_not_null()).height < 10:
            return deployed, None
        model, _ = continue_model(deployed.model, labelled, target=self.target, task=task,
                                  rounds=config.training.online_rounds,
                                  params=config.training.params, seed=config.training.seed)
        return deployed, Deployed(f"online@{key}", model, model, deployed.threshold,
                                  deployed.profiles, deployed.regime)


def backtest(config: Config, policies: list[str] | None = None, *, every: int = 7,
             progress: Progress | None = None) -> tuple[list[PolicyResult], Replay]:
    """Replay each policy over the landed history (in a scratch directory).

    `progress` counts one step per policy and replayed partition (its total known once the
    history is read and the first model trained, which it names while they run).

    Returns:
        One result per policy, in the order asked, and the replay (history, first step).
    """
    chosen = policies or list(POLICIES)
    unknown = [name for name in chosen if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {', '.join(map(repr, unknown))}; expected one of "
                         f"{', '.join(POLICIES)}")
    progress = progress if progress is not None else Progress(enabled=False)
    began = time.perf_counter()
    progress.start("reading the landed history")
    with tempfile.TemporaryDirectory(prefix="ct-backtest-") as scratch:
        history = load_history(config, Path(scratch))
    progress.start("training the first model")
    replay = Replay(history, config, every)
    keys, steps = history.keys, len(history.keys) - replay.first - 1
    progress.say(f"history {keys[0]} … {keys[-1]} read and a first model trained at the end "
                 f"of {keys[replay.first]} in {time.perf_counter() - began:.1f} s; "
                 f"replaying {steps} partitions for each of {len(chosen)} "
                 f"polic{'y' if len(chosen) == 1 else 'ies'}")
    progress.total = steps * len(chosen)
    return [replay.run(policy, progress) for policy in chosen], replay


def results_table(results: list[PolicyResult], metric: str) -> list[dict[str, Any]]:
    """The policies table: one row per policy, figures rounded for reading."""
    rows = []
    for result in results:
        row = result.summary(metric)
        row["by_reason"] = ", ".join(f"{k} {v}" for k, v in sorted(row["by_reason"].items()))
        rows.append({name: round(value, 4) if isinstance(value, float) else value
                     for name, value in row.items()})
    return rows


def chart_png(results: list[PolicyResult], metric: str) -> bytes:
    """The realised metric over time, one line per policy, each retrain marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.2))
    for number, result in enumerate(results):
        color = f"C{number}"
        points = [(row["partition"], row[metric]) for row in result.measured]
        if not points:
            continue
        axis.plot(range(len(points)), [value for _, value in points], color=color,
                  label=result.policy, linewidth=1.2)
        position = {partition: i for i, (partition, _) in enumerate(points)}
        marks = [position[e["partition"]] for e in result.events
                 if e["action"] == "retrained" and e["partition"] in position]
        axis.scatter(marks, [points[i][1] for i in marks], color=color, marker="v", s=30,
                     zorder=3)
        if result.retrains.get("online"):
            axis.plot([], [], " ", label=f"  ({result.retrains['online']} online updates)")
    first = results[0].measured if results else []
    if first:
        ticks = np.linspace(0, len(first) - 1, min(8, len(first))).astype(int)
        axis.set_xticks(ticks, [first[i]["partition"] for i in ticks], fontsize=7)
    axis.set(title=f"Realised {metric} per partition (▼ a retrain)", ylabel=metric)
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
