"""Small renderers for what the UI and the CLI show: Markdown tables, plain-text tables."""

from __future__ import annotations

import base64
import io

import numpy as np
import polars as pl


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pl.DataFrame, max_rows: int = 10) -> str:
    """A Markdown table of the first `max_rows` rows of `frame`."""
    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n… {frame.height - max_rows} more rows")
    return "\n".join(lines)


def text_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A fixed-width text table for the terminal."""
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def comparison_chart_png(y: np.ndarray, scores: dict[str, np.ndarray], task: str) -> bytes:
    """A PNG comparing models on the same holdout.

    Binary: ROC curves and a calibration plot; multiclass and regression: each model's metrics
    side by side.

    Args:
        y: true labels (encoded).
        scores: model label (e.g. `candidate v…`) → its scores on the holdout.
        task: the task.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ct_assets.lib.evaluation import compute_metrics

    if task == "binary":
        from sklearn.metrics import roc_curve

        figure, (roc, calibration) = plt.subplots(1, 2, figsize=(9, 3.8))
        for label, values in scores.items():
            if len(np.unique(y)) == 2:
                fpr, tpr, _ = roc_curve(y, values)
                roc.plot(fpr, tpr, label=label)
            edges = np.linspace(0, 1, 11)
            bins = np.clip(np.digitize(values, edges) - 1, 0, 9)
            filled = [b for b in range(10) if (bins == b).any()]
            calibration.plot([values[bins == b].mean() for b in filled],
                             [y[bins == b].mean() for b in filled], marker="o", label=label)
        roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
        roc.set(title="ROC on the holdout", xlabel="false positive rate",
                ylabel="true positive rate")
        calibration.plot([0, 1], [0, 1], color="grey", linestyle=":")
        calibration.set(title="Calibration", xlabel="mean predicted", ylabel="observed rate")
        roc.legend(loc="lower right", fontsize=8)
    else:
        figure, axis = plt.subplots(figsize=(7, 3.8))
        names = list(compute_metrics(y, next(iter(scores.values())), task))
        width = 0.8 / max(1, len(scores))
        for position, (label, values) in enumerate(scores.items()):
            metrics = compute_metrics(y, values, task)
            axis.bar(np.arange(len(names)) + position * width, [metrics[n] for n in names],
                     width, label=label)
        axis.set_xticks(np.arange(len(names)) + width * (len(scores) - 1) / 2, names)
        axis.set_title("Holdout metrics")
        axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """A Markdown image with the PNG embedded as base64 (the Dagster UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
