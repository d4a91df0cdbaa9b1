"""Request values: JSON in and out, the refusal of a request, and the checks of column values.

Missing values: a numeric feature takes `null` as missing (a binary tensor: NaN), which the
model treats as missing, as training did with nulls; ±Infinity is refused, and so are the
`NaN`/`Infinity` literals, which are not JSON. A categorical feature takes a string; `null` or a
category the model never saw is missing. Every problem is a `RequestError` whose message names
the field.

JSON goes through orjson when it is installed (several times faster on 100-row bodies), else
the standard library, with the same behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - the standard library does the same, slower
    orjson = None

OUTPUTS = ("score", "decision", "id")
NUMERIC_DATATYPES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                     "UINT64", "FP16", "FP32", "FP64")
_NONE = type(None)
# JSON element types each datatype family holds, and how an error message says so.
ALLOWED = {"BOOL": (frozenset({bool, _NONE}), "true, false or null"),
           "INT": (frozenset({int, _NONE}), "an integer or null"),
           "FP": (frozenset({int, float, _NONE}), "a number or null")}
STRINGS = frozenset({str, _NONE})
_FAMILY = {datatype: "BOOL" if datatype == "BOOL" else datatype.rstrip("0123456789")
           .removeprefix("U") for datatype in NUMERIC_DATATYPES}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (send null for a missing value)")


def loads(body: bytes) -> Any:
    """Parse JSON text; `NaN` and `Infinity` literals are refused (they are not JSON)."""
    if orjson is not None:
        return orjson.loads(body)
    return json.loads(body, parse_constant=_no_constant)


def dumps(document: Any) -> bytes:
    """Serialise to JSON bytes."""
    if orjson is not None:
        return orjson.dumps(document)
    return json.dumps(document).encode()


class RequestError(Exception):
    """A request the server refuses: `status` (4xx) and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Batch:
    """A decoded request: raw feature columns (numeric arrays, category lists) and row ids."""

    request_id: str
    rows: int
    columns: dict[str, Any]
    ids: list[str]
    outputs: tuple[str, ...] = OUTPUTS
    matrix: np.ndarray | None = None


def parse_json(body: bytes, header_length: str | None = None) -> tuple[Any, bytes]:
    """The JSON document of a body and the binary tensor data after it (empty when none)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} is not "
                                    f"a length within the body ({len(body)} bytes)")
        body, binary = body[:int(header_length)], body[int(header_length):]
    try:
        return loads(body), binary
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 JSON") from None
    except ValueError as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None


def show(value: Any) -> str:
    """A value as JSON, cut to 40 characters, for an error message."""
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_types(values: list[Any], datatype: str, locate: Callable[[int], str]) -> None:
    """Refuse a JSON element whose type the datatype does not hold (one pass, in C)."""
    allowed, expected = ALLOWED[_FAMILY[datatype]]
    if not set(map(type, values)) <= allowed:
        bad = next(i for i, value in enumerate(values) if type(value) not in allowed)
        raise RequestError(422, f"{locate(bad)} is {show(values[bad])}, expected {expected} "
                                f"({datatype})")


def finite(array: np.ndarray, locate: Callable[[int], str]) -> np.ndarray:
    """`array`, refusing infinities (NaN is a missing value)."""
    if array.size and not np.isfinite(array).all():
        infinite = np.flatnonzero(np.isinf(array))
        if infinite.size:
            raise RequestError(422, f"{locate(int(infinite[0]))} is infinite; only finite "
                                    "numbers, or null/NaN for a missing value, are allowed")
    return array


def numeric_values(values: Any, datatype: str, locate: Callable[[int], str]) -> np.ndarray:
    """A numeric column as float64 (NaN for missing); refuses wrong types and infinities."""
    if isinstance(values, np.ndarray):
        return finite(values.astype(np.float64), locate)
    check_types(values, datatype, locate)
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:
        raise RequestError(422, f"{locate(0)}: a number too large for FP64") from None
    return finite(array, locate)


def category_values(values: Any, locate: Callable[[int], str]) -> list[Any]:
    """A categorical column as a list of strings or None (missing)."""
    if not set(map(type, values)) <= STRINGS:
        bad = next(i for i, value in enumerate(values) if type(value) not in STRINGS)
        raise RequestError(422, f"{locate(bad)} is {show(values[bad])}, expected a string "
                                "(a category) or null")
    return values


def id_values(values: Any, locate: Callable[[int], str]) -> list[str]:
    """Row ids as strings; each a non-empty string or an integer."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    for index, value in enumerate(values):
        if (type(value) is not str and type(value) is not int) or value == "":
            raise RequestError(422, f"{locate(index)} is {show(value)}, expected a non-empty "
                                    "string or an integer id")
    return [value if type(value) is str else str(value) for value in values]
