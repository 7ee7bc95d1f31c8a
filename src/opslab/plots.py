"""Matplotlib panels for dashboard grids, drawn from the frames `opslab.prometheus` returns.

Three kinds, as in Grafana: a time series (a line per series of a range query), a stat (one big
number from an instant query) and a bar chart (a bar per series of an instant query). Units are
Grafana's names (`percentunit`, `s`, `bytes`, `reqps`, `d`, `short`), so one panel definition
serves both the notebook and the exported Grafana dashboard.
"""

from __future__ import annotations

import re

import matplotlib.dates as mdates
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, MultipleLocator

NO_DATA = "no data"
MIB_STEPS = (1, 2, 5, 10, 20, 25, 50, 100, 128, 256, 512, 1024, 2048, 4096)
_LEGEND_FIELD = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def format_value(value: float, unit: str = "short") -> str:
    """A value in a Grafana unit, as a person reads it: 0.031 s -> `31 ms`, 0.25 percentunit -> `25%`."""
    if pd.isna(value):
        return "–"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "bytes":
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    if unit == "reqps":
        return f"{value:.2f} req/s"
    if unit == "d":
        return f"{value:.1f} days"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def series_name(labels: dict, legend: str = "") -> str:
    """A series' name: the legend template filled in (`{{pod}}`), else its labels."""
    if legend:
        return _LEGEND_FIELD.sub(lambda m: str(labels.get(m.group(1), "")), legend)
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def _label_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("timestamp", "value")]


def _series(frame: pd.DataFrame, legend: str) -> list[tuple[str, pd.DataFrame]]:
    labels = _label_columns(frame)
    if not labels:
        return [(series_name({}, legend), frame)]
    return [(series_name(dict(zip(labels, key if isinstance(key, tuple) else (key,))), legend), group)
            for key, group in frame.groupby(labels, dropna=False, sort=True)]


def _value_axis(axis, unit: str, top: float) -> None:
    """Ticks in the unit; byte ticks on whole MiB steps, so they read 64 MiB, not 67.1 MB's 63.9 MiB."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: format_value(value, unit)))
    if top <= 0:  # all zero: one tick, not five that all read 0
        axis.set_major_locator(MultipleLocator(1))
    elif unit == "bytes":
        step = next((s for s in MIB_STEPS if top / (s * 2**20) <= 6), MIB_STEPS[-1])
        axis.set_major_locator(MultipleLocator(step * 2**20))


def _frame_axes(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", color="grey", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def timeseries(ax: Axes, frame: pd.DataFrame, title: str, unit: str = "short", legend: str = "") -> None:
    """A line per series of a range query's frame (timestamp, labels, value)."""
    _frame_axes(ax, title)
    if frame.empty:
        return _no_data(ax)
    named = _series(frame, legend)
    for name, group in named:
        ax.plot(group["timestamp"], group["value"], label=name, linewidth=1.4)
    _value_axis(ax.yaxis, unit, frame["value"].max())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=min(0, frame["value"].min()))
    if len(named) > 1 or named[0][0] != series_name({}):  # a lone unnamed series needs no legend
        ax.legend(fontsize=7, loc="best", framealpha=0.7, ncol=2 if len(named) > 4 else 1)


def stat(ax: Axes, frame: pd.DataFrame, title: str, unit: str = "short", legend: str = "") -> None:
    """One big number: the instant query's value (several series are shown side by side)."""
    _frame_axes(ax, title)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    if frame.empty:
        return _no_data(ax)
    named = _series(frame, legend)[:4]
    for index, (name, group) in enumerate(named):
        x = (index + 0.5) / len(named)
        ax.text(x, 0.45, format_value(group["value"].iloc[-1], unit), ha="center", va="center",
                fontsize=22 if len(named) == 1 else 15, fontweight="bold", color="#1f5f99", transform=ax.transAxes)
        if len(named) > 1:
            ax.text(x, 0.12, name, ha="center", va="center", fontsize=8, color="grey", transform=ax.transAxes)


def bar(ax: Axes, frame: pd.DataFrame, title: str, unit: str = "short", legend: str = "") -> None:
    """A horizontal bar per series of an instant query's frame, largest on top."""
    _frame_axes(ax, title)
    if frame.empty:
        return _no_data(ax)
    values = pd.Series({name: group["value"].iloc[-1] for name, group in _series(frame, legend)}).sort_values()
    ax.barh(values.index, values.to_numpy(), height=0.6, color="#4c8bc4")
    ax.set_ylim(-0.8, max(len(values), 3) - 0.2)  # a lone bar stays a bar, not a block
    _value_axis(ax.xaxis, unit, values.max())
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)


PANELS = {"timeseries": timeseries, "stat": stat, "bar": bar}
