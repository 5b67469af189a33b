"""The report's figures (matplotlib, Agg, no pyplot state) and what they share; the same data
gives the same PNG bytes (no software or date metadata; fonts are matplotlib's own)."""

import io

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "rrt",
}
COLORS = matplotlib.colormaps["tab10"].colors  # matplotlib's default colour cycle


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def new(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes side by side, laid out by matplotlib."""
    matplotlib.rcParams.update(RC)
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])
