"""`ct serve`: the deployed model over HTTP (Open Inference Protocol v2, records, feedback).

The package imports nothing from Dagster, DuckDB or `ct_assets.defs`, so one model version can
be served without the warehouse or the orchestrator (`create_app` takes explicit settings).
"""
