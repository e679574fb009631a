"""Plotly figures for the Train page, built from a run's metric records (runtime/runs.py).

Pure: records in, figures out. No Streamlit and no files here, so every chart is tested without a
browser and the live fragment only has to read new records and call these builders.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from i18n import _

Record = dict[str, Any]

MAX_POINTS = 2_000
SMOOTHING = 0.6
MAX_HEADS = 8
MAX_ATTENTION_MAPS = 100  # per layer: past this, every other older map is dropped
HEIGHT = 300
REQUIRED = {
    "step": ("step",),
    "epoch": ("epoch", "step"),
    "grad_norms": ("step", "norms"),
    "attention": ("step", "node", "weights"),
    "health": ("step",),
    "event": (),
    "gan": ("step", "d_loss", "g_loss", "d_real", "d_fake"),
    "samples": ("step", "images"),
    "feature_maps": ("step", "node", "maps"),
}
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
    gan: list[Record] = field(default_factory=list)  # a GAN's steps: both losses, D's verdicts
    samples: list[Record] = field(default_factory=list)  # grids of generated samples
    feature_maps: list[Record] = field(default_factory=list)  # convolutions' outputs [C, H, W]

    def add(self, records: Iterable[Record]) -> None:
        """Append new records (as read_metrics returns them); records of unknown kinds, or
        without the fields their charts need, are left out rather than break a chart."""
        groups = {
            "step": self.steps,
            "epoch": self.epochs,
            "grad_norms": self.grad_norms,
            "attention": self.attention,
            "health": self.health,
            "event": self.events,
            "gan": self.gan,
            "samples": self.samples,
            "feature_maps": self.feature_maps,
        }
        for record in records:
            group = groups.get(record.get("kind", ""))
            if group is None or not all(key in record for key in REQUIRED[record["kind"]]):
                continue
            if group is self.attention:
                self._add_attention(record)
            elif group is self.feature_maps:
                self._add_feature_maps(record)
            else:
                group.append(record)

    def _add_attention(self, record: Record) -> None:
        """An attention map is kept as a float32 array of at most MAX_HEADS heads (a quarter of
        the nested lists' memory), and each layer keeps at most MAX_ATTENTION_MAPS of them,
        thinned evenly over the run, so a long run's maps stay a bounded size in the server."""
        try:
            weights = np.asarray(record["weights"], dtype=np.float32)[:MAX_HEADS]
        except (TypeError, ValueError):
            return  # ragged or not numbers: no heat map to draw
        if weights.ndim != 3:
            return
        self.attention.append(record | {"weights": weights})
        node = record["node"]
        mine = [r for r in self.attention if r["node"] == node]
        if len(mine) > MAX_ATTENTION_MAPS:
            dropped = {id(r) for r in mine[-2::-2]}  # every other one, the latest kept
            self.attention[:] = [r for r in self.attention if id(r) not in dropped]

    def _add_feature_maps(self, record: Record) -> None:
        """Kept as float32 arrays, at most MAX_ATTENTION_MAPS per layer, thinned like attention."""
        try:
            maps = np.asarray(record["maps"], dtype=np.float32)
        except (TypeError, ValueError):
            return
        if maps.ndim != 3:
            return
        self.feature_maps.append(record | {"maps": maps})
        mine = [r for r in self.feature_maps if r["node"] == record["node"]]
        if len(mine) > MAX_ATTENTION_MAPS:
            dropped = {id(r) for r in mine[-2::-2]}
            self.feature_maps[:] = [r for r in self.feature_maps if id(r) not in dropped]


def series_from(records: Iterable[Record]) -> RunSeries:
    series = RunSeries()
    series.add(records)
    return series


def column(records: Sequence[Record], key: str) -> np.ndarray:
    """One field of every record as floats; null, NaN, infinities and non-numbers become NaN,
    which plotly draws as a gap."""
    array = np.array([_number(record.get(key)) for record in records], dtype=np.float64)
    array[~np.isfinite(array)] = np.nan
    return array


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def smooth(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
    """TensorBoard's debiased exponential moving average; gaps stay gaps and do not poison it."""
    out = np.full(len(values), np.nan)
    last, norm = 0.0, 0.0
    for index, value in enumerate(values.tolist()):
        if value == value:  # not NaN
            last = last * weight + (1 - weight) * value
            norm = norm * weight + (1 - weight)
            out[index] = last / norm
    return out


def thin(length: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of every k-th point, always with the last, so a long run stays cheap to redraw."""
    if length <= max_points:
        return np.arange(length)
    stride = math.ceil(length / max_points)
    return np.unique(np.append(np.arange(0, length, stride), length - 1))


def _layout(
    fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False
) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
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


def placeholder(title: str, message: str) -> go.Figure:
    """A chart with no data yet: its title, and a line saying what will be drawn."""
    return _empty(title, message)


def _line(x: np.ndarray, y: np.ndarray, name: str, colour: str, **options: Any) -> go.Scatter:
    """A line trace, thinned to at most MAX_POINTS points."""
    keep = thin(len(x))
    style = {
        "color": colour,
        "width": options.pop("width", 2),
        "dash": options.pop("dash", "solid"),
    }
    return go.Scatter(
        x=x[keep], y=y[keep], name=name, mode=options.pop("mode", "lines"), line=style, **options
    )


def loss_figure(series: RunSeries) -> go.Figure:
    """Per-step training loss (raw, faint, and smoothed), per-epoch train and validation loss."""
    if not series.steps and not series.epochs:
        return _empty(_("Loss"), _("waiting for the first step"))
    steps, losses = column(series.steps, "step"), column(series.steps, "loss")
    fig = go.Figure(
        [
            _line(
                steps,
                losses,
                _("step loss"),
                PALETTE[0],
                width=1,
                opacity=0.3,
                showlegend=False,
                hoverinfo="skip",
            ),
            _line(steps, smooth(losses), _("train (smoothed)"), PALETTE[0]),
        ]
    )
    epoch_steps = column(series.epochs, "step")
    for key, name, dash in (
        ("train_loss", _("train (epoch)"), "dot"),
        ("val_loss", _("validation"), "solid"),
    ):
        values = column(series.epochs, key)
        if not np.isnan(values).all():
            colour = PALETTE[0] if key == "train_loss" else PALETTE[1]
            fig.add_trace(_line(epoch_steps, values, name, colour, dash=dash, mode="lines+markers"))
    return _layout(fig, _("Loss"), _("step"), _("loss"))


def accuracy_figure(series: RunSeries) -> go.Figure:
    """Train and validation accuracy per epoch, in percent; for regression runs (and models that
    reproduce their input) the mean absolute error instead."""
    if any("val_mae" in r or "train_mae" in r for r in series.epochs):
        return _per_epoch(series, "mae", 1.0, _("Mean absolute error"), _("MAE"))
    return _per_epoch(series, "accuracy", 100.0, _("Accuracy"), _("accuracy (%)"))


def _per_epoch(series: RunSeries, metric: str, scale: float, title: str, axis: str) -> go.Figure:
    epochs = column(series.epochs, "epoch")
    fig = go.Figure()
    for prefix, name, colour in (
        ("train", _("train"), PALETTE[0]),
        ("val", _("validation"), PALETTE[1]),
    ):
        values = column(series.epochs, f"{prefix}_{metric}")
        if not np.isnan(values).all():
            fig.add_trace(_line(epochs, scale * values, name, colour, mode="lines+markers"))
    if not fig.data:
        return _empty(title, _("waiting for the first epoch"))
    fig = _layout(fig, title, _("epoch"), axis)
    fig.update_xaxes(dtick=1)
    return fig


def confusion_figure(series: RunSeries) -> go.Figure:
    """The last epoch's validation confusion matrix: true class down, predicted across."""
    record = next((r for r in reversed(series.epochs) if r.get("confusion")), None)
    if record is None:
        return _empty(
            _("Confusion matrix"), _("no confusion matrix: not a classifier, or no epoch yet")
        )
    counts = np.asarray(record["confusion"], dtype=np.int64)
    fig = px.imshow(
        counts,
        text_auto=True,
        color_continuous_scale="Blues",
        labels={"x": _("predicted"), "y": _("true class"), "color": _("samples")},
        aspect="equal",
    )
    title = _("Confusion matrix (validation, epoch {epoch})", epoch=record["epoch"])
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        height=max(HEIGHT, 40 + 28 * len(counts)),
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
    )
    fig.update_xaxes(dtick=1, side="bottom")
    fig.update_yaxes(dtick=1)
    return fig


def reconstruction_figure(inputs: np.ndarray, outputs: np.ndarray) -> go.Figure:
    """Inputs (top row) beside the model's reconstructions (bottom row), as grey images; each
    array is [n, H, W] (one channel) or [n, 3, H, W] (colour)."""
    if inputs.ndim == 4 and inputs.shape[1] == 1:
        inputs, outputs = inputs[:, 0], outputs[:, 0]
    elif inputs.ndim == 4:
        inputs, outputs = inputs.transpose(0, 2, 3, 1), outputs.transpose(0, 2, 3, 1)
    count = len(inputs)
    images = np.clip(np.concatenate([inputs, outputs]), 0.0, 1.0)
    fig = px.imshow(
        images,
        facet_col=0,
        facet_col_wrap=count,
        binary_string=images.ndim == 4,
        color_continuous_scale="gray",
        zmin=0.0,
        zmax=1.0,
    )
    titles = [_("input {n}", n=i + 1) for i in range(count)]
    titles += [_("output {n}", n=i + 1) for i in range(count)]
    for annotation in fig.layout.annotations:
        index = int(annotation.text.split("=")[-1])
        annotation.text = titles[index]
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        title={
            "text": _("Inputs and reconstructions"),
            "x": 0,
            "xanchor": "left",
            "font": {"size": 14},
        },
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        coloraxis_showscale=False,
    )
    return fig


def gan_loss_figure(series: RunSeries) -> go.Figure:
    """The discriminator's and the generator's loss per step (smoothed, raw faint)."""
    if not series.gan:
        return _empty(_("GAN losses"), _("waiting for the first step"))
    steps = column(series.gan, "step")
    fig = go.Figure()
    for key, name, colour in (
        ("d_loss", _("discriminator"), PALETTE[0]),
        ("g_loss", _("generator"), PALETTE[1]),
    ):
        values = column(series.gan, key)
        fig.add_trace(_line(steps, values, name, colour, width=1, opacity=0.25, showlegend=False))
        fig.add_trace(_line(steps, smooth(values), name, colour))
    return _layout(fig, _("GAN losses"), _("step"), _("loss"))


GAN_FIGURES = ("d_loss", "g_loss", "d_real", "d_fake")


def gan_epoch_means(series: RunSeries) -> Record:
    """Both losses, D(x) and D(G(z)) as the run's summary states them: the mean over the latest
    epoch (its epoch record once it has ended, the same figure the summary quotes; the mean of
    its steps so far while it runs), with that epoch's number. Empty before the first step."""
    if not series.gan:
        return {}
    last = series.gan[-1]
    ended = [r for r in series.epochs if "d_real" in r]
    if ended and ended[-1].get("step", -1) >= last["step"]:
        return {key: ended[-1].get(key) for key in ("epoch", *GAN_FIGURES)}
    epoch = last.get("epoch")
    steps = [r for r in series.gan if r.get("epoch") == epoch]
    means = {key: float(np.nanmean(column(steps, key))) for key in GAN_FIGURES}
    return {"epoch": epoch, **means}


def gan_verdict_figure(series: RunSeries) -> go.Figure:
    """D(x) and D(G(z)): the probability the discriminator gives real and generated samples."""
    if not series.gan:
        return _empty(_("Discriminator's verdicts"), _("waiting for the first step"))
    steps = column(series.gan, "step")
    fig = go.Figure(
        [
            _line(steps, smooth(column(series.gan, "d_real")), "D(x)", PALETTE[2]),
            _line(steps, smooth(column(series.gan, "d_fake")), "D(G(z))", PALETTE[3]),
        ]
    )
    fig = _layout(fig, _("Discriminator's verdicts"), _("step"), _("probability real"))
    fig.update_yaxes(range=[0, 1])
    return fig


def sample_grid_figure(series: RunSeries, columns: int = 8) -> go.Figure:
    """The latest grid of generated samples (the same noise each time, so they can be
    compared as training goes on)."""
    if not series.samples:
        return _empty(_("Generated samples"), _("waiting for the first samples"))
    record = series.samples[-1]
    images = np.asarray(record["images"], dtype=np.float64)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif images.ndim == 4:
        images = images.transpose(0, 2, 3, 1)
    fig = px.imshow(
        np.clip(images, 0.0, 1.0),
        facet_col=0,
        facet_col_wrap=min(columns, len(images)),
        facet_col_spacing=0.01,
        facet_row_spacing=0.02,
        binary_string=images.ndim == 4,
        color_continuous_scale="gray",
        zmin=0.0,
        zmax=1.0,
    )
    fig.for_each_annotation(lambda annotation: annotation.update(text=""))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    title = _("Generated samples, step {step}", step=record["step"])
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        coloraxis_showscale=False,
    )
    return fig


def lr_figure(series: RunSeries) -> go.Figure:
    """The learning rate the optimizer actually used at each step (shows warm-up and schedule)."""
    if not series.steps:
        return _empty(_("Learning rate"), _("waiting for the first step"))
    rates = column(series.steps, "lr")
    line = _line(column(series.steps, "step"), rates, "lr", PALETTE[2])
    fig = _layout(go.Figure(line), _("Learning rate"), _("step"), "lr")
    axis = constant_range(rates)
    if axis is not None:
        fig.update_yaxes(range=axis, tickformat="g")
    return fig


def constant_range(values: np.ndarray) -> list[float] | None:
    """An axis around a series that never changes (plotly's own would be -0.5..1 for 0.001,
    which reads as zero): its value in the middle, half of it above and below; None when the
    series varies or has no finite value."""
    finite = values[np.isfinite(values)]
    if not len(finite) or finite.min() != finite.max():
        return None
    value = float(finite[0])
    half = abs(value) / 2 or 1.0
    return [value - half, value + half]


def throughput_figure(series: RunSeries) -> go.Figure:
    """Samples per second, to see the device and batch size at work."""
    if not series.steps:
        return _empty(_("Throughput"), _("waiting for the first step"))
    steps, rates = column(series.steps, "step"), column(series.steps, "samples_per_s")
    line = _line(steps, rates, _("samples/s"), PALETTE[4])
    return _layout(go.Figure(line), _("Throughput"), _("step"), _("samples/s"))


def layer_order(series: RunSeries, order: Sequence[str] = ()) -> list[str]:
    """The layers that report gradient norms: in `order` (the graph's) first, then the rest."""
    seen: dict[str, None] = {}
    for record in series.grad_norms:
        seen.update(dict.fromkeys(record.get("norms", {})))
    known = [n for n in order if n in seen]
    return known + [n for n in seen if n not in set(known)]


def norm_table(series: RunSeries, layers: Sequence[str]) -> np.ndarray:
    """[layer, report] gradient norms; missing, zero or non-finite ones are NaN."""
    table = np.array(
        [[_number(r["norms"].get(layer)) for r in series.grad_norms] for layer in layers],
        dtype=np.float64,
    ).reshape(len(layers), len(series.grad_norms))
    table[~(np.isfinite(table) & (table > 0))] = np.nan
    return table


def grad_norm_lines(series: RunSeries, order: Sequence[str] = ()) -> go.Figure:
    """One line per layer: the gradient norm over steps, on a log scale."""
    if not series.grad_norms:
        return _empty(_("Gradient norms"), _("waiting for the first report"))
    steps = column(series.grad_norms, "step")
    layers = layer_order(series, order)
    table = norm_table(series, layers)
    fig = go.Figure(
        [
            _line(
                steps,
                row,
                layer,
                PALETTE[i % len(PALETTE)],
                width=1.5,
                mode="lines+markers",
                marker={"size": 4},
            )
            for i, (layer, row) in enumerate(zip(layers, table, strict=True))
        ]
    )
    return _layout(fig, _("Gradient norms"), _("step"), "‖grad‖", log_y=True)


def grad_norm_heatmap(series: RunSeries, order: Sequence[str] = ()) -> go.Figure:
    """Layers down, steps across, colour = log10 of the gradient norm: vanishing layers go dark."""
    if not series.grad_norms:
        return _empty(_("Gradient norms by layer"), _("waiting for the first report"))
    layers = layer_order(series, order)
    keep = thin(len(series.grad_norms), MAX_POINTS // 4)
    z = np.log10(norm_table(series, layers)[:, keep])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=column(series.grad_norms, "step")[keep],
            y=layers,
            colorscale="Viridis",
            colorbar={"title": {"text": "log10"}, "thickness": 12},
            hovertemplate=_("layer %{y}<br>step %{x}<br>log10 ‖grad‖ %{z:.2f}") + "<extra></extra>",
        )
    )
    fig = _layout(fig, _("Gradient norms by layer"), _("step"), "")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=max(HEIGHT, 80 + 22 * len(layers)))
    return fig


def attention_layers(series: RunSeries) -> list[str]:
    return list(dict.fromkeys(r["node"] for r in series.attention))


def attention_steps(series: RunSeries, node: str) -> list[int]:
    return [r["step"] for r in series.attention if r["node"] == node]


def attention_figure(series: RunSeries, node: str, step: int | None = None) -> go.Figure:
    """One heatmap per head (query down, key across) for one attention layer at one step."""
    records = [r for r in series.attention if r["node"] == node]
    if not records:
        return _empty(
            _("Attention: {node}", node=node), _("no attention maps recorded for this layer yet")
        )
    record = next((r for r in records if r["step"] == step), records[-1])
    heads = np.asarray(record["weights"], dtype=np.float64)[:MAX_HEADS]
    fig = make_subplots(
        rows=1,
        cols=len(heads),
        subplot_titles=[_("head {n}", n=h + 1) for h in range(len(heads))],
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
                hovertemplate=_("query %{y}<br>key %{x}<br>weight %{z:.3f}") + "<extra></extra>",
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
    fig.update_layout(
        title={
            "text": _("Attention: {node}, step {step}", node=node, step=record["step"]),
            "x": 0,
            "xanchor": "left",
            "font": {"size": 14},
        },
        height=HEIGHT,
        margin={"l": 40, "r": 10, "t": 60, "b": 30},
    )
    return fig


def compare_figure(runs: dict[str, RunSeries]) -> go.Figure:
    """Smoothed training loss (solid) and validation loss (dotted) of several runs, overlaid."""
    fig = go.Figure()
    for index, (label, series) in enumerate(runs.items()):
        colour = PALETTE[index % len(PALETTE)]
        steps, losses = column(series.steps, "step"), column(series.steps, "loss")
        name = _("{run} train", run=label)
        fig.add_trace(_line(steps, smooth(losses), name, colour, legendgroup=label))
        val = column(series.epochs, "val_loss")
        if not np.isnan(val).all():
            fig.add_trace(
                _line(
                    column(series.epochs, "step"),
                    val,
                    _("{run} val", run=label),
                    colour,
                    dash="dot",
                    mode="lines+markers",
                    legendgroup=label,
                )
            )
    if not fig.data:
        return _empty(_("Compare runs"), _("select runs to compare"))
    return _layout(fig, _("Compare runs: loss"), _("step"), _("loss"))
