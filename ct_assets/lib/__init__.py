"""Pure logic: no Dagster imports here."""
