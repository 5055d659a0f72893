"""The report's figure: one bar panel per metric, published reference rows hatched."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from genas.plots import figure_path, save_figure, short_label

__all__ = ["plot_metric_bars"]


def plot_metric_bars(table: Mapping[str, Mapping[str, float | None]], out_png: str | os.PathLike,
                     hatched: Iterable[str] = ()) -> Path:
    """One panel per metric (each on its own scale: ImageNet top-1 and ImageNet-A differ tenfold), one bar
    per model, value on top; models in ``hatched`` (published reference numbers) are drawn hatched and pale.

    ``table`` maps a model label to ``{metric title: value or None}`` (panels in the order of the metrics);
    metrics and models without any value are left out, and a table without any value gives a figure saying so.
    """
    path = figure_path(out_png)
    hatched = set(hatched)
    models = [m for m, row in table.items() if any(v is not None for v in row.values())]
    metrics = [k for k in dict.fromkeys(k for row in table.values() for k in row)
               if any(table[m].get(k) is not None for m in models)]
    ncols = min(3, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if not metrics:
        axes[0].text(0.5, 0.5, "no metric values to plot", ha="center", va="center")
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, metric in zip(axes, metrics):
        shown = [m for m in models if table[m].get(metric) is not None]
        values = [float(table[m][metric]) for m in shown]
        bars = ax.bar(range(len(shown)), values, width=0.8, color=[colours[m] for m in shown], edgecolor="black",
                      linewidth=0.5)
        for bar, model in zip(bars, shown):
            if model in hatched:
                bar.set_hatch("//")
                bar.set_alpha(0.55)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        low, high = min(values), max(values)
        span = (high - low) or abs(high) or 1.0  # zoom on the differences, as the paper's tables invite
        ax.set_ylim(max(0.0, low - 0.6 * span) if low >= 0 else low - 0.6 * span, high + 0.35 * span)
        ax.set_xlim(-0.6, max(len(shown), 4) - 0.4)
        ax.set_xticks([])
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[max(len(metrics), 1):]:
        ax.set_axis_off()
    legend = [Patch(facecolor=colours[m], edgecolor="black", hatch="//" if m in hatched else None,
                    alpha=0.55 if m in hatched else 1.0, label=short_label(m, 60)) for m in models]
    if legend:
        fig.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(legend)),
                   fontsize=8, frameon=False)
    return save_figure(fig, path)
