"""What a model server needs to know, as one explicit object (no `ct.yaml` required)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct_assets.lib.config import Config

TOKEN_ENV = "CT_SERVE_TOKEN"
# OIP datatype advertised for a numeric feature, by the dataset column's logical type.
DATATYPE_OF_TYPE = {"float": "FP64", "int": "INT64", "bool": "BOOL"}


@dataclass
class ServeSettings:
    """Settings of one server: where models live, access, limits, logs and label landing.

    Attributes:
        models_dir: the model store (holds `deployed.json` unless `version` is fixed).
        model_name: the model's name on the protocol (`/v2/models/{model_name}`).
        version: serve this version only, and never follow `deployed.json` (`ct package`).
        manifest_sha256: with `version`, the sha256 its manifest must have: the version is then
            trusted by it instead of the store's seal (a package, shipped without the seal key).
        token: bearer token required on every route but `/v2/health/*` (None: open).
        max_body_bytes: largest request body accepted (413 above).
        max_rows: most rows (or labels) in one request (413 above).
        log_flush_rows: flush the request log at this many buffered rows …
        log_flush_seconds: … or when its oldest row is this old.
        watch_seconds: how often `deployed.json` is read for a promotion or a rollback.
        serving_dir: where the request log (`requests/`) and `endpoint.json` go (None: no log).
        id_column: an input or record field holding each row's id (not a feature).
        expected_schema: feature name → `float`/`category` a model must have to be swapped in
            (None: the schema of the model served first).
        input_datatypes: feature name → OIP datatype advertised in the model metadata
            (features missing here: FP64 for numbers, BYTES for categories).
        labels_dir: landing dir of label files, where `POST /feedback` writes (None: refused).
        label_id_column: the id column of label files.
        label_column: the label column of label files.
        known_at_column: the column saying when a label became known.
        label_id_type: `string` or `int`: how ids are written to label files.
        url: the server's URL, written to `endpoint.json` (set by the runner).
    """

    models_dir: Path
    model_name: str = "ct-model"
    version: str | None = None
    manifest_sha256: str | None = None
    token: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000
    log_flush_rows: int = 10_000
    log_flush_seconds: float = 5.0
    watch_seconds: float = 1.0
    serving_dir: Path | None = None
    id_column: str | None = None
    expected_schema: dict[str, str] | None = None
    input_datatypes: dict[str, str] = field(default_factory=dict)
    labels_dir: Path | None = None
    label_id_column: str | None = None
    label_column: str | None = None
    known_at_column: str = "known_at"
    label_id_type: str = "string"
    url: str | None = None

    @property
    def request_log_dir(self) -> Path | None:
        """Where request-log Parquet files are written (None: rows are not logged)."""
        return self.serving_dir / "requests" if self.serving_dir else None

    @property
    def endpoint_file(self) -> Path | None:
        """`endpoint.json`, telling `ct status` where the server listens."""
        return self.serving_dir / "endpoint.json" if self.serving_dir else None


def from_config(config: Config) -> ServeSettings:
    """The settings `ct serve` uses for a project: `serving` in `ct.yaml`, its dataset, paths.

    `$CT_SERVE_TOKEN` overrides `serving.token`; the expected feature schema is the config's,
    so a promoted version that does not fit what the project feeds is refused.
    """
    from ct_assets.lib.features import feature_schema

    serving, dataset = config.serving, config.dataset
    types = dataset.column_types()
    schema = feature_schema(config)
    labels = dataset.labels
    return ServeSettings(
        models_dir=config.models_dir, model_name=serving.model_name,
        token=os.environ.get(TOKEN_ENV) or serving.token,
        max_body_bytes=serving.max_body_bytes, max_rows=serving.max_rows,
        log_flush_rows=serving.log_flush_rows, log_flush_seconds=serving.log_flush_seconds,
        watch_seconds=serving.watch_seconds, serving_dir=config.serving_dir,
        id_column=dataset.id, expected_schema=schema,
        input_datatypes={name: DATATYPE_OF_TYPE[types[name]] for name in schema
                         if types.get(name) in DATATYPE_OF_TYPE},
        labels_dir=labels.landing_dir if labels else None,
        label_id_column=labels.id if labels else None,
        label_column=labels.label if labels else None,
        known_at_column=(labels.known_at or "known_at") if labels else "known_at",
        label_id_type="int" if dataset.id and types.get(dataset.id) == "int" else "string",
    )
