"""The training set: the last `training.window` labelled partitions, split by time."""

from __future__ import annotations

import hashlib

import polars as pl

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
