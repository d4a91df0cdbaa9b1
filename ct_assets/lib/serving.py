"""Serving: load a verified model and score frames; the fresh-process canary check.

Run as `python -m ct_assets.lib.serving <models dir> <version> <canary.parquet> <out.npy>` to
score a canary batch in a new interpreter, from the files on disk only.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.training import TrainedModel, load_model


def load_verified(store: ModelStore, version: str, part: str | None = None
                  ) -> tuple[TrainedModel, dict[str, Any]]:
    """Load a version after checking every file's sha256 against its manifest.

    `part` names a model inside the version other than the deployable one (e.g. `evaluation`,
    the model the gate judged on the holdout).

    Raises:
        ModelStoreError: a file is missing or modified (named in the message); nothing is loaded.
    """
    manifest = store.manifest(version)
    directory = store.path(version) / part if part else store.path(version)
    return load_model(directory), manifest


def schema_problems(manifest: dict[str, Any], expected: dict[str, str]) -> list[str]:
    """Differences between a model's feature schema and what serving will feed it."""
    features = {spec["name"]: spec["type"] for spec in manifest.get("feature_schema", [])}
    problems = []
    missing = [name for name in expected if name not in features]
    extra = [name for name in features if name not in expected]
    if missing:
        problems.append(f"model lacks features serving provides: {', '.join(missing)}")
    if extra:
        problems.append(f"model needs features serving does not provide: {', '.join(extra)}")
    changed = [f"{name} ({features[name]} vs {kind})" for name, kind in expected.items()
               if name in features and features[name] != kind]
    if changed:
        problems.append(f"feature types differ: {', '.join(changed)}")
    return problems


def canary_problems(store: ModelStore, version: str, canary: pl.DataFrame,
                    expected: np.ndarray, tolerance: float = 1e-9) -> list[str]:
    """Score `canary` with the stored model in a fresh Python process and compare.

    Returns:
        An empty list when the fresh process reproduces `expected`, else what went wrong.
    """
    with tempfile.TemporaryDirectory() as work:
        batch, output = Path(work) / "canary.parquet", Path(work) / "scores.npy"
        canary.write_parquet(batch)
        done = subprocess.run(
            [sys.executable, "-m", "ct_assets.lib.serving", str(store.root), version,
             str(batch), str(output)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return [f"the stored model failed to load or score in a fresh process: {last}"]
        fresh = np.load(output, allow_pickle=False)
    if fresh.shape != expected.shape:
        return [f"fresh-process scores have shape {fresh.shape}, expected {expected.shape}"]
    gap = float(np.max(np.abs(fresh - expected))) if expected.size else 0.0
    if not gap <= tolerance:
        return [f"fresh-process scores differ from in-process ones by up to {gap:.3g}"]
    return []


def _main(argv: list[str]) -> int:
    root, version, batch, output = argv
    store = ModelStore(root)
    manifest = store.manifest(version)  # every file's sha256 verified, once
    if manifest.get("model") == "lightgbm":
        # As a packaged LightGBM model runs (its requirements have no scikit-learn): lightgbm
        # imports scikit-learn when it is installed, 1.7 s of this process's 3.3 s.
        sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
    model = load_model(store.path(version))
    np.save(output, model.predict(pl.read_parquet(batch)), allow_pickle=False)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
