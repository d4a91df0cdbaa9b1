"""The schema inferred from landed files when `dataset.columns` is left out, pinned, and enforced.

Tiny hand-made landing dirs (CSV and Parquet) under `tmp_path`, so every inferred type, note
and rejection is known exactly.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from ct_assets.lib.config import SCHEMA_FILE, Config, ConfigError, config_from_dict, load_config
from ct_assets.lib.ingest import FileCatalog, data_columns, ingest_window
from ct_assets.lib.schema import (
    MAX_CATEGORIES,
    NothingLanded,
    bind_schema,
    ensure_schema,
    infer_schema,
    pin_schema,
    sample_column,
    schema_yaml,
)

MINIMAL = {"source": "files", "landing_dir": "landing", "timestamp": "ts", "target": "label"}
DAY = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def minimal(tmp_path: Path, **dataset: object) -> Config:
    """A `files` config naming only the data (plus `dataset` keys), its landing dir created."""
    config = config_from_dict({"dataset": {**MINIMAL, **dataset}}, base_dir=tmp_path)
    config.landing_dir.mkdir(parents=True, exist_ok=True)
    return config


def land(config: Config, name: str, frame: pl.DataFrame) -> Path:
    """Write `frame` into the landing dir as CSV or Parquet, by the name's suffix."""
    path = config.landing_dir / name
    if name.endswith(".parquet"):
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def stamps(count: int, day: dt.datetime = DAY) -> list[str]:
    """ISO 8601 text timestamps, one a minute from `day`: what a CSV holds."""
    return [(day + dt.timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(count)]


def types_of(record: dict) -> dict[str, str]:
    return {name: spec["type"] for name, spec in record["columns"].items()}


def test_a_minimal_files_config_loads_with_its_schema_pending(tmp_path):
    config = minimal(tmp_path)
    assert config.dataset.schema_pending
    assert config.dataset.columns == {} and config.dataset.columns_pinned_in is None
    assert config.dataset.column_types() == {"label": "int", "ts": "timestamp"}
    assert config.partitions.start == dt.date(2025, 1, 1)  # nothing pinned: the default
    assert data_columns(config) == []
    with pytest.raises(ConfigError, match="neither declared nor pinned"):
        ingest_window(config, DAY, DAY + dt.timedelta(days=1),
                      FileCatalog(config.landing_catalog_path))


def test_integers_stay_integers_across_files_and_one_float_anywhere_makes_a_float(tmp_path):
    config = minimal(tmp_path)
    # `small` holds only small integers in the first file and large ones in the last;
    # `ratio` is integral in two files and has one fraction in the last row of the last file.
    land(config, "a.csv", pl.DataFrame({"ts": stamps(3), "small": [1, 2, 3], "ratio": [1, 2, 3],
                                        "label": [0, 1, 0]}))
    land(config, "b.parquet", pl.DataFrame({"ts": stamps(2), "small": [4, 5],
                                            "ratio": [7, 8], "label": [1, 0]},
                                           schema_overrides={"small": pl.Int16}))
    land(config, "c.csv", pl.DataFrame({"ts": stamps(3), "small": [9_007_199_254_740_993, 6, 7],
                                        "ratio": ["4", "5", "6.5"], "label": [0, 1, 1]}))
    record = infer_schema(config)
    assert types_of(record) == {"ts": "timestamp", "small": "int", "ratio": "float",
                                "label": "int"}
    assert record["files"] == 3 and record["rows_sampled"] == 8
    assert record["task"] == "binary"


def test_every_file_is_sampled_not_only_the_first(tmp_path):
    config = minimal(tmp_path)
    for day in range(5):
        values = [str(v) for v in range(40)]
        if day == 4:
            values[-1] = "n/a"  # text in the last row of the last file only
        land(config, f"day{day}.csv", pl.DataFrame({"ts": stamps(40), "code": values,
                                                    "label": [0, 1] * 20}))
    record = infer_schema(config)
    assert record["columns"]["code"]["type"] == "string"  # 41 distinct values, not 5 % of 200
    assert record["files"] == 5 and record["rows_sampled"] == 200


def test_categories_ids_and_free_text(tmp_path):
    config = minimal(tmp_path, id="txn")
    rows = 400
    land(config, "a.csv", pl.DataFrame({
        "ts": stamps(rows),
        "txn": [f"t-{i:05d}" for i in range(rows)],              # an id: all distinct
        "region": ["north", "south", "east", "west"] * (rows // 4),  # 4 of 400: category
        "note": [f"called back about order {i}" for i in range(rows)],  # free text
        "city": [f"city{i % (MAX_CATEGORIES + 1)}" for i in range(rows)],  # 51: too many
        "shop": [f"shop{i % 25}" for i in range(rows)],          # 25 of 400 > 5 %: string
        "flag": ["true", "False"] * (rows // 2),
        "label": [0, 1] * (rows // 2),
    }))
    kinds = types_of(infer_schema(config))
    assert kinds == {"ts": "timestamp", "txn": "string", "region": "category", "note": "string",
                     "city": "string", "shop": "string", "flag": "bool", "label": "int"}
    # The same few values under dataset.id stay a string: an id is never a feature.
    config = minimal(tmp_path, id="region")
    assert types_of(infer_schema(config))["region"] == "string"


def test_a_string_timestamp_is_recognised_nullable_and_ranges_are_left_open(tmp_path):
    config = minimal(tmp_path)
    land(config, "a.csv", pl.DataFrame({"ts": ["2026-01-05 10:00:00", "2026-01-04", None],
                                        "x": [0.5, None, 3.0], "label": [1, None, 0]}))
    record = infer_schema(config)
    assert record["columns"] == {"ts": {"type": "timestamp", "nullable": False},
                                 "x": {"type": "float", "nullable": True},
                                 "label": {"type": "int", "nullable": True}}
    assert record["first_timestamp"] == "2026-01-04T00:00:00+00:00"


def test_a_timestamp_format_is_honoured_and_an_unparsable_one_is_named(tmp_path):
    frame = pl.DataFrame({"ts": ["05.01.2026 10h00", "06.01.2026 11h30"], "label": [0, 1]})
    config = minimal(tmp_path)
    land(config, "a.csv", frame)
    with pytest.raises(ConfigError, match=r"no value of column 'ts' parses as a timestamp.*"
                                          r"'05.01.2026 10h00'.*timestamp_format"):
        infer_schema(config)
    config = minimal(tmp_path, timestamp_format="%d.%m.%Y %Hh%M")
    assert infer_schema(config)["first_timestamp"] == "2026-01-05T10:00:00+00:00"


@pytest.mark.parametrize(("labels", "task", "kind"), [
    ([0, 1, 1, 0], "binary", "int"),
    (["true", "false", "true", "true"], "binary", "bool"),
    ([0.0, 1.0, 1.0, 0.0], "binary", "float"),
    ([0, 1, 2, 1], "multiclass", "int"),
    (["up", "down", "up", "up"], "multiclass", "string"),  # binary needs 0/1
    ([0.25, 1.5, 3.0, 2.0], "regression", "float"),
])
def test_the_task_follows_the_target(tmp_path, labels, task, kind):
    config = minimal(tmp_path)
    land(config, "a.csv", pl.DataFrame({"ts": stamps(4), "label": labels}))
    record = infer_schema(config)
    assert (record["task"], record["columns"]["label"]["type"]) == (task, kind)


def test_a_task_set_in_ct_yaml_is_kept_and_not_pinned(tmp_path):
    config = minimal(tmp_path, task="regression")
    land(config, "a.csv", pl.DataFrame({"ts": stamps(4), "label": [0, 1, 1, 0]}))
    assert infer_schema(config)["task"] is None
    resolved = ensure_schema(config)
    assert resolved.dataset.task == "regression" and resolved.gate.metric == "rmse"


def test_the_inferred_task_brings_its_metric_defaults(tmp_path):
    config = minimal(tmp_path)
    land(config, "a.csv", pl.DataFrame({"ts": stamps(4), "label": [0.5, 1.5, 2.25, 8.0]}))
    assert (config.dataset.task, config.gate.metric) == ("binary", "roc_auc")  # pending
    resolved = ensure_schema(config)
    assert (resolved.dataset.task, resolved.gate.metric) == ("regression", "rmse")
    assert resolved.gate.min_value is None


def test_only_columns_in_every_file_are_pinned_and_bad_files_are_skipped(tmp_path):
    config = minimal(tmp_path)
    land(config, "a.csv", pl.DataFrame({"ts": stamps(2), "x": [1, 2], "extra": ["p", "q"],
                                        "label": [0, 1]}))
    land(config, "b.csv", pl.DataFrame({"ts": stamps(2), "x": [3, 4], "label": [1, 0]}))
    land(config, "no_time.csv", pl.DataFrame({"x": [1], "label": [0]}))
    (config.landing_dir / "junk.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (config.landing_dir / "nested.parquet").write_bytes(b"PAR1 truncated")
    record = infer_schema(config)
    assert types_of(record) == {"ts": "timestamp", "x": "int", "label": "int"}
    notes = "\n".join(record["notes"])
    assert "column 'extra' is in 1 of 2 files: left out" in notes
    assert "no_time.csv: no column 'ts'" in notes
    assert "junk.csv: not read (not a CSV file (binary content))" in notes
    assert "nested.parquet: not read" in notes


def test_parquet_types_are_kept_and_nested_columns_left_out(tmp_path):
    config = minimal(tmp_path)
    rows = 100
    land(config, "a.parquet", pl.DataFrame({
        "ts": [DAY + dt.timedelta(hours=i) for i in range(rows)],
        "count": pl.Series([i % 7 for i in range(rows)], dtype=pl.Int32),
        "score": pl.Series([i / 3 for i in range(rows)], dtype=pl.Float32),
        "seen": [bool(i % 2) for i in range(rows)],
        "opened": [dt.datetime(2020, 1, 1) + dt.timedelta(days=i) for i in range(rows)],
        "channel": pl.Series(["pos", "web"] * (rows // 2), dtype=pl.Categorical),
        "tags": [["a", "b"]] * rows,
        "label": [0, 1] * (rows // 2),
    }))
    record = infer_schema(config)
    assert types_of(record) == {"ts": "timestamp", "count": "int", "score": "float",
                                "seen": "bool", "opened": "timestamp", "channel": "category",
                                "label": "int"}
    assert any("'tags' has type List(String), which cannot be ingested" in note
               for note in record["notes"])


def test_nothing_landed_and_no_timestamp_anywhere_are_one_line_errors(tmp_path):
    config = minimal(tmp_path)
    with pytest.raises(NothingLanded, match=r"nothing has landed under .*landing"):
        infer_schema(config)
    assert ensure_schema(config, required=False) is config  # `ct run`: nothing to do yet
    land(config, "a.csv", pl.DataFrame({"time": stamps(2), "label": [0, 1]}))
    with pytest.raises(ConfigError, match=r"column 'ts' is in none of the landed files .*"
                                          r"\(they have label, time\)") as caught:
        ensure_schema(config, required=False)
    assert not isinstance(caught.value, NothingLanded)
    land(config, "b.csv", pl.DataFrame({"ts": stamps(2), "y": [0, 1]}))
    with pytest.raises(ConfigError, match=r"dataset.target: column 'label' is in none of the "
                                          r"landed files with column 'ts'.*dataset.labels"):
        ensure_schema(config)
    assert not (config.storage_dir / SCHEMA_FILE).exists()


def test_the_pinned_schema_is_read_at_load_and_never_inferred_again(tmp_path):
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump({"dataset": MINIMAL}), encoding="utf-8")
    config = load_config(tmp_path / "ct.yaml")
    config.landing_dir.mkdir(parents=True)
    land(config, "a.csv", pl.DataFrame({"ts": stamps(3, DAY - dt.timedelta(days=3)),
                                        "x": [1, 2, 3], "label": [0, 1, 0]}))
    resolved = ensure_schema(config)
    path = config.storage_dir / SCHEMA_FILE
    assert resolved.dataset.columns_pinned_in == path and resolved.path == config.path
    assert [p.name for p in path.parent.iterdir()] == [SCHEMA_FILE]  # no temporary left
    assert resolved.partitions.start == dt.date(2026, 1, 2)  # the data's first day
    assert not resolved.partitions.start_from_file
    pinned = path.read_text(encoding="utf-8")

    # A later file where x has fractions changes nothing: the pin is the contract.
    land(config, "b.csv", pl.DataFrame({"ts": stamps(2), "x": [0.5, 1.5], "label": [1, 0]}))
    again = load_config(tmp_path / "ct.yaml")
    assert again.dataset.column_types()["x"] == "int"
    assert ensure_schema(again) is again
    assert path.read_text(encoding="utf-8") == pinned
    # A second writer finds the first one's pin and keeps it.
    assert pin_schema(again, {**json.loads(pinned), "columns": {"ts": {"type": "timestamp"}}}
                      ) == json.loads(pinned)
    assert path.read_text(encoding="utf-8") == pinned


def test_a_pinned_schema_is_checked_like_declared_columns(tmp_path):
    config = minimal(tmp_path, segment="region")  # accepted while pending: nothing to check
    land(config, "a.csv", pl.DataFrame({"ts": stamps(2), "x": [1, 2], "label": [0, 1]}))
    with pytest.raises(ConfigError, match=r"\(with the schema pinned in .*schema.json\): "
                                          r".*dataset.segment: column 'region' is not in"):
        ensure_schema(config)
    (config.storage_dir / SCHEMA_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"schema.json: not a pinned schema.*delete it"):
        config_from_dict({"dataset": MINIMAL}, base_dir=tmp_path)


def test_bind_schema_gives_a_pending_config_its_columns_in_place(tmp_path):
    config = minimal(tmp_path)
    dataset_before = config.dataset
    land(config, "a.csv", pl.DataFrame({"ts": stamps(4), "x": [1, 2, 3, 4],
                                        "label": [0.5, 1.5, 2.5, 9.0]}))
    assert bind_schema(config) is config
    assert config.dataset is not dataset_before
    assert config.dataset.column_types() == {"ts": "timestamp", "x": "int", "label": "float"}
    assert (config.dataset.task, config.gate.metric) == ("regression", "rmse")


def test_later_files_are_validated_against_the_pin(tmp_path):
    config = minimal(tmp_path)
    land(config, "a.csv", pl.DataFrame({"ts": stamps(3), "x": [1, 2, 3], "kind": ["p"] * 3,
                                        "label": [0, 1, 0]}))
    config = ensure_schema(config)
    land(config, "b.csv", pl.DataFrame({"ts": stamps(2), "x": [4, 5], "kind": ["q", "q"],
                                        "new_col": ["s", "t"], "label": [1, 0]}))
    land(config, "c.csv", pl.DataFrame({"ts": stamps(2), "x": [6, 7], "label": [1, 0]}))
    result = ingest_window(config, DAY, DAY + dt.timedelta(days=1),
                           FileCatalog(config.landing_catalog_path))
    assert result.unknown_columns == {"b.csv": ["new_col"]}
    assert sorted(result.rows["_source_file"]) == ["a.csv"] * 3 + ["b.csv"] * 2
    assert "new_col" not in result.rows.columns
    assert [(file.relpath, reason) for file, reason in result.rejected_files] == [
        ("c.csv", "missing required column(s) kind")]


def test_sample_column_reads_text_value_by_value():
    assert sample_column(pl.Series([" 7", "-3", None, ""])).kind == "int"
    assert sample_column(pl.Series(["1", "2.5", "1e3"])).kind == "float"
    assert sample_column(pl.Series(["TRUE", "false"])).kind == "bool"
    assert sample_column(pl.Series(["1", "x"])).kind == "text"
    assert sample_column(pl.Series([None, ""], dtype=pl.String)).kind == "null"
    huge = sample_column(pl.Series(["99999999999999999999"]))  # past Int64: a number, not int
    assert huge.kind == "float"
    many = sample_column(pl.Series([str(i) for i in range(MAX_CATEGORIES + 1)]))
    assert many.values is None and many.non_null == MAX_CATEGORIES + 1


def test_schema_yaml_pastes_into_ct_yaml_as_the_same_schema(tmp_path):
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump({"dataset": MINIMAL}), encoding="utf-8")
    config = load_config(tmp_path / "ct.yaml")
    config.landing_dir.mkdir(parents=True)
    rows = 200
    land(config, "a.csv", pl.DataFrame({"ts": stamps(rows), "amount": [i / 4 for i in range(rows)],
                                        "kind": ["a", "b"] * (rows // 2),
                                        "weird name: x": list(range(rows)),
                                        "label": [0, 1, 2, 1] * (rows // 4)}))
    config = ensure_schema(config)
    text = schema_yaml(config)
    assert text.startswith(f"# dataset schema pinned in {config.storage_dir / SCHEMA_FILE}")
    assert "  task: multiclass\n  columns:\n    ts: {type: timestamp, nullable: false}\n" in text
    assert "    kind: category\n" in text
    assert "# partitions.start is unset: the partitions start at 2026-01-05." in text

    declared = tmp_path / "declared"
    declared.mkdir()
    (declared / "ct.yaml").write_text(
        "dataset:\n  source: files\n  landing_dir: ../landing\n  timestamp: ts\n"
        "  target: label\n" + text + "storage: {dir: state}\n", encoding="utf-8")
    pasted = load_config(declared / "ct.yaml")
    assert pasted.dataset.columns == config.dataset.columns
    assert pasted.dataset.task == "multiclass"
    assert pasted.dataset.columns_pinned_in is None
    assert schema_yaml(pasted).startswith(f"# dataset.columns as declared in {pasted.path}")


def test_schema_yaml_of_declared_columns_keeps_their_specs_and_categorical(tmp_path):
    columns = {"ts": "timestamp", "x": {"type": "float", "min": 0, "max": 1}, "code": "int",
               "label": "int"}
    config = config_from_dict({"dataset": {**MINIMAL, "columns": columns,
                                           "categorical": ["code"]},
                               "partitions": {"start": "2026-01-01"}}, base_dir=tmp_path)
    text = schema_yaml(config)
    block = yaml.safe_load(text)
    assert block == {"columns": {"ts": "timestamp", "x": {"type": "float", "min": 0, "max": 1},
                                 "code": "int", "label": "int"}, "categorical": ["code"]}
    assert "partitions.start" not in text and "task" not in block
