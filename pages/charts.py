"""Plotly figures for the Train page, built from a run's metric records (runtime/runs.py).

Pure: records in, figures out. No Streamlit and no files here, so every chart is tested without a
browser and the live fragment only has to read new records and call these builders.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

Record = dict[str, Any]

MAX_POINTS = 2_000
SMOOTHING = 0.6
MAX_HEADS = 8
HEIGHT = 300
PALETTE = ("#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777")


@dataclass
class RunSeries:
    """One run's records, grouped by kind, so each chart reads only what it draws."""

    steps: list[Record] = field(default_factory=list)
    epochs: list[Record] = field(default_factory=list)
    grad_norms: list[Record] = field(default_factory=list)
    attention: list[Record] = field(default_factory=list)
    health: list[Record] = field(default_factory=list)
    events: list[Record] = field(default_factory=list)

    def add(self, records: Iterable[Record]) -> None:
        """Append new records (as read_metrics returns them); unknown kinds are ignored."""
        groups = {
            "step": self.steps,
            "epoch": self.epochs,
            "grad_norms": self.grad_norms,
            "attention": self.attention,
            "health": self.health,
            "event": self.events,
        }
        for record in records:
            group = groups.get(record.get("kind", ""))
            if group is not None:
                group.append(record)


def series_from(records: Iterable[Record]) -> RunSeries:
    series = RunSeries()
    series.add(records)
    return series


def _finite(value: Any) -> float | None:
    """A plottable number, or None (a gap) for null, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def smooth(values: Sequence[float | None], weight: float = SMOOTHING) -> list[float | None]:
    """TensorBoard's debiased exponential moving average; gaps stay gaps and do not poison it."""
    out: list[float | None] = []
    last, norm = 0.0, 0.0
    for value in values:
        if value is None:
            out.append(None)
            continue
        last = last * weight + (1 - weight) * value
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def thin(xs: Sequence[Any], ys: Sequence[Any], max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point (always keeping the last) so a long run stays cheap to redraw."""
    if len(xs) <= max_points:
        return list(xs), list(ys)
    stride = math.ceil(len(xs) / max_points)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _layout(
    fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False
) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        template="plotly_white",
        height=HEIGHT,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        uirevision="keep",
        xaxis_title=x_title,
        yaxis_title=y_title,
    )
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def _empty(title: str, message: str) -> go.Figure:
    fig = _layout(go.Figure(), title, "", "")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.add_annotation(text=message, showarrow=False, font={"color": "#6b7280"})
    return fig


def loss_figure(series: RunSeries) -> go.Figure:
    """Per-step training loss (raw, faint, and smoothed) with per-epoch train and validation loss."""
    if not series.steps and not series.epochs:
        return _empty("Loss", "waiting for the first step")
    fig = go.Figure()
    steps = [r["step"] for r in series.steps]
    losses = [_finite(r.get("loss")) for r in series.steps]
    x, raw = thin(steps, losses)
    _, smoothed = thin(steps, smooth(losses))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=raw,
            name="step loss",
            mode="lines",
            opacity=0.3,
            line={"color": PALETTE[0], "width": 1},
            showlegend=False,
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=smoothed,
            name="train (smoothed)",
            mode="lines",
            line={"color": PALETTE[0], "width": 2},
        )
    )
    epoch_steps = [r["step"] for r in series.epochs]
    for key, name, colour in (
        ("train_loss", "train (epoch)", PALETTE[0]),
        ("val_loss", "validation", PALETTE[1]),
    ):
        values = [_finite(r.get(key)) for r in series.epochs]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Scatter(
                    x=epoch_steps,
                    y=values,
                    name=name,
                    mode="lines+markers",
                    line={
                        "color": colour,
                        "width": 2,
                        "dash": "dot" if key == "train_loss" else "solid",
                    },
                    marker={"size": 7},
                )
            )
    return _layout(fig, "Loss", "step", "loss")


def accuracy_figure(series: RunSeries) -> go.Figure:
    """Train and validation accuracy per epoch, in percent (empty for regression runs)."""
    epochs = [r["epoch"] for r in series.epochs]
    fig = go.Figure()
    for key, name, colour in (
        ("train_accuracy", "train", PALETTE[0]),
        ("val_accuracy", "validation", PALETTE[1]),
    ):
        values = [_finite(r.get(key)) for r in series.epochs]
        if any(v is not None for v in values):
            percent = [None if v is None else 100 * v for v in values]
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=percent,
                    name=name,
                    mode="lines+markers",
                    line={"color": colour, "width": 2},
                    marker={"size": 7},
                )
            )
    if not fig.data:
        message = (
            "no accuracy for a regression run" if series.epochs else "waiting for the first epoch"
        )
        return _empty("Accuracy", message)
    fig = _layout(fig, "Accuracy", "epoch", "accuracy (%)")
    fig.update_xaxes(dtick=1)
    return fig


def lr_figure(series: RunSeries) -> go.Figure:
    """The learning rate the optimizer actually used at each step (shows warm-up and schedule)."""
    if not series.steps:
        return _empty("Learning rate", "waiting for the first step")
    x, y = thin([r["step"] for r in series.steps], [_finite(r.get("lr")) for r in series.steps])
    fig = go.Figure(
        go.Scatter(x=x, y=y, name="lr", mode="lines", line={"color": PALETTE[2], "width": 2})
    )
    return _layout(fig, "Learning rate", "step", "lr")


def throughput_figure(series: RunSeries) -> go.Figure:
    """Samples per second, to see the device and batch size at work."""
    if not series.steps:
        return _empty("Throughput", "waiting for the first step")
    x, y = thin(
        [r["step"] for r in series.steps], [_finite(r.get("samples_per_s")) for r in series.steps]
    )
    fig = go.Figure(
        go.Scatter(x=x, y=y, name="samples/s", mode="lines", line={"color": PALETTE[4], "width": 2})
    )
    return _layout(fig, "Throughput", "step", "samples/s")


def layer_order(series: RunSeries, order: Sequence[str] = ()) -> list[str]:
    """The layers that report gradient norms: in `order` (the graph's) first, then as they appear."""
    seen: dict[str, None] = {}
    for record in series.grad_norms:
        seen.update(dict.fromkeys(record.get("norms", {})))
    known = [n for n in order if n in seen]
    return known + [n for n in seen if n not in set(known)]


def grad_norm_lines(series: RunSeries, order: Sequence[str] = ()) -> go.Figure:
    """One line per layer: the gradient norm over steps, on a log scale."""
    if not series.grad_norms:
        return _empty("Gradient norms", "waiting for the first report")
    steps = [r["step"] for r in series.grad_norms]
    fig = go.Figure()
    for index, layer in enumerate(layer_order(series, order)):
        values = [_positive(r["norms"].get(layer)) for r in series.grad_norms]
        x, y = thin(steps, values)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=layer,
                mode="lines",
                line={"color": PALETTE[index % len(PALETTE)], "width": 1.5},
            )
        )
    return _layout(fig, "Gradient norms", "step", "‖grad‖", log_y=True)


def _positive(value: Any) -> float | None:
    number = _finite(value)
    return number if number is not None and number > 0 else None


def grad_norm_heatmap(series: RunSeries, order: Sequence[str] = ()) -> go.Figure:
    """Layers down, steps across, colour = log10 of the gradient norm: vanishing layers go dark."""
    if not series.grad_norms:
        return _empty("Gradient norms by layer", "waiting for the first report")
    layers = layer_order(series, order)
    records = series.grad_norms
    if len(records) > MAX_POINTS // 4:
        stride = math.ceil(len(records) / (MAX_POINTS // 4))
        records = records[::stride]
    z = [[_log10(r["norms"].get(layer)) for r in records] for layer in layers]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[r["step"] for r in records],
            y=layers,
            colorscale="Viridis",
            colorbar={"title": {"text": "log10"}, "thickness": 12},
            hovertemplate="layer %{y}<br>step %{x}<br>log10 ‖grad‖ %{z:.2f}<extra></extra>",
        )
    )
    fig = _layout(fig, "Gradient norms by layer", "step", "")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=max(HEIGHT, 40 + 22 * len(layers)))
    return fig


def _log10(value: Any) -> float | None:
    number = _positive(value)
    return math.log10(number) if number is not None else None


def attention_layers(series: RunSeries) -> list[str]:
    return list(dict.fromkeys(r["node"] for r in series.attention))


def attention_steps(series: RunSeries, node: str) -> list[int]:
    return [r["step"] for r in series.attention if r["node"] == node]


def attention_figure(series: RunSeries, node: str, step: int | None = None) -> go.Figure:
    """One heatmap per head (query down, key across) for one attention layer at one step."""
    records = [r for r in series.attention if r["node"] == node]
    if not records:
        return _empty(f"Attention: {node}", "no attention maps recorded for this layer yet")
    record = next((r for r in records if r["step"] == step), records[-1])
    heads = record["weights"][:MAX_HEADS]
    fig = make_subplots(
        rows=1,
        cols=len(heads),
        subplot_titles=[f"head {h + 1}" for h in range(len(heads))],
        horizontal_spacing=0.03,
    )
    for h, weights in enumerate(heads):
        fig.add_trace(
            go.Heatmap(
                z=weights,
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=h == len(heads) - 1,
                colorbar={"thickness": 12},
                hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=h + 1,
        )
        fig.update_yaxes(
            autorange="reversed",
            scaleanchor=f"x{h + 1 if h else ''}",
            row=1,
            col=h + 1,
            showticklabels=h == 0,
        )
    title = f"Attention: {node}, step {record['step']}"
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        template="plotly_white",
        height=HEIGHT,
        margin={"l": 40, "r": 10, "t": 60, "b": 30},
    )
    return fig


def compare_figure(runs: dict[str, RunSeries]) -> go.Figure:
    """Smoothed training loss (solid) and validation loss (dotted) of several runs, overlaid."""
    fig = go.Figure()
    for index, (label, series) in enumerate(runs.items()):
        colour = PALETTE[index % len(PALETTE)]
        losses = [_finite(r.get("loss")) for r in series.steps]
        x, y = thin([r["step"] for r in series.steps], smooth(losses))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=f"{label} train",
                mode="lines",
                legendgroup=label,
                line={"color": colour, "width": 2},
            )
        )
        val = [_finite(r.get("val_loss")) for r in series.epochs]
        if any(v is not None for v in val):
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in series.epochs],
                    y=val,
                    name=f"{label} val",
                    mode="lines+markers",
                    legendgroup=label,
                    line={"color": colour, "width": 2, "dash": "dot"},
                )
            )
    if not fig.data:
        return _empty("Compare runs", "select runs to compare")
    return _layout(fig, "Compare runs: loss", "step", "loss")
