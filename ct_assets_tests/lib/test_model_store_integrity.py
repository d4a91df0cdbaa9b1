"""Nothing in a version directory can be edited unnoticed, and promotion trusts only the gate.

Issue 9, A and D: a verdict edited to `approved: true`, a manifest edited or re-hashed by hand,
a file added, a verdict copied from another version: each is refused on load, naming the file,
and none can be promoted. A model without its drift reference is not saved at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ct_assets.lib import serving
from ct_assets.lib.model_store import (
    DECISION,
    MANIFEST,
    POINTER,
    SEAL_KEY,
    ModelStore,
    ModelStoreError,
)
from ct_assets.lib.monitoring import REFERENCE_FILE

MODEL_FILE = "model.txt"


def _artifacts(work: Path, tag: str) -> dict[str, Path]:
    """Three small files standing for a model, its specs and its drift reference."""
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, content in ((MODEL_FILE, f"tree {tag}"), ("features.json", '{"specs": []}'),
                          (REFERENCE_FILE, '{"columns": {}}')):
        files[name] = work / f"{tag}-{name}"
        files[name].write_text(content, encoding="utf-8")
    return files


def _save(store: ModelStore, version: str, work: Path) -> Path:
    return store.save(version, _artifacts(work, version),
                      {"feature_schema": [], "operating_threshold": 0.5, "reason": "manual"})


def _edit_json(path: Path, **changes) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    document.update(changes)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_a_rejected_verdict_edited_to_approved_is_refused_naming_the_file(store, tmp_path):
    _save(store, "champion", tmp_path)
    _save(store, "candidate", tmp_path)
    store.record_decision("champion", {"approved": True, "reasons": []})
    store.promote("champion", "initial")
    store.record_decision("candidate", {"approved": False, "reasons": ["roc_auc too low"]})
    with pytest.raises(ModelStoreError, match="the gate rejected candidate"):
        store.promote("candidate", "manual")

    decision = store.path("candidate") / DECISION
    _edit_json(decision, approved=True, reasons=[])  # the reproduced forgery
    before = (store.root / POINTER).read_bytes()
    for attempt in (lambda: store.decision("candidate"),
                    lambda: store.promote("candidate", "manual"),
                    lambda: store.manifest("candidate"),
                    lambda: serving.load_verified(store, "candidate")):
        with pytest.raises(ModelStoreError, match=rf"{decision}: seal mismatch"):
            attempt()
    assert (store.root / POINTER).read_bytes() == before
    assert store.deployed()["version"] == "champion"
    assert store.status("candidate") == "rejected"


def test_a_hand_written_verdict_without_a_seal_is_not_trusted(store, tmp_path):
    _save(store, "v1", tmp_path)
    decision = store.path("v1") / DECISION
    decision.write_text(json.dumps({"approved": True, "reasons": []}), encoding="utf-8")
    with pytest.raises(ModelStoreError, match=rf"{decision}: not sealed by the model store"):
        store.promote("v1", "manual")
    assert store.deployed() is None


def test_a_verdict_copied_from_another_version_is_refused(store, tmp_path):
    _save(store, "approved", tmp_path)
    _save(store, "rejected", tmp_path)
    store.record_decision("approved", {"approved": True, "reasons": []})
    store.record_decision("rejected", {"approved": False, "reasons": ["too weak"]})
    target = store.path("rejected") / DECISION
    target.write_bytes((store.path("approved") / DECISION).read_bytes())
    with pytest.raises(ModelStoreError, match=rf"{target}: the verdict was made for another"):
        store.promote("rejected", "manual")
    assert store.deployed() is None


def test_a_verdict_does_not_survive_an_edit_of_the_manifest(store, tmp_path):
    _save(store, "v1", tmp_path)
    store.record_decision("v1", {"approved": True, "reasons": []})
    manifest = store.path("v1") / MANIFEST
    _edit_json(manifest, operating_threshold=0.01)
    with pytest.raises(ModelStoreError, match=rf"{manifest}: seal mismatch"):
        store.manifest("v1")
    with pytest.raises(ModelStoreError, match=rf"{manifest}: seal mismatch"):
        store.promote("v1", "manual")


def test_a_swapped_model_file_with_its_sha256_updated_in_the_manifest_is_refused(store,
                                                                                 tmp_path):
    """Re-hashing by hand does not help: the manifest itself is sealed."""
    _save(store, "v1", tmp_path)
    model = store.path("v1") / MODEL_FILE
    model.write_text("a different tree", encoding="utf-8")
    manifest = store.path("v1") / MANIFEST
    files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    _edit_json(manifest, files={**files,
                                MODEL_FILE: hashlib.sha256(model.read_bytes()).hexdigest()})
    with pytest.raises(ModelStoreError, match=rf"{manifest}: seal mismatch"):
        serving.load_verified(store, "v1")


@pytest.mark.parametrize("name", [MODEL_FILE, "features.json", REFERENCE_FILE])
def test_every_listed_file_is_verified_on_load(name, store, tmp_path):
    _save(store, "v1", tmp_path)
    path = store.path("v1") / name
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(ModelStoreError, match=rf"{path}: sha256 mismatch"):
        store.manifest("v1")


def test_a_file_added_to_a_version_is_refused(store, tmp_path):
    _save(store, "v1", tmp_path)
    extra = store.path("v1") / "evaluation" / "model.txt"
    extra.parent.mkdir()
    extra.write_text("planted", encoding="utf-8")
    with pytest.raises(ModelStoreError, match=rf"{extra}: not listed in the manifest"):
        store.manifest("v1")


def test_a_model_without_a_drift_reference_is_not_saved(store, tmp_path):
    files = _artifacts(tmp_path, "v1")
    del files[REFERENCE_FILE]
    with pytest.raises(ModelStoreError, match=rf"no drift reference \({REFERENCE_FILE}\)"):
        store.save("v1", files, {"feature_schema": []})
    assert store.versions() == []
    assert not store.path("v1").exists()


def test_a_store_written_before_sealing_loads_but_its_verdicts_are_not_trusted(store,
                                                                               tmp_path):
    """Backward compatibility: old versions still load and serve; promotion needs a new gate."""
    directory = store.path("old")
    directory.mkdir(parents=True)
    hashes = {}
    for name, source in _artifacts(tmp_path, "old").items():
        (directory / name).write_bytes(source.read_bytes())
        hashes[name] = hashlib.sha256(source.read_bytes()).hexdigest()
    (directory / MANIFEST).write_text(json.dumps({"version": "old", "files": hashes}),
                                      encoding="utf-8")
    (directory / DECISION).write_text(json.dumps({"approved": True, "reasons": []}),
                                      encoding="utf-8")
    assert store.manifest("old")["sealed"] is False
    assert store.decision("old")["sealed"] is False
    approved, why = store.trusted_verdict("old")
    assert not approved and "written before verdicts were sealed" in why
    with pytest.raises(ModelStoreError, match="cannot be trusted"):
        store.promote("old", "manual")

    _save(store, "new", tmp_path)  # creates the key; `old` is recorded as written before it
    assert json.loads((store.root / SEAL_KEY).read_text())["unsealed_versions"] == ["old"]
    assert store.manifest("old")["sealed"] is False
    assert store.manifest("new")["sealed"] is True
    # Stripping the seal off a new version does not make it "old".
    manifest = store.path("new") / MANIFEST
    document = json.loads(manifest.read_text(encoding="utf-8"))
    del document["seal"]
    manifest.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ModelStoreError, match=rf"{manifest}: not sealed by the model store"):
        store.manifest("new")


def test_a_missing_seal_key_fails_closed(store, tmp_path):
    _save(store, "v1", tmp_path)
    store.record_decision("v1", {"approved": True, "reasons": []})
    (store.root / SEAL_KEY).unlink()
    with pytest.raises(ModelStoreError, match=r"seal key .* is missing"):
        store.promote("v1", "manual")
