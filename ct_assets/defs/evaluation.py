"""Evaluation stage: retraining policies replayed over the landed history (`policy_backtest`)."""

import dagster as dg
import polars as pl
from pydantic import Field

from ct_assets.defs.resources import WarehouseResource
from ct_assets.defs.runs import duckdb_slot
from ct_assets.lib.backtest import POLICIES, backtest, chart_png, results_table
from ct_assets.lib.config import Config
from ct_assets.lib.reports import markdown_image, markdown_table


class BacktestConfig(dg.Config):
    """Which policies to replay, and the schedule policy's period in partitions."""

    policies: list[str] = Field(default_factory=lambda: list(POLICIES))
    every: int = Field(default=7, ge=1)


def build_evaluation_assets(project: Config) -> list[dg.AssetsDefinition]:
    """The `policy_backtest` asset: on demand only, in no job and with no automation."""

    # No pool on the step: the replay takes minutes and never opens the warehouse; it holds
    # `duckdb` only while it writes the table, so the live loop's runs go on meanwhile.
    @dg.asset(group_name="evaluation", kinds={"duckdb", "matplotlib"},
              metadata={"dagster/table_name": "warehouse.main.policy_backtest"})
    def policy_backtest(context: dg.AssetExecutionContext, config: BacktestConfig,
                        warehouse: WarehouseResource) -> dg.MaterializeResult:
        """Retraining policies replayed over the landed history: which one pays, and at what cost.

        Each policy (`never`, `schedule`, `drift`, `performance`, `drift+performance`,
        `online`) starts from the same first model and walks the partitions with a simulated
        clock through the live loop's own code (plan, fit, gate, drift, performance, cooldown,
        online updates); each partition is scored by the model deployed before its labels were
        visible. The table (mean and worst realised metric, retrains by reason, gate refusals,
        compute seconds) is written to DuckDB; the chart marks each policy's retrains. Reads
        the landing dir, never the live model store.
        """
        results, replay = backtest(project, config.policies, every=config.every)
        metric = str(project.gate.metric)
        rows = results_table(results, metric)
        table = pl.DataFrame(rows)
        with duckdb_slot(context), warehouse.get().connect() as connection:
            connection.register("incoming", table.to_arrow())
            connection.execute("CREATE OR REPLACE TABLE policy_backtest AS "
                               "SELECT * FROM incoming")
        keys = replay.history.keys
        best = max(rows, key=lambda row: row[f"mean_{metric}"] or float("-inf"))
        return dg.MaterializeResult(metadata={
            "policies": dg.MetadataValue.md(markdown_table(table, 10)),
            "chart": dg.MetadataValue.md(markdown_image(chart_png(results, metric),
                                                        "realised metric per policy")),
            "replayed": f"{keys[replay.first + 1]} … {keys[-1]} "
                        f"({len(keys) - replay.first - 1} partitions)",
            "best_policy": best["policy"],
            f"best_mean_{metric}": best[f"mean_{metric}"],
            **{f"retrains_{row['policy']}": row["retrains"] for row in rows},
        })

    return [policy_backtest]
