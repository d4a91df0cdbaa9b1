"""The `ct` command: simulate data, run the pipeline in-process, inspect the quarantine."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ct_assets.lib.config import Config, ConfigError, load_config
from ct_assets.lib.model_store import ModelStoreError

INSTANCE_TEMPLATE = "templates/dagster.yaml"  # package data of ct_assets
# Other instance configs the package ships: copied as they are, `ct` does not warn about them.
SHIPPED_INSTANCE_TEMPLATES = ("templates/dagster-postgres.yaml",)


def prepare_dagster_home(config: Config) -> Path:
    """Create the Dagster home (`$DAGSTER_HOME`, else `<storage.dir>/dagster`) and its config.

    A home without `dagster.yaml` gets the package's template (telemetry off, the `duckdb`
    concurrency pool that keeps runs from racing for the warehouse lock, run monitoring),
    wherever the project's `ct.yaml` lives. An existing `dagster.yaml` (Postgres storage, say)
    is never replaced: when it differs from the template and from the Postgres template
    (copied as the README shows), a warning on stderr names them.

    Returns:
        The Dagster home directory in use.
    """
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
    else:
        home = config.dagster_home
        os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    template = resources.files("ct_assets").joinpath(INSTANCE_TEMPLATE)
    wanted = template.read_bytes()
    target = home / "dagster.yaml"
    if not target.exists():
        # Written aside and linked in place: never a half-written file, never an overwrite
        # of one another process created meanwhile.
        temporary = home / f".dagster.yaml.{os.getpid()}.tmp"
        temporary.write_bytes(wanted)
        try:
            os.link(temporary, target)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    existing = target.read_bytes()
    shipped = [resources.files("ct_assets").joinpath(name).read_bytes()
               for name in SHIPPED_INSTANCE_TEMPLATES]
    if not any(_same_settings(existing, known) for known in [wanted, *shipped]):
        print(f"ct: warning: keeping {target}, which differs from the ct_assets templates "
              f"({template}, {', '.join(SHIPPED_INSTANCE_TEMPLATES)}): an existing instance "
              "config is never overwritten; check that it still limits the `duckdb` "
              "concurrency pool to 1", file=sys.stderr)
    return home


def _same_settings(existing: bytes, template: bytes) -> bool:
    """Whether two instance configs hold the same settings (comments and layout aside)."""
    import yaml

    try:
        return yaml.safe_load(existing) == yaml.safe_load(template)
    except yaml.YAMLError:
        return False


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    """Write simulated days into the landing dir, and record them (`simulated_days.json`)."""
    from ct_assets.lib import simulator
    from ct_assets.lib.config import record_simulated_days
    from ct_assets.lib.files import discover
    from ct_assets.lib.progress import Progress, wanted

    if config.dataset.source != "simulator":
        raise ConfigError(f"{config.path}: dataset.source is {config.dataset.source!r}; "
                          "`ct simulate` needs dataset.source: simulator")
    start = args.start or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.days - 1)
    drift_start = None
    if args.drift != "none":
        offset = args.drift_day if args.drift_day is not None else args.days // 2
        drift_start = start + dt.timedelta(days=offset)
    scenario = simulator.DriftScenario(kind=args.drift, start=drift_start)
    fresh = not discover(config.landing_dir)
    delay = config.triggers.label_delay

    def landed(day: dt.date, written: list[Path]) -> None:
        labels = any(path.name.startswith("labels_") for path in written)
        progress.done(f"{args.rows_per_day} rows" + (
            f", labels of {day - dt.timedelta(days=delay)}" if labels else ""),
            name=day.isoformat())

    with Progress(args.days, enabled=wanted(args.json)) as progress:
        paths = simulator.write_days(config.landing_dir, start=start, days=args.days,
                                     rows_per_day=args.rows_per_day, seed=args.seed,
                                     drift=scenario, labels_dir=config.labels_dir,
                                     label_delay=delay, on_day=landed)
    # An unset partitions.start starts at the simulated history (see PartitionsConfig).
    record_simulated_days(config.storage_dir, start,
                          start + dt.timedelta(days=args.days - 1), fresh=fresh)
    labels = [path for path in paths if config.labels_dir and path.parent == config.labels_dir]
    report = {"landing_dir": str(config.landing_dir), "files": len(paths) - len(labels),
              "label_files": len(labels),
              "labels_dir": str(config.labels_dir) if config.labels_dir else None,
              "first_day": start.isoformat(),
              "last_day": (start + dt.timedelta(days=args.days - 1)).isoformat(),
              "rows_per_day": args.rows_per_day, "drift": args.drift,
              "drift_start": drift_start.isoformat() if drift_start else None}
    if args.json:
        print(json.dumps(report))
    else:
        drift = f", {args.drift} drift from {drift_start}" if drift_start else ""
        later = (f"; {len(labels)} label files (labels {config.triggers.label_delay} day(s) "
                 f"late) → {config.labels_dir}" if config.labels_dir else "")
        print(f"landed {args.days} days ({report['first_day']} … {report['last_day']}), "
              f"{args.rows_per_day} rows/day{drift} → {config.landing_dir}{later}")
    return 0


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """Ingest what has landed and build features, in-process, then print a summary."""
    from ct_assets.lib.progress import wanted
    from ct_assets.runner import run_pipeline

    prepare_dagster_home(config)
    summary = run_pipeline(config, rebuild=args.all, progress=wanted(args.json))
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        from ct_assets.runner import format_summary

        print(format_summary(summary))
    return 0 if summary["failed_runs"] == 0 else 1


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """The whole loop on the simulator: history, first model, drift, detection, retrain."""
    from ct_assets.demo import run_demo

    prepare_dagster_home(config)
    print(run_demo(config, rows_per_day=args.rows_per_day, kind=args.drift))
    return 0


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    """List what ingestion rejected."""
    from ct_assets.defs.labels import LABELS_FOLDER
    from ct_assets.lib.quarantine import Quarantine
    from ct_assets.lib.reports import text_table

    entries = [{**entry, "kind": "rows"} for entry in Quarantine(config.quarantine_dir).entries()]
    entries += [{**entry, "kind": "labels"} for entry in
                Quarantine(config.quarantine_dir / LABELS_FOLDER).entries()]
    if args.json:
        print(json.dumps(entries, default=str))
    elif not entries:
        print("quarantine is empty")
    else:
        print(text_table(entries, ["kind", "source_file", "partition", "check", "rows",
                                   "reason"]))
    return 0


def _age(iso: str) -> str:
    delta = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(iso)
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    """Show the deployed model, its metrics and age, and the latest retrain."""
    from ct_assets.lib.model_store import ModelStore
    from ct_assets.lib.served import endpoint_status
    from ct_assets.lib.triggers import TriggerLog

    store = ModelStore(config.models_dir)
    deployed = store.deployed()
    versions = store.versions()
    latest = store.describe(versions[-1]) if versions else None
    report = {
        "deployed": None if deployed is None else {
            "version": deployed["version"], "metrics": deployed.get("metrics", {}),
            "promoted_at": deployed["promoted_at"], "reason": deployed["reason"],
            "age_seconds": round((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
                deployed["promoted_at"])).total_seconds()),
            "trigger": deployed.get("trigger"), "holdout": deployed.get("holdout"),
        },
        "last_retrain": None if latest is None else {
            "version": versions[-1], "created_at": latest.get("created_at"),
            "reason": latest.get("reason"), "status": store.status(versions[-1]),
            "decision": latest.get("decision"),
        },
        "models": len(versions),
        "triggers": TriggerLog(config.storage_dir).latest(),
        "serving": endpoint_status(config.serving_dir, config.serving.model_name,
                                   os.environ.get("CT_SERVE_TOKEN") or config.serving.token),
    }
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    if deployed is None:
        print("deployed: none yet (run the retrain job: `ct run` or the UI)")
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in deployed.get("metrics", {}).items()
                            if isinstance(v, float))
        print(f"deployed: {deployed['version']} ({deployed['reason']}, promoted "
              f"{deployed['promoted_at']}, {_age(deployed['promoted_at'])} ago)")
        print(f"  holdout: {metrics or 'n/a'}")
        trigger, holdout = deployed.get("trigger") or {}, deployed.get("holdout") or {}
        if trigger:
            print(f"  trigger: {trigger['kind']} at {trigger['partition']} (run "
                  f"{trigger['run_id']}): {trigger['detail']}")
        before, after = holdout.get("before"), holdout.get("after")
        if isinstance(after, float):
            was = (f"{before:.4f} (champion {holdout.get('champion_before')})"
                   if isinstance(before, float) else "none (no champion)")
            print(f"  {holdout.get('metric')} on the same holdout: {was} → {after:.4f}")
    if latest is not None:
        last = report["last_retrain"]
        print(f"last retrain: {last['version']} ({last['reason']}) → {last['status']}")
    for name, entry in sorted(report["triggers"].items()):
        print(f"{name}: {entry['decision']} at {entry['at']}: {entry['detail']}")
    serving = report["serving"]
    if serving is None:
        print("serving: no `ct serve` running")
    elif not serving["reachable"]:
        print(f"serving: not reachable ({serving['error']}); endpoint.json may be stale")
    else:
        print(f"serving: {serving['url']} (pid {serving['pid']}) serves "
              f"{serving['model_name']} version {serving['version']}")
    return 0


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    """List every model version with its status."""
    from ct_assets.lib.model_store import ModelStore

    store = ModelStore(config.models_dir)
    rows = []
    for version in store.versions():
        info = store.describe(version)
        decision = info.get("decision") or {}
        rows.append({"version": version, "created_at": info.get("created_at"),
                     "metrics": decision.get("metrics") or info.get("metrics", {}),
                     "status": store.status(version), "reason": info.get("reason"),
                     "model": info.get("model")})
    if args.json:
        print(json.dumps(rows, default=str))
    elif not rows:
        print("no models yet")
    else:
        from ct_assets.lib.reports import text_table

        metric = config.gate.metric
        table = [{**row, metric: row["metrics"].get(metric, "")} for row in rows]
        print(text_table(table, ["version", "status", "reason", "model", metric,
                                 "created_at"]))
    return 0


def cmd_rollback(args: argparse.Namespace, config: Config) -> int:
    """Deploy an earlier version: `--to VERSION`, or the one deployed before the current.

    Refused (naming why) when the gate rejected the version or never validated it (or its
    verdict is unsealed), or when its feature schema does not match the current config,
    unless `--force`; a tampered file is refused even then.
    """
    from ct_assets.lib.features import feature_schema
    from ct_assets.lib.model_store import ModelStore, ModelStoreError
    from ct_assets.lib.serving import schema_problems

    store = ModelStore(config.models_dir)
    deployed = store.deployed()
    if deployed is None:
        raise ModelStoreError("nothing is deployed, so there is nothing to roll back")
    target = args.to
    if target is None:
        earlier = [r["version"] for r in store.pointer()["history"]
                   if r["version"] != deployed["version"]]
        if not earlier:
            raise ModelStoreError(f"{deployed['version']} is the only version ever deployed")
        target = earlier[-1]
    if target == deployed["version"]:
        raise ModelStoreError(f"{target} is already deployed")
    if target not in store.versions():
        raise ModelStoreError(f"no model version {target!r} in {store.root}")
    approved, why = store.trusted_verdict(target)  # a tampered verdict raises, naming it
    problems = [] if approved else [why]
    schema = schema_problems(store.manifest(target), feature_schema(config))
    if schema:
        problems.append(f"its feature schema does not match the current config "
                        f"({'; '.join(schema)})")
    if problems and not args.force:
        raise ModelStoreError(f"refusing to roll back to {target}: {'; '.join(problems)}; "
                              "pass --force to deploy it anyway")
    record = store.promote(target, "rollback", force=bool(problems),
                           rolled_back_from=deployed["version"],
                           **({"forced_because": problems} if problems else {}))
    _record_deployment(config, record, f"rolled back from {deployed['version']}")
    if args.json:
        print(json.dumps(record, default=str))
    else:
        print(f"deployed {target} (rollback from {deployed['version']})")
    return 0


def _record_deployment(config: Config, record: dict, outcome: str) -> None:
    """Tell the Dagster instance that `deployed_model` changed outside a run.

    The UI then shows the rolled-back version, and the freshness sensor (which reads the
    instance, never the model store) sees its promotion time.
    """
    import dagster as dg

    prepare_dagster_home(config)
    metadata = {"deployed_version": record["version"], "outcome": outcome,
                "reason": record["reason"], "promoted_at": record["promoted_at"]}
    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="deployed_model", metadata=metadata))


def cmd_backtest(args: argparse.Namespace, config: Config) -> int:
    """Replay the landed history through each retraining policy; print the policies table."""
    from ct_assets.lib.backtest import backtest, chart_png, results_table
    from ct_assets.lib.progress import Progress, wanted
    from ct_assets.lib.reports import text_table

    policies = [name.strip() for name in args.policies.split(",")] if args.policies else None
    with Progress(enabled=wanted(args.json)) as progress:
        results, replay = backtest(config, policies, every=args.every, progress=progress)
    metric = str(config.gate.metric)
    rows = results_table(results, metric)
    keys = replay.history.keys
    chart = Path(args.chart) if args.chart else None
    if chart is not None:
        chart.parent.mkdir(parents=True, exist_ok=True)
        chart.write_bytes(chart_png(results, metric))
    if args.json:
        print(json.dumps({"metric": metric, "first_model_at": keys[replay.first],
                          "partitions": [keys[replay.first + 1], keys[-1]],
                          "policies": rows, "chart": str(chart) if chart else None,
                          "measured": {r.policy: r.measured for r in results},
                          "events": {r.policy: r.events for r in results}}, default=str))
        return 0
    print(f"{len(keys) - replay.first - 1} partitions replayed ({keys[replay.first + 1]} … "
          f"{keys[-1]}) after a first model trained at the end of {keys[replay.first]}; "
          f"realised {metric} per partition, scored before its labels were known")
    print(text_table(rows, list(rows[0])))
    if chart is not None:
        print(f"chart: {chart}")
    return 0


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """Serve the deployed model over HTTP until SIGTERM or Ctrl-C (see `ct_assets.serve`).

    Prints one line with the URL and the version served; fails (one line) when nothing is
    deployed, the deployed version fails verification, or the address cannot be bound.
    """
    from ct_assets.serve.hot_swap import load_initial
    from ct_assets.serve.server import bind, run, url_of
    from ct_assets.serve.settings import from_config

    settings = from_config(config)
    served = load_initial(settings)
    listening = bind(args.host, args.port)
    settings.url = url_of(listening)
    run(settings, listening, served, on_started=lambda model: print(
        f"serving {settings.model_name} version {model.version} at {settings.url}", flush=True))
    return 0


def cmd_package(args: argparse.Namespace, config: Config) -> int:
    """Write one model version as a self-contained deployable directory (see `ct_assets.package`).

    Refused (one line) when the version fails verification, when the gate rejected or never
    approved it (unless `--force`), or when `--out` holds anything but a previous package.
    """
    from ct_assets.package import build_package

    package = build_package(config, args.version, Path(args.out), force=args.force)
    print(f"packaged {config.serving.model_name} version {package.version} in "
          f"{package.directory}")
    print(f"manifest.json sha256 {package.manifest_sha256}")
    tag = f"{config.serving.model_name}:{package.version}".lower()
    print(f"build: docker build -t {tag} {package.directory}")
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    """Check the config against the landed data: each declared column is in some file.

    The check the code location must not make: loading definitions never reads landed data
    (a file missing a column is quarantined by `raw_events`), so a column misspelt in
    `ct.yaml` shows up here, or as every file quarantined.
    """
    from ct_assets.lib.ingest import check_columns_in_data

    check_columns_in_data(config)  # `main` has pinned an omitted `dataset.columns` (ct schema)
    pinned = config.dataset.columns_pinned_in
    what = f"column of the schema pinned in {pinned}" if pinned else "declared column"
    print(f"{config.path or 'config'}: every {what} is in the landed data")
    return 0


def cmd_schema(args: argparse.Namespace, config: Config) -> int:
    """Print the schema in force as the `columns:` block to paste under `dataset:` in ct.yaml.

    With `dataset.columns` left out, it is the pinned schema, inferred from the landed files
    and pinned first when none is (by `main`, see `ct_assets.lib.schema`); nothing landed yet
    is a one-line error.
    """
    from ct_assets.lib.schema import schema_yaml

    print(schema_yaml(config), end="")
    return 0


def cmd_home(args: argparse.Namespace, config: Config) -> int:
    """Print the Dagster home of this project (created with its dagster.yaml)."""
    print(prepare_dagster_home(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `ct` argument parser."""
    parser = argparse.ArgumentParser(prog="ct", description=__doc__)
    parser.add_argument("--config", help="config file (default: $CT_CONFIG or ./ct.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="write simulated days into the landing dir")
    simulate.add_argument("--days", type=int, default=30)
    simulate.add_argument("--start", type=_day, help="first day (default: days end today)")
    simulate.add_argument("--rows-per-day", type=int, default=2000)
    simulate.add_argument("--drift", default="none",
                          choices=["none", "covariate", "concept", "prior", "gradual", "segment"])
    simulate.add_argument("--drift-day", type=int,
                          help="first drifted day, counted from --start (0 = the first day)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--json", action="store_true")
    simulate.set_defaults(handler=cmd_simulate)

    run = commands.add_parser("run", help="ingest what landed and bring assets up to date")
    run.add_argument("--all", action="store_true", help="rebuild every landed partition")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="the whole loop on the simulator, with a timeline")
    demo.add_argument("--rows-per-day", type=int, default=2000)
    demo.add_argument("--drift", default="covariate",
                      choices=["covariate", "concept", "prior", "gradual", "segment"])
    demo.set_defaults(handler=cmd_demo)

    quarantine = commands.add_parser("quarantine", help="list rejected rows and files")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(handler=cmd_quarantine)

    status = commands.add_parser("status", help="deployed model, its metrics, last retrain")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    models = commands.add_parser("models", help="every model version and its status")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models)

    rollback = commands.add_parser("rollback", help="deploy an earlier model version")
    rollback.add_argument("--to", metavar="VERSION", help="default: the previously deployed")
    rollback.add_argument("--force", action="store_true",
                          help="deploy it even if the gate rejected or never validated it, or "
                               "its feature schema differs from the config")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(handler=cmd_rollback)

    backtest = commands.add_parser(
        "backtest", help="replay the landed history through retraining policies")
    backtest.add_argument("--policies", help="comma-separated, from never, schedule, drift, "
                                             "performance, drift+performance, online (all)")
    backtest.add_argument("--every", type=int, default=7,
                          help="partitions between two retrains of the schedule policy")
    backtest.add_argument("--chart", metavar="PATH", help="write the chart (PNG) there")
    backtest.add_argument("--json", action="store_true")
    backtest.set_defaults(handler=cmd_backtest)

    serve = commands.add_parser("serve", help="serve the deployed model over HTTP (Open "
                                              "Inference Protocol v2, /predict, /feedback)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    serve.set_defaults(handler=cmd_serve)

    package = commands.add_parser("package", help="one model version as a deployable directory "
                                                  "(server, pinned requirements, Dockerfile)")
    package.add_argument("version", nargs="?", metavar="VERSION", help="default: the deployed")
    package.add_argument("--out", required=True, metavar="DIR", help="the package directory")
    package.add_argument("--force", action="store_true",
                         help="package it even if the gate rejected or never validated it")
    package.set_defaults(handler=cmd_package)

    check = commands.add_parser("check", help="check the config's columns against landed data")
    check.set_defaults(handler=cmd_check)

    schema = commands.add_parser("schema", help="print the dataset's columns as YAML for "
                                                "ct.yaml (inferred and pinned if omitted)")
    schema.set_defaults(handler=cmd_schema)

    home = commands.add_parser("home", help="print (and create) this project's DAGSTER_HOME")
    home.set_defaults(handler=cmd_home)
    return parser


# Commands that read the dataset's columns. With `dataset.columns` left out and no schema
# pinned, they infer it from the landed files and pin it first (`ensure_schema`); True: nothing
# landed yet is an error, False: they go on without columns (there is nothing to ingest).
NEEDS_COLUMNS = {"schema": True, "check": True, "run": False, "backtest": False,
                 "serve": False, "rollback": False, "package": False}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ct` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Config], int] = args.handler
    try:
        config = load_config(args.config)
        if args.command in NEEDS_COLUMNS:  # an omitted dataset.columns: inferred and pinned
            from ct_assets.lib.schema import ensure_schema

            config = ensure_schema(config, required=NEEDS_COLUMNS[args.command])
        return handler(args, config)
    except (ConfigError, ValueError, OSError, LookupError, ModelStoreError) as error:
        message = " ".join(str(error).split())
        print(f"ct {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
