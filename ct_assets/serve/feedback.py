"""`POST /feedback`: labels for rows served earlier, written as one label file per request.

The file lands in the labels landing dir (`dataset.labels.landing_dir`), where the `labels`
asset reads label files: the id column, the label column and `known_at` (UTC), named as in
`dataset.labels`. It is written as `.<name>.tmp` and renamed, so ingestion never reads half.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from ct_assets.serve.models import ServedModel
from ct_assets.serve.settings import ServeSettings
from ct_assets.serve.values import RequestError


def _label(value: Any, served: ServedModel, where: str) -> Any:
    """A label checked against the model: one of its classes, or a finite number."""
    if served.task == "regression":
        if type(value) not in (int, float) or not math.isfinite(value):
            raise RequestError(422, f"{where}.label: {value!r} is not a finite number")
        return float(value)
    classes = served.classes
    if type(value) is float and value.is_integer() and int(value) in classes:
        value = int(value)
    if type(value) is bool or value not in classes:
        raise RequestError(422, f"{where}.label: {value!r} is not one of the model's classes "
                                f"{list(classes)}")
    return value


def _known_at(value: Any, now: dt.datetime, where: str) -> dt.datetime:
    """When the label became known: ISO 8601 (naive means UTC), default now."""
    if value is None:
        return now
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise RequestError(422, f"{where}.known_at: {value!r} is not an ISO 8601 time")
    return (moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None
            else moment.astimezone(dt.UTC))


def parse_labels(payload: Any, served: ServedModel, settings: ServeSettings) -> pl.DataFrame:
    """The label file's rows: id, label, known_at, each validated (422 naming the entry)."""
    if settings.labels_dir is None or not settings.label_id_column or not settings.label_column:
        raise RequestError(409, "feedback is off: labels have no landing dir; set "
                                "dataset.labels (landing_dir, id, label) in ct.yaml, or start "
                                "a packaged server with --labels-dir")
    if not isinstance(payload, dict) or not isinstance(payload.get("labels"), list):
        raise RequestError(422, "the body must be a JSON object with a list 'labels'")
    entries = payload["labels"]
    if not entries:
        raise RequestError(422, "labels is empty")
    if len(entries) > settings.max_rows:
        raise RequestError(413, f"{len(entries)} labels exceed the limit of {settings.max_rows} "
                                "per request")
    now = dt.datetime.now(dt.UTC)
    ids, labels, known = [], [], []
    for index, entry in enumerate(entries):
        where = f"labels[{index}]"
        if not isinstance(entry, dict):
            raise RequestError(422, f"{where} must be an object with id, label, known_at")
        extra = [key for key in entry if key not in ("id", "label", "known_at")]
        if extra:
            raise RequestError(422, f"{where}.{extra[0]}: unknown field")
        row_id = entry.get("id")
        if settings.label_id_type == "int":
            if type(row_id) is not int:
                raise RequestError(422, f"{where}.id: {row_id!r} is not an integer id")
        elif type(row_id) not in (str, int) or row_id == "":
            raise RequestError(422, f"{where}.id: {row_id!r} is not a non-empty string id")
        if "label" not in entry or entry["label"] is None:
            raise RequestError(422, f"{where}.label: missing")
        ids.append(row_id if settings.label_id_type == "int" else str(row_id))
        labels.append(_label(entry["label"], served, where))
        known.append(_known_at(entry.get("known_at"), now, where))
    label_type = (pl.Float64 if served.task == "regression" else
                  pl.Int64 if served.decision_datatype == "INT64" else pl.String)
    return pl.DataFrame({
        settings.label_id_column: pl.Series(ids, dtype=pl.Int64 if settings.label_id_type
                                            == "int" else pl.String),
        settings.label_column: pl.Series(labels if label_type != pl.String
                                         else [str(v) for v in labels], dtype=label_type),
        settings.known_at_column: pl.Series(known, dtype=pl.Datetime("us", "UTC")),
    })


def write_labels(frame: pl.DataFrame, directory: Path) -> str:
    """Write one label file atomically into the landing dir; returns its name."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"feedback-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = directory / f".{name}.tmp"
    frame.write_parquet(temporary)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, directory / name)
    return name
