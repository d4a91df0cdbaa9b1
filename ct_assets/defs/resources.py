"""Resources: typed handles on the warehouse and the quarantine, pointed at the storage dir."""

from __future__ import annotations

import dagster as dg

from ct_assets.lib.config import Config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file; every DuckDB-writing asset also holds the `duckdb` pool."""

    path: str

    def get(self) -> Warehouse:
        """The warehouse handle."""
        return Warehouse(self.path)


class QuarantineResource(dg.ConfigurableResource):
    """Where rejected rows and files are recorded."""

    directory: str

    def get(self) -> Quarantine:
        """The quarantine handle."""
        return Quarantine(self.directory)


class ModelStoreResource(dg.ConfigurableResource):
    """The model store: versioned, sha256-verified models and the champion pointer."""

    directory: str

    def get(self) -> ModelStore:
        """The model store handle."""
        return ModelStore(self.directory)


def build_resources(config: Config) -> dict[str, dg.ConfigurableResource]:
    """Resources for a configuration, keyed as the assets expect them."""
    return {
        "warehouse": WarehouseResource(path=str(config.warehouse_path)),
        "quarantine": QuarantineResource(directory=str(config.quarantine_dir)),
        "model_store": ModelStoreResource(directory=str(config.models_dir)),
    }
