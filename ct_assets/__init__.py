"""ct_assets: continuous training for ML models as a Dagster asset graph."""
