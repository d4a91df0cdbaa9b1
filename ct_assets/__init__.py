"""ct_assets: continuous training for ML models as a Dagster asset graph."""

__version__ = "0.1.0"  # also pyproject.toml's; a packaged server has only this one
