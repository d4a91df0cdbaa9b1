"""Resources: typed handles on the warehouse and the quarantine, pointed at the storage dir."""

from __future__ import annotations

import dagster as dg

from ct_assets.lib.config import Config
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


def build_resources(config: Config) -> dict[str, dg.ConfigurableResource]:
    """Resources for a configuration, keyed as the assets expect them."""
    return {
        "warehouse": WarehouseResource(path=str(config.warehouse_path)),
        "quarantine": QuarantineResource(directory=str(config.quarantine_dir)),
    }
