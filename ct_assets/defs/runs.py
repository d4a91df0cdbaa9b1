"""What one retrain run produced, read from its own events; the DuckDB slot held briefly.

A retrain must validate and promote the candidate it trained itself, not "the latest candidate"
(another retrain may have trained one since). So the retrain assets read what an upstream asset
produced in this run, or in the runs it re-executes (`dagster/parent_run_id`), from the
instance's event log.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)

# Carried by every retrain_job run; dagster.yaml's run queue runs one such run at a time.
RETRAIN_TAG = "ct/retrain"
PARENT_RUN_TAG = "dagster/parent_run_id"
DUCKDB_POOL = "duckdb"
Body = TypeVar("Body", bound=Callable[..., Any])


def run_lineage(context: dg.AssetExecutionContext) -> list[str]:
    """This run's id, then the runs it re-executes (parent first), newest first."""
    lineage, run = [], context.run
    while run is not None and run.run_id not in lineage:
        lineage.append(run.run_id)
        parent = run.tags.get(PARENT_RUN_TAG)
        run = context.instance.get_run_by_id(parent) if parent else None
    return lineage


def _records_in_runs(instance: dg.DagsterInstance, run_ids: list[str],
                     event_type: dg.DagsterEventType) -> Iterator[tuple[str, Any]]:
    """(run id, event record) of `event_type` in `run_ids`: runs in order, newest event first."""
    for run_id in run_ids:
        for record in instance.get_records_for_run(run_id, of_type=event_type,
                                                   ascending=False).records:
            yield run_id, record


def materialization_in_runs(instance: dg.DagsterInstance, asset: str, run_ids: list[str]
                            ) -> tuple[str, dict[str, Any]] | None:
    """The run id and metadata (plain values) of `asset`'s latest materialization in `run_ids`.

    Runs are searched in order; None when none of them materialized it.
    """
    key = dg.AssetKey(asset)
    for run_id, record in _records_in_runs(instance, run_ids,
                                           dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            return run_id, {name: entry.value for name, entry in materialization.metadata.items()}
    return None


def check_in_runs(instance: dg.DagsterInstance, asset: str, check: str, run_ids: list[str]
                  ) -> dg.AssetCheckEvaluation | None:
    """The latest evaluation of check `check` on `asset` in `run_ids` (searched in order)."""
    key = dg.AssetKey(asset)
    for _, record in _records_in_runs(instance, run_ids,
                                      dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if isinstance(evaluation, dg.AssetCheckEvaluation) \
                and evaluation.asset_key == key and evaluation.check_name == check:
            return evaluation
    return None


@contextmanager
def duckdb_slot(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Hold a slot of the `duckdb` pool only while the body touches the warehouse.

    For assets that spend most of their step on something else (training, bootstrap, a
    fresh-process canary): they declare no pool, so other runs can use DuckDB meanwhile, and
    claim the slot around each short warehouse access, as the executor would for the whole step.
    Instances without global concurrency limits (e.g. in-memory) grant it at once.
    """
    step = f"{context.op_def.name}:{DUCKDB_POOL}"
    with InstanceConcurrencyContext(context.instance, context.run) as slots:
        if not slots.claim(DUCKDB_POOL, step):
            context.log.info(f"waiting for a slot of pool {DUCKDB_POOL!r}")
            while not slots.claim(DUCKDB_POOL, step):
                time.sleep(0.5)
        try:
            yield
        finally:
            slots.free_step(step)


def holds_warehouse(body: Body) -> Body:
    """Run an asset body of the `duckdb` pool inside one warehouse session.

    Put under `@dg.asset(pool="duckdb")`: the step holds the pool's slot, so no other run of the
    instance opens the file meanwhile, and the body's many short connections share one open
    database (`Warehouse.session`) instead of loading the catalog each time. The body's
    `warehouse` resource argument names the file; without one it runs as it is. Generator
    bodies (which yield results) keep the session until they finish.
    """

    def session(kwargs: dict[str, Any]) -> Any:
        resource = kwargs.get("warehouse")
        return resource.get().session() if resource is not None else nullcontext()

    if inspect.isgeneratorfunction(body):
        @functools.wraps(body)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with session(kwargs):
                yield from body(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(body)
    def function(*args: Any, **kwargs: Any) -> Any:
        with session(kwargs):
            return body(*args, **kwargs)

    return function  # type: ignore[return-value]
