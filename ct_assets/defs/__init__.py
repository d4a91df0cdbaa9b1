"""The Dagster layer: one module per stage."""

import warnings

import dagster as dg

# Known Dagster notices, silenced once here, before any stage module builds its assets: the
# single-run `backfill_policy` (every partitioned asset runs a range as one run) and
# `allow_nonexistent_upstream_partitions` (the features' look-back before the first partition)
# are beta in 1.13, and nothing a user of this project can act on. Other warnings still show.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
