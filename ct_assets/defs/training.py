"""Training stage: `features` → `training_set` → `candidate_model` in the model store."""

import datetime as dt
import platform
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import REASON_TAG, frame_metadata, latest_metadata
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.lib.config import Config
from ct_assets.lib.evaluation import OPERATING_THRESHOLD, best_f1_threshold, compute_metrics
from ct_assets.lib.features import feature_schema
from ct_assets.lib.monitoring import REFERENCE_FILE, fit_profiles, save_profiles
from ct_assets.lib.training import encode_labels, inner_split_index, train_model
from ct_assets.lib.training_set import (
    SPLIT,
    choose_partitions,
    fingerprint,
    label_split,
    summarize,
)
from ct_assets.lib.validation import PARTITION

INNER_SCORED_ROWS = 20_000


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("lightgbm", "scikit-learn", "skops", "polars", "numpy", "duckdb", "dagster")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def build_training_assets(config: Config) -> list[dg.AssetsDefinition]:
    """The `training_set` and `candidate_model` assets."""
    dataset, training = config.dataset, config.training
    target = dataset.target
    assert target is not None

    @dg.asset(deps=["features"], group_name="training", kinds={"duckdb", "polars"},
              pool="duckdb", metadata={"dagster/table_name": "warehouse.main.training_set"})
    def training_set(warehouse: WarehouseResource) -> dg.MaterializeResult:
        """The last `training.window` labelled partitions of features, split by time.

        The most recent `training.holdout` partitions are the holdout; every holdout row is
        later than every training row, so validation never sees the training period.
        """
        store = warehouse.get()
        available = store.query(
            f'SELECT DISTINCT {PARTITION} FROM features WHERE "{target}" IS NOT NULL')
        train_keys, holdout_keys = choose_partitions(
            available[PARTITION].to_list(), training.window, training.holdout)
        keys = [*train_keys, *holdout_keys]
        placeholders = ", ".join("?" for _ in keys)
        frame = store.query(
            f'SELECT * FROM features WHERE {PARTITION} IN ({placeholders}) '
            f'AND "{target}" IS NOT NULL ORDER BY "{dataset.timestamp}"', keys)
        frame = label_split(frame, PARTITION, holdout_keys)
        with store.connect() as connection:
            connection.register("incoming", frame.to_arrow())
            connection.execute("CREATE OR REPLACE TABLE training_set AS SELECT * FROM incoming")
        version = fingerprint(frame)
        # The drift reference of this training window, fitted once and reused for every
        # partition the resulting model scores (it travels with the model).
        config.reference_dir.mkdir(parents=True, exist_ok=True)
        save_profiles(fit_profiles(frame.filter(pl.col(SPLIT) == "train"), config),
                      config.reference_dir / version)
        summary = summarize(frame, target, dataset.task, dataset.timestamp)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                **frame_metadata(frame),
                "data_version": version,
                "train_rows": frame.filter(pl.col(SPLIT) == "train").height,
                "holdout_rows": frame.filter(pl.col(SPLIT) == "holdout").height,
                "train_partitions": f"{train_keys[0]} … {train_keys[-1]} ({len(train_keys)})",
                "holdout_partitions": f"{holdout_keys[0]} … {holdout_keys[-1]} "
                                      f"({len(holdout_keys)})",
                "summary": dg.MetadataValue.json(summary),
            },
        )

    @dg.asset(deps=[training_set], group_name="training", kinds={"lightgbm", "duckdb"},
              pool="duckdb")
    def candidate_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                        model_store: ModelStoreResource) -> dg.MaterializeResult:
        """A model trained on the training split, saved in the model store with its manifest.

        LightGBM by default (`training.model`); early stopping uses the most recent rows of the
        training split, never the holdout. The manifest records the sha256 of every file, the
        feature schema, window, params, library versions, the training data version, the
        parent (champion) version and why it was trained.
        """
        frame = warehouse.get().query(
            f"SELECT * FROM training_set ORDER BY \"{dataset.timestamp}\"")
        train = frame.filter(pl.col(SPLIT) == "train")
        schema = feature_schema(config)
        model, info = train_model(train, schema=schema, target=target, task=dataset.task,
                                  kind=training.model, params=training.params,
                                  seed=training.seed)
        store = model_store.get()
        champion = store.deployed()
        reason = context.run.tags.get(REASON_TAG) or ("initial" if champion is None
                                                      else "manual")
        version = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{context.run.run_id[:8]}"
        manifest = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": training.model, "task": dataset.task, "target": target,
            "feature_schema": [{"name": s.name, "type": s.type, "categories": s.categories}
                               for s in model.specs],
            "classes": model.classes,
            "training_window": {"partitions": sorted(train[PARTITION].unique().to_list()),
                                "from": str(train[dataset.timestamp].min()),
                                "to": str(train[dataset.timestamp].max()),
                                "rows": train.height},
            "params": training.params, "seed": training.seed,
            "training_info": {"best_iteration": info["best_iteration"],
                              "seconds": round(info["seconds"], 3),
                              "top_features": info["top_features"]},
            "library_versions": _library_versions(),
            "training_set_version": latest_metadata(context, "training_set", "data_version")
            or fingerprint(frame),
            "parent": champion["version"] if champion else None,
            "reason": reason, "run_id": context.run.run_id, "metrics": {},
        }
        # Threshold and inner metrics on (at most) the newest INNER_SCORED_ROWS rows of the
        # inner split: enough for both, without re-scoring the whole split after training.
        inner_rows = min(train.height - inner_split_index(train.height), INNER_SCORED_ROWS)
        inner = train.tail(inner_rows)
        labels, _ = encode_labels(inner[target], dataset.task, model.classes)
        inner_scores = model.predict(inner)
        # The operating threshold is chosen on the inner split (max F1), never on the holdout.
        threshold = (best_f1_threshold(labels, inner_scores) if dataset.task == "binary"
                     else None)
        manifest["operating_threshold"] = threshold
        manifest["metrics"] = {"inner_validation": compute_metrics(
            labels, inner_scores, dataset.task, threshold or OPERATING_THRESHOLD)}
        profile = config.reference_dir / manifest["training_set_version"] / REFERENCE_FILE
        with tempfile.TemporaryDirectory() as work:
            files = model.save(Path(work))
            if profile.is_file():
                files[REFERENCE_FILE] = profile
            store.save(version, files, manifest)
        top = info["top_features"]
        return dg.MaterializeResult(metadata={
            "version": version, "model": training.model, "reason": reason,
            "parent": manifest["parent"] or "none",
            "train_rows": train.height,
            "training_seconds": round(info["seconds"], 3),
            "best_iteration": info["best_iteration"] or 0,
            "top_features": dg.MetadataValue.md(
                "\n".join(f"- `{name}`: {gain}" for name, gain in top) or "n/a"),
            "path": dg.MetadataValue.path(str(store.path(version))),
        })

    return [training_set, candidate_model]
