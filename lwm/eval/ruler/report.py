"""RULER's report: a task x length table with the average and RULER's weighted averages, and a
depth x length heatmap per task.

RULER (arXiv 2404.06654, Table 3) scores a model per length as the mean over its tasks, then
summarises the lengths by their mean (Avg) and two weighted means: wAvg (inc) weighs length
i of n by i (long contexts count more), wAvg (dec) by n + 1 - i. For LWM-Text-Chat-1M's
82.3 / 78.4 / 73.7 / 69.1 / 68.1 / 65.0 at 4K..128K these give 72.8, 69.9 and 75.7.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lwm.eval.ruler.tasks import TASKS

DEPTH_BINS = tuple(float(d) for d in np.linspace(0, 100, 11))


def weighted_average(scores: Sequence[float], increasing: bool) -> float:
    """RULER's wAvg: weights 1..n over the lengths in order (`increasing`) or n..1."""
    weights = np.arange(1, len(scores) + 1, dtype=np.float64)
    if not increasing:
        weights = weights[::-1]
    return float(np.dot(weights, scores) / weights.sum())


def score_grid(results: Sequence[dict[str, Any]], tasks: Sequence[str], lengths: Sequence[int]) -> np.ndarray:
    """Mean score in percent per (task, length); NaN where nothing was run."""
    grid = np.full((len(tasks), len(lengths)), np.nan)
    for row, task in enumerate(tasks):
        for column, length in enumerate(lengths):
            scores = [r["score"] for r in results if r["task"] == task and r["length"] == length]
            if scores:
                grid[row, column] = 100.0 * float(np.mean(scores))
    return grid


def summary(results: Sequence[dict[str, Any]], tasks: Sequence[str] | None = None,
            lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """The table as data: per-task scores, the per-length mean over tasks, Avg and wAvg."""
    tasks = list(tasks) if tasks is not None else sorted({r["task"] for r in results}, key=_task_order)
    lengths = list(lengths) if lengths is not None else sorted({int(r["length"]) for r in results})
    grid = score_grid(results, tasks, lengths)
    with np.errstate(all="ignore"):
        per_length = np.nanmean(grid, axis=0) if len(tasks) else np.full(len(lengths), np.nan)
    complete = bool(np.isfinite(per_length).all()) and len(lengths) > 0
    samples = {task: sum(1 for r in results if r["task"] == task) for task in tasks}
    return {
        "tasks": tasks,
        "lengths": lengths,
        "scores": {task: [_number(v) for v in grid[row]] for row, task in enumerate(tasks)},
        "samples": samples,
        "per_length": [_number(v) for v in per_length],
        "avg": _number(float(np.mean(per_length))) if complete else None,
        "wavg_inc": _number(weighted_average(per_length, True)) if complete else None,
        "wavg_dec": _number(weighted_average(per_length, False)) if complete else None,
    }


def format_table(table: dict[str, Any]) -> str:
    """RULER's layout as Markdown: one row per task, the lengths as columns, a last row with
    the mean over tasks, and Avg / wAvg (inc) / wAvg (dec) over the lengths."""
    lengths = table["lengths"]
    header = ["task", *(length_label(length) for length in lengths), "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(values):
        return [f"{v:.1f}" if v is not None else "-" for v in values]

    for task in table["tasks"]:
        values = table["scores"][task]
        finite = [v for v in values if v is not None]
        average = f"{np.mean(finite):.1f}" if finite else "-"
        lines.append("| " + " | ".join([task, *cells(values), average]) + " |")
    average = f"{table['avg']:.1f}" if table["avg"] is not None else "-"
    lines.append("| " + " | ".join(["**all tasks**", *cells(table["per_length"]), average]) + " |")
    lines.append("")
    if table["avg"] is not None:
        lines.append(f"Avg {table['avg']:.1f} | wAvg (inc) {table['wavg_inc']:.1f} | wAvg (dec) {table['wavg_dec']:.1f}")
    return "\n".join(lines) + "\n"


def depth_bin(depth: float) -> float:
    """The nearest of the heatmap's depth rows (0, 10, ..., 100 percent)."""
    return min(DEPTH_BINS, key=lambda row: abs(row - depth))


def length_label(length: int) -> str:
    """RULER's names for lengths: 4096 is 4K, 1048576 is 1M (1536 is 1.5K)."""
    if length >= 1 << 20 and length % (1 << 20) == 0:
        return f"{length >> 20}M"
    if length >= 1024:
        return f"{length / 1024:g}K"
    return str(length)


def heatmap_grid(results: Sequence[dict[str, Any]], task: str) -> tuple[list[int], list[str], np.ndarray]:
    """Hit rate per (depth row, length) of one task: lengths, row labels, matrix (NaN: empty).

    Each reference counts at its depth; the aggregation tasks (no depths) have one row for the
    whole context.
    """
    chosen = [r for r in results if r["task"] == task]
    lengths = sorted({int(r["length"]) for r in chosen})
    with_depth = any(d is not None for r in chosen for d in r["depths"])
    rows = list(DEPTH_BINS) if with_depth else [None]
    total = np.zeros((len(rows), len(lengths)))
    count = np.zeros((len(rows), len(lengths)))
    for result in chosen:
        column = lengths.index(int(result["length"]))
        for depth, hit in zip(result["depths"], result["hits"]):
            row = rows.index(depth_bin(depth)) if with_depth and depth is not None else 0
            total[row, column] += float(hit)
            count[row, column] += 1
    keep = count.sum(axis=1) > 0
    labels = [f"{row:g}" if row is not None else "all" for row, kept in zip(rows, keep) if kept]
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(count > 0, total / np.maximum(count, 1), np.nan)[keep]
    return lengths, labels, matrix


def plot_task_heatmap(results: Sequence[dict[str, Any]], task: str, path: str | Path) -> Path | None:
    """Depth x length heatmap of one task (green: references found), None when it has no results."""
    lengths, labels, matrix = heatmap_grid(results, task)
    if not lengths:
        return None
    hits = [h for r in results if r["task"] == task for h in r["hits"]]
    return plot_grid(matrix, [length_label(length) for length in lengths], labels, path,
                     title=f"{task}: {np.mean(hits):.1%} of {len(hits)} references found", xlabel="length (tokens)",
                     ylabel="depth of the reference (%)" if labels != ["all"] else "")


def plot_grid(matrix: np.ndarray, columns: Sequence[str], rows: Sequence[str], path: str | Path, *, title: str,
              xlabel: str, ylabel: str) -> Path:
    """A heatmap of shares in [0, 1] (NaN: not run), red to green, each cell labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    colormap = LinearSegmentedColormap.from_list("ruler", ["#F0496E", "#EBB839", "#0CD79F"])
    figure, axis = plt.subplots(figsize=(max(5.0, 0.7 * len(columns) + 2.5), max(2.5, 0.4 * len(rows) + 1.5)))
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=colormap, vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(columns)), list(columns))
    axis.set_yticks(range(len(rows)), list(rows))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            if np.isfinite(matrix[row, column]):
                axis.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axis, label="share found")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _task_order(task: str) -> int:
    names = list(TASKS)
    return names.index(task) if task in names else len(names)


def _number(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 2)
