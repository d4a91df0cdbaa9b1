"""`POST /feedback` writes label files the `labels` asset reads, and refuses bad labels."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from ct_assets.lib.files import discover, read_landed_file
from ct_assets.lib.labels import KNOWN_AT, _type_labels
from ct_assets.serve.settings import from_config
from ct_assets_tests.serve.conftest import ID, MODEL, oip_inputs, serve_in_thread, simulator_config


@pytest.fixture
def project(tmp_path, models_dir):
    """The simulator project whose storage dir holds the test store (`models_dir`)."""
    config = simulator_config(tmp_path)
    assert config.models_dir == models_dir
    return config


def test_feedback_lands_a_label_file_the_labels_asset_reads(project, trained):
    settings = from_config(project)
    rows = trained["rows"].head(3)
    with serve_in_thread(settings) as (_, client):
        served = client.post(f"/v2/models/{MODEL}/infer",
                             json={"inputs": oip_inputs(rows, trained["schema"])}).json()
        ids = next(o for o in served["outputs"] if o["name"] == "id")["data"]
        response = client.post("/feedback", json={"labels": [
            {"id": ids[0], "label": 1, "known_at": "2026-04-04T10:00:00Z"},
            {"id": ids[1], "label": 0, "known_at": "2026-04-04T11:30:00+02:00"},
            {"id": ids[2], "label": 1.0}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3
    files = discover(project.labels_dir)
    assert [file.relpath for file in files] == [body["file"]]
    assert [p.name for p in project.labels_dir.iterdir()] == [body["file"]]  # no temp file
    labels = project.dataset.labels
    frame = read_landed_file(files[0], [labels.id, labels.label])
    good, rejected = _type_labels(frame, files[0], project)
    assert rejected.height == 0
    assert good[ID].to_list() == ids
    assert good["is_fraud"].to_list() == [1, 0, 1]
    known = good[KNOWN_AT].to_list()
    assert known[0] == dt.datetime(2026, 4, 4, 10, tzinfo=dt.UTC)
    assert known[1] == dt.datetime(2026, 4, 4, 9, 30, tzinfo=dt.UTC)
    assert abs(known[2] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert pl.read_parquet(files[0].path).schema[KNOWN_AT] == pl.Datetime("us", "UTC")


@pytest.mark.parametrize(("labels", "words"), [
    ([{"id": "a", "label": 0}, {"id": "b", "label": 2}], ["labels[1]", "classes"]),
    ([{"id": "a", "label": True}], ["labels[0]", "label"]),
    ([{"id": "a", "label": "1"}], ["labels[0]", "label"]),
    ([{"id": "a"}], ["labels[0].label"]),
    ([{"id": None, "label": 1}], ["labels[0].id"]),
    ([{"id": "", "label": 1}], ["labels[0].id"]),
    ([{"id": "a", "label": 1, "known_at": "yesterday"}], ["labels[0].known_at"]),
    ([{"id": "a", "label": 1, "colour": 1}], ["labels[0].colour"]),
    ([], ["empty"]),
    ("x", ["labels"]),
])
def test_bad_labels_are_refused_naming_the_entry(shared, shared_settings, labels, words):
    response = shared.post("/feedback", json={"labels": labels})
    assert response.status_code == 422, response.text
    for word in words:
        assert word in response.json()["error"]
    assert not shared_settings.labels_dir.exists() or not any(
        shared_settings.labels_dir.iterdir())


def test_feedback_without_a_labels_dir_is_a_conflict(settings):
    settings.labels_dir = None
    with serve_in_thread(settings) as (_, client):
        response = client.post("/feedback", json={"labels": [{"id": "a", "label": 1}]})
    assert response.status_code == 409
    assert "dataset.labels" in response.json()["error"]


def test_too_many_labels(shared, shared_settings):
    labels = [{"id": str(i), "label": 0} for i in range(shared_settings.max_rows + 1)]
    response = shared.post("/feedback", json={"labels": labels})
    assert response.status_code == 413
