"""The Dagster layer: one module per stage."""
