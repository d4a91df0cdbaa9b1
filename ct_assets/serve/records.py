"""`POST /predict`: rows as JSON records (`{"records": [{feature: value, …}, …]}`)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from ct_assets.serve.models import ServedModel
from ct_assets.serve.values import (
    Batch,
    RequestError,
    category_values,
    dumps,
    id_values,
    numeric_values,
    show,
)


def decode_records(payload: Any, binary: bytes, served: ServedModel, *, id_column: str | None,
                   max_rows: int) -> Batch:
    """Validate `{"records": [{feature: value, …}, …]}` (and an optional request `id`).

    `binary` is ignored (records are JSON only): the signature is `decode_infer`'s.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise RequestError(422, "the body must be a JSON object with a list 'records'")
    unexpected = [key for key in payload if key not in ("records", "id")]
    if unexpected:
        raise RequestError(422, f"unknown field(s) {', '.join(map(str, unexpected))}; "
                                "expected records and an optional id")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(422, f"id must be a string, got {show(request_id)}")
    records = payload["records"]
    if not records:
        raise RequestError(422, "records is empty")
    if len(records) > max_rows:
        raise RequestError(413, f"{len(records)} records exceed the limit of {max_rows} per "
                                "request")
    names = set(served.names)
    with_id = names | {id_column} if id_column else names
    has_id = False
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(422, f"records[{index}] must be an object of feature values")
        keys = record.keys()
        if keys == names or keys == with_id:
            has_id = has_id or (keys == with_id and id_column is not None)
            continue
        extra = sorted(key for key in keys if key not in with_id)
        if extra:
            raise RequestError(422, f"records[{index}].{extra[0]}: not a feature of the model")
        missing = [name for name in served.names if name not in keys]
        raise RequestError(422, f"records[{index}].{missing[0]}: missing feature")
    request_id = request_id or uuid.uuid4().hex
    ids = [f"{request_id}:{row}" for row in range(len(records))]
    if has_id:  # a record without the id field gets a generated id
        ids = id_values([record[id_column] if id_column in record else ids[row]
                         for row, record in enumerate(records)],
                        lambda i: f"records[{i}].{id_column}")
    columns = {}
    for feature in served.features:
        values = [record[feature.name] for record in records]

        def locate(row: int, name: str = feature.name) -> str:
            return f"records[{row}].{name}"

        if feature.kind == "category":
            columns[feature.name] = category_values(values, locate)
        else:
            datatype = "BOOL" if feature.datatype == "BOOL" else "FP64"
            columns[feature.name] = numeric_values(values, datatype, locate)
    return Batch(request_id, len(records), columns, ids)


def records_response(model_name: str, served: ServedModel, batch: Batch, scores: np.ndarray,
                     decisions: list[Any] | None) -> bytes:
    """The `/predict` response: one `{id, score, decision}` per record.

    `model_name` is unused (the signature is `infer_response`'s).
    """
    if scores.ndim == 2:
        classes = [str(value) for value in served.classes]
        predictions = [{"id": row_id, "score": max(row), "decision": decision,
                        "probabilities": dict(zip(classes, row, strict=True))}
                       for row_id, row, decision in zip(batch.ids, scores.tolist(),
                                                        decisions or [], strict=True)]
    elif decisions is None:
        predictions = [{"id": row_id, "score": score}
                       for row_id, score in zip(batch.ids, scores.tolist(), strict=True)]
    else:
        predictions = [{"id": row_id, "score": score, "decision": decision}
                       for row_id, score, decision in zip(batch.ids, scores.tolist(), decisions,
                                                          strict=True)]
    return dumps({"model_version": served.version, "request_id": batch.request_id,
                  "predictions": predictions})
