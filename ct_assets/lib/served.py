"""The rows `ct serve` scored, read back from its request log for the `served_predictions` asset.

`ct serve` appends every scored row to Parquet files under `<storage.dir>/serving/requests/`,
each written aside and renamed into place, never changed afterwards. A partition of
`served_predictions` holds the rows received in it. What was ingested is recorded in
`<storage.dir>/serving/ingested.json` (file name → the partitions taken from it), written by the
asset itself, so the sensor and `ct run` ask only for partitions with rows not yet ingested.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.model_store import write_json_atomic
from ct_assets.lib.validation import PARTITION

REQUESTS = "requests"
INGESTED = "ingested.json"
RECEIVED_AT = "received_at"
ROW_ID = "row_id"
LOG_COLUMNS = ("request_id", "row", ROW_ID, RECEIVED_AT, "model_name", "model_version",
               "score", "decision")


def log_files(serving_dir: Path) -> list[Path]:
    """The complete request-log files (a file being written has a hidden temporary name)."""
    directory = serving_dir / REQUESTS
    return sorted(directory.glob("requests-*.parquet")) if directory.is_dir() else []


def _partition_key(config: Config) -> pl.Expr:
    every = config.partitions.truncate_every
    return (pl.col(RECEIVED_AT).dt.convert_time_zone("UTC").dt.truncate(every)
            .dt.strftime(config.partitions.key_format))


def file_partitions(path: Path, config: Config) -> set[str]:
    """The partitions the rows of one request-log file were received in."""
    keys = pl.scan_parquet(path).select(_partition_key(config).unique()).collect()
    return set(keys.to_series().drop_nulls().to_list())


def catalog(serving_dir: Path, config: Config) -> dict[str, dict[str, list[str]]]:
    """Each request-log file: the partitions it `holds` rows of and those `ingested` from it.

    The record (`ingested.json`) is read; a file not in it yet is read once for its partitions.
    """
    path = serving_dir / INGESTED
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {file.name: record.get(file.name) or {
        "holds": sorted(file_partitions(file, config)), "ingested": []}
        for file in log_files(serving_dir)}


def pending_partitions(serving_dir: Path, config: Config) -> set[str]:
    """Partitions with request-log rows that `served_predictions` has not ingested yet."""
    return {key for entry in catalog(serving_dir, config).values()
            for key in set(entry["holds"]) - set(entry["ingested"])}


def read_served(serving_dir: Path, config: Config, start: dt.datetime, end: dt.datetime,
                keys: list[str], record: dict[str, dict[str, list[str]]]) -> pl.DataFrame:
    """The served rows received in `[start, end)` (partitions `keys`), as stored.

    Only the files of `record` (a `catalog` taken by the caller, which then records what it
    read with `record_ingested`) holding rows of `keys` are read. The row id becomes the
    dataset's id column (`dataset.id`; else it stays `row_id`), the receive time its timestamp
    column, and each row gets its partition key, so drift and performance read served rows
    like landed ones.
    """
    window = set(keys)
    frames = []
    for name, entry in record.items():
        if window & set(entry["holds"]):
            frames.append(pl.scan_parquet(serving_dir / REQUESTS / name).filter(
                pl.col(RECEIVED_AT).is_between(start, end, closed="left")).collect())
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(
        schema={name: pl.String for name in LOG_COLUMNS} | {
            RECEIVED_AT: pl.Datetime("us", "UTC"), "row": pl.Int64, "score": pl.Float64})
    frame = frame.with_columns(_partition_key(config).alias(PARTITION))
    if config.dataset.id and config.dataset.id not in frame.columns:
        frame = frame.rename({ROW_ID: config.dataset.id})
    if config.dataset.timestamp and config.dataset.timestamp not in frame.columns:
        frame = frame.with_columns(pl.col(RECEIVED_AT).alias(config.dataset.timestamp))
    return frame


def record_ingested(serving_dir: Path, keys: list[str],
                    record: dict[str, dict[str, list[str]]]) -> None:
    """Record that the partitions `keys` of the files of `record` were ingested.

    `record` is the catalog the rows were read with: a file that landed after it was taken is
    not in it, so it stays pending for the next run instead of being marked as read.
    """
    window = set(keys)
    for entry in record.values():
        entry["ingested"] = sorted(set(entry["ingested"]) | (set(entry["holds"]) & window))
    write_json_atomic(serving_dir / INGESTED, record)


def logged_rows(serving_dir: Path, config: Config, ids: pl.Series) -> pl.DataFrame:
    """Rows among `ids` that the server logged but `served_predictions` has not taken in yet.

    As the labels asset matches labels to rows (id, partition, timestamp): feedback may land
    before the sensor took its rows in, and must not be refused as being for an unknown id.
    """
    key, timestamp = str(config.dataset.id), str(config.dataset.timestamp)
    frames = []
    for name, entry in catalog(serving_dir, config).items():
        if set(entry["holds"]) - set(entry["ingested"]):
            frames.append(pl.scan_parquet(serving_dir / REQUESTS / name)
                          .select(ROW_ID, RECEIVED_AT)
                          .filter(pl.col(ROW_ID).is_in(ids.cast(pl.String).implode()))
                          .collect())
    rows = pl.concat(frames) if frames else pl.DataFrame(
        schema={ROW_ID: pl.String, RECEIVED_AT: pl.Datetime("us", "UTC")})
    return rows.select(pl.col(ROW_ID).cast(ids.dtype, strict=False).alias(key),
                       _partition_key(config).alias(PARTITION),
                       pl.col(RECEIVED_AT).alias(timestamp)).drop_nulls(key)


def endpoint_status(serving_dir: Path, model_name: str, token: str | None,
                    timeout: float = 2.0) -> dict[str, Any] | None:
    """What a running `ct serve` serves, asked of the server itself; None when none was started.

    `endpoint.json` (written by the server at start-up, removed at shutdown) says where it
    listens; the version comes from its model metadata route (`/v2/models/{name}`), not from
    the model store, so a server still on an old version shows it.
    """
    path = serving_dir / "endpoint.json"
    if not path.exists():
        return None
    endpoint = json.loads(path.read_text(encoding="utf-8"))
    url = f"{endpoint['url']}/v2/models/{model_name}"
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            metadata = json.loads(response.read())
    except (OSError, ValueError) as error:
        return {"url": endpoint["url"], "pid": endpoint.get("pid"), "reachable": False,
                "error": f"{url}: {error}"}
    return {"url": endpoint["url"], "pid": endpoint.get("pid"), "reachable": True,
            "model_name": metadata.get("name"),
            "version": (metadata.get("parameters") or {}).get("version")}
