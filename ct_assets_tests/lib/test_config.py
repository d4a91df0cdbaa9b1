import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib.config import ConfigError, config_from_dict, load_config, parse_duration
from ct_assets.lib.ingest import check_columns_in_data

FILES_DATASET = {
    "source": "files",
    "landing_dir": "landing",
    "timestamp": "ts",
    "target": "label",
    "columns": {"ts": "timestamp", "x": {"type": "float", "min": 0}, "label": "int"},
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ct.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_simulator_config_has_defaults(tmp_path):
    config = load_config(write(tmp_path, "dataset:\n  source: simulator\n"))
    assert config.dataset.target == "is_fraud"
    assert config.dataset.timestamp == "ts"
    assert config.training.window == 30
    assert config.gate.metric == "roc_auc"
    assert config.partitions.granularity == "daily"
    assert config.storage_dir == (tmp_path / "data").resolve()
    assert config.landing_dir == (tmp_path / "data" / "landing").resolve()
    assert config.warehouse_path.name == "warehouse.duckdb"
    assert config.relative_columns() == ["amount"]


def test_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    nested = tmp_path / "project"
    nested.mkdir()
    text = "dataset: {source: simulator, landing_dir: inbox}\nstorage: {dir: state}\n"
    config = load_config(write(nested, text))
    assert config.landing_dir == nested / "inbox"
    assert config.storage_dir == nested / "state"


def test_ct_config_environment_variable(tmp_path, monkeypatch):
    path = write(tmp_path, "dataset: {source: simulator}\nstorage: {dir: elsewhere}\n")
    monkeypatch.setenv("CT_CONFIG", str(path))
    assert load_config().storage_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"dataset": {"source": "simulator"}, "trainign": {}}, "trainign: unknown key"),
        ({"dataset": {"source": "simulator", "colour": 1}}, "dataset.colour: unknown key"),
        ({"dataset": {"source": "simulator"}, "training": {"window": "many"}},
         "training.window: Input should be a valid integer"),
        ({"dataset": {"source": "simulator"}, "partitions": {"start": "2025-13-01"}},
         "partitions.start"),
        ({"dataset": {"source": "kafka"}}, "dataset.source"),
        ({"dataset": {"source": "simulator"}, "partitions": {"granularity": "yearly"}},
         "'yearly'"),
        ({"dataset": {**FILES_DATASET, "target": "nope"}},
         "dataset.target: column 'nope' is not in dataset.columns"),
        ({"dataset": {**FILES_DATASET, "columns": {"ts": "timestamp", "label": "decimal"}}},
         "dataset.columns.label.type"),
        ({"dataset": {"source": "files", "timestamp": "ts"}},
         "dataset.target is required"),
        ({"dataset": {"source": "simulator"}, "training": {"window": 5, "holdout": 5}},
         "training.holdout (5) must be smaller than training.window (5)"),
        ({"dataset": {"source": "simulator"}, "triggers": {"max_model_age": "soon"}},
         "triggers.max_model_age"),
        ({"dataset": {"source": "simulator"}, "triggers": {"max_model_age": "30s"}},
         "shorter than the shortest model age, 1 minute"),
        ({"dataset": {"source": "simulator"}, "features": {"relative_to_recent": ["region"]}},
         "column 'region' is not numeric"),
        ({"dataset": {"source": "simulator"},
          "training": {"strategy": "online", "model": "sklearn_logreg"}},
         "training.strategy online needs a model that can learn new rows (lightgbm or "
         "sklearn_sgd), not 'sklearn_logreg'"),
    ],
)
def test_invalid_config_is_one_line_naming_key_and_value(tmp_path, raw, expected):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, base_dir=tmp_path, source="ct.yaml")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("ct.yaml: ")
    assert "\n" not in message


def test_bad_date_names_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"partitions\.start.*2025-13-01"):
        load_config(write(tmp_path, "dataset: {source: simulator}\npartitions:\n"
                                    "  start: 2025-13-01\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "dataset: [unclosed\n"))


def test_column_missing_from_the_data_is_a_config_error(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    pl.DataFrame({"ts": ["2026-01-01T00:00:00"], "label": [1]}).write_csv(landing / "a.csv")
    config = config_from_dict({"dataset": FILES_DATASET}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"dataset.columns: 'x' not found in the landed data"):
        check_columns_in_data(config)


def test_columns_present_in_the_data_pass(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    frame = pl.DataFrame({"ts": [dt.datetime(2026, 1, 1)], "x": [1.0], "label": [0]})
    frame.write_parquet(landing / "a.parquet")
    (landing / "junk.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # bad files don't count
    config = config_from_dict({"dataset": FILES_DATASET}, base_dir=tmp_path)
    check_columns_in_data(config)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("12h", 43200), ("7d", 604800),
                                               ("2w", 1209600), (90, 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_parse_duration_rejects_garbage():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("a week")


REGRESSION_DATASET = {**FILES_DATASET, "task": "regression",
                      "columns": {"ts": "timestamp", "x": "float", "label": "float"}}


def test_metric_defaults_follow_the_task(tmp_path):
    binary = config_from_dict({"dataset": FILES_DATASET}, base_dir=tmp_path)
    assert (binary.gate.metric, binary.gate.min_value, binary.triggers.min_performance,
            binary.triggers.max_degradation) == ("roc_auc", 0.6, 0.7, 0.05)
    assert binary.metric_higher_is_better
    regression = config_from_dict({"dataset": REGRESSION_DATASET}, base_dir=tmp_path)
    assert (regression.gate.metric, regression.gate.min_value,
            regression.triggers.min_performance,
            regression.triggers.max_degradation) == ("rmse", None, None, None)
    assert not regression.metric_higher_is_better
    chosen = config_from_dict({"dataset": FILES_DATASET, "gate": {"metric": "log_loss"}},
                              base_dir=tmp_path)
    assert chosen.gate.min_value is None and chosen.triggers.min_performance is None
    assert chosen.triggers.max_degradation is None


@pytest.mark.parametrize(("raw", "expected"), [
    ({"dataset": REGRESSION_DATASET}, None),
    ({"dataset": FILES_DATASET, "gate": {"metric": "rmse"}},
     "gate.metric: 'rmse' is not a binary metric"),
    ({"dataset": REGRESSION_DATASET, "gate": {"metric": "roc_auc"}},
     "gate.metric: 'roc_auc' is not a regression metric"),
    # An unknown name never reaches the SQL that selects the metric column.
    ({"dataset": FILES_DATASET, "gate": {"metric": 'roc_auc" FROM x; --'}},
     "gate.metric: 'roc_auc\" FROM x; --' is not a binary metric"),
    ({"dataset": FILES_DATASET, "triggers": {"min_performance": 1.5}},
     "triggers.min_performance: roc_auc lies in [0, 1], got 1.5"),
    ({"dataset": REGRESSION_DATASET, "gate": {"min_value": -1}},
     "gate.min_value: rmse is never negative, got -1"),
    ({"dataset": {**REGRESSION_DATASET}, "gate": {"metric": "r2", "min_value": 2}},
     "gate.min_value: r2 is at most 1, got 2"),
])
def test_metrics_and_bounds_are_validated_against_the_task(tmp_path, raw, expected):
    if expected is None:
        config_from_dict(raw, base_dir=tmp_path)
        return
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, base_dir=tmp_path)
    assert expected in str(error.value)


def test_an_integer_bound_stays_exact_past_two_to_the_53(tmp_path):
    dataset = {**FILES_DATASET, "columns": {"ts": "timestamp", "label": "int",
                                            "x": {"type": "int", "max": 2**53 + 1, "min": 0.5}}}
    spec = config_from_dict({"dataset": dataset}, base_dir=tmp_path).dataset.columns["x"]
    assert spec.max == 2**53 + 1 and isinstance(spec.max, int)
    assert spec.min == 0.5
