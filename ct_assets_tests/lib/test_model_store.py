import datetime as dt
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

import ct_assets
from ct_assets.lib import serving
from ct_assets.lib.config import config_from_dict
from ct_assets.lib.features import build_features, feature_schema
from ct_assets.lib.model_store import (
    DECISION,
    MANIFEST,
    POINTER,
    SEAL_KEY,
    ModelStore,
    ModelStoreError,
)
from ct_assets.lib.monitoring import REFERENCE_FILE
from ct_assets.lib.simulator import simulate_day
from ct_assets.lib.training import LIGHTGBM_FILE, SPEC_FILE, train_model

PROJECT_ROOT = Path(ct_assets.__file__).resolve().parents[1]
KILL_ROUNDS = 10


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return config_from_dict({"dataset": {"source": "simulator"}},
                            base_dir=tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def scored(config):
    """A small LightGBM fraud model and a frame to score."""
    start = dt.date(2026, 4, 1)
    dates = [start + dt.timedelta(days=offset) for offset in range(3)]
    raw = pl.concat([simulate_day(day, 2_000, seed=9) for day in dates]).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))
    frame = build_features(raw, config, [f"{day:%Y-%m-%d}" for day in dates])
    with threadpool_limits(1):
        model, _ = train_model(frame, schema=feature_schema(config), target="is_fraud",
                               task="binary", params={"num_threads": 1}, seed=0)
    return model, frame.tail(300)


def manifest_for(model, **extra):
    return {"feature_schema": [{"name": s.name, "type": s.type, "categories": s.categories}
                               for s in model.specs],
            "task": model.task, "metrics": {"inner_validation": {"roc_auc": 0.9}}, **extra}


def save_version(store, version, model, work, **extra):
    files = model.save(work / f"source-{version}")
    files[REFERENCE_FILE] = _file(work / f"source-{version}" / REFERENCE_FILE, b"{}")
    return store.save(version, files, manifest_for(model, **extra))


def approve(store, *versions):
    for version in versions:
        store.record_decision(version, {"approved": True, "reasons": []})


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "models")


# --- save and verify -----------------------------------------------------------------------


def test_save_then_manifest_verifies_and_returns_the_sha256(store, scored, tmp_path):
    model, _ = scored
    directory = save_version(store, "v1", model, tmp_path, reason="initial")
    assert directory == store.path("v1")
    manifest = store.manifest("v1")
    assert manifest["version"] == "v1" and manifest["reason"] == "initial"
    assert set(manifest["files"]) == {LIGHTGBM_FILE, SPEC_FILE, REFERENCE_FILE}
    for name, digest in manifest["files"].items():
        assert digest == sha256(directory / name)
    assert {p.name for p in directory.iterdir()} == {LIGHTGBM_FILE, SPEC_FILE, REFERENCE_FILE,
                                                     MANIFEST}
    assert store.versions() == ["v1"]
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == [SEAL_KEY]
    assert store.describe("v1")["decision"] is None


def test_saving_an_existing_version_raises_and_keeps_the_original(store, scored, tmp_path):
    model, _ = scored
    save_version(store, "v1", model, tmp_path)
    before = store.manifest("v1")
    with pytest.raises(ModelStoreError, match="v1 already exists"):
        store.save("v1", {"other.txt": _file(tmp_path / "other.txt", b"x")}, {})
    assert store.manifest("v1") == before
    assert store.versions() == ["v1"]


def _file(path, content):
    path.write_bytes(content)
    return path


def _flip_one_byte(path, position=None):
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if position is None else position
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [LIGHTGBM_FILE, SPEC_FILE])
def test_tampered_file_is_refused_by_store_and_serving(name, store, scored, tmp_path,
                                                       monkeypatch):
    model, _ = scored
    save_version(store, "v1", model, tmp_path)
    _flip_one_byte(store.path("v1") / name)
    with pytest.raises(ModelStoreError, match=rf"{name}: sha256 mismatch") as raised:
        store.manifest("v1")
    assert "will not be loaded" in str(raised.value)

    loads = []
    monkeypatch.setattr(serving, "load_model", lambda directory: loads.append(directory))
    with pytest.raises(ModelStoreError, match=rf"{name}: sha256 mismatch"):
        serving.load_verified(store, "v1")
    assert loads == []  # nothing was parsed


def test_tampering_blocks_promotion(store, scored, tmp_path):
    model, _ = scored
    save_version(store, "a", model, tmp_path)
    save_version(store, "b", model, tmp_path)
    approve(store, "a", "b")
    store.promote("a", "initial")
    _flip_one_byte(store.path("b") / LIGHTGBM_FILE, position=10)
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        store.promote("b", "manual")
    assert store.deployed()["version"] == "a"
    assert len(store.pointer()["history"]) == 1


def test_verified_model_loads_and_scores(store, scored, tmp_path):
    model, frame = scored
    save_version(store, "v1", model, tmp_path)
    loaded, manifest = serving.load_verified(store, "v1")
    assert manifest["version"] == "v1"
    assert np.array_equal(loaded.predict(frame), model.predict(frame))


def test_missing_file_listed_in_the_manifest_is_named(store, scored, tmp_path):
    model, _ = scored
    save_version(store, "v1", model, tmp_path)
    (store.path("v1") / SPEC_FILE).unlink()
    with pytest.raises(ModelStoreError,
                       match=rf"{SPEC_FILE}: model file listed in the manifest is missing"):
        store.manifest("v1")
    with pytest.raises(ModelStoreError, match=SPEC_FILE):
        serving.load_verified(store, "v1")


def test_manifest_errors_name_the_manifest(store, scored, tmp_path):
    model, _ = scored
    save_version(store, "v1", model, tmp_path)
    with pytest.raises(ModelStoreError, match="manifest is missing"):
        store.manifest("nope")
    (store.path("v1") / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelStoreError, match=r"manifest.json: manifest is not valid JSON"):
        store.manifest("v1")
    (store.path("v1") / MANIFEST).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelStoreError, match="no 'files' table"):
        store.manifest("v1")


def test_versions_ignores_directories_without_a_valid_manifest(store, scored, tmp_path,
                                                               caplog):
    model, _ = scored
    save_version(store, "v2", model, tmp_path)
    save_version(store, "v1", model, tmp_path)
    (store.root / "no-manifest").mkdir()
    (store.root / "bad-json").mkdir()
    (store.root / "bad-json" / MANIFEST).write_text("{", encoding="utf-8")
    (store.root / "no-files").mkdir()
    (store.root / "no-files" / MANIFEST).write_text('{"version": "x"}', encoding="utf-8")
    (store.root / "a-list").mkdir()
    (store.root / "a-list" / MANIFEST).write_text("[]", encoding="utf-8")
    (store.root / ".staging-v3-123").mkdir()
    (store.root / "stray.txt").write_text("x", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="ct_assets.lib.model_store"):
        assert store.versions() == ["v1", "v2"]
    warned = [record.getMessage() for record in caplog.records
              if record.levelno == logging.WARNING]
    for name in ("no-manifest", "bad-json", "no-files", "a-list"):
        assert any(name in message and "no valid manifest" in message for message in warned), \
            name
    assert not any(".staging" in message or "stray" in message for message in warned)


def test_versions_of_a_missing_root_is_empty(tmp_path):
    assert ModelStore(tmp_path / "nowhere").versions() == []
    assert ModelStore(tmp_path / "nowhere").deployed() is None


# --- promotion, status, rollback -----------------------------------------------------------


def test_promote_status_and_rollback(store, scored, tmp_path):
    model, _ = scored
    for version in ("a", "b", "c", "d"):
        save_version(store, version, model, tmp_path)
    assert {v: store.status(v) for v in "abcd"} == dict.fromkeys("abcd", "candidate")

    holdout = {"roc_auc": 0.91}
    store.record_decision("a", {"approved": True, "reasons": [], "metrics": holdout})
    store.record_decision("c", {"approved": False, "reasons": ["roc_auc too low"]})
    store.record_decision("d", {"approved": True, "reasons": []})
    assert store.decision("c")["reasons"] == ["roc_auc too low"]
    assert "decided_at" in store.decision("c")
    assert store.decision("b") is None

    first = store.promote("a", "initial", run_id="r1")
    assert first["version"] == "a" and first["previous"] is None
    assert first["metrics"] == holdout  # the gate's holdout metrics, not the manifest's
    assert first["run_id"] == "r1"
    on_disk = json.loads((store.root / POINTER).read_text(encoding="utf-8"))
    assert on_disk == store.pointer()
    assert on_disk["deployed"]["version"] == "a"
    assert [r["version"] for r in on_disk["history"]] == ["a"]
    assert {v: store.status(v) for v in "abcd"} == {
        "a": "deployed", "b": "candidate", "c": "rejected", "d": "candidate"}

    with pytest.raises(ModelStoreError, match="the gate never validated b"):
        store.promote("b", "drift")
    second = store.promote("b", "drift", force=True)
    assert second["previous"] == "a" and "never validated" in second["forced"]
    assert second["metrics"] == manifest_for(model)["metrics"]  # no decision: manifest's
    assert {v: store.status(v) for v in "abcd"} == {
        "a": "retired", "b": "deployed", "c": "rejected", "d": "candidate"}

    rollback = store.promote("a", "rollback")
    assert rollback["previous"] == "b"
    state = json.loads((store.root / POINTER).read_text(encoding="utf-8"))
    assert state["deployed"] == rollback
    assert [(r["version"], r["reason"]) for r in state["history"]] == [
        ("a", "initial"), ("b", "drift"), ("a", "rollback")]
    assert store.status("a") == "deployed" and store.status("b") == "retired"
    assert store.deployed()["version"] == "a"
    assert (store.path("a") / DECISION).exists()


def test_promoting_an_unknown_version_changes_nothing(store, scored, tmp_path):
    model, _ = scored
    save_version(store, "a", model, tmp_path)
    approve(store, "a")
    store.promote("a", "initial")
    before = (store.root / POINTER).read_bytes()
    with pytest.raises(ModelStoreError, match="manifest is missing"):
        store.promote("ghost", "manual")
    assert (store.root / POINTER).read_bytes() == before


# --- SIGKILL in a real subprocess ----------------------------------------------------------

PROMOTE_LOOP = """
import sys
from ct_assets.lib.model_store import ModelStore

store = ModelStore(sys.argv[1])
versions = sys.argv[2:]
store.promote(versions[0], "warm-up")
print("ready", flush=True)
for i in range(50_000):
    store.promote(versions[i % 2], f"loop {i}")
"""

SAVE_LOOP = """
import sys
from pathlib import Path
from ct_assets.lib.model_store import ModelStore

store = ModelStore(sys.argv[1])
files = {path.name: path for path in sorted(Path(sys.argv[2]).iterdir())}
prefix = sys.argv[3]
print("ready", flush=True)
for i in range(50_000):
    store.save(f"{prefix}-{i:06d}", files, {"feature_schema": [], "number": i})
"""


def _run_and_kill(script, args, delay):
    """Start `script`, wait until it is looping, let it run `delay` seconds, SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen([sys.executable, str(script), *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        line = process.stdout.readline()
        assert line.strip() == "ready", process.stderr.read()
        time.sleep(delay)
        assert process.poll() is None, (
            f"the helper stopped before it was killed: {process.stderr.read()}")
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def test_sigkill_during_promotion_leaves_a_valid_pointer(store, scored, tmp_path):
    model, frame = scored
    save_version(store, "A", model, tmp_path)
    save_version(store, "B", model, tmp_path)
    approve(store, "A", "B")
    script = tmp_path / "promote_loop.py"
    script.write_text(textwrap.dedent(PROMOTE_LOOP), encoding="utf-8")
    chance = random.Random()
    promotions = 0
    for round_ in range(KILL_ROUNDS):
        delay = chance.uniform(0.05, 0.5)
        _run_and_kill(script, [store.root, "A", "B"], delay)
        text = (store.root / POINTER).read_text(encoding="utf-8")
        state = json.loads(text)  # always complete JSON
        deployed = state["deployed"]["version"]
        assert deployed in ("A", "B"), (round_, delay)
        assert state["history"][-1] == state["deployed"], (round_, delay)
        assert {record["version"] for record in state["history"]} <= {"A", "B"}
        assert len(state["history"]) > promotions, (round_, delay)  # it promoted
        promotions = len(state["history"])
        assert store.manifest(deployed)["version"] == deployed
        assert store.status(deployed) == "deployed"
    loaded, _ = serving.load_verified(store, store.deployed()["version"])
    assert np.array_equal(loaded.predict(frame), model.predict(frame))
    assert store.versions() == ["A", "B"]
    # After the crashes, promotion still works.
    record = store.promote("B", "after crash")
    assert store.deployed() == record


def test_sigkill_during_save_never_leaves_a_half_written_version(store, scored, tmp_path):
    model, _ = scored
    source = tmp_path / "artifact"
    model.save(source)
    # A larger file makes the kill likely to land while a version is being copied.
    (source / "padding.bin").write_bytes(os.urandom(4 << 20))
    (source / REFERENCE_FILE).write_bytes(b"{}")
    script = tmp_path / "save_loop.py"
    script.write_text(textwrap.dedent(SAVE_LOOP), encoding="utf-8")
    chance = random.Random()
    expected_files = {LIGHTGBM_FILE, SPEC_FILE, "padding.bin", REFERENCE_FILE}
    for round_ in range(KILL_ROUNDS):
        delay = chance.uniform(0.05, 0.5)
        _run_and_kill(script, [store.root, source, f"r{round_:02d}"], delay)
        versions = store.versions()
        assert all(not name.startswith(".") for name in versions)
        for version in versions:
            manifest = store.manifest(version)  # verifies every file's sha256
            assert set(manifest["files"]) == expected_files, (round_, delay, version)
            assert {p.name for p in store.path(version).iterdir()} == {
                *expected_files, MANIFEST}
    versions = store.versions()
    assert versions, "no save completed in any round"
    on_disk = [p.name for p in store.root.iterdir() if p.is_dir()]
    leftovers = [name for name in on_disk if name.startswith(".staging-")]
    assert sorted(set(on_disk) - set(leftovers)) == versions
    # A new save still works next to the leftovers.
    save_version(store, "z-after-crash", model, tmp_path)
    assert store.versions()[-1] == "z-after-crash"


# --- serving checks ------------------------------------------------------------------------


def test_schema_problems_reports_missing_extra_and_changed_features():
    manifest = {"feature_schema": [{"name": "amount", "type": "float"},
                                   {"name": "channel", "type": "category"},
                                   {"name": "legacy", "type": "float"}]}
    assert serving.schema_problems(manifest, {"amount": "float", "channel": "category",
                                              "legacy": "float"}) == []
    problems = serving.schema_problems(manifest, {"amount": "float", "channel": "float",
                                                  "new_one": "float"})
    assert problems == [
        "model lacks features serving provides: new_one",
        "model needs features serving does not provide: legacy",
        "feature types differ: channel (category vs float)",
    ]
    assert serving.schema_problems({}, {"amount": "float"}) == [
        "model lacks features serving provides: amount"]


def test_schema_problems_of_a_saved_model_match_the_config(store, scored, tmp_path, config):
    model, _ = scored
    save_version(store, "v1", model, tmp_path)
    manifest = store.manifest("v1")
    assert serving.schema_problems(manifest, feature_schema(config)) == []


def test_canary_in_a_fresh_process(store, scored, tmp_path):
    model, frame = scored
    save_version(store, "v1", model, tmp_path)
    canary = frame.head(64)
    expected = model.predict(canary)
    assert serving.canary_problems(store, "v1", canary, expected) == []

    perturbed = expected.copy()
    perturbed[5] += 1e-6
    problems = serving.canary_problems(store, "v1", canary, perturbed)
    assert len(problems) == 1 and "differ from in-process ones by up to 1e-06" in problems[0]

    problems = serving.canary_problems(store, "v1", canary, expected[:10])
    assert problems == ["fresh-process scores have shape (64,), expected (10,)"]


def test_canary_reports_a_tampered_model(store, scored, tmp_path):
    model, frame = scored
    save_version(store, "v1", model, tmp_path)
    canary = frame.head(16)
    _flip_one_byte(store.path("v1") / LIGHTGBM_FILE)
    problems = serving.canary_problems(store, "v1", canary, model.predict(canary))
    assert len(problems) == 1
    assert "failed to load or score in a fresh process" in problems[0]
    assert "sha256 mismatch" in problems[0]
