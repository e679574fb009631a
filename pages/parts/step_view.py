"""The Train page's step view: one training step of the graph being built, number by number.

A learner picks samples, then reads the step in four stages: Forward (every node's output on the
read-only canvas, and one output element's formula with its numbers), Loss (the Output's loss
written out), Backward (each node's gradient, and one weight's chain rule) and Update (the
optimizer's rule for that weight, before -> after). Next takes the next samples and goes on from
the updated weights and optimizer state; Rewind returns to the seed's first weights (or the
run's checkpoint the walk started from). The numbers are runtime/step.py's, which tests compare
with torch; this module only lays them out. Also here: "what each layer sees", a run's
convolution feature maps recorded during training or computed from its weights.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from compiler.analysis import Analysis
from compiler.codegen import generate_source
from i18n import N_, Message, _, translate
from i18n import render as render_message
from pages.parts import live_graph
from pages.parts.charts import RunSeries
from pages.parts.flow_canvas import graph_canvas
from pages.parts.live_graph import markdown_literal
from runtime import runs, store
from runtime.builtin_data import decode
from runtime.datasets import Dataset
from runtime.loop import split
from runtime.metrics import capture_feature_maps, feature_map_layers
from runtime.settings import TrainConfig
from runtime.step import (
    OPTIMIZER_NAMES,
    Explanation,
    StepError,
    StepRecord,
    batch_from,
    explain_gradient,
    explain_loss,
    explain_output,
    explain_update,
    number,
    run_weights,
    take_step,
)
from runtime.trainer import dataset_for_run, module_attributes, node_types, trained_model

STAGES = {
    "forward": N_("Forward"),
    "loss": N_("Loss"),
    "backward": N_("Backward"),
    "update": N_("Update"),
}
FROM_SEED = "__seed__"
MAX_CHANNELS = 8  # channel maps shown side by side
MAP_HEIGHT = 230
MIN_ZOOM = 0.75  # the nodes' numbers stay readable; a bigger graph is panned, not shrunk
# Wider than the live graph's nodes: three numbers such as "∇ -0.0014 · -2.3e-5 · 0.0015" fit
# on one line (the live graph's columns, 204 px apart, leave room for it).
NODE_WIDTH = 180
ROW_STRETCH = 1.35  # the live graph's rows drawn further apart: these nodes hold more numbers
_WALK = "step-walk"
_STAGE = "step-stage"


@dataclass
class Walk:
    """Where the learner stands: the samples of this step, the weights it starts from (None:
    the seed's), the optimizer's state so far, and the step computed for them (None: not yet)."""

    signature: str
    first: int  # the sample Rewind returns to
    index: int
    steps: int
    start: dict[str, torch.Tensor] | None  # what Rewind returns to (None: the seed's weights)
    weights: dict[str, torch.Tensor] | None
    resume: dict[str, Any] | None
    record: StepRecord | None = None


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested without a browser)


def needs_batch(analysis: Analysis) -> bool:
    """Batch statistics (BatchNorm) need two samples or more in train mode."""
    return any(node.type.startswith("BatchNorm") for node in analysis.graph.nodes)


def signature(
    analysis: Analysis, dataset: Dataset, settings: TrainConfig, first: int, batch: int, start: str
) -> str:
    """What a walk depends on: a change to any of these starts it again."""
    parts = [
        generate_source(analysis),
        dataset.name,
        str(len(dataset)),
        settings.model_dump_json(),
        str(first),
        str(batch),
        start,
    ]
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()


def step_settings(config: TrainConfig | None) -> TrainConfig:
    """The Train page's optimizer, learning rate, weight decay and seed (defaults where the page
    has none): the step view and a run with the same settings take the same first step."""
    config = config or TrainConfig()
    return TrainConfig(
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        target=config.target,
    )


def next_walk(walk: Walk, batch: int, count: int) -> Walk:
    """Next: the following samples (from the start again past the end), from the updated
    weights and the optimizer's state after this step."""
    assert walk.record is not None
    index = walk.index + batch
    return Walk(
        walk.signature,
        walk.first,
        index if index + batch <= count else 0,
        walk.steps + 1,
        walk.start,
        walk.record.after,
        walk.record.optimizer_saved,
    )


def rewound(walk: Walk) -> Walk:
    """Rewind: the first samples and the first weights again, a fresh optimizer."""
    return Walk(walk.signature, walk.first, walk.first, 0, walk.start, walk.start, None)


def statistics_text(tensor: torch.Tensor | None, digits: int = 4) -> str:
    """min · mean · max, each to `digits` significant digits."""
    if tensor is None or tensor.numel() == 0:
        return "–"
    values = tensor.detach().double()
    low, mean, high = float(values.min()), float(values.mean()), float(values.max())
    return " · ".join(short_number(value, digits) for value in (low, mean, high))


def short_number(value: float, digits: int) -> str:
    """`digits` significant digits in the shorter of the two ways to write them, the exponent
    without padding: 0.0015, 1.2e-4 (not 0.00012), -2.3e-5 (not -2.3e-05); a node's three
    numbers fit on one line of its face."""
    ways = (f"{value:.{digits}g}", f"{value:.{digits - 1}e}")
    return min((re.sub(r"e([+-])0+(\d)", r"e\1\2", way) for way in ways), key=len)


def node_faces(analysis: Analysis, record: StepRecord, stage: str) -> dict[str, Any]:
    """The read-only canvas with this step's numbers on every node: its output's min · mean ·
    max for the first sample (Forward), or its gradient's, coloured by the gradient's norm
    (Backward and Update)."""
    state = live_graph.live_state(analysis.graph, {})
    backward = stage in ("backward", "update")
    for face in state["nodes"]:
        face["y"] *= ROW_STRETCH
        trace = record.nodes.get(face["id"])
        if trace is None:
            continue
        shown = trace.grad if backward else trace.output
        first = shown[0] if shown is not None and shown.dim() > 0 else shown
        face["params"] = ("∇ " if backward else "y ") + statistics_text(first, 2 if backward else 3)
        face["shape"] = "[" + ", ".join(map(str, trace.shape)) + "]"
        if backward:
            norm = float(trace.grad.double().norm()) if trace.grad is not None else None
            face["fill"] = live_graph.norm_colour(norm)
            face["ink"] = live_graph._text_colour(face["fill"])  # noqa: SLF001 (one palette)
    return state


def step_canvas_height(analysis: Analysis) -> int:
    """Taller than the live graph's: each node carries numbers a learner reads, so the fitted
    graph must be drawn near full size (the page scrolls past it)."""
    heights = [y for _, y in live_graph.compact_positions(analysis.graph).values()]
    return min(max(int((max(heights) - min(heights)) * ROW_STRETCH) + 160, 420), 3000)


def map_figure(values: torch.Tensor, title: str, diverging: bool = False) -> go.Figure:
    """One sample's tensor as a person reads it: channel maps side by side for [C, H, W], a
    heatmap for [T, E] or [C, L], a heat strip for a vector."""
    array = values.detach().double().cpu().numpy()
    scale = "RdBu" if diverging else "Viridis"
    bound = float(np.abs(array).max()) if diverging and array.size else None
    limits = {"zmin": -bound, "zmax": bound} if bound else {}
    if array.ndim == 3:
        channels = array[:MAX_CHANNELS]
        fig = make_subplots(
            rows=1,
            cols=len(channels),
            subplot_titles=[f"#{c}" for c in range(len(channels))],
            horizontal_spacing=0.02,
        )
        for c, channel in enumerate(channels):
            fig.add_trace(
                go.Heatmap(z=channel, colorscale=scale, showscale=c == 0, **limits),
                row=1,
                col=c + 1,
            )
            anchor = f"x{c + 1}" if c else "x"
            fig.update_yaxes(
                autorange="reversed", showticklabels=False, scaleanchor=anchor, row=1, col=c + 1
            )
            fig.update_xaxes(showticklabels=False, row=1, col=c + 1)
    else:
        grid = array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)
        fig = go.Figure(go.Heatmap(z=grid, colorscale=scale, **limits))
        fig.update_yaxes(autorange="reversed", showticklabels=array.ndim > 1)
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 13}},
        height=MAP_HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return without_grid(fig)


def without_grid(fig: go.Figure) -> go.Figure:
    """No grid lines or tick marks over or beside the maps: a map's own cells are its grid."""
    fig.update_xaxes(showgrid=False, zeroline=False, ticks="")
    fig.update_yaxes(showgrid=False, zeroline=False, ticks="")
    return fig


def window_figure(source: torch.Tensor, explained: Explanation, title: str) -> go.Figure:
    """The input a convolution or pooling read, with the window of the picked element outlined
    (its first input channel of the window; a 1-d input is drawn as one row)."""
    window = explained.window or {}
    channel = window.get("channels", [0])[0]
    plane = source[channel].detach().double().cpu().numpy()
    plane = plane.reshape(1, -1) if plane.ndim == 1 else plane
    fig = go.Figure(go.Heatmap(z=plane, colorscale="Greys", showscale=False))
    for position in window.get("positions", []):
        row, col = (0, position[0]) if len(position) == 1 else position
        fig.add_shape(
            type="rect",
            x0=col - 0.5,
            x1=col + 0.5,
            y0=row - 0.5,
            y1=row + 0.5,
            line={"color": "#f97316", "width": 2},
        )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title={"text": title, "x": 0, "font": {"size": 13}},
        height=MAP_HEIGHT + 40,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return without_grid(fig)


def default_element(shape: tuple[int, ...], values: torch.Tensor) -> tuple[int, ...]:
    """The element first shown: the largest output of the first sample."""
    if not shape:
        return ()
    flat = int(values.flatten().abs().argmax()) if values.numel() else 0
    return tuple(int(i) for i in np.unravel_index(flat, shape))


# ---------------------------------------------------------------------------------------------
# The view


def render(
    analysis: Analysis, dataset: Dataset, config: TrainConfig | None, runs_dir: Path
) -> None:
    """The step view of the graph being built on the chosen dataset (a toggle: nothing is
    computed until the learner opens it)."""
    if not st.toggle(
        _("Watch one training step, number by number"),
        key="step-open",
        help=_(
            "Forward, loss, backward and update of your own network on samples you pick, with"
            " every number torch computes."
        ),
    ):
        return
    with st.container(border=True, key="step-view"):
        _walk_view(analysis, dataset, config, runs_dir)


def _walk_view(
    analysis: Analysis, dataset: Dataset, config: TrainConfig | None, runs_dir: Path
) -> None:
    settings = step_settings(config)
    least = 2 if needs_batch(analysis) else 1
    pick, size, start_column = st.columns([2, 1, 3])
    first = pick.number_input(
        _("First sample"), 0, max(0, len(dataset) - least), 0, key="step-first"
    )
    batch = size.number_input(
        _("Samples"),
        least,
        8,
        least,
        key="step-batch",
        help=_("BatchNorm needs 2 samples or more in train mode.") if least > 1 else None,
    )
    starts = _checkpointed_runs(runs_dir)
    start = start_column.selectbox(
        _("Start from"),
        [FROM_SEED, *starts],
        format_func=lambda s: (
            _("the seed's first weights (seed {seed})", seed=settings.seed)
            if s == FROM_SEED
            else _("run {run}'s checkpoint", run=s)
        ),
        key="step-start",
    )
    batch = min(int(batch), len(dataset) - int(first))
    key = signature(analysis, dataset, settings, int(first), batch, start)
    walk: Walk | None = st.session_state.get(_WALK)
    if walk is None or walk.signature != key:
        weights = None
        if start != FROM_SEED:
            try:
                weights = run_weights(runs_dir / start)
            except StepError as exc:
                st.error(render_message(exc.detail))
                return
        walk = Walk(key, int(first), int(first), 0, weights, weights, None)
    samples_column, stage_column = st.columns([2, 3], gap="medium")
    head = stage_column.container()
    rewind, forward = stage_column.columns(2)
    if rewind.button(_("Rewind"), icon=":material/replay:", key="step-rewind", width="stretch"):
        walk = rewound(walk)
        st.session_state[_STAGE] = "forward"
    if forward.button(_("Next"), icon=":material/skip_next:", key="step-next", width="stretch"):
        if walk.record is not None:
            walk = next_walk(walk, batch, len(dataset))
            st.session_state[_STAGE] = "forward"
    if walk.record is None:
        try:
            x, y = batch_from(dataset, analysis, walk.index, batch, settings.target)
            walk.record = take_step(analysis, x, y, settings, walk.weights, walk.resume)
        except StepError as exc:
            st.error(render_message(exc.detail))
            st.session_state[_WALK] = walk
            return
    st.session_state[_WALK] = walk
    record = walk.record
    with samples_column:
        _samples(record, dataset, walk.index)
    st.session_state.setdefault(_STAGE, "forward")
    with head:
        st.caption(
            _(
                "Step {step}: samples {first} to {last} of {dataset}; {optimizer}, learning rate"
                " {lr}; the model is in train mode.",
                step=walk.steps + 1,
                first=walk.index,
                last=walk.index + batch - 1,
                dataset=dataset.name,
                optimizer=OPTIMIZER_NAMES[record.optimizer],
                lr=number(settings.lr),
            )
        )
        stage = st.segmented_control(
            _("Stage"),
            list(STAGES),
            format_func=lambda s: translate(STAGES[s]),
            key=_STAGE,
            width="stretch",
        )
    stage = stage or "forward"
    graph_column, detail_column = st.columns([1, 1], gap="medium")
    with graph_column:
        state = node_faces(analysis, record, stage)
        picked = graph_canvas(
            {
                **state,
                "pickable": True,  # a click on a node picks it in the detail beside
                "version": f"{key[:8]}-{walk.steps}-{walk.index}-{stage}",
                "ack": 0,
                # fitted again on every run: the first fit can come before the frame has its
                # full height, and a read-only view has no zoom of the learner's to keep
                "fit": _fit_count(),
                "height": step_canvas_height(analysis),
                "min_zoom": MIN_ZOOM,
                "node_width": NODE_WIDTH,
            },
            key="step-canvas",
            name=_(
                "Your network with this step's numbers (read-only): click a layer to explain it"
            ),
        )
        take_pick(picked, record, stage)
        st.caption(_("Click a node to have it explained beside the canvas."))
        st.caption(
            _("Each node shows ∇ = dL/dy, its gradient: min · mean · max (first sample).")
            if stage in ("backward", "update")
            else _("Each node shows min · mean · max of its output (first sample).")
        )
    with detail_column:
        if stage == "forward":
            _forward(record, walk.index)  # the batch's first sample, as its caption names it
        elif stage == "loss":
            _loss(record)
        elif stage == "backward":
            _backward(record, walk.index)
        else:
            _update(record)


# Which picker a click on the canvas sets, stage by stage (each picker is drawn after the canvas).
PICKERS = {
    "forward": ("step-forward-node",),
    "backward": ("step-grad-node", "step-backward-node"),
    "update": ("step-backward-node",),
}


def take_pick(value: Any, record: StepRecord, stage: str) -> None:
    """A node clicked on the canvas ({"pick": id, "seq": n}) becomes the layer the detail
    explains, where the stage's picker offers it; each click is taken once."""
    if not isinstance(value, dict) or value.get("seq") == st.session_state.get("step-pick-seq"):
        return
    st.session_state["step-pick-seq"] = value.get("seq")
    node = value.get("pick")
    if node not in record.nodes:
        return
    for key in PICKERS.get(stage, ()):
        if key == "step-forward-node" and record.nodes[node].type == "Input":
            continue
        if key == "step-backward-node" and not record.parameters_of(node):
            continue
        st.session_state[key] = node


def _fit_count() -> int:
    count = st.session_state.get("step-fit", 0) + 1
    st.session_state["step-fit"] = count
    return count


def _checkpointed_runs(runs_dir: Path) -> list[str]:
    """Runs of this workspace that have weights to start from, newest first."""
    try:
        found = runs.list_runs(runs_dir)
    except OSError:
        return []
    return [run.id for run in found if runs.checkpoint_path(runs_dir, run.id) is not None]


def _samples(record: StepRecord, dataset: Dataset, index: int) -> None:
    """The samples as a person recognises them (an image, token text, a row of numbers), each
    with its target."""
    columns = st.columns(min(len(record.x), 8))
    for offset, column in enumerate(columns):
        x, y = record.x[offset].detach(), record.y[offset]
        target = _target_text(y, dataset)
        with column:
            if x.dim() == 3 and x.shape[0] in (1, 3) and torch.is_floating_point(x):
                image = x.permute(1, 2, 0).double().cpu().numpy()
                low, high = float(image.min()), float(image.max())
                image = (image - low) / (high - low) if high > low else image * 0
                caption = _("sample {n} · target {target}", n=index + offset, target=target)
                st.image(
                    image if image.shape[2] == 3 else image[:, :, 0],
                    width=96,
                    caption=caption,
                    alt=_("the picture of {caption}", caption=caption),  # what a reader says
                )
                continue
            if x.dtype == torch.int64:
                text = (
                    decode(x.tolist()) if dataset.name == "text" else " ".join(map(str, x.tolist()))
                )
            else:
                text = ", ".join(number(v) for v in x.flatten().tolist()[:24])
                text += " …" if x.numel() > 24 else ""
            st.markdown(
                _("sample {n} · target {target}", n=index + offset, target=target)
                + f"\n\n`{text.replace('`', ' ')}`"
            )


def _target_text(y: torch.Tensor, dataset: Dataset) -> str:
    if y.dim() == 0 and y.dtype == torch.int64:
        label = int(y)
        names = dataset.class_names
        return f"{label} ({names[label]})" if names and label < len(names) else str(label)
    if y.dtype == torch.int64 and dataset.name == "text":
        return repr(decode(y.tolist()))
    values = y.flatten().tolist()
    return ", ".join(number(float(v)) for v in values[:8]) + (" …" if len(values) > 8 else "")


def _explanation(explained: Explanation) -> None:
    """The formula's sentences and equations, then torch's own value beside it."""
    st.markdown("**" + markdown_literal(render_message(explained.title)) + "**")
    equations: list[str] = []
    for line in explained.lines:
        if isinstance(line, Message):
            if equations:
                st.code("\n".join(equations), language=None, wrap_lines=True)
                equations = []
            st.markdown(markdown_literal(render_message(line)))
        else:
            equations.append(line)
    if equations:
        st.code("\n".join(equations), language=None, wrap_lines=True)
    text = _(
        "torch computed {value}; the formula gives {formula}",
        value=number(explained.torch_value),
        formula=number(explained.value),
    )
    if explained.agrees:
        st.success(text, icon=":material/check:")
    else:
        st.warning(text)


def _element_picker(shape: tuple[int, ...], default: tuple[int, ...], key: str) -> tuple[int, ...]:
    """One number input per dimension of a sample's output (channel, row, column, ...)."""
    if not shape:
        return ()
    names = _dimension_names(shape)
    columns = st.columns(len(shape))
    index = []
    for d, (size, column) in enumerate(zip(shape, columns, strict=True)):
        index.append(
            int(column.number_input(names[d], 0, size - 1, default[d], key=f"{key}-{d}-{size}"))
        )
    return tuple(index)


def _dimension_names(shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 3:
        return [_("channel"), _("row"), _("column")]
    if len(shape) == 2:
        return [_("row"), _("column")]
    if len(shape) == 1:
        return [_("unit")]
    return [_("dimension {n}", n=d) for d in range(len(shape))]


def _forward(record: StepRecord, first: int) -> None:
    order = [n for n in record.nodes if record.nodes[n].type not in ("Input",)]
    default = next((n for n in order if record.nodes[n].type.startswith("Conv")), order[0])
    node = st.selectbox(
        _("Layer"),
        order,
        index=order.index(default),
        format_func=lambda n: f"{n} ({record.nodes[n].type})",
        key="step-forward-node",
    )
    trace = record.nodes[node]
    title = _("{node}: output for sample {n}, min · mean · max {stats}", node=node, n=first,
              stats=statistics_text(trace.output[0]))  # fmt: skip
    st.plotly_chart(map_figure(trace.output[0], title), key="step-forward-map")
    if trace.type == "Output":
        return
    element = _element_picker(
        trace.shape, default_element(trace.shape, trace.output[0]), f"step-element-{node}"
    )
    explained = explain_output(record, node, element, shown_as=first)
    _explanation(explained)
    if explained.window is not None:
        source = record.inputs[node][0]
        st.plotly_chart(
            window_figure(
                record.nodes[source].output[0],
                explained,
                _("the window it reads on {node}", node=source),
            ),
            key="step-window",
        )


def _loss(record: StepRecord) -> None:
    explained = explain_loss(record)
    _explanation(explained)
    st.metric(_("Loss"), number(record.loss_before))


def _weight_picker(record: StepRecord) -> tuple[str | None, tuple[int, ...]]:
    """A layer (in backward order) and one of its weights, picked by the learner."""
    backward = [n for n in reversed(list(record.nodes)) if record.parameters_of(n)]
    if not backward:
        st.info(_("This graph has no weights to train."))
        return None, ()
    node = st.selectbox(
        _("Layer (backward order)"),
        backward,
        format_func=lambda n: f"{n} ({record.nodes[n].type})",
        key="step-backward-node",
    )
    names = record.parameters_of(node)
    name = st.selectbox(_("Weight"), names, key=f"step-weight-{node}")
    grad = record.grads[name]
    shape = tuple(record.before[name].shape)
    default = default_element(shape, grad if grad is not None else record.before[name])
    return name, _element_picker(shape, default, f"step-windex-{name}")


def _backward(record: StepRecord, first: int) -> None:
    order = list(reversed(list(record.nodes)))
    node = st.selectbox(
        _("Gradient at"),
        order,
        format_func=lambda n: f"{n} ({record.nodes[n].type})",
        key="step-grad-node",
    )
    trace = record.nodes[node]
    if trace.grad is None:
        st.info(_("No gradient reaches {node} (token ids are not differentiable).", node=node))
    else:
        title = _("∂L/∂y at {node} for sample {n}, min · mean · max {stats}", node=node,
                  n=first, stats=statistics_text(trace.grad[0]))  # fmt: skip
        st.plotly_chart(map_figure(trace.grad[0], title, diverging=True), key="step-grad-map")
    name, index = _weight_picker(record)
    if name is not None:
        _explanation(explain_gradient(record, name, index))


def _update(record: StepRecord) -> None:
    name, index = _weight_picker(record)
    if name is not None:
        _explanation(explain_update(record, name, index))
    before, after = st.columns(2)
    before.metric(_("Loss before the step"), number(record.loss_before))
    after.metric(
        _("Loss after the step (same samples)"),
        number(record.loss_after),
        delta=number(record.loss_after - record.loss_before),
        delta_color="inverse",
    )


# ---------------------------------------------------------------------------------------------
# What each layer sees (beside the attention maps)


def feature_map_layers_of(series: RunSeries) -> list[str]:
    return list(dict.fromkeys(r["node"] for r in series.feature_maps))


def feature_maps_view(info: runs.RunInfo, series: RunSeries, runs_dir: Path) -> None:
    """A run's convolution feature maps for its fixed sample: the ones recorded as it trains,
    or, for a run that recorded none, computed from its latest weights."""
    recorded = feature_map_layers_of(series)
    if recorded:
        layer = st.selectbox(_("Convolution"), recorded, key=f"fmap-layer-{info.id}")
        records = [r for r in series.feature_maps if r["node"] == layer]
        steps = [r["step"] for r in records]
        step = steps[-1]
        if len(steps) > 1:
            step = st.select_slider(
                _("Step"), steps, value=steps[-1], key=f"fmap-step-{info.id}-{layer}"
            )
        maps = next(r["maps"] for r in records if r["step"] == step)
        title = _("{node} sees, step {step}", node=layer, step=step)
        st.plotly_chart(map_figure(torch.as_tensor(maps), title), key=f"fmap-{info.id}")
        return
    computed = _maps_from_weights(runs_dir / info.id, _stamp(runs_dir, info.id))
    if not computed:
        st.info(_("No feature maps: this model has no convolution, or it has no weights yet."))
        return
    layer = st.selectbox(_("Convolution"), list(computed), key=f"fmap-layer-{info.id}")
    title = _("{node} sees (from the run's latest weights)", node=layer)
    st.plotly_chart(map_figure(computed[layer], title), key=f"fmap-{info.id}")


def _stamp(runs_dir: Path, run_id: str) -> float | None:
    path = runs.checkpoint_path(runs_dir, run_id)
    return path.stat().st_mtime if path is not None else None


@st.cache_resource(max_entries=4, show_spinner=False)
def _maps_from_weights(run_dir: Path, stamp: float | None) -> dict[str, torch.Tensor]:
    """The feature maps of a run's fixed sample (the first validation sample, as the trainer
    records them) from its checkpoint; empty where it has none."""
    if stamp is None:
        return {}
    try:
        from builder.graph import load_graph
        from compiler.analysis import analyse

        model = trained_model(run_dir)
        analysis = analyse(load_graph((run_dir / store.GRAPH_FILE).read_text()))
        config = TrainConfig.model_validate_json((run_dir / store.CONFIG_FILE).read_text())
        input_node = next(n for n in analysis.graph.nodes if n.type == "Input")
        shape = tuple(analysis.infos[input_node.id].shape or ())
        dataset = dataset_for_run(run_dir, config, shape)
    except Exception:  # noqa: BLE001  (an unreadable run simply has no maps to show)
        return {}
    if model is None or not analysis.ok:
        return {}
    dtype = torch.int64 if analysis.infos[input_node.id].dtype == "int64" else torch.float32
    data = split(dataset.x.to(dtype), dataset.y, config)
    example = (data.x_val if len(data.x_val) else data.x_train)[:1]
    layers = feature_map_layers(model, module_attributes(analysis), node_types(analysis))
    return capture_feature_maps(model, layers, example) if layers else {}


def has_feature_maps(types: set[str]) -> bool:
    return bool(types & {"Conv2d", "ConvTranspose2d"})
