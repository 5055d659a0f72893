"""The report's figure: one bar panel per metric, panels grouped (clean ImageNet, distribution shift, downstream
transfer), published reference rows hatched."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from genas.plots import figure_path, save_figure, short_label

__all__ = ["plot_metric_bars"]


def plot_metric_bars(table: Mapping[str, Mapping[str, float | None]], out_png: str | os.PathLike,
                     hatched: Iterable[str] = (), groups: Mapping[str, str] | None = None) -> Path:
    """One panel per metric (each on its own scale: ImageNet top-1 and ImageNet-A differ tenfold), one bar
    per model, value on top; models in ``hatched`` (published reference numbers) are drawn hatched and pale.

    ``table`` maps a model label to ``{metric title: value or None}`` (panels in the order of the metrics);
    ``groups`` maps a metric title to its group: each group is one titled band of panels (so the shift sets sit
    together), metrics without a group form a last band. Metrics and models without any value are left out, and a
    table without any value gives a figure saying so.
    """
    path = figure_path(out_png)
    hatched = set(hatched)
    groups = dict(groups or {})
    models = [m for m, row in table.items() if any(v is not None for v in row.values())]
    metrics = [k for k in dict.fromkeys(k for row in table.values() for k in row)
               if any(table[m].get(k) is not None for m in models)]
    bands: dict[str, list[str]] = {}
    for metric in metrics:
        bands.setdefault(groups.get(metric, ""), []).append(metric)
    ncols = min(4, max([len(v) for v in bands.values()] + [1]))
    rows = [max(1, math.ceil(len(v) / ncols)) for v in bands.values()] or [1]
    fig = Figure(figsize=(4.0 * ncols, 3.3 * sum(rows) + 0.4 * len(rows)), layout="constrained")
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    if not metrics:
        fig.subplots().text(0.5, 0.5, "no metric values to plot", ha="center", va="center")
    subfigs = fig.subfigures(len(rows), 1, height_ratios=rows, squeeze=False).ravel() if metrics else []
    for subfig, (band, band_metrics), nrows in zip(subfigs, bands.items(), rows):
        if band:
            subfig.suptitle(band, fontweight="bold", fontsize=11)
        axes = subfig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, band_metrics):
            _panel(ax, metric, table, models, colours, hatched)
        for ax in axes[len(band_metrics):]:
            ax.set_axis_off()
    legend = [Patch(facecolor=colours[m], edgecolor="black", hatch="//" if m in hatched else None,
                    alpha=0.55 if m in hatched else 1.0, label=short_label(m, 60)) for m in models]
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncol=min(3, len(legend)), fontsize=8, frameon=False)
    return save_figure(fig, path)


def _panel(ax, metric: str, table: Mapping[str, Mapping[str, float | None]], models: Sequence[str],
           colours: Mapping[str, str], hatched: set[str]) -> None:
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
