"""Training stage: `features` (+ `labels`) → `training_set` → `candidate_model` in the store."""

import datetime as dt
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.metadata import CHANGE_POINT_TAG, REASON_TAG, frame_metadata, latest_metadata
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.defs.runs import (
    duckdb_slot,
    holds_warehouse,
    materialization_in_runs,
    run_lineage,
)
from ct_assets.lib.candidate import EVALUATION_DIR, fit_candidate
from ct_assets.lib.config import Config
from ct_assets.lib.features import offset_partitions
from ct_assets.lib.labels import LABELLED_PARTITION, attach_labels
from ct_assets.lib.model_store import ModelStore, ModelStoreError
from ct_assets.lib.monitoring import REFERENCE_FILE, fit_profiles, save_profiles
from ct_assets.lib.training_set import (
    IN_REGIME,
    REGIME_KIND,
    REGIME_START,
    SPLIT,
    apply_plan,
    choose_reference,
    fingerprint,
    plan_training_set,
    summarize,
    training_cutoff,
)
from ct_assets.lib.triggers import TriggerLog, unchanged_training_reason
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse, quote_identifier

SKIPPED_KEY = "skipped"  # an observation of `training_set` under this key: why nothing trained


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("lightgbm", "scikit-learn", "skops", "polars", "numpy", "duckdb", "dagster")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def labelled_features(store: Warehouse, config: Config, where: str, parameters: list
                      ) -> pl.DataFrame:
    """Rows of `features` matching `where`, their target filled from `labels` where known."""
    frame = store.query(f"SELECT * FROM features WHERE {where} "
                        f"ORDER BY {quote_identifier(config.dataset.timestamp)}", parameters)
    if config.dataset.labels is None or not store.table_exists("labels"):
        return frame
    keys = frame[PARTITION].unique().to_list()
    marks = ", ".join("?" for _ in keys) or "NULL"
    labels = store.query(f"SELECT * FROM labels WHERE {quote_identifier(LABELLED_PARTITION)} "
                         f"IN ({marks})", keys)
    return attach_labels(frame, labels, config)


def labelled_partitions(store: Warehouse, config: Config, cutoff: str,
                        wanted: int | None = None) -> list[str]:
    """Partitions before `cutoff` holding at least one labelled row.

    With `wanted`, at least the newest `wanted` of them (all there are when fewer): they are
    looked for among the `2 * wanted` partitions before `cutoff` first, a scan that the
    tables' zone maps keep to those partitions however long the history is; the whole
    history is scanned only when fewer than `wanted` are labelled there.
    """
    if wanted:
        fmt = config.partitions.key_format
        since = offset_partitions(
            config, dt.datetime.strptime(cutoff, fmt).replace(tzinfo=dt.UTC), -2 * wanted)
        keys = _labelled_between(store, config, since, cutoff)
        if len(keys) >= wanted:
            return keys
    return _labelled_between(store, config, None, cutoff)


def _labelled_between(store: Warehouse, config: Config, since: dt.datetime | None,
                      cutoff: str) -> list[str]:
    """Partitions from `since` (None: the first) to before `cutoff` with a labelled row."""
    target, partition = quote_identifier(str(config.dataset.target)), quote_identifier(PARTITION)
    where, parameters = f"{target} IS NOT NULL AND {partition} < ?", [cutoff]
    if since is not None:
        where += f" AND {quote_identifier(config.dataset.timestamp)} >= ?"
        parameters.append(since)
    keys = set(store.query(f"SELECT DISTINCT {partition} FROM features WHERE {where}",
                           parameters)[PARTITION].to_list())
    if config.dataset.labels is not None and store.table_exists("labels"):
        labelled = quote_identifier(LABELLED_PARTITION)
        where, parameters = f"{labelled} < ?", [cutoff]
        if since is not None:
            where += f" AND {labelled} >= ?"
            parameters.append(since.strftime(config.partitions.key_format))
        keys |= set(store.query(f"SELECT DISTINCT {labelled} AS k FROM labels WHERE {where}",
                                parameters)["k"].to_list())
    return sorted(keys)


def champion_regime(store: ModelStore) -> tuple[str | None, str | None]:
    """The regime start and kind the deployed model was trained with (None: none)."""
    champion = store.deployed()
    if champion is None:
        return None, None
    try:
        manifest = store.manifest(champion["version"])
    except ModelStoreError:
        return None, None
    return manifest.get("regime_start"), manifest.get("regime_kind")


def champion_manifest(store: ModelStore) -> tuple[str | None, dict | None]:
    """The deployed version and its manifest; `(None, None)` when none is deployed.

    A manifest that cannot be read is None: the retrain then trains.
    """
    champion = store.deployed()
    if champion is None:
        return None, None
    try:
        return champion["version"], store.manifest(champion["version"])
    except ModelStoreError:
        return champion["version"], None


def _training_set_version(context: dg.AssetExecutionContext) -> str | None:
    """The data version `training_set` reported in this run (else its latest materialization)."""
    found = materialization_in_runs(context.instance, "training_set", run_lineage(context))
    if found is not None and found[1].get("data_version"):
        return str(found[1]["data_version"])
    value = latest_metadata(context, "training_set", "data_version")
    return str(value) if value else None


def build_training_assets(config: Config) -> list[dg.AssetsDefinition]:
    """The `training_set` and `candidate_model` assets."""
    dataset, training = config.dataset, config.training
    target = dataset.target
    assert target is not None
    label_deps = ["labels"] if dataset.labels is not None else []

    # Not materialized when a triggered retrain would learn what the champion learned: the
    # steps after it are skipped, so the run succeeds without training or promoting.
    @dg.asset(deps=["features", *label_deps], group_name="training",
              kinds={"duckdb", "polars"}, pool="duckdb", output_required=False,
              metadata={"dagster/table_name": "warehouse.main.training_set"})
    @holds_warehouse
    def training_set(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     model_store: ModelStoreResource
                     ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        """The last `training.window` labelled, mature partitions of features, split by time.

        Never the partition still open nor the `triggers.label_delay` partitions before it
        (their labels are not all known), never an unlabelled row. The most recent
        `training.holdout` partitions are the holdout, later than every training row. After a
        change (the partition a drift or performance retrain answers, or the one the champion
        was trained from), rows of the new regime are marked `in_regime`: training weights
        them up (strongly after a performance failure, a change of concept), and the drift
        reference is fitted on the partitions since the change, labelled or not. A triggered
        retrain whose data version (and model settings) equal the deployed model's stops
        here with an observation saying so (`unchanged_training_reason`): it would train the
        same model again.
        """
        store = warehouse.get()
        cutoff = training_cutoff(config, dt.datetime.now(dt.UTC))
        plan = plan_training_set(
            labelled_partitions(store, config, cutoff, config.training.window), config,
            cutoff=cutoff,
            change=context.run.tags.get(CHANGE_POINT_TAG),
            reason=context.run.tags.get(REASON_TAG), inherited=champion_regime(model_store.get()))
        placeholders = ", ".join("?" for _ in plan.keys)
        frame = apply_plan(
            labelled_features(store, config, f"{quote_identifier(PARTITION)} IN ({placeholders})",
                              plan.keys),
            plan, PARTITION, target)
        recent = (labelled_features(store, config, f"{quote_identifier(PARTITION)} >= ?",
                                    [plan.reference_start]) if plan.reference_start else None)
        reference, labelled, described = choose_reference(recent, frame, target)
        version = fingerprint(frame)[:8] + fingerprint(reference)[:8]
        unchanged = unchanged_training_reason(config, context.run.tags.get(REASON_TAG), version,
                                              *champion_manifest(model_store.get()))
        if unchanged:
            context.log.info(unchanged)
            TriggerLog(config.storage_dir).record(
                "retrain_job", "skipped", context.run.tags.get(CHANGE_POINT_TAG), unchanged)
            yield dg.AssetObservation(asset_key=context.asset_key, metadata={
                SKIPPED_KEY: unchanged, "data_version": version})
            return
        with store.connect() as connection:
            connection.register("incoming", frame.to_arrow())
            connection.execute("CREATE OR REPLACE TABLE training_set AS SELECT * FROM incoming")
        # The drift reference of what the model will be judged against next, fitted once and
        # reused for every partition the resulting model scores (it travels with the model).
        save_profiles(fit_profiles(reference, config, labelled), config.reference_dir / version)
        summary = summarize(frame, target, dataset.task, dataset.timestamp)
        yield dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                **frame_metadata(frame),
                "data_version": version,
                "train_rows": frame.filter(pl.col(SPLIT) == "train").height,
                "holdout_rows": frame.filter(pl.col(SPLIT) == "holdout").height,
                "train_partitions": f"{plan.train_keys[0]} … {plan.train_keys[-1]} "
                                    f"({len(plan.train_keys)})",
                "holdout_partitions": f"{plan.holdout_keys[0]} … {plan.holdout_keys[-1]} "
                                      f"({len(plan.holdout_keys)})",
                "cutoff": f"partitions before {cutoff} (open partition and label_delay "
                          f"{config.triggers.label_delay} left out)",
                "regime_start": plan.regime_start or "none",
                "regime_rows": int(frame[IN_REGIME].sum()),
                "drift_reference": described,
                "summary": dg.MetadataValue.json(summary),
            },
        )

    # No pool on the step: training takes minutes; it holds `duckdb` only while it reads.
    @dg.asset(deps=[training_set], group_name="training", kinds={"lightgbm", "duckdb"})
    def candidate_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                        model_store: ModelStoreResource) -> dg.MaterializeResult:
        """A model trained on the training split, refitted on every row for deployment.

        The evaluation model (LightGBM by default, `training.model`) fits the training split,
        early-stopping on its newest rows, never the holdout: the gate judges it. The model
        deployed if the gate approves is the same procedure refitted on train + holdout with
        the iterations chosen, so it has learned the newest partitions too. Rows of the current
        regime weigh at least as much as those before the change. The manifest records the
        sha256 of every file, the feature schema, window, params, weights, library versions,
        the training data version, the parent (champion) version and why it was trained.
        The store refuses a model without its drift reference.
        """
        with duckdb_slot(context):
            frame = warehouse.get().query(
                f"SELECT * FROM training_set ORDER BY {quote_identifier(dataset.timestamp)}")
        candidate = fit_candidate(frame, config)
        store = model_store.get()
        champion = store.deployed()
        reason = context.run.tags.get(REASON_TAG) or ("initial" if champion is None
                                                      else "manual")
        version = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{context.run.run_id[:8]}"
        train = frame.filter(pl.col(SPLIT) == "train")
        info = candidate.info
        model = candidate.final
        manifest = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model": training.model, "task": dataset.task, "target": target,
            "feature_schema": [{"name": s.name, "type": s.type, "categories": s.categories}
                               for s in model.specs],
            "classes": model.classes,
            "training_window": {"partitions": sorted(frame[PARTITION].unique().to_list()),
                                "from": str(frame[dataset.timestamp].min()),
                                "to": str(frame[dataset.timestamp].max()),
                                "rows": frame.height},
            "evaluation_window": {"partitions": sorted(train[PARTITION].unique().to_list()),
                                  "rows": train.height, "model": f"{EVALUATION_DIR}/"},
            "regime_start": frame[REGIME_START][0] if frame.height else None,
            "regime_kind": frame[REGIME_KIND][0] if frame.height else None,
            "change_point": context.run.tags.get(CHANGE_POINT_TAG),
            "params": training.params, "seed": training.seed,
            "training_info": {"best_iteration": info["best_iteration"],
                              "seconds": round(info["seconds"], 3),
                              "top_features": info["top_features"],
                              "train_weights": info["train_weights"],
                              "refit": info["refit"]},
            "library_versions": _library_versions(),
            "training_set_version": _training_set_version(context) or fingerprint(frame),
            "parent": champion["version"] if champion else None,
            "reason": reason, "run_id": context.run.run_id,
            "operating_threshold": candidate.threshold,
            "metrics": {"inner_validation": candidate.inner_metrics},
        }
        profile = config.reference_dir / manifest["training_set_version"] / REFERENCE_FILE
        with tempfile.TemporaryDirectory() as work:
            files = model.save(Path(work) / "final")
            evaluation = candidate.evaluation.save(Path(work) / EVALUATION_DIR)
            files.update({f"{EVALUATION_DIR}/{name}": path for name, path in evaluation.items()})
            if profile.is_file():
                files[REFERENCE_FILE] = profile
            store.save(version, files, manifest)
        top = info["top_features"]
        return dg.MaterializeResult(metadata={
            "version": version, "model": training.model, "reason": reason,
            "parent": manifest["parent"] or "none",
            "train_rows": train.height,
            "refit_rows": frame.height,
            "regime_start": manifest["regime_start"] or "none",
            "training_seconds": round(info["seconds"] + info["refit"]["seconds"], 3),
            "best_iteration": info["best_iteration"] or 0,
            "top_features": dg.MetadataValue.md(
                "\n".join(f"- `{name}`: {gain}" for name, gain in top) or "n/a"),
            "path": dg.MetadataValue.path(str(store.path(version))),
        })

    return [training_set, candidate_model]
