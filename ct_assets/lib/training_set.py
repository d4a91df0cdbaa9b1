"""The training set: the last `training.window` labelled partitions, split by time."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.features import offset_partitions
from ct_assets.lib.validation import PARTITION

SPLIT = "split"


def choose_partitions(available: list[str], window: int, holdout: int
                      ) -> tuple[list[str], list[str]]:
    """The training and holdout partition keys among the labelled partitions `available`.

    Takes the last `window` partitions; the most recent `holdout` of them are the holdout, so
    every holdout row is later than every training row.

    Raises:
        ValueError: fewer than `holdout + 1` labelled partitions exist.
    """
    keys = sorted(set(available))[-window:]
    if len(keys) <= holdout:
        raise ValueError(
            f"need at least {holdout + 1} labelled partitions of features for training "
            f"(training.holdout is {holdout}); found {len(keys)}"
        )
    return keys[:-holdout], keys[-holdout:]


def label_split(frame: pl.DataFrame, partition: str, holdout_keys: list[str]) -> pl.DataFrame:
    """`frame` with a `split` column: `holdout` for rows of `holdout_keys`, else `train`."""
    is_holdout = pl.col(partition).is_in(holdout_keys)
    return frame.with_columns(
        pl.when(is_holdout).then(pl.lit("holdout")).otherwise(pl.lit("train")).alias(SPLIT)
    )


def fingerprint(frame: pl.DataFrame) -> str:
    """A short content hash of a frame (same rows and values → same fingerprint)."""
    digest = hashlib.sha256()
    digest.update(",".join(f"{n}:{t}" for n, t in frame.schema.items()).encode())
    digest.update(str(frame.height).encode())
    if frame.height:
        hashes = frame.hash_rows(seed=0)
        digest.update(hashes.to_numpy().tobytes())
    return digest.hexdigest()[:16]


def summarize(frame: pl.DataFrame, target: str, task: str, timestamp: str) -> dict[str, object]:
    """Rows, time range and class balance (or target summary) per split."""
    summary: dict[str, object] = {}
    for split in ("train", "holdout"):
        part = frame.filter(pl.col(SPLIT) == split)
        info: dict[str, object] = {"rows": part.height}
        if part.height:
            info["from"] = str(part[timestamp].min())
            info["to"] = str(part[timestamp].max())
            if task == "regression":
                info["target_mean"] = float(part[target].mean())  # type: ignore[arg-type]
                info["target_std"] = float(part[target].std() or 0.0)
            else:
                counts = part[target].value_counts().sort(target)
                info["classes"] = {str(k): int(v) for k, v in counts.iter_rows()}
        summary[split] = info
    return summary


IN_REGIME = "in_regime"  # the row belongs to the current regime (from the last change point)
REGIME_START = "regime_start"  # the first partition of the current regime (null: one regime)
REGIME_KIND = "regime_kind"  # what changed: `concept` (performance fell) or `inputs` (drift)
CONCEPT_OLD_SHARE = 0.1  # after a concept change, the old rows together weigh 10 % of the new
MIN_REFERENCE_ROWS = 500  # fewer rows since a change point make too noisy a drift reference


def training_cutoff(config: Config, as_of: dt.datetime) -> str:
    """The first partition key training must not use, at time `as_of`.

    The partition still open (the one `as_of` falls in) and the `triggers.label_delay`
    partitions before it are left out: their labels are not all known yet. Partition keys of
    one granularity sort in time order, so `key < cutoff` selects what training may use.
    """
    every, fmt = config.partitions.truncate_every, config.partitions.key_format
    opened = pl.Series([as_of.astimezone(dt.UTC)]).dt.truncate(every).item()
    return offset_partitions(config, opened, -config.triggers.label_delay).strftime(fmt)


def regime_start(window_keys: list[str], *candidates: str | None) -> str | None:
    """The first partition of the current regime inside the window, or None (one regime).

    `candidates` are change points: the partition whose drift or performance failure launched
    this retrain, and the regime start the champion was trained with. The earliest one inside
    the window wins, so a retrain during a change that is still settling learns from every
    partition since it began; one at or before the window's first partition means the whole
    window is the current regime.
    """
    inside = [key for key in candidates if key and window_keys and key > window_keys[0]]
    return min(inside) if inside else None


def mark_regime(frame: pl.DataFrame, partition: str, start: str | None, kind: str | None = None
                ) -> pl.DataFrame:
    """`frame` with `in_regime`, `regime_start` and `regime_kind`.

    `in_regime` marks rows at or after `start` (all when None); `regime_kind` is `concept`
    after a performance failure, else `inputs`.
    """
    flag = pl.lit(True) if start is None else pl.col(partition) >= start
    return frame.with_columns(flag.alias(IN_REGIME),
                              pl.lit(start, dtype=pl.String).alias(REGIME_START),
                              pl.lit(kind if start else None, dtype=pl.String).alias(REGIME_KIND))


def regime_weights(in_regime: pl.Series, kind: str | None = None) -> np.ndarray | None:
    """Sample weights that let a new concept count more than the rows before it.

    After a change in the relation itself (`concept`: performance fell), rows of the regime
    weigh 1 and the older rows together weigh `CONCEPT_OLD_SHARE` of the regime: what they
    teach is now mostly wrong. After a change in the inputs only (drift), every labelled row
    counts the same (None): the old relation still holds, so the old rows are as good evidence
    as the new; making a day or two of new inputs weigh as much as the whole window only fits
    their noise (`benchmarks/policies.py`, simulated covariate drift: the drift policy's mean
    ROC AUC 0.9095 weighted, 0.9171 not).
    None also when every row is in the regime, or none is (nothing to emphasise).
    """
    recent = int(in_regime.sum())
    older = in_regime.len() - recent
    if kind != "concept" or recent == 0 or older == 0:
        return None
    old_weight = min(1.0, CONCEPT_OLD_SHARE * recent / older)
    return np.where(in_regime.to_numpy(), 1.0, old_weight)


@dataclass(frozen=True)
class TrainingPlan:
    """Which partitions a retrain trains and validates on, and the regime it emphasises.

    Attributes:
        train_keys: partitions of the training split, oldest first.
        holdout_keys: the most recent partitions, validated on.
        cutoff: the first partition training may not use (open or labels not mature).
        regime_start: first partition of the current regime inside the window, or None.
        regime_kind: `concept` (performance fell) or `inputs` (drift); None without a regime.
        reference_start: first partition of the drift reference (the change this retrain
            answers, else the regime start); None: the training rows are the reference.
    """

    train_keys: list[str]
    holdout_keys: list[str]
    cutoff: str
    regime_start: str | None
    regime_kind: str | None
    reference_start: str | None

    @property
    def keys(self) -> list[str]:
        """Every partition of the training set."""
        return [*self.train_keys, *self.holdout_keys]


def plan_training_set(available: list[str], config: Config, *, cutoff: str,
                      change: str | None = None, reason: str | None = None,
                      inherited: tuple[str | None, str | None] = (None, None)) -> TrainingPlan:
    """Plan a retrain: window, holdout and regime, from the labelled partitions `available`.

    Args:
        available: partitions holding labelled rows.
        config: the project configuration (`training.window`, `training.holdout`).
        cutoff: the first partition training may not use (`training_cutoff`).
        change: the partition whose failure launched this retrain (drift, performance).
        reason: why it was launched; `performance` means the concept changed.
        inherited: the champion's regime start and kind.

    Raises:
        ValueError: fewer than `training.holdout + 1` usable partitions.
    """
    train_keys, holdout_keys = choose_partitions(
        [key for key in available if key < cutoff], config.training.window,
        config.training.holdout)
    keys = [*train_keys, *holdout_keys]
    start = regime_start(keys, change, inherited[0])
    concept = reason == "performance" or (inherited[1] == "concept" and start == inherited[0])
    return TrainingPlan(train_keys, holdout_keys, cutoff, start,
                        ("concept" if concept else "inputs") if start else None,
                        change or start)


def apply_plan(frame: pl.DataFrame, plan: TrainingPlan, partition: str, target: str
               ) -> pl.DataFrame:
    """The training set: labelled rows of the plan's partitions, with `split` and the regime."""
    rows = frame.filter(pl.col(partition).is_in(plan.keys) & pl.col(target).is_not_null())
    return mark_regime(label_split(rows, partition, plan.holdout_keys), partition,
                       plan.regime_start, plan.regime_kind)


def choose_reference(recent: pl.DataFrame | None, frame: pl.DataFrame, target: str
                     ) -> tuple[pl.DataFrame, pl.DataFrame | None, str]:
    """The drift reference: the rows since the change, or else the training set.

    The rows since the change are used when there are at least `MIN_REFERENCE_ROWS` of them;
    otherwise train + holdout, what the deployed model learns.

    Args:
        recent: rows (labelled or not) from the plan's `reference_start` to the newest landed.
        frame: the training set.
        target: the label column.

    Returns:
        The reference rows, the labelled rows to profile the target on (None: the reference
        itself), and a sentence saying which.
    """
    if recent is not None and recent.height >= MIN_REFERENCE_ROWS:
        known = recent.filter(pl.col(target).is_not_null())
        labelled = known if known.height >= MIN_REFERENCE_ROWS else frame
        first, last = recent[PARTITION].min(), recent[PARTITION].max()
        return recent, labelled, (f"{recent.height} rows of {first} … {last}, since the change "
                                  f"(target: {labelled.height} labelled rows)")
    return frame, None, f"the {frame.height} training + holdout rows"
