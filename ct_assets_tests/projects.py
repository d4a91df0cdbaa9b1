"""Small project configs shared by several test modules."""

# A `files` dataset of CSVs with an id, a timestamp, a number, a category and a binary label.
FILES_HEADER = "id,ts,amount,kind,label"
FILES_CONFIG = {
    "dataset": {"source": "files", "landing_dir": "landing", "timestamp": "ts",
                "target": "label", "id": "id",
                "columns": {"id": "string", "ts": "timestamp", "amount": "float",
                            "kind": "category", "label": "int"}},
    "partitions": {"start": "2026-01-01"},
    "storage": {"dir": "data"},
}
