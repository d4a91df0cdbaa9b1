# river is a benchmark-only dependency: never import it from ct_assets, never install it into
# .venv. This script makes its own venv, benchmarks/.venv-reference, and re-runs itself there.
"""Reference baselines on Elec2 (no change, river ARF, river logistic regression), per week.

Rows get the timestamp of `examples/elec2/prepare.py` (1996-05-07 + day_index days +
round(period * 47) * 30 minutes) and the weekly partition key of the platform (ISO date of the
Monday, polars `truncate("1w")`, as `ct_assets/defs/partitions.py`). Features: the six raw
columns of `elec.csv`. Each model is scored in two orders:
- `row`: river's prequential test-then-train, row by row (predict row i, then learn row i);
- `partition`: as a batch retraining platform: every row of week p is predicted before any
  label of week p is learned, then the model learns week p's rows in order.
Score = P(class 1); no_change scores the last class it learned (0.5 before any label), river
models `predict_proba_one(x)[1]` (0.5 when empty). Accuracy predicts 1 when score >= 0.5.
Figures over all weeks and over the weeks from `--first-week` (default: the 13th partition,
after the 12-week training window of examples/elec2/ct.yaml); NaN (JSON null) where undefined.

    python3 benchmarks/reference_baselines.py [--csv PATH] [--first-week KEY] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venv-reference"
VENV_PYTHON = VENV / "bin" / "python"
PACKAGES = ["river", "polars", "numpy", "scikit-learn"]
# The shared data set sits beside the repository (<repo>/../shared/...), as examples/elec2 finds it.
CANDIDATES = [ROOT.parent / "shared/datasets/elec2/elec.csv",
              Path("/work/shared/datasets/elec2/elec.csv")]
DEFAULT_CSV = next((c for c in CANDIDATES if c.is_file()), CANDIDATES[-1])
RESULTS = ROOT / "benchmarks" / "results" / "reference_baselines.json"
FIRST_DAY = dt.datetime(1996, 5, 7, tzinfo=dt.UTC)
FEATURES = ["period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
TARGET = "class"
SKIP_WEEKS = 12  # training.window of examples/elec2/ct.yaml: the default first week is the 13th
ORDERS = ("row", "partition")


def ensure_venv() -> None:
    """Outside the reference venv: create and fill it if needed, re-run this script there."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = [str(VENV_PYTHON), "-c", "import river, polars, numpy, sklearn"]
    if subprocess.run(check, capture_output=True).returncode != 0:
        pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", *PACKAGES]
        subprocess.run(pip, check=True)
    sys.exit(subprocess.run([str(VENV_PYTHON), __file__, *sys.argv[1:]]).returncode)


def load_weeks(csv_path: Path) -> tuple[list[str], list[list[dict[str, float]]], list[list[int]]]:
    """Weekly partition keys with each week's feature rows and labels, in time order."""
    import polars as pl

    slot = (pl.col("period") * 47).round().cast(pl.Int64)
    day_index = (slot < slot.shift(1)).fill_null(False).cast(pl.Int64).cum_sum()
    timestamp = pl.lit(FIRST_DAY) + pl.duration(days=day_index, minutes=slot * 30)
    frame = pl.read_csv(csv_path).with_columns(
        timestamp.dt.truncate("1w").dt.strftime("%Y-%m-%d").alias("week")
    )
    keys, rows, labels = [], [], []
    for (key,), part in frame.partition_by("week", as_dict=True, maintain_order=True).items():
        keys.append(key)
        rows.append(part.select(FEATURES).to_dicts())
        labels.append(part[TARGET].cast(pl.Int64).to_list())
    return keys, rows, labels


class NoChange:
    """Predicts the last class it learned (0.5 before it learned any)."""

    def __init__(self) -> None:
        self.last: float = 0.5

    def predict_proba_one(self, x: dict[str, float]) -> dict[int, float]:
        """P(class) = 1 for the last class learned."""
        return {1: self.last}

    def learn_one(self, x: dict[str, float], y: int) -> None:
        """Remember `y`."""
        self.last = float(y)


def model_factories() -> dict[str, Callable[[], Any]]:
    """Name → function that builds a fresh, untrained model."""
    from river import forest, linear_model, preprocessing

    return {
        "no_change": NoChange,
        "arf": lambda: forest.ARFClassifier(n_models=10, seed=0),
        "river_logreg": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    }


def score_of(model: Any, x: dict[str, float]) -> float:
    """P(class 1) from `model`, 0.5 when it has nothing to say yet."""
    proba = model.predict_proba_one(x)
    return float(proba.get(1, 0.0)) if proba else 0.5


def run_order(model: Any, order: str, weeks: list[list[dict[str, float]]],
              labels: list[list[int]]) -> list[list[float]]:
    """Scores of every row, week by week, in evaluation order `order` (`row` or `partition`)."""
    scores = []
    for rows, ys in zip(weeks, labels, strict=True):
        if order == "row":
            week_scores = []
            for x, y in zip(rows, ys, strict=True):
                week_scores.append(score_of(model, x))
                model.learn_one(x, y)
        else:
            week_scores = [score_of(model, x) for x in rows]
            for x, y in zip(rows, ys, strict=True):
                model.learn_one(x, y)
        scores.append(week_scores)
    return scores


def accuracy_auc(ys: list[int], scores: list[float]) -> tuple[float, float]:
    """Accuracy (score >= 0.5 predicts 1) and ROC AUC (NaN with a single class)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(ys), np.asarray(scores)
    accuracy = float(np.mean((s >= 0.5).astype(int) == y))
    auc = float(roc_auc_score(y, s)) if len(set(ys)) == 2 else math.nan
    return accuracy, auc


def summarise(keys: list[str], labels: list[list[int]], scores: list[list[float]],
              weekly: dict[str, dict[str, float]]) -> dict[str, float]:
    """Pooled accuracy/AUC over the given weeks' rows, and the mean of their weekly figures."""
    import numpy as np

    ys = [y for week in labels for y in week]
    pooled = [s for week in scores for s in week]
    accuracy, auc = accuracy_auc(ys, pooled)
    return {
        "weeks": len(keys),
        "rows": len(ys),
        "accuracy": accuracy,
        "roc_auc": auc,
        "mean_weekly_accuracy": float(np.mean([weekly[k]["accuracy"] for k in keys])),
        "mean_weekly_roc_auc": float(np.nanmean([weekly[k]["roc_auc"] for k in keys])),
    }


def compute_baselines(csv_path: Path | str = DEFAULT_CSV, first_week: str | None = None,
                      skip_weeks: int = SKIP_WEEKS) -> dict[str, Any]:
    """Every model in both orders: per-week and overall figures, and wall seconds."""
    import river

    keys, weeks, labels = load_weeks(Path(csv_path))
    first_week = first_week or keys[skip_weeks]
    if first_week not in keys:
        raise ValueError(f"first week {first_week!r} is not a partition key ({keys[0]} …)")
    start = keys.index(first_week)
    models: dict[str, Any] = {}
    for name, factory in model_factories().items():
        models[name] = {}
        for order in ORDERS:
            began = time.perf_counter()
            scores = run_order(factory(), order, weeks, labels)
            seconds = time.perf_counter() - began
            weekly = {}
            for key, ys, week_scores in zip(keys, labels, scores, strict=True):
                accuracy, auc = accuracy_auc(ys, week_scores)
                weekly[key] = {"rows": len(ys), "accuracy": accuracy, "roc_auc": auc}
            models[name][order] = {
                "seconds": round(seconds, 3),
                "all_weeks": summarise(keys, labels, scores, weekly),
                "from_first_week": summarise(keys[start:], labels[start:], scores[start:],
                                             weekly),
                "weeks": weekly,
            }
    return {
        "dataset": str(Path(csv_path).resolve()),
        "rows": sum(len(week) for week in labels),
        "partitions": len(keys),
        "first_partition": keys[0],
        "last_partition": keys[-1],
        "first_week": first_week,
        "features": FEATURES,
        "river_version": river.__version__,
        "score": "P(class 1); accuracy predicts 1 when score >= 0.5",
        "models": models,
    }


def without_nan(value: Any) -> Any:
    """`value` with every NaN float replaced by None, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def table(result: dict[str, Any]) -> str:
    """A small text table: accuracy and AUC per model and order, all weeks and from first week."""
    head = f"{'model':<13}{'order':<10}{'scope':<17}{'acc':>7}{'auc':>7}{'wk acc':>8}"
    lines = [head + f"{'wk auc':>8}{'seconds':>9}", "-" * (len(head) + 17)]
    for name, orders in result["models"].items():
        for order, figures in orders.items():
            for scope in ("all_weeks", "from_first_week"):
                f = figures[scope]
                lines.append(
                    f"{name:<13}{order:<10}{scope:<17}{f['accuracy']:>7.4f}{f['roc_auc']:>7.4f}"
                    f"{f['mean_weekly_accuracy']:>8.4f}{f['mean_weekly_roc_auc']:>8.4f}"
                    f"{figures['seconds']:>9.1f}"
                )
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="Elec2 elec.csv")
    parser.add_argument("--first-week", default=None,
                        help=f"partition key (default: the {SKIP_WEEKS + 1}th weekly partition)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    ensure_venv()
    result = compute_baselines(args.csv, args.first_week)
    print(f"{result['rows']} rows, {result['partitions']} weekly partitions "
          f"{result['first_partition']} … {result['last_partition']}; "
          f"first week {result['first_week']}")
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(without_nan(result), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
