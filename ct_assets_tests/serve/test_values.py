"""JSON in and out, with orjson and with the standard library alike."""

from __future__ import annotations

import numpy as np
import pytest

from ct_assets.serve import values
from ct_assets.serve.values import RequestError, numeric_values, parse_json


@pytest.fixture(params=["orjson", "json"])
def json_library(request, monkeypatch):
    if request.param == "json":
        monkeypatch.setattr(values, "orjson", None)
    return request.param


@pytest.mark.parametrize("text", [b"[NaN]", b"[Infinity]", b"[-Infinity]", b"{", b"\xff"])
def test_non_json_is_a_400_with_either_library(json_library, text):
    with pytest.raises(RequestError) as raised:
        parse_json(text)
    assert raised.value.status == 400 and "JSON" in str(raised.value)


def test_round_trip_with_either_library(json_library):
    document = {"a": [1, 2.5, None, "x"], "b": {"c": True}}
    assert parse_json(values.dumps(document)) == (document, b"")


def test_numbers_too_large_and_infinite_values_name_the_element():
    with pytest.raises(RequestError, match=r"at 3: a number too large") as raised:
        numeric_values([10**400], "FP64", lambda row: f"at {row + 3}")
    assert raised.value.status == 422
    with pytest.raises(RequestError, match=r"at 1 is infinite"):
        numeric_values(np.array([1.0, np.inf]), "FP64", lambda row: f"at {row}")
    assert np.isnan(numeric_values([None, 1], "FP64", str)[0])
