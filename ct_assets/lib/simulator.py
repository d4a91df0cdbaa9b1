"""Card-transaction simulator: realistic, imbalanced fraud with a learnable signal and drift.

Deterministic: a day depends only on (day, rows, seed, drift), so simulating days one at a time
equals simulating them together. Drift scenarios start on an exact day, so tests can assert that
drift is found where it was injected and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import os
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
CHANNEL_RISK = np.array([-0.4, 0.7, 0.2])
# Transactions per hour of day (fewer at night).
HOURLY_PROFILE = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.6, 4.2, 4.6, 5.0,
                           5.6, 5.3, 4.8, 4.6, 4.8, 5.3, 5.8, 5.6, 4.6, 3.4, 2.4, 1.6])
BASE_INTERCEPT = -5.6

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
CUSTOMERS = 50_000


@dataclass(frozen=True)
class DriftScenario:
    """Which drift to inject, from which day (inclusive)."""

    kind: str = "none"
    start: dt.date | None = None
    ramp_days: int = 14

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of "
                             f"{', '.join(DRIFT_KINDS)}")
        if self.kind != "none" and self.start is None:
            raise ValueError(f"drift kind {self.kind!r} needs a start day")
        if self.ramp_days < 1:
            raise ValueError(f"ramp_days must be at least 1, got {self.ramp_days}")

    def weight(self, day: dt.date) -> float:
        """How far the drift has progressed on `day`: 0 before the start, 1 when complete."""
        if self.kind == "none" or self.start is None or day < self.start:
            return 0.0
        if self.kind == "gradual":
            return min(1.0, ((day - self.start).days + 1) / self.ramp_days)
        return 1.0


def _logit(hour: np.ndarray, merchant: np.ndarray, channel: np.ndarray, log_amount: np.ndarray,
           account_age: np.ndarray, distance: np.ndarray, velocity: np.ndarray,
           trust: np.ndarray, *, concept: bool) -> np.ndarray:
    """Fraud log-odds; `concept` swaps to the drifted relation (small, daytime, trusted)."""
    night = ((hour < 6) | (hour >= 23)).astype(float)
    new_account = (account_age < 60).astype(float)
    if concept:
        return (BASE_INTERCEPT + 1.1 * (3.6 - log_amount) + 1.4 * (1 - night)
                + 3.0 * (trust - 0.6) + 0.5 * np.log1p(velocity)
                + MERCHANT_RISK[::-1][merchant] + CHANNEL_RISK[::-1][channel] - 2.1)
    return (BASE_INTERCEPT + 0.9 * (log_amount - 3.8) + 1.5 * night + 1.2 * new_account
            + 0.7 * np.log1p(distance / 20) + 0.5 * np.log1p(velocity)
            - 3.0 * (trust - 0.6) + MERCHANT_RISK[merchant] + CHANNEL_RISK[channel])


def simulate_day(day: dt.date, rows: int, *, seed: int = 0,
                 drift: DriftScenario = DriftScenario()) -> pl.DataFrame:
    """One day of transactions, sorted by time.

    Args:
        day: the calendar day (UTC).
        rows: number of transactions.
        seed: random seed; the generator is seeded from `(seed, day)`.
        drift: the drift scenario; the day is drifted when `day >= drift.start`.

    Returns:
        A frame with the columns of `SIMULATOR_COLUMNS`.
    """
    rng = np.random.default_rng([seed, day.toordinal()])
    weight = drift.weight(day)
    region = rng.choice(len(REGIONS), rows, p=REGION_SHARES)
    in_scope = (np.ones(rows, bool) if drift.kind != "segment"
                else region == REGIONS.index(DRIFTED_SEGMENT))
    covariate = drift.kind in ("covariate", "segment") and weight > 0
    shifted = in_scope & covariate

    seconds = np.sort(_seconds_of_day(rng, rows))
    hour = seconds // 3600
    channel_shares = np.array(CHANNEL_SHARES)
    channel = rng.choice(len(CHANNELS), rows, p=channel_shares)
    online_mix = rng.choice(len(CHANNELS), rows, p=(0.35, 0.58, 0.07))
    channel = np.where(shifted, online_mix, channel)
    merchant = rng.choice(len(MERCHANTS), rows, p=MERCHANT_SHARES)
    log_amount = MERCHANT_LOG_AMOUNT[merchant] + rng.normal(0, 0.8, rows)
    log_amount = np.where(shifted, log_amount + 0.55, log_amount)
    age = np.clip(rng.normal(44, 15, rows), 18, 90).astype(np.int64)
    account_age = rng.gamma(1.6, 420, rows).astype(np.int64)
    distance = rng.lognormal(1.6, 1.2, rows)
    distance = np.where(shifted, distance * 2.5, distance)
    velocity = rng.poisson(np.where(shifted, 3.2, 2.0))
    trust = rng.beta(np.where(shifted, 3.0, 5.0), 2.0)

    logit = _logit(hour, merchant, channel, log_amount, account_age, distance, velocity, trust,
                   concept=False)
    if drift.kind in ("concept", "gradual", "segment") and weight > 0:
        new = _logit(hour, merchant, channel, log_amount, account_age, distance, velocity,
                     trust, concept=True)
        logit = np.where(in_scope, (1 - weight) * logit + weight * new, logit)
    if drift.kind == "prior" and weight > 0:
        logit = logit + 1.25
    fraud = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    index = np.arange(rows)
    return pl.DataFrame({
        "transaction_id": [f"{day:%Y%m%d}-{seed}-{i:07d}" for i in index],
        "ts": pl.Series(seconds * 1_000_000, dtype=pl.Int64).cast(pl.Duration("us"))
        + midnight,
        "customer_id": [f"c{c:05d}" for c in rng.integers(0, CUSTOMERS, rows)],
        "region": np.array(REGIONS)[region],
        "merchant_category": np.array(MERCHANTS)[merchant],
        "channel": np.array(CHANNELS)[channel],
        "amount": np.round(np.exp(log_amount), 2),
        "customer_age": age,
        "account_age_days": account_age,
        "distance_from_home_km": np.round(distance, 3),
        "txn_count_24h": velocity.astype(np.int64),
        "device_trust_score": np.round(trust, 4),
        "is_fraud": fraud,
    }).with_columns(pl.col("ts").dt.convert_time_zone("UTC"))


def _seconds_of_day(rng: np.random.Generator, rows: int) -> np.ndarray:
    profile = HOURLY_PROFILE / HOURLY_PROFILE.sum()
    hours = rng.choice(24, rows, p=profile)
    return hours * 3600 + rng.integers(0, 3600, rows)


def write_days(landing_dir: Path, *, start: dt.date, days: int, rows_per_day: int,
               seed: int = 0, drift: DriftScenario = DriftScenario()) -> list[Path]:
    """Write one Parquet file per day, `transactions_<YYYY-MM-DD>.parquet`, atomically.

    Each file is written under a hidden temporary name in the same directory, flushed to disk,
    then renamed, so a reader never sees a half-written file under its final name.

    Returns:
        The paths written, in day order.
    """
    landing_dir = Path(landing_dir)
    landing_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        frame = simulate_day(day, rows_per_day, seed=seed, drift=drift)
        final = landing_dir / f"transactions_{day.isoformat()}.parquet"
        temporary = landing_dir / f".{final.name}.{os.getpid()}.tmp"
        with temporary.open("wb") as handle:
            frame.write_parquet(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        written.append(final)
    return written
