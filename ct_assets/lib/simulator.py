"""Card-transaction simulator: realistic, imbalanced fraud with a learnable signal and drift.

Deterministic: a day depends only on (day, rows, seed, drift), so simulating days one at a time
equals simulating them together. Every random draw is made the same way whatever the drift, so
a drift scenario changes nothing before its start day, and on drifted days it changes only what
it is meant to change (e.g. `concept` leaves every feature value untouched).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

DRIFT_KINDS: tuple[str, ...] = ("none", "covariate", "concept", "prior", "gradual", "segment")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
REGION_SHARES = (0.28, 0.22, 0.2, 0.18, 0.12)
MERCHANTS: tuple[str, ...] = ("grocery", "fuel", "restaurants", "pharmacy", "travel",
                              "electronics", "online_retail", "gambling")
MERCHANT_SHARES = (0.26, 0.14, 0.17, 0.07, 0.06, 0.08, 0.17, 0.05)
MERCHANT_LOG_AMOUNT = np.array([3.4, 3.7, 3.3, 3.0, 5.3, 5.0, 4.0, 4.2])
MERCHANT_RISK = np.array([-0.6, -0.3, -0.5, -0.7, 0.6, 0.9, 0.5, 1.1])
CHANNELS: tuple[str, ...] = ("pos", "online", "atm")
CHANNEL_SHARES = (0.6, 0.32, 0.08)
DRIFTED_CHANNEL_SHARES = (0.4, 0.53, 0.07)
CHANNEL_RISK = np.array([-0.4, 0.7, 0.2])
# Relative number of transactions per hour of day (fewer at night).
HOURLY_PROFILE = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.6, 4.2, 4.6, 5.0,
                           5.6, 5.3, 4.8, 4.6, 4.8, 5.3, 5.8, 5.6, 4.6, 3.4, 2.4, 1.6])
BASE_INTERCEPT = -7.0  # about 1.8 % fraud without drift
CONCEPT_INTERCEPT = -8.3  # keeps the fraud rate about the same after a concept change
PRIOR_SHIFT = 1.4  # log-odds added by `prior` drift: roughly triples the fraud rate
COVARIATE_AMOUNT_FACTOR = 1.6
CUSTOMERS = 50_000

SIMULATOR_COLUMNS: dict[str, str] = {
    "transaction_id": "string", "ts": "timestamp", "customer_id": "string",
    "region": "category", "merchant_category": "category", "channel": "category",
    "amount": "float", "customer_age": "int", "account_age_days": "int",
    "distance_from_home_km": "float", "txn_count_24h": "int", "device_trust_score": "float",
    "is_fraud": "int",
}
TIMESTAMP_COLUMN = "ts"
TARGET_COLUMN = "is_fraud"
ID_COLUMN = "transaction_id"
SEGMENT_COLUMN = "region"
DRIFTED_SEGMENT = "south"


@dataclass(frozen=True)
class DriftScenario:
    """Which drift to inject, from which day (inclusive).

    Attributes:
        kind: One of `DRIFT_KINDS`.
        start: The first drifted day; may be None only with kind "none".
        ramp_days: For "gradual": days over which the concept change phases in linearly.
    """

    kind: str = "none"
    start: dt.date | None = None
    ramp_days: int = 14

    def __post_init__(self) -> None:
        """Refuse unknown kinds, a missing start day and a non-positive ramp."""
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of "
                             f"{', '.join(DRIFT_KINDS)}")
        if self.kind != "none" and self.start is None:
            raise ValueError(f"drift kind {self.kind!r} needs a start day")
        if self.ramp_days < 1:
            raise ValueError(f"ramp_days must be at least 1, got {self.ramp_days}")

    def weight(self, day: dt.date) -> float:
        """How far the drift has progressed on a day.

        Args:
            day: The calendar day.

        Returns:
            0 before the start (or with kind "none"), 1 once complete; "gradual" ramps up as
            `min(1, (days since start + 1) / ramp_days)`.
        """
        if self.kind == "none" or self.start is None or day < self.start:
            return 0.0
        if self.kind == "gradual":
            return min(1.0, ((day - self.start).days + 1) / self.ramp_days)
        return 1.0


def _pick(uniform: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """Map uniform draws to category codes with the given shares."""
    edges = np.cumsum(shares)
    return np.minimum(np.searchsorted(edges / edges[-1], uniform, side="right"), len(shares) - 1)


def _logit(x: dict[str, np.ndarray], *, concept: bool) -> np.ndarray:
    """Fraud log-odds; `concept` selects the drifted relation (small, daytime, trusted)."""
    night = ((x["hour"] < 6) | (x["hour"] >= 23)).astype(float)
    velocity = 0.4 * np.log1p(x["velocity"]) + x["noise"]
    if concept:
        return (CONCEPT_INTERCEPT - 1.3 * (x["log_amount"] - 3.8) + 1.6 * (1 - night)
                + 6.0 * (x["trust"] - 0.7) + velocity
                + MERCHANT_RISK[::-1][x["merchant"]] + CHANNEL_RISK[::-1][x["channel"]])
    return (BASE_INTERCEPT + 1.3 * (x["log_amount"] - 3.8) + 1.8 * night
            + 1.6 * (x["account_age"] < 90) + 1.0 * np.log1p(x["distance"] / 20)
            - 7.0 * (x["trust"] - 0.7) + velocity
            + MERCHANT_RISK[x["merchant"]] + CHANNEL_RISK[x["channel"]])


def simulate_day(day: dt.date, rows: int, *, seed: int = 0,
                 drift: DriftScenario = DriftScenario()) -> pl.DataFrame:
    """Simulate one day of card transactions, sorted by time.

    Args:
        day: The calendar day (UTC).
        rows: Number of transactions.
        seed: Random seed; the generator is seeded from `(seed, day.toordinal())`.
        drift: The drift scenario; the day is drifted when `day >= drift.start`.

    Returns:
        A frame with the columns of `SIMULATOR_COLUMNS`, in that order.
    """
    rng = np.random.default_rng([seed, day.toordinal()])
    weight = drift.weight(day)
    hours = rng.choice(24, rows, p=HOURLY_PROFILE / HOURLY_PROFILE.sum())
    micros = np.sort(hours * 3_600_000_000 + rng.integers(0, 3_600_000_000, rows))
    region = _pick(rng.random(rows), REGION_SHARES)
    in_scope = region == REGIONS.index(DRIFTED_SEGMENT) if drift.kind == "segment" else True
    shifted = in_scope & (drift.kind in ("covariate", "segment") and weight > 0)
    channel_draw = rng.random(rows)
    merchant = _pick(rng.random(rows), MERCHANT_SHARES)
    log_amount = MERCHANT_LOG_AMOUNT[merchant] + rng.normal(0, 0.8, rows)
    distance = rng.lognormal(1.6, 1.2, rows)
    velocity, drifted_velocity = rng.poisson(2.0, rows), rng.poisson(2.5, rows)
    trust, drifted_trust = rng.beta(5.0, 2.0, rows), rng.beta(4.2, 2.0, rows)
    x = {
        "hour": micros // 3_600_000_000,
        "merchant": merchant,
        "channel": np.where(shifted, _pick(channel_draw, DRIFTED_CHANNEL_SHARES),
                            _pick(channel_draw, CHANNEL_SHARES)),
        "log_amount": log_amount + shifted * np.log(COVARIATE_AMOUNT_FACTOR),
        "distance": distance * np.where(shifted, 1.8, 1.0),
        "velocity": np.where(shifted, drifted_velocity, velocity),
        "trust": np.where(shifted, drifted_trust, trust),
        "account_age": rng.gamma(1.6, 420, rows).astype(np.int64),
        "noise": rng.normal(0, 0.3, rows),
    }
    ages = np.clip(rng.normal(44, 15, rows), 18, 90).astype(np.int64)
    customers = rng.integers(0, CUSTOMERS, rows)

    logit = _logit(x, concept=False) + (PRIOR_SHIFT if drift.kind == "prior" and weight else 0)
    chance = 1 / (1 + np.exp(-logit))
    if drift.kind in ("concept", "gradual", "segment") and weight > 0:
        # Mix probabilities, not log-odds: averaging opposed log-odds would collapse the rate.
        drifted = (1 - weight) * chance + weight / (1 + np.exp(-_logit(x, concept=True)))
        chance = np.where(in_scope, drifted, chance)
    fraud = (rng.random(rows) < chance).astype(np.int64)

    midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    number = pl.int_range(0, rows, eager=True).cast(pl.String).str.zfill(7)
    return pl.DataFrame({
        "transaction_id": f"{day:%Y%m%d}-{seed}-" + number,
        "ts": pl.Series(micros, dtype=pl.Int64).cast(pl.Duration("us")) + midnight,
        "customer_id": "c" + pl.Series(customers).cast(pl.String).str.zfill(5),
        "region": pl.Series(np.array(REGIONS)[region], dtype=pl.String),
        "merchant_category": pl.Series(np.array(MERCHANTS)[merchant], dtype=pl.String),
        "channel": pl.Series(np.array(CHANNELS)[x["channel"]], dtype=pl.String),
        "amount": np.maximum(np.round(np.exp(x["log_amount"]), 2), 0.01),
        "customer_age": ages,
        "account_age_days": x["account_age"],
        "distance_from_home_km": np.round(x["distance"], 3),
        "txn_count_24h": x["velocity"].astype(np.int64),
        "device_trust_score": np.round(x["trust"], 4),
        "is_fraud": fraud,
    }).with_columns(pl.col("ts").dt.convert_time_zone("UTC"))


def write_days(landing_dir: Path, *, start: dt.date, days: int, rows_per_day: int,
               seed: int = 0, drift: DriftScenario = DriftScenario(),
               labels_dir: Path | None = None, label_delay: int = 0,
               on_day: Callable[[dt.date, list[Path]], None] | None = None) -> list[Path]:
    """Write one Parquet file per day, `transactions_<YYYY-MM-DD>.parquet`, atomically.

    Each file is written under a hidden temporary name (`.<name>.<pid>.tmp`) in the same
    directory, fsynced, then renamed, so a reader never sees a half-written file under its
    final name.

    With `labels_dir`, labels arrive later, as in production: the transaction files have no
    `is_fraud` column, and each day d also lands `labels_<d>.parquet` in `labels_dir` holding
    the labels of day d - `label_delay` (`transaction_id`, `is_fraud`, `known_at` = the
    transaction's time + `label_delay` days). Labels of the last `label_delay` days are not
    known yet, so they are not written; the next call writes them (days are deterministic).
    Labels of a day before `start` whose transactions never landed are not written either.

    Args:
        landing_dir: Directory to write into; created if missing.
        start: The first day.
        days: Number of consecutive days.
        rows_per_day: Transactions per day.
        seed: Random seed, as for `simulate_day`.
        drift: The drift scenario, as for `simulate_day`.
        labels_dir: Where label files land; None keeps the label in the transaction files.
        label_delay: Days between a transaction and the arrival of its label.
        on_day: Called after each day is written, with the day and its paths (progress).

    Returns:
        The paths written, in day order (label files after the transaction file of their day).
    """
    landing_dir = Path(landing_dir)
    written = []
    simulated: dict[dt.date, pl.DataFrame] = {}  # days of this call, for their later labels
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        before = len(written)
        frame = simulate_day(day, rows_per_day, seed=seed, drift=drift)
        if labels_dir is None:
            written.append(_write_atomic(frame, landing_dir / f"transactions_{day}.parquet"))
        else:
            written.append(_write_atomic(frame.drop(TARGET_COLUMN),
                                         landing_dir / f"transactions_{day}.parquet"))
            simulated[day] = frame  # kept until its labels land, `label_delay` days on
            labelled_day = day - dt.timedelta(days=label_delay)
            # Labels only for a day whose transactions landed (in this call or an earlier one).
            if labelled_day >= start or (landing_dir /
                                         f"transactions_{labelled_day}.parquet").exists():
                labelled = simulated.pop(labelled_day, None)
                if labelled is None:  # landed by an earlier call: the same day again
                    labelled = simulate_day(labelled_day, rows_per_day, seed=seed, drift=drift)
                labels = labelled.select(
                    ID_COLUMN, TARGET_COLUMN,
                    (pl.col(TIMESTAMP_COLUMN) + dt.timedelta(days=label_delay))
                    .alias(KNOWN_AT_COLUMN))
                written.append(_write_atomic(labels,
                                             Path(labels_dir) / f"labels_{day}.parquet"))
        if on_day is not None:
            on_day(day, written[before:])
    return written


KNOWN_AT_COLUMN = "known_at"


def _write_atomic(frame: pl.DataFrame, final: Path) -> Path:
    """Write `frame` to `final` through a hidden temporary file, fsynced, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            frame.write_parquet(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return final
