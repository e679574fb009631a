"""Train page: pick data, set hyperparameters, start runs and watch them learn, live.

The charts live in fragments that rerun twice a second on their own, reading only the records
written since the last look, so a training run never reruns the whole page. Every call into the
runtime is guarded: whatever goes wrong reaches the page as a sentence, never as a traceback.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from pydantic import ValidationError

from builder import edit
from builder.catalog import ATTENTION_TYPES, CLASS_LOSSES
from builder.graph import Graph, GraphFormatError, load_graph
from compiler.analysis import Analysis, analyse, loss_of
from compiler.gan import discriminator_graph
from compiler.memory import estimate_memory
from i18n import N_, Message, _, msg, translate
from i18n import render as render_message
from pages.parts import charts, live_graph, own_data, runs_panel, state, step_view, widgets
from pages.parts.live_graph import markdown_literal
from runtime import store
from runtime.datasets import (
    BUILTIN_DATASETS,
    MAX_CSV_COLUMNS,
    MAX_CSV_HEADER_BYTES,
    MAX_UPLOAD_BYTES,
    Dataset,
    DatasetError,
    DatasetTooLarge,
    KINDS,
    available_datasets,
    check_builtin_size,
    OFFLINE_BUILTINS,
    check_compatibility,
    compatibility_fix,
    data_budget,
    dataset_problems,
    fitting_builtin,
    load_dataset,
    run_alphabet,
)
from runtime.loop import CONFUSION_MAX_CLASSES
from runtime.loop import OPTIMIZERS as OPTIMIZER_KINDS
from runtime.metrics import generate_text, reconstruct
from runtime.runs import ACTIVE as TRAINER_ACTIVE
from runtime.runs import (
    RESUMABLE,
    RunInfo,
    checkpoint_path,
    list_runs,
    read_metrics,
    read_run,
    resume_run,
    start_run,
    status_label,
    status_text,
    stop_run,
)
from runtime.sizing import ByteBudgetCache, TooLargeForServer, model_budget, module_bytes
from runtime.sizing import server_refusal
from runtime.trainer import TrainConfig, trained_model
from runtime.upload_job import read_upload

log = logging.getLogger(__name__)

TABLE_REFRESH_S = 2.0
REFRESH_S = 0.5  # with the trainer flushing every 0.5 s, a step reaches the chart within 1 s
FIRST_POINT_REFRESH_S = 0.2  # until a started run's first step is drawn, look more often
ACTIVE = frozenset({*TRAINER_ACTIVE, "stopping"})  # a stopping run still writes metrics
STATUS_COLOURS = {
    "queued": "gray", "running": "blue", "stopping": "orange", "stopped": "gray",
    "completed": "green", "diverged": "red", "failed": "red", "interrupted": "orange",
}  # fmt: skip
OPTIMIZERS = {name: label for name, (label, _kind, _options) in OPTIMIZER_KINDS.items()}
SCHEDULES = {"constant": N_("constant"), "step": N_("step decay"), "cosine": N_("cosine")}
TARGETS = {"label": N_("Predict the labels"), "input": N_("Reproduce the input")}
# The live view's tabs; a run is shown only those it has something for (detail_views).
LOSS_VIEW = N_("Loss")
TEXT_VIEW = N_("Generated text")
RECONSTRUCTION_VIEW = N_("Reconstructions")
GRADIENT_VIEW = N_("Gradients")
SPEED_VIEW = N_("Learning rate")
ATTENTION_VIEW = N_("Attention")
FEATURE_VIEW = N_("What each layer sees")
CONFUSION_VIEW = N_("Confusion")
SAMPLES_VIEW = N_("Samples")
GAN_LOSS_VIEW = N_("Losses")
SAMPLE_COUNT = 6  # reconstructions shown side by side
SAMPLE_CHARACTERS = 200

MAX_UPLOAD_MB = MAX_UPLOAD_BYTES // 10**6

_RUN = "train-run"
_NEW_RUN = "train-new-run"
_COMPARE = "train-compare"
_COMPARE_PICK = "train-compare-pick"
_SERIES = "train-series"
_UPLOADS = "train-uploads"
_BUILTIN = "train-builtin-choice"
_TARGETS_CHOSEN = "train-targets-chosen"  # {graph's natural target: the target last chosen}
_TARGET = "train-target-used"  # what this run of the page trains towards ("label" for a pair)
_MESSAGE = "train-message"
LIVE_VIEW_KEY = "train-live-view"
_SCROLL_TO = "train-scroll-to"  # a run just started: bring its live view into sight


# ---------------------------------------------------------------------------------------------
# Pure helpers


@dataclass(frozen=True)
class Progress:
    fraction: float
    seconds_left: float | None


def steps_per_epoch(series: charts.RunSeries) -> float | None:
    """Known once an epoch has ended: steps count on across epochs (and across a resume)."""
    first = series.epochs[0] if series.epochs else None
    if not first or not first.get("step") or not first.get("epoch"):
        return None
    return first["step"] / first["epoch"]


def step_rate(steps: list[charts.Record], window: int = 50) -> float | None:
    """Steps per second over the latest records (a resume's pause falls out of the window)."""
    recent = steps[-window:]
    if len(recent) < 2 or recent[-1]["time"] <= recent[0]["time"]:
        return None
    return (recent[-1]["step"] - recent[0]["step"]) / (recent[-1]["time"] - recent[0]["time"])


def progress(info: RunInfo, series: charts.RunSeries) -> Progress:
    """How far a run is, and how long it has left while it runs."""
    if info.status == "completed":
        return Progress(1.0, None)
    if info.epochs <= 0:
        return Progress(0.0, None)
    per_epoch = steps_per_epoch(series)
    if per_epoch is None or not series.steps:
        return Progress(min(info.epoch / info.epochs, 1.0), None)
    total = per_epoch * info.epochs
    step = series.steps[-1]["step"]
    rate = step_rate(series.steps) if info.status in ACTIVE else None
    return Progress(min(step / total, 1.0), max(total - step, 0) / rate if rate else None)


def duration_text(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_label(info: RunInfo) -> str:
    """How a run is named in pickers: its graph, a short id, its data and start time."""
    when = time.strftime("%H:%M:%S", time.localtime(info.created))
    return _(
        "{name} #{id} · {dataset} · started {when}",
        name=info.name,
        id=info.id[-6:],
        dataset=info.dataset,
        when=when,
    )


def csv_columns(data: bytes) -> list[str]:
    """The header row of an uploaded CSV; empty when there is none to read, or when it is longer
    or wider than the server reads (reading the file then says why)."""
    end = data.find(b"\n", 0, MAX_CSV_HEADER_BYTES)
    if end < 0 and len(data) > MAX_CSV_HEADER_BYTES:
        return []
    first_line = data[: end if end >= 0 else len(data)].decode("utf-8", errors="replace")
    try:
        columns = [name.strip() for name in next(csv.reader([first_line]))]
    except (csv.Error, StopIteration):
        return []
    return columns if len(columns) <= MAX_CSV_COLUMNS else []


@dataclass(frozen=True)
class Upload:
    """An uploaded file as the trainer will read it again: its name, bytes and label column,
    and the settings chosen with it (the augmentation of pictures), which _hyperparameters puts
    into the run's TrainConfig."""

    name: str
    data: bytes
    label_column: str | None
    settings: tuple[tuple[str, Any], ...] = ()


def safe_file_name(name: str) -> str:
    """An uploaded file's name, reduced to characters any file system takes; suffix kept."""
    path = Path(name)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_")[:80] or "upload"
    return f"{stem}{path.suffix.lower()}"


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


# ---------------------------------------------------------------------------------------------
# Guards and caches


def guarded(action: Callable[[], Any], what: str) -> tuple[Any, str | None]:
    """Run a call into the runtime; a failure becomes a message naming what was being done,
    ready for st.error (user text in it is escaped)."""
    try:
        return action(), None
    except (DatasetError, GraphFormatError, ValidationError, ValueError, OSError) as exc:
        reason = exc.detail.render() if isinstance(getattr(exc, "detail", None), Message) else exc
        return None, markdown_literal(failure_text(what, str(reason)))
    except Exception as exc:  # the page boundary: log it whole, show a sentence
        log.exception("unexpected error while trying to %s", what)
        return None, markdown_literal(failure_text(what, f"{type(exc).__name__}: {exc}"))


def failure_text(what: str, reason: str) -> str:
    """'Could not read the uploaded file: x.csv holds ...'; a reason with nothing to say (empty,
    or a bare name and a colon) is left out rather than end the sentence in a colon."""
    reason = reason.strip().rstrip(":").strip()
    if " " not in reason:
        return _("Could not {what}.", what=what)
    return _("Could not {what}: {reason}", what=what, reason=reason)


@st.cache_resource(show_spinner=False)
def _dataset_cache() -> ByteBudgetCache[Dataset]:
    """Built-in datasets, shared by every session and bounded by the data budget in bytes
    (the text task makes one per Input length)."""
    return ByteBudgetCache(data_budget)


def builtin_dataset(name: str, input_shape: tuple[int, ...] = ()) -> Dataset:
    """A built-in dataset, sized before it is made; the text task's length follows the graph's
    Input."""
    shape = input_shape if name == "text" else ()
    cache = _dataset_cache()
    dataset = cache.get((name, shape))
    if dataset is None:
        dataset = load_dataset(name, input_shape=shape)
        cache.put((name, shape), dataset, dataset.x.nbytes + dataset.y.nbytes)
    return dataset


def input_shape(analysis: Analysis) -> tuple[int, ...]:
    return _shape_of(analysis, "Input")


def output_shape(analysis: Analysis) -> tuple[int, ...]:
    return _shape_of(analysis, "Output")


def _shape_of(analysis: Analysis, layer_type: str) -> tuple[int, ...]:
    """The shape at the graph's (first) Input or Output; () where unknown."""
    node = next((n for n in analysis.graph.nodes if n.type == layer_type), None)
    shape = analysis.infos[node.id].shape if node is not None and node.id in analysis.infos else ()
    return tuple(shape or ())


def natural_target(analysis: Analysis) -> str:
    """What a graph is most likely built to learn: a graph whose output is shaped like its
    float input (an autoencoder, a U-Net on digits) reproduces the input; anything else, token
    models included, predicts labels."""
    node = next((n for n in analysis.graph.nodes if n.type == "Input"), None)
    floats = node is not None and node.params.get("dtype", "float32") != "int64"
    shape = input_shape(analysis)
    return "input" if floats and shape and shape == output_shape(analysis) else "label"


def is_gan_pair(analysis: Analysis) -> bool:
    try:
        return discriminator_graph(analysis.graph) is not None
    except GraphFormatError:
        return True  # a pair whose discriminator cannot be read: _problems says why


def suggested_dataset(analysis: Analysis, target: str = "label") -> str:
    """The first offline built-in dataset this graph can train on as it is (fitting_builtin, as
    the exported train.py picks it). None fits: the token dataset refused for its size where the
    graph takes token ids (the page then says why, e.g. a text sequence too long to generate),
    else digits. A dataset is sized before it is made, so nothing over the budget is generated
    to be tried."""
    try:
        found = fitting_builtin(analysis, target, load=builtin_dataset)
    except GraphFormatError:
        found = None  # a pair whose discriminator cannot be read: _problems says why
    if found is not None:
        return found
    shape = input_shape(analysis)
    refused = next((name for name in OFFLINE_BUILTINS if _too_large(name, shape)), None)
    return refused if refused and _takes_token_ids(analysis) else "digits"


def _too_large(name: str, shape: tuple[int, ...]) -> bool:
    try:
        check_builtin_size(name, shape if name == "text" else ())
    except DatasetTooLarge:
        return True
    return False


def _takes_token_ids(analysis: Analysis) -> bool:
    node = next((n for n in analysis.graph.nodes if n.type == "Input"), None)
    return node is not None and node.params.get("dtype") == "int64"


def run_series(runs_dir: Path, run_id: str) -> charts.RunSeries:
    """This session's copy of a run's records, topped up with what was written since last time."""
    cache: dict[str, tuple[charts.RunSeries, int]] = st.session_state.setdefault(_SERIES, {})
    series, offset = cache.get(run_id, (charts.RunSeries(), 0))
    while True:  # each read is bounded (store.MAX_READ_BYTES); go on until nothing is new
        records, after = read_metrics(runs_dir, run_id, offset)
        series.add(records)
        cache[run_id] = (series, after)
        if after == offset:
            return series
        offset = after


def run_graph(info: RunInfo) -> Graph | None:
    """The graph a run trained (it may differ from the one being edited now)."""
    try:
        return load_graph((Path(info.path) / "graph.json").read_text())
    except (OSError, GraphFormatError):
        return None


# ---------------------------------------------------------------------------------------------
# The page


def render() -> None:
    state.through_the_app()
    st.title(_("Train"))
    runs_dir = state.runs_dir()
    analysis = state.current_analysis()
    message = st.session_state.pop(_MESSAGE, None)
    if message:
        st.error(message)
    if not analysis.ok:
        st.error(
            _("The graph has errors, so it cannot train yet. Fix them on the Build page:")
            + "\n\n"
            + "\n".join(f"- {markdown_literal(d.text.render())}" for d in analysis.errors)
        )
    with st.container(border=True):
        data_column, settings_column = st.columns([2, 3], gap="large")
        with data_column:
            dataset, upload = _dataset_section(analysis)
        with settings_column:
            config, reasons = _hyperparameters(dataset, upload, is_gan_pair(analysis))
            _start_button(runs_dir, analysis, dataset, upload, config, reasons)
    if analysis.ok and dataset is not None and not is_gan_pair(analysis):
        step_view.render(analysis, dataset, config, runs_dir)
    _runs_section(runs_dir, config)


def _dataset_section(analysis: Analysis) -> tuple[Dataset | None, Upload | None]:
    """The dataset picker and its compatibility check; returns the dataset (None when it cannot
    train this graph) and the uploaded file, if any."""
    st.subheader(_("Data"))
    sources = {"builtin": _("Built-in"), "upload": _("Upload your own")}
    source = st.segmented_control(
        _("Source"),
        list(sources),
        format_func=sources.get,
        default="builtin",
        key="train-source",
        label_visibility="collapsed",
    )
    pair = is_gan_pair(analysis)
    if pair:  # the generator learns from the discriminator, which learns real from made
        st.caption(_("A GAN pair learns to make new samples like the data."))
        target = "label"
    else:
        target = _learn_to(analysis)
    st.session_state[_TARGET] = target
    if source == "upload":
        dataset, upload = _uploaded_dataset(analysis)
    else:
        names = available_datasets()
        if st.session_state.get("train-dataset") not in names:
            st.session_state["train-dataset"] = _builtin_choice(analysis, target)
        name = st.selectbox(_("Dataset"), names, key="train-dataset")
        st.session_state[_BUILTIN] = name
        st.caption(translate(BUILTIN_DATASETS[name]))
        shape = input_shape(analysis)
        dataset, error = guarded(lambda: builtin_dataset(name, shape), _("load {name}", name=name))
        if error:
            st.error(error)
        upload = None
    if dataset is not None and analysis.ok:
        problems = _problems(analysis, dataset, target)
        if problems:
            st.warning(
                _("This graph cannot train on this data yet:")
                + "\n\n"
                + "\n".join(f"- {markdown_literal(render_message(p))}" for p in problems)
            )
            advice = None if pair else compatibility_fix(analysis, dataset, target)
            if advice is not None and advice.fix is not None:
                source, linear = advice.fix["between"]
                st.button(
                    _("Insert a Flatten between {source} and {node}", source=source, node=linear),
                    on_click=_apply_fix,
                    args=(advice.fix,),
                    icon=":material/auto_fix_high:",
                    key="train-apply-fix",
                )
            fixes = own_data.vocabulary_fixes(analysis, dataset)
            if fixes:
                st.button(
                    _(
                        "Fit the model to this text's {count} characters",
                        count=len(dataset.alphabet or ""),
                    ),
                    on_click=_apply_fixes,
                    args=(fixes,),
                    icon=":material/auto_fix_high:",
                    key="train-fit-vocabulary",
                )
            return None, upload
        st.success(_compatible_text(dataset, "pair" if pair else target))
    return dataset, upload


def _apply_fixes(fixes: list[dict[str, Any]]) -> None:
    """Several compiler edits as one undo step (a text's vocabulary: the Embedding and the head)."""
    graph = state.current_graph()
    try:
        for fix in fixes:
            graph = edit.apply_fix(graph, fix)
    except edit.EditError as exc:
        st.session_state[_MESSAGE] = _("The fix no longer applies: {reason}", reason=str(exc))
        return
    state.set_graph(graph)


def _apply_fix(fix: dict[str, Any]) -> None:
    """Apply the compiler's edit to the graph being built (an undo step, as on the Build page)."""
    try:
        state.set_graph(edit.apply_fix(state.current_graph(), fix))
    except edit.EditError as exc:
        st.session_state[_MESSAGE] = _("The fix no longer applies: {reason}", reason=str(exc))


def _learn_to(analysis: Analysis) -> str:
    """The "Learn to" choice, starting from what the graph is built for (natural_target); the
    person's last choice for that kind of graph is kept across pages and graphs."""
    natural = natural_target(analysis)
    chosen = st.session_state.setdefault(_TARGETS_CHOSEN, {})
    kind_shown = st.session_state.get("train-target-kind")
    if kind_shown != natural or "train-target" not in st.session_state:
        st.session_state["train-target-kind"] = natural
        st.session_state["train-target"] = chosen.get(natural, natural)
    target = (
        st.segmented_control(
            _("Learn to"),
            list(TARGETS),
            format_func=lambda key: _(TARGETS[key]),
            key="train-target",
            help=_("Reproduce the input trains an autoencoder: the target is the sample itself"),
        )
        or natural
    )
    chosen[natural] = target
    return target


def _problems(analysis: Analysis, dataset: Dataset, target: str) -> list[Message]:
    """Why the graph cannot train on the data; a GAN pair is checked as a pair."""
    try:
        return dataset_problems(analysis, dataset, target)
    except GraphFormatError as exc:
        return [msg("the discriminator cannot be read: {reason}", reason=str(exc))]


def _compatible_text(dataset: Dataset, target: str) -> str:
    """target: "label", "input", or "pair" (a GAN pair, which makes samples like these)."""
    shape = list(dataset.sample_shape)
    if target == "pair":
        learns = _("new samples like these")
    elif target == "input":
        learns = _("the sample itself")
    elif dataset.task == "classification" and dataset.target_shape:
        learns = _("{classes} classes at each position", classes=dataset.num_classes)
    elif dataset.task == "classification":
        learns = _("{classes} classes", classes=dataset.num_classes)
    else:
        learns = _("regression")
    return _(
        "Compatible: {count} samples of {shape} → {learns}.",
        count=format(len(dataset), ","),
        shape=shape,
        learns=learns,
    )


def _builtin_choice(analysis: Analysis, target: str) -> str:
    """The built-in dataset to show when the picker is drawn afresh (Streamlit forgets a widget
    that was off the page): the last one chosen if this graph can train on it, else a suggestion."""
    last = st.session_state.get(_BUILTIN)
    if last in available_datasets():
        shape = input_shape(analysis)
        dataset, error = guarded(lambda: builtin_dataset(last, shape), _("load {name}", name=last))
        if error is None and not check_compatibility(analysis, dataset, target):
            return last
    return suggested_dataset(analysis, target)


def _uploaded_dataset(analysis: Analysis) -> tuple[Dataset | None, Upload | None]:
    kinds = ["csv", "npz", "zip", "txt"]
    file = st.file_uploader(
        _(
            "CSV (one column is the label), NPZ (arrays X and y), ZIP of class folders of"
            " pictures (cats/1.jpg, dogs/...) or TXT (text for a next-character model), at most"
            " {mb} MB",
            mb=MAX_UPLOAD_MB,
        ),
        type=kinds,
        key="train-upload",
        max_upload_size=MAX_UPLOAD_MB,
    )
    widgets.uploader_note("train-upload", MAX_UPLOAD_MB, kinds)
    if file is None:
        return None, None
    data = file.getvalue()
    label = None
    if file.name.lower().endswith(".csv"):
        columns = csv_columns(data)
        if columns:
            label = st.selectbox(
                _("Label column"), columns, index=len(columns) - 1, key="train-label"
            )
    pictures = file.name.lower().endswith(".zip")
    shape = input_shape(analysis) if file.name.lower().endswith((".zip", ".txt")) else ()
    cache: dict[tuple[Any, ...], Dataset] = st.session_state.setdefault(_UPLOADS, {})
    key = (file.file_id, label, shape)
    if key not in cache:
        with st.spinner(_("Reading {name}…", name=file.name)):
            dataset, error = guarded(
                lambda: read_upload(file.name, data, label, input_shape=shape),
                _("read the uploaded file"),
            )
        if error:
            st.error(error)
            return None, None
        cache.clear()
        cache[key] = dataset
    dataset = cache[key]
    described = dataset.description  # a built-in one's marked text, or an upload's Message
    st.caption(markdown_literal(_(described) if isinstance(described, str) else described.render()))
    chosen: dict[str, Any] = {}
    if pictures:
        chosen = own_data.augmentation_settings()
        own_data.picture_overview(dataset, chosen)
    own_data.text_overview(dataset)
    return dataset, Upload(file.name, data, label, tuple(chosen.items()))


def _remembered(key: str, value: Any, resend: bool = False) -> str:
    """A widget key whose value survives a visit to another page (Streamlit drops widget state
    of pages not shown): it starts from the last configuration this session used (a setting
    that was off, None in TrainConfig, starts from `value`: 0 for off).

    A number input's value (`resend`) is set on every run, so that each run sends it to the
    browser: a number input the browser draws anew otherwise shows its default, 0, and sends
    that back on the next click (seen on a loaded machine after a one-click fix: learning rate,
    epochs and batch size all 0, and Start disabled). Selectboxes are left alone: AppTest cannot
    read a re-sent one whose labels are translated."""
    widget = f"train-{key}"
    if widget not in st.session_state:
        last = st.session_state.get(state.TRAIN_SETTINGS, {}).get(key)
        st.session_state[widget] = value if last is None else last
    elif resend:  # set again: the page then sends the value itself, not only the widget's default
        st.session_state[widget] = st.session_state[widget]
    return widget


@dataclass(frozen=True)
class NumberField:
    """A number setting: its TrainConfig field, label, step and format; `off` when 0 turns the
    setting off (TrainConfig then holds None)."""

    name: str
    label: str
    step: float | int
    format: str | None = None
    off: bool = False
    help: str | None = None


LEFT_FIELDS = (
    NumberField("epochs", N_("Epochs"), 1),
    NumberField("batch_size", N_("Batch size"), 16),
)
MORE_FIELDS = (
    NumberField("weight_decay", N_("Weight decay"), 1e-4, "%g"),
    NumberField("warmup_steps", N_("Warm-up steps"), 10),
    NumberField("grad_clip", N_("Gradient clip (0 = off)"), 0.1, "%g", off=True),
    NumberField("seed", N_("Seed"), 1),
    NumberField("early_stopping_patience", N_("Early stopping patience (0 = off)"), 1, off=True),
)
LIMITS = {
    "greater_than_equal": ("ge", N_("must be at least {limit}")),
    "less_than_equal": ("le", N_("must be at most {limit}")),
    "greater_than": ("gt", N_("must be more than {limit}")),
    "less_than": ("lt", N_("must be less than {limit}")),
}


def setting_value(field: NumberField, value: Any) -> Any:
    """The widget's number as TrainConfig takes it: 0 of a setting that can be off is None."""
    return None if field.off and value == 0 else value


def setting_problem(name: str, value: Any, off: bool = False) -> Message | None:
    """Why TrainConfig refuses `value` for field `name`, in words the page renders in the
    reader's language (the bounds are TrainConfig's own); None when it takes it."""
    if value is None and not off:
        return msg("needs a number")
    try:
        TrainConfig.model_validate({name: value})
    except ValidationError as exc:
        error = exc.errors()[0]
        if off and error["type"] in ("greater_than", "greater_than_equal"):
            return msg("must be 0 (off) or more")
        bound, template = LIMITS.get(error["type"], (None, None))
        if bound is not None and template is not None:
            return msg(template, limit=_limit_text(error.get("ctx", {}).get(bound)))
        if error["type"].startswith("int_"):
            return msg("must be a whole number")
        return msg("is not a valid value")
    return None


def _limit_text(limit: Any) -> str:
    """A bound as a person types it: 1, 0.9, 1e+06, 2147483648."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def _number_field(slot: Any, field: NumberField, default: Any) -> tuple[Any, Message | None]:
    """A number input without Streamlit's own limits (its refusal is an English hover and
    leaves the old value in use); NetBuilder's reason is shown under the field instead."""
    value = slot.number_input(
        translate(field.label),
        step=field.step,
        format=field.format,
        key=_remembered(field.name, default, resend=True),
        help=field.help,
    )
    problem = setting_problem(field.name, setting_value(field, value), field.off)
    if problem is not None:
        slot.markdown(":red[" + markdown_literal(render_message(problem)) + "]")
    return setting_value(field, value), problem


def _hyperparameters(
    dataset: Dataset | None, upload: Upload | None, gan: bool = False
) -> tuple[TrainConfig | None, list[str]]:
    """The settings as a TrainConfig, or None with the reasons (field: why) it is refused. A GAN
    pair takes every setting a model does (both players' optimizers, schedule, clipping, AMP,
    patience) except those in GAN_UNUSED, which are not shown for it. An upload's settings (the
    pictures' augmentation) join them here, the one place a run's settings are made: the run's
    config.json and the Export page's train.py (state.chosen_settings) both take them from here."""
    st.subheader(_("Hyperparameters"))
    defaults = TrainConfig()
    left, middle, right = st.columns(3)
    values: dict[str, Any] = {}
    problems: dict[str, Message] = {}

    def number(slot: Any, field: NumberField, default: Any) -> None:
        values[field.name], problem = _number_field(slot, field, default)
        if problem is not None:
            problems[translate(field.label)] = problem

    values["optimizer"] = left.selectbox(
        _("Optimizer"),
        list(OPTIMIZERS),
        format_func=lambda key: translate(OPTIMIZERS[key]),
        key=_remembered("optimizer", defaults.optimizer),
    )
    number(middle, NumberField("lr", N_("Learning rate"), 1e-4, "%g"), defaults.lr)
    values["schedule"] = right.selectbox(
        _("Schedule"),
        list(SCHEDULES),
        format_func=lambda key: translate(SCHEDULES[key]),
        key=_remembered("schedule", defaults.schedule),
    )
    number(left, LEFT_FIELDS[0], defaults.epochs)
    number(middle, LEFT_FIELDS[1], defaults.batch_size)
    devices = available_devices()
    device = right.selectbox(
        _("Device"),
        devices,
        key=_remembered("device", "auto"),
        help=_("auto picks a GPU when there is one"),
    )
    amp = st.toggle(
        _("Mixed precision (AMP)"),
        key=_remembered("amp", defaults.amp),
        help=_("Half-precision autocast: faster on GPUs"),
    )
    processes = 1
    gpus = torch.cuda.device_count()
    if gpus > 1 and device in ("auto", "cuda") and not gan:
        every_gpu = st.toggle(
            _("All {count} GPUs", count=gpus),
            key=_remembered("all_gpus", False),
            help=_(
                "torchrun starts one trainer per GPU (DistributedDataParallel, NCCL); each takes"
                " its share of every batch, and the first writes the metrics and checkpoints"
            ),
        )
        processes = gpus if every_gpu else 1
    with st.expander(
        _("More options"), expanded=any(translate(f.label) in problems for f in MORE_FIELDS)
    ):
        a, b = st.columns(2)
        starts = {
            "weight_decay": defaults.weight_decay,
            "warmup_steps": defaults.warmup_steps,
            "grad_clip": defaults.grad_clip or 0.0,
            "seed": defaults.seed,
            "early_stopping_patience": defaults.early_stopping_patience or 0,
        }
        for index, field in enumerate(MORE_FIELDS):
            number(a if index % 2 == 0 else b, field, starts[field.name])
        if not gan:  # a pair holds no samples out (GAN_UNUSED)
            values["val_fraction"] = b.slider(
                _("Validation fraction"),
                0.05,
                0.5,
                step=0.05,
                key=_remembered("val_fraction", defaults.val_fraction),
            )
    values |= {
        "dataset": dataset.name if dataset is not None else defaults.dataset,
        "label_column": upload.label_column if upload else None,
        "target": st.session_state.get(_TARGET, "label"),
        "device": device,
        "amp": amp,
        "processes": processes,
        **dict(upload.settings if upload else ()),  # the pictures' augmentation (own_data)
    }
    reasons = [
        _("{setting} {reason}", setting=label, reason=render_message(problem))
        for label, problem in problems.items()
    ]
    if reasons:
        return None, reasons
    config, error = guarded(lambda: TrainConfig(**values), _("use these settings"))
    if error:
        st.error(error)
        return None, [error]
    st.session_state[state.TRAIN_SETTINGS] = config.model_dump()  # a valid TrainConfig
    return config, []


def _start_button(
    runs_dir: Path,
    analysis: Analysis,
    dataset: Dataset | None,
    upload: Upload | None,
    config: TrainConfig | None,
    reasons: list[str],
) -> None:
    ready = analysis.ok and dataset is not None and config is not None
    if st.button(
        _("Start training"), type="primary", disabled=not ready, width="stretch", key="train-start"
    ):
        run_id, error = guarded(
            lambda: start_training(runs_dir, state.current_graph(), config, upload, None),
            _("start the run"),
        )
        _after_start(run_id, error, compare_with=None, rerun=False)
    if reasons:
        st.caption(_("Start needs valid settings:") + " " + markdown_literal("; ".join(reasons)))
    elif not ready:
        st.caption(_("Start needs a valid graph, compatible data and valid settings."))


def start_training(
    runs_dir: Path,
    graph: Graph,
    config: TrainConfig,
    upload: Upload | None,
    warm_start_from: str | None,
) -> str:
    """Start a run; an upload goes to a temporary file that start_run copies into the run.
    `config` holds all the run's settings, the pictures' augmentation included (_hyperparameters
    took it from the upload), so the Export page's train.py gets the same ones."""
    if upload is None:
        return start_run(runs_dir, graph, config, warm_start_from=warm_start_from)
    with tempfile.TemporaryDirectory() as folder:
        data_file = Path(folder) / safe_file_name(upload.name)
        data_file.write_bytes(upload.data)
        return start_run(
            runs_dir, graph, config, dataset_file=data_file, warm_start_from=warm_start_from
        )


def _after_start(
    run_id: str | None, error: str | None, compare_with: str | None, rerun: bool = True
) -> None:
    """Watch the new run. Start needs no second run of the page (rerun=False): the runs section
    is drawn below the button in this very run, so the live view appears a page run sooner."""
    if error:
        st.session_state[_MESSAGE] = error
    else:
        st.session_state[_NEW_RUN] = run_id
        st.session_state[_SCROLL_TO] = run_id
        if compare_with is not None:
            st.session_state[_COMPARE] = [run_id, compare_with]
    if rerun or error:
        st.rerun()


def runs_table(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per run for the runs list, newest first, in the reader's language."""
    return [
        {
            _("Run"): f"{run.name} #{run.id[-6:]}",
            _("Status"): status_label(run.status),
            _("Dataset"): run.dataset,
            _("Progress"): run.epoch / run.epochs if run.epochs else 0.0,
            _("Epoch"): f"{runs_panel.shown_epoch(run)}/{run.epochs}",
            _("Step"): run.step,
            _("Device"): run.device,
            _("Started"): time.strftime("%H:%M:%S", time.localtime(run.created)),
            _("Message"): status_text(run),
        }
        for run in runs
    ]


def _runs_section(runs_dir: Path, config: TrainConfig | None) -> None:
    st.subheader(_("Runs"))
    runs, error = guarded(lambda: list_runs(runs_dir), _("list the runs"))
    if error:
        st.error(error)
        return
    if not runs:
        st.info(_("No runs yet. Pick the data and settings, then press **Start training**."))
        # Where the first run's loss will be drawn; it also has the browser load the chart
        # library now, not after Start (seconds on a busy machine, before any point is drawn).
        _chart(charts.placeholder(_("Loss"), _("your first run's loss is drawn here")), "loss")
        return
    any_active = any(run.status in ACTIVE for run in runs)
    st.fragment(_runs_list, run_every=TABLE_REFRESH_S if any_active else None)(runs_dir, runs)
    by_id = {run.id: run for run in runs}
    started = st.session_state.pop(_NEW_RUN, None)
    if started in by_id:
        st.session_state[_RUN] = started
    if st.session_state.get(_RUN) not in by_id:
        st.session_state[_RUN] = runs[0].id
    pick, stop, resume, branch = st.columns([3, 1, 1, 1.6], vertical_alignment="bottom")
    run_id = pick.selectbox(
        _("Watch run"), list(by_id), format_func=lambda i: run_label(by_id[i]), key=_RUN
    )
    _run_controls(runs_dir, by_id[run_id], config, (stop, resume, branch))
    active = by_id[run_id].status in ACTIVE
    seen = run_series(runs_dir, run_id)
    first_point = active and not (seen.steps or seen.gan)
    every = (FIRST_POINT_REFRESH_S if first_point else REFRESH_S) if active else None
    with st.container(key=LIVE_VIEW_KEY):
        st.fragment(_live_view, run_every=every)(runs_dir, run_id, active, first_point)
    if st.session_state.pop(_SCROLL_TO, None) == run_id:
        _scroll_into_view(LIVE_VIEW_KEY)
    _compare_section(runs_dir, runs)
    with st.expander(_("Disk use and deleting runs")):
        runs_panel.render(runs_dir)


def _scroll_into_view(key: str) -> None:
    """Bring the keyed container to the top of the window (a run just started: its live view
    sits below the runs table, out of sight at 1280x720)."""
    selector = json.dumps(f".st-key-{key}")
    st.html(
        f"""<script>
        (() => {{
          const give_up = performance.now() + 5000;
          const look = () => {{
            const target = document.querySelector({selector});
            if (target) target.scrollIntoView({{block: "start"}});
            else if (performance.now() < give_up) requestAnimationFrame(look);
          }};
          look();
        }})();
        </script>""",
        unsafe_allow_javascript=True,
        width="content",
    )


def _runs_list(runs_dir: Path, first: list[RunInfo]) -> None:
    """The runs table; while a run is active it refreshes itself (the first draw reuses the
    page's listing)."""
    runs, error = guarded(lambda: list_runs(runs_dir), _("list the runs"))
    st.dataframe(
        runs_table(first if error else runs),
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(first), 220),
        column_config={
            _("Progress"): st.column_config.ProgressColumn(
                min_value=0.0, max_value=1.0, format="percent"
            ),
            _("Message"): st.column_config.TextColumn(width="large"),
        },
    )


def _run_controls(
    runs_dir: Path, info: RunInfo, config: TrainConfig | None, slots: tuple[Any, Any, Any]
) -> None:
    stop, resume, branch = slots
    if stop.button(
        _("Stop"),
        disabled=info.status not in ACTIVE - {"stopping"},
        width="stretch",
        key="train-stop",
        help=_("Stop after the current step and keep a checkpoint"),
    ):
        _result, error = guarded(lambda: stop_run(runs_dir, info.id), _("stop the run"))
        st.session_state[_MESSAGE] = error
        st.rerun()
    if resume.button(
        _("Resume"),
        disabled=info.status not in RESUMABLE,
        width="stretch",
        key="train-resume",
        help=_("Go on from the last checkpoint"),
    ):
        _result, error = guarded(lambda: resume_run(runs_dir, info.id), _("resume the run"))
        st.session_state[_MESSAGE] = error
        st.rerun()
    can_branch = (
        info.status not in ACTIVE
        and config is not None
        and state.current_analysis().ok
        and checkpoint_path(runs_dir, info.id) is not None
    )
    if branch.button(
        _("Continue from this run"),
        disabled=not can_branch,
        width="stretch",
        key="train-branch",
        help=_(
            "Train the graph as it is now, starting from this run's weights wherever"
            " a layer still fits them"
        ),
    ):
        run_id, error = guarded(
            lambda: start_training(runs_dir, state.current_graph(), config, None, info.id),
            _("continue from this run"),
        )
        _after_start(run_id, error, compare_with=info.id)


def _live_view(runs_dir: Path, run_id: str, was_active: bool, first_point: bool) -> None:
    """The watched run, refreshed by its fragment; `first_point`: this fragment refreshes fast
    until the run's first step is drawn, then the page runs once more to slow it down."""
    info, error = guarded(lambda: read_run(runs_dir, run_id), _("read the run"))
    if error:
        st.error(error)
        return
    if was_active and info.status not in ACTIVE:
        st.rerun()  # the run ended: redraw the whole page so its buttons and list catch up
    series, error = guarded(lambda: run_series(runs_dir, run_id), _("read the run's metrics"))
    if error:
        st.error(error)
        return
    _status_line(info, series)
    graph = run_graph(info)
    charts_column, graph_column = st.columns([3, 2], gap="medium")
    with charts_column:
        views = detail_views(info, graph, bool(series.gan))
        key = f"train-view-{run_id}"
        if st.session_state.get(key) not in views:
            st.session_state[key] = views[0]
        view = st.segmented_control(
            _("Show"),
            views,
            format_func=translate,
            key=key,
            label_visibility="collapsed",
            width="stretch",
        )
        order = [n.id for n in graph.nodes] if graph else []
        _detail_view(view or views[0], info, series, order)
    with graph_column:
        _run_graphs(info, graph, series)
    if series.events:
        with st.expander(log_title(len(series.events))):
            lines = (
                _("step {step}: {message}", step=e.get("step", "?"), message=event_text(e))
                for e in series.events[-50:]
            )
            st.text("\n".join(lines))
    if first_point and (series.steps or series.gan or info.status not in ACTIVE):
        st.rerun()  # the first point is drawn: refresh at the usual pace from now on


def log_title(count: int) -> str:
    """The log expander's title: 'Log · 1 event', 'Log · 3 events'."""
    return _("Log · 1 event") if count == 1 else _("Log · {count} events", count=count)


def detail_views(info: RunInfo, graph: Graph | None, gan: bool) -> list[str]:
    """The tabs this run has something for, the first shown first: what the model makes
    (samples of a GAN, text of a language model, reconstructions of an autoencoder), else its
    loss; attention only for a model with an attention layer, the confusion matrix only for a
    classifier of one label per sample that the trainer records one for."""
    if gan:
        return [SAMPLES_VIEW, GAN_LOSS_VIEW]
    kind = run_kind(info)
    made = {"text": [TEXT_VIEW], "reconstruction": [RECONSTRUCTION_VIEW]}.get(kind or "", [])
    views = [*made, LOSS_VIEW, GRADIENT_VIEW, SPEED_VIEW]
    types = {node.type for node in graph.nodes} if graph else set()
    if types & ATTENTION_TYPES:
        views.append(ATTENTION_VIEW)
    if step_view.has_feature_maps(types):
        views.append(FEATURE_VIEW)
    if graph is not None and kind is None and _records_confusion(graph, _run_config(info)):
        views.append(CONFUSION_VIEW)
    return views


def _records_confusion(graph: Graph, config: TrainConfig | None) -> bool:
    """The trainer keeps a confusion matrix for one class label per sample and few classes:
    a classification loss (or auto on class labels) and an output of [classes]."""
    analysis = analyse(graph)
    if not analysis.ok or config is None:
        return False
    shape = output_shape(analysis)
    loss = loss_of(analysis).loss
    labels = KINDS.get(config.dataset, ("classification", None))[0] == "classification"
    return (
        len(shape) == 1
        and 2 <= shape[0] <= CONFUSION_MAX_CLASSES
        and (loss in CLASS_LOSSES or (loss == "auto" and labels))
    )


def _run_graphs(info: RunInfo, graph: Graph | None, series: charts.RunSeries) -> None:
    """The run's graph, live; a GAN pair's generator and discriminator, uncoloured (a GAN run
    records no gradient norms), with a caption that says so."""
    if graph is None:
        st.info(_("This run's graph file could not be read, so it cannot be drawn."))
        return
    if not series.gan and not _is_pair(graph):
        live_graph.render(graph, series, key=f"live-{info.id}")
        return
    judge = discriminator_graph(graph)
    st.markdown("**" + _("Generator") + "**")
    live_graph.render(graph, series, key=f"live-{info.id}", coloured=False)
    if judge is not None:
        st.markdown("**" + _("Discriminator") + "**")
        live_graph.render(judge, series, key=f"live-judge-{info.id}", coloured=False)
    st.caption(
        _(
            "A GAN run records both players' losses and D's verdicts, not gradient norms, so"
            " its layers are not coloured."
        )
    )


def _is_pair(graph: Graph) -> bool:
    try:
        return discriminator_graph(graph) is not None
    except GraphFormatError:
        return False


def event_text(record: dict[str, Any]) -> str:
    """An event in the reader's language (recorded as data), or its English text."""
    message = store.message_from_json(record.get("code"))
    return message.render() if message else str(record.get("message", ""))


def _chart(figure: Any, key: str) -> None:
    st.plotly_chart(figure, key=key, config={"displaylogo": False})


def _status_line(info: RunInfo, series: charts.RunSeries) -> None:
    done = progress(info, series)
    where = _(
        "epoch {epoch}/{epochs} · step {step}",
        epoch=runs_panel.shown_epoch(info),
        epochs=info.epochs,
        step=info.step,
    )
    if done.seconds_left is not None:
        where += " · " + _("about {time} left", time=duration_text(done.seconds_left))
    badge, bar = st.columns([1, 6], vertical_alignment="center")
    badge.badge(status_label(info.status), color=STATUS_COLOURS.get(info.status, "gray"))
    bar.progress(done.fraction, text=where)
    message = status_text(info)
    if info.status in ("failed", "diverged", "interrupted") and message:
        st.error(markdown_literal(message))
    elif message:
        st.caption(markdown_literal(message))
    if info.status in ACTIVE and not series.steps and not series.gan:
        st.info(_("Starting: waiting for the first step…"), icon=":material/hourglass_top:")
    if series.gan:  # a GAN: both players' losses and the discriminator's verdicts instead
        _gan_figures(info, series)
        return
    last_step = series.steps[-1] if series.steps else {}
    last_epoch = series.epochs[-1] if series.epochs else {}
    loss, accuracy, speed, device = st.columns(4)
    loss.metric(_("Loss"), _number(last_step.get("loss"), "{:.4f}"))
    # a model that reproduces its input is scored by MAE from the start, not by an accuracy
    # it will never have
    if "val_mae" in last_epoch or (not last_epoch and run_kind(info) == "reconstruction"):
        accuracy.metric(_("Val MAE"), _number(last_epoch.get("val_mae"), "{:.4f}"))
    else:
        accuracy.metric(_("Val accuracy"), _number(last_epoch.get("val_accuracy"), "{:.1%}"))
    speeds = (r.get("samples_per_s") for r in reversed(series.steps[-50:]))
    rate = next((v for v in speeds if v is not None), None)
    speed.metric(_("Samples/s"), _number(rate, "{:,.0f}"))
    device.metric(_("Device"), info.device or "–")


def _gan_figures(info: RunInfo, series: charts.RunSeries) -> None:
    """The same figures the run's summary states: means over the latest epoch (see
    charts.gan_epoch_means), so the tiles and 'completed ...; D(x) 0.63' agree."""
    means = charts.gan_epoch_means(series)
    d_loss, g_loss, verdicts, device = st.columns(4)
    d_loss.metric(_("D loss"), _number(means.get("d_loss"), "{:.4f}"))
    g_loss.metric(_("G loss"), _number(means.get("g_loss"), "{:.4f}"))
    shown = [_number(means.get(key), "{:.2f}") for key in ("d_real", "d_fake")]
    verdicts.metric(
        "D(x) / D(G(z))",
        " / ".join(shown),
        help=_(
            "The probability the discriminator gives real and generated samples: the mean over"
            " epoch {epoch}",
            epoch=means.get("epoch", "–"),
        ),
    )
    device.metric(_("Device"), info.device or "–")


def _number(value: Any, pattern: str) -> str:
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return pattern.format(value) if finite else "–"


def _detail_view(view: str, info: RunInfo, series: charts.RunSeries, order: list[str]) -> None:
    if view == LOSS_VIEW:
        loss = charts.loss_figure(series)
        loss.update_layout(meta={"chart": "loss", "run": info.id})  # found by browser tests
        _chart(loss, f"loss-{info.id}")
        _chart(charts.accuracy_figure(series), f"acc-{info.id}")
    elif view == SAMPLES_VIEW:
        _chart(charts.sample_grid_figure(series), f"gan-samples-{info.id}")
    elif view == GAN_LOSS_VIEW:
        _chart(charts.gan_loss_figure(series), f"gan-loss-{info.id}")
        _chart(charts.gan_verdict_figure(series), f"gan-verdict-{info.id}")
    elif view == GRADIENT_VIEW:
        _chart(charts.grad_norm_lines(series, order), f"gradlines-{info.id}")
        _chart(charts.grad_norm_heatmap(series, order), f"gradheat-{info.id}")
    elif view == SPEED_VIEW:
        _chart(charts.lr_figure(series), f"lr-{info.id}")
        _chart(charts.throughput_figure(series), f"speed-{info.id}")
    elif view == FEATURE_VIEW:
        step_view.feature_maps_view(info, series, state.runs_dir())
    elif view == ATTENTION_VIEW:
        _attention_view(info, series)
    elif view == CONFUSION_VIEW:
        _chart(charts.confusion_figure(series), f"confusion-{info.id}")
    else:
        _samples_view(info)


def _attention_view(info: RunInfo, series: charts.RunSeries) -> None:
    layers = charts.attention_layers(series)
    if not layers:
        st.info(
            _("No attention maps: this model has no attention layer, or none was recorded yet.")
        )
        return
    layer = st.selectbox(_("Attention layer"), layers, key=f"attn-layer-{info.id}")
    steps = charts.attention_steps(series, layer)
    step = steps[-1]
    if len(steps) > 1:
        step = st.select_slider(
            _("Step"), steps, value=steps[-1], key=f"attn-step-{info.id}-{layer}"
        )
    _chart(charts.attention_figure(series, layer, step), f"attn-{info.id}")


def _compare_section(runs_dir: Path, runs: list[RunInfo]) -> None:
    by_id = {run.id: run for run in runs}
    branched = [r for r in st.session_state.pop(_COMPARE, []) if r in by_id]
    if branched:
        st.session_state[_COMPARE_PICK] = branched
    with st.expander(_("Compare runs"), expanded=bool(st.session_state.get(_COMPARE_PICK))):
        chosen = st.multiselect(
            _("Runs to overlay"),
            list(by_id),
            format_func=lambda i: run_label(by_id[i]),
            key=_COMPARE_PICK,
            placeholder=_("Choose runs"),  # Streamlit's own says "Choose options", in English
        )
        if chosen:
            overlay = {f"{by_id[r].name} #{r[-6:]}": run_series(runs_dir, r) for r in chosen}
            _chart(charts.compare_figure(overlay), "compare")


def run_kind(info: RunInfo) -> str | None:
    """What samples a run's model gives: "text" (next characters), "reconstruction" (it
    reproduces its input), or None."""
    config = _run_config(info)
    if config is None:
        return None
    if config.target == "input":
        return "reconstruction"
    return "text" if config.dataset == "text" else None


def _run_config(info: RunInfo) -> TrainConfig | None:
    try:
        return TrainConfig.model_validate_json((Path(info.path) / store.CONFIG_FILE).read_text())
    except (OSError, ValidationError):
        return None


@st.cache_resource(show_spinner=False)
def _model_cache() -> ByteBudgetCache[torch.nn.Module]:
    """The latest models of runs, shared by every session and bounded by the model budget in
    bytes (st.cache_resource alone bounds only how many)."""
    return ByteBudgetCache(model_budget)


def _latest_model(run_dir: str, stamp: float) -> torch.nn.Module | None:
    """A run's model with the weights of its latest checkpoint (`stamp`: the file's time), sized
    from the run's graph before it is built in this process."""
    cache = _model_cache()
    model = cache.get((run_dir, stamp))
    if model is None:
        check_model_size(Path(run_dir))
        model = trained_model(Path(run_dir))
        if model is not None:
            cache.put((run_dir, stamp), model, module_bytes(model))
    return model


def check_model_size(run_dir: Path) -> None:
    """Refuse to build a run's model here when it, and the checkpoint read beside it, would
    exceed the server's model budget or its available memory."""
    graph = load_graph((run_dir / store.GRAPH_FILE).read_text())
    parameters = estimate_memory(graph, analyse(graph), batch_size=1).parameter_bytes
    refusal = server_refusal(2 * parameters, msg("loading this run's model for its samples"))
    if refusal is not None:
        raise TooLargeForServer(refusal)


def _checkpoint_stamp(info: RunInfo) -> float | None:
    weights = Path(info.path) / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    return weights.stat().st_mtime if weights.exists() else None


def _samples_view(info: RunInfo) -> None:
    """Live samples from the latest checkpoint: text the model writes from a prompt, or inputs
    beside their reconstructions."""
    kind = run_kind(info)
    stamp = _checkpoint_stamp(info)
    if kind is None:
        st.info(
            _(
                "Samples are shown for models that write text (the text dataset) or that"
                " reproduce their input."
            )
        )
        return
    if stamp is None:
        st.info(_("waiting for the first checkpoint"))
        return
    model, error = guarded(
        lambda: _latest_model(str(info.path), stamp), _("load the trained model")
    )
    if error or model is None:
        st.error(error or _("waiting for the first checkpoint"))
        return
    if kind == "text":
        _text_samples(info)
    else:
        _reconstructions(info)


def _text_samples(info: RunInfo) -> None:
    prompt_column, temperature_column = st.columns([3, 2])
    prompt = prompt_column.text_input(
        _("Prompt"), value="the cat ", key=f"sample-prompt-{info.id}", max_chars=200
    )
    temperature = temperature_column.slider(
        _("Temperature"),
        0.0,
        2.0,
        value=0.8,
        step=0.1,
        key=f"sample-temperature-{info.id}",
        help=_("0 always takes the likeliest next character; higher values take more chances"),
    )
    context = _text_context(run_graph(info))
    stamp = _checkpoint_stamp(info)
    text, error = guarded(
        lambda: _generated(str(info.path), stamp, prompt, temperature, context),
        _("generate text"),
    )
    if error:
        st.error(error)
        return
    st.caption(_("Generated after step {step}:", step=info.step))
    st.code(prompt + text, language=None, wrap_lines=True)


@st.cache_data(max_entries=32, show_spinner=False)
def _generated(
    run_dir: str, stamp: float | None, prompt: str, temperature: float, context: int
) -> str:
    """Text from the checkpoint of `stamp`: written again only for a new checkpoint, prompt or
    temperature, not on every refresh of the live view."""
    model = _latest_model(run_dir, stamp or 0.0)
    if model is None:
        return ""
    alphabet = run_alphabet(Path(run_dir))  # an uploaded text's own vocabulary
    return generate_text(model, prompt, SAMPLE_CHARACTERS, context, temperature, alphabet=alphabet)


def _text_context(graph: Graph | None) -> int:
    node = next((n for n in graph.nodes if n.type == "Input"), None) if graph else None
    shape = node.params.get("shape") if node else None
    return int(shape[0]) if shape else 64


@st.cache_data(max_entries=8, show_spinner=False)
def _reconstructed(
    run_dir: str, stamp: float | None, dataset: str, shape: tuple[int, ...]
) -> np.ndarray:
    """The first samples' reconstructions by the checkpoint of `stamp` (cached per checkpoint)."""
    model = _latest_model(run_dir, stamp or 0.0)
    x = builtin_dataset(dataset, shape[1:]).x[: shape[0]].float()
    return np.asarray(reconstruct(model, x)) if model is not None else np.zeros(shape)


def _reconstructions(info: RunInfo) -> None:
    config = _run_config(info)
    graph = run_graph(info)
    if config is None or graph is None:
        return
    node = next(n for n in graph.nodes if n.type == "Input")
    dataset, error = guarded(
        lambda: builtin_dataset(config.dataset, tuple(node.params.get("shape", ()))),
        _("load {name}", name=config.dataset),
    )
    if error:
        st.error(error)
        return
    x = dataset.x[:SAMPLE_COUNT].float()
    stamp = _checkpoint_stamp(info)
    outputs, error = guarded(
        lambda: _reconstructed(str(info.path), stamp, config.dataset, tuple(x.shape)),
        _("reconstruct the inputs"),
    )
    if error:
        st.error(error)
        return
    if x.dim() != 4:
        st.info(_("Reconstructions are drawn for image data [C, H, W]."))
        return
    figure = charts.reconstruction_figure(np.asarray(x), np.asarray(outputs))
    _chart(figure, f"reconstructions-{info.id}")


if __name__ == "__main__":
    render()
