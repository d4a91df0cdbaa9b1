"""Open Inference Protocol v2: decode and validate inference requests, encode responses.

Inputs, one tensor per feature (shape `[n]` or `[n, 1]`; MLServer's pandas codec,
`"parameters": {"content_type": "pd"}`, is the same form), or one `[n, k]` numeric tensor of the
encoded feature matrix in the model's column order (MLServer's numpy codec: categories as the
model's codes). The binary tensor extension (`Inference-Header-Content-Length`, tritonclient's
default) is accepted for inputs; outputs are always JSON. How values are checked, and what is
missing, is in `values`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np

from ct_assets.serve.models import ServedModel
from ct_assets.serve.values import (
    ALLOWED,
    OUTPUTS,
    STRINGS,
    Batch,
    RequestError,
    category_values,
    check_types,
    dumps,
    finite,
    id_values,
    numeric_values,
    show,
)

BINARY_FORMATS = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
                  "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
                  "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
DATATYPES = frozenset({*BINARY_FORMATS, "BYTES"})


def _binary_tensor(chunk: bytes, datatype: str, where: str) -> Any:
    """Decode one input's binary tensor data (little-endian; BYTES length-prefixed)."""
    if datatype != "BYTES":
        fmt = np.dtype(BINARY_FORMATS[datatype])
        if len(chunk) % fmt.itemsize:
            raise RequestError(400, f"{where}: {len(chunk)} bytes of binary data is not a "
                                    f"whole number of {datatype} values")
        return np.frombuffer(chunk, dtype=fmt)
    values, offset = [], 0
    try:
        while offset < len(chunk):
            (size,) = struct.unpack_from("<I", chunk, offset)
            if offset + 4 + size > len(chunk):
                raise struct.error("truncated")
            values.append(chunk[offset + 4:offset + 4 + size].decode("utf-8"))
            offset += 4 + size
    except (struct.error, UnicodeDecodeError) as error:
        raise RequestError(400, f"{where}: malformed BYTES binary data ({error})") from None
    return values


def _flat(data: list[Any], ndim: int) -> list[Any]:
    """Nested `data` (one list per row) flattened row-major, as OIP allows."""
    for _ in range(ndim - 1):
        if data and all(type(item) is list for item in data):
            data = [value for item in data for value in item]
    return data


def _tensor(tensor: Any, index: int, binary: bytes, offset: int
            ) -> tuple[str, str, list[int], Any, int]:
    """Validate one input tensor: `(name, datatype, shape, flat data, new binary offset)`."""
    if type(tensor) is not dict:
        raise RequestError(422, f"inputs[{index}] must be an object with name, shape, "
                                "datatype, data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if type(name) is not str or not name:
        raise RequestError(422, f"inputs[{index}].name must be a non-empty string")
    if type(datatype) is not str or datatype not in DATATYPES:
        raise RequestError(422, f"inputs[{index}] ({name}).datatype {show(datatype)} is not "
                                f"one of {', '.join(sorted(DATATYPES))}")
    rows = shape[0] if type(shape) is list and shape else None
    width = shape[1] if type(shape) is list and len(shape) == 2 else 1
    if type(rows) is not int or type(width) is not int or rows < 0 or width < 0 \
            or len(shape) > 2:
        raise RequestError(422, f"inputs[{index}] ({name}).shape must be [n] or [n, k] with "
                                f"sizes >= 0, got {show(shape)}")
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if type(parameters) is dict else None
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise RequestError(400, f"inputs[{index}] ({name}).parameters.binary_data_size "
                                    f"{show(size)} overruns the {len(binary)} bytes of binary "
                                    "data")
        data = _binary_tensor(binary[offset:offset + size], datatype, f"inputs[{index}] "
                                                                       f"({name})")
        offset += size
    else:
        data = tensor.get("data")
        if type(data) is not list:
            raise RequestError(422, f"inputs[{index}] ({name}).data must be a list")
        if len(shape) == 2 and data and type(data[0]) is list:
            data = _flat(data, 2)
    if len(data) != rows * width:
        raise RequestError(422, f"inputs[{index}] ({name}): shape {shape} needs "
                                f"{rows * width} values, data has {len(data)}")
    return name, datatype, shape, data, offset


def _request_fields(payload: Any, served: ServedModel) -> tuple[str, tuple[str, ...], Any]:
    """The request id, the outputs asked for, and the content type, validated."""
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with 'inputs'")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(422, f"id must be a string, got {show(request_id)}")
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(422, "parameters must be an object")
    content_type = (parameters or {}).get("content_type")
    if content_type not in (None, "pd", "np"):
        raise RequestError(422, f"parameters.content_type {show(content_type)} is not "
                                "supported (pd: one input per column; np: one [n, k] matrix)")
    available = OUTPUTS if served.task != "regression" else ("score", "id")
    outputs = available
    asked = payload.get("outputs")
    if asked is not None:
        if not isinstance(asked, list):
            raise RequestError(422, "outputs must be a list of {name}")
        names = []
        for index, output in enumerate(asked):
            name = output.get("name") if isinstance(output, dict) else None
            if name not in available:
                raise RequestError(422, f"outputs[{index}].name {show(name)} is not one of "
                                        f"{', '.join(available)}")
            names.append(name)
        outputs = tuple(names) or available
    return request_id or uuid.uuid4().hex, outputs, content_type


def decode_infer(payload: Any, binary: bytes, served: ServedModel, *, id_column: str | None,
                 max_rows: int) -> Batch:
    """Validate an OIP inference request against the model's inputs."""
    request_id, outputs, content_type = _request_fields(payload, served)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "inputs must be a non-empty list of tensors")
    tensors, offset = {}, 0
    for index, tensor in enumerate(inputs):
        name, datatype, shape, data, offset = _tensor(tensor, index, binary, offset)
        if name in tensors:
            raise RequestError(422, f"inputs[{index}] ({name}): a second input of that name")
        tensors[name] = (index, datatype, shape, data)
    rows = {name: shape[0] for name, (_, _, shape, _) in tensors.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name} has {count}" for name, count in rows.items())
        raise RequestError(422, f"inputs have different numbers of rows: {counts}")
    count = next(iter(rows.values()))
    if count == 0:
        raise RequestError(422, "inputs hold no rows")
    if count > max_rows:
        raise RequestError(413, f"{count} rows exceed the limit of {max_rows} per request")
    ids = None
    if id_column is not None and id_column in tensors:
        index, datatype, shape, data = tensors.pop(id_column)
        integral = datatype == "BYTES" or datatype.startswith(("INT", "UINT"))
        if not integral or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(422, f"inputs[{index}] ({id_column}): the row id takes BYTES or "
                                    f"an integer datatype with shape [n], got {datatype} {shape}")
        ids = id_values(data, lambda i: f"inputs[{index}] ({id_column}) element {i}")
    unknown = [name for name in tensors if name not in served.schema]
    if len(tensors) == 1 and unknown and (content_type == "np" or tensors[unknown[0]][2][1:]):
        columns, matrix = _matrix(*tensors[unknown[0]], served, unknown[0])
    elif content_type == "np":
        raise RequestError(422, "content_type np takes one [n, k] input holding the feature "
                                f"matrix ({len(served.features)} columns)")
    else:
        columns, matrix = _columns(tensors, served, unknown, count), None
    generated = [f"{request_id}:{row}" for row in range(count)] if ids is None else ids
    return Batch(request_id, count, columns, generated, outputs, matrix)


def _locator(index: int, name: str) -> Callable[[int], str]:
    """Names element `row` of input `index` in an error message."""
    return lambda row: f"inputs[{index}] ({name}) element {row}"


def _columns(tensors: dict[str, Any], served: ServedModel, unknown: list[str], rows: int
             ) -> dict[str, Any]:
    """Per-column inputs validated against each feature's kind.

    The JSON columns are type-checked together and the numeric ones converted to float64 in
    one `np.array` call; a column is looked at alone only to name what is wrong in it.
    """
    if unknown:
        first = tensors[unknown[0]][0]
        raise RequestError(422, f"inputs[{first}] ({unknown[0]}): not an input of the model; "
                                f"unknown input(s) {', '.join(unknown)}")
    missing = [name for name in served.names if name not in tensors]
    if missing:
        raise RequestError(422, f"missing input(s) for feature(s) {', '.join(missing)}")
    columns: dict[str, Any] = {}
    strings: list[tuple[str, int, list[Any]]] = []
    numbers: list[tuple[str, int, str, list[Any]]] = []
    for feature in served.features:
        index, datatype, shape, data = tensors[feature.name]
        if len(shape) == 2 and shape[1] != 1:
            raise RequestError(422, f"inputs[{index}] ({feature.name}): a feature takes shape "
                                    f"[n] or [n, 1], got {shape}")
        if feature.kind == "category":
            if datatype != "BYTES":
                raise RequestError(422, f"inputs[{index}] ({feature.name}): a categorical "
                                        f"feature takes BYTES (strings), got {datatype}")
            strings.append((feature.name, index, data))
        elif datatype == "BYTES":
            raise RequestError(422, f"inputs[{index}] ({feature.name}): a numeric feature takes "
                                    f"{feature.datatype} (or another numeric datatype), got BYTES")
        elif type(data) is list:
            numbers.append((feature.name, index, datatype, data))
        else:  # binary tensor data
            columns[feature.name] = numeric_values(data, datatype,
                                                   _locator(index, feature.name))
    if strings and not set(map(type, chain.from_iterable(d for *_, d in strings))) <= STRINGS:
        for name, index, data in strings:
            category_values(data, _locator(index, name))  # raises, naming the element
    columns.update((name, data) for name, _, data in strings)
    if not numbers:
        return columns
    flat = list(chain.from_iterable(data for *_, data in numbers))
    if not set(map(type, flat)) <= ALLOWED["FP"][0] or any(
            datatype[0] != "F" for _, _, datatype, _ in numbers):
        for name, index, datatype, data in numbers:
            check_types(data, datatype, _locator(index, name))
    try:
        values = np.array(flat, dtype=np.float64).reshape(len(numbers), rows)
    except OverflowError:  # name the column: convert them one by one
        for name, index, datatype, data in numbers:
            columns[name] = numeric_values(data, datatype, _locator(index, name))
        return columns
    if not np.isfinite(values).all():
        for (name, index, _, _), row in zip(numbers, values, strict=True):
            finite(row, _locator(index, name))
    columns.update((name, row) for (name, _, _, _), row in zip(numbers, values, strict=True))
    return columns


def _matrix(index: int, datatype: str, shape: list[int], data: Any, served: ServedModel,
            name: str) -> tuple[dict[str, Any], np.ndarray]:
    """One `[n, k]` tensor of the encoded feature matrix; category codes turned back to values."""
    where = f"inputs[{index}] ({name})"
    width = len(served.features)
    if len(shape) != 2 or shape[1] != width or datatype == "BYTES":
        raise RequestError(422, f"{where}: not a feature of the model, nor a numeric [n, "
                                f"{width}] feature matrix (got {datatype} {shape}); features: "
                                f"{', '.join(served.names)}")
    flat = numeric_values(data, datatype, lambda i: f"{where} element {i}")
    matrix = np.ascontiguousarray(flat.reshape(shape[0], width))
    positions, limits = served.category_codes
    codes = matrix[:, positions]
    known = np.isnan(codes) | ((codes >= 0) & (codes < limits) & (codes == np.floor(codes)))
    if not known.all():
        row, which = (int(i) for i in np.argwhere(~known)[0])
        column = int(positions[which])
        raise RequestError(422, f"{where} element {row * width + column} "
                                f"({served.features[column].name}): {codes[row, which]!r} is "
                                f"not a category code of the model (0 … "
                                f"{int(limits[which]) - 1}) or NaN")
    columns: dict[str, Any] = {}
    for column, feature in enumerate(served.features):
        values = matrix[:, column]
        categories = feature.categories
        columns[feature.name] = values if categories is None else [
            None if code != code else categories[int(code)] for code in values.tolist()]
    return columns, matrix


def infer_response(model_name: str, served: ServedModel, batch: Batch, scores: np.ndarray,
                   decisions: list[Any] | None) -> bytes:
    """The OIP response: `score`, `decision` (classification) and `id` outputs, as JSON."""
    outputs = []
    for name in batch.outputs:
        if name == "score":
            outputs.append({"name": "score", "datatype": "FP64", "shape": list(scores.shape),
                            "data": scores.ravel().tolist()})
        elif name == "decision" and decisions is not None:
            integral = served.decision_datatype == "INT64"
            outputs.append({"name": "decision", "datatype": served.decision_datatype,
                            "shape": [batch.rows],
                            "data": decisions if integral else [str(d) for d in decisions]})
        elif name == "id":
            outputs.append({"name": "id", "datatype": "BYTES", "shape": [batch.rows],
                            "data": batch.ids})
    return dumps({"model_name": model_name, "model_version": served.version,
                  "id": batch.request_id, "outputs": outputs})


def model_metadata(name: str, served: ServedModel, versions: list[str],
                   id_column: str | None) -> dict[str, Any]:
    """OIP model metadata: name, versions, platform, inputs, outputs (and what is served)."""
    outputs = [{"name": "score", "datatype": "FP64",
                "shape": [-1, len(served.classes)] if served.task == "multiclass" else [-1]}]
    if served.task != "regression":
        outputs.append({"name": "decision", "datatype": served.decision_datatype, "shape": [-1]})
    outputs.append({"name": "id", "datatype": "BYTES", "shape": [-1]})
    return {
        "name": name, "versions": versions, "platform": served.platform,
        "inputs": [{"name": f.name, "datatype": f.datatype, "shape": [-1]}
                   for f in served.features],
        "outputs": outputs,
        "parameters": {"version": served.version, "task": served.task,
                       "classes": list(served.classes) if served.task != "regression" else None,
                       "operating_threshold": served.threshold if served.task == "binary"
                       else None, "id_input": id_column},
    }
