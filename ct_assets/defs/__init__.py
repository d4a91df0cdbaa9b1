"""The Dagster layer: one module per stage."""

import re
import warnings

import dagster as dg

# Known Dagster notices, silenced once here, before any stage module builds its assets; each
# filter matches one notice by its category and the start of its message, so any other beta or
# preview notice (a new one after an upgrade, say) still shows. Both are beta in 1.13 and
# nothing a user of this project can act on:
# - `backfill_policy` on `@dg.asset`: every partitioned asset runs a range of partitions as
#   one run (`BackfillPolicy.single_run()`);
# - `allow_nonexistent_upstream_partitions` on `TimeWindowPartitionMapping`: the features'
#   look-back reaches before the first partition on the first days (`defs/features.py`).
# The preview notice of partitioned asset checks (`AssetCheckSpec(partitions_def=…)`) is
# silenced where the spec is built, `defs/monitoring_events.partitioned_check`, and says why.
_BETA_NOTICES = (
    "Parameter `backfill_policy` of function `asset` is currently in beta",
    "Parameter `allow_nonexistent_upstream_partitions` of initializer "
    "`TimeWindowPartitionMapping.__init__` is currently in beta",
)
for _notice in _BETA_NOTICES:
    warnings.filterwarnings("ignore", message=re.escape(_notice), category=dg.BetaWarning)
