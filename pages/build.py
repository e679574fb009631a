"""The Build page: a canvas of layers with live shapes, a palette, a parameter form, a summary.

The graph lives in pages/parts/state.py; the canvas (pages/parts/flow_canvas, NetBuilder's own React Flow
component) only shows it and reports events: a node selected, moved, connected or deleted. The
browser draws an event at once and sends it until the page acknowledges it (`ack`), so a busy
server loses none and nothing echoes. Events are applied at the top of the run, before anything
is drawn, so the same run shows the new shapes. Everything that shows the graph (toolbar, canvas,
summary, form, table) is one fragment, so an edit reruns it and not the sidebar. Ctrl+Z and Ctrl+Shift+Z press the page's own buttons (KEYS_SCRIPT), so every
edit goes through the same callbacks and the same undo history; Delete and Backspace are the
canvas's own. Tidy, New, Open and templates ask the canvas to fit the graph into its view.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import streamlit as st

import i18n
from builder import edit
from i18n import N_, Message, _, msg
from builder.catalog import CATALOG, CATEGORIES
from builder.graph import MAX_FILE_BYTES, MAX_NODES, Graph, GraphFormatError, dump_graph, load_graph
from builder.layout import needs_layout, with_layout
from compiler.analysis import Analysis, Diagnostic, NodeInfo
from compiler.memory import estimate_memory, format_bytes
from pages.parts import canvas, state, widgets
from pages.parts.flow_canvas import graph_canvas
from runtime import import_job

CANVAS_KEY = "nb_canvas"
CANVAS_HEIGHT = 560  # toolbar and canvas fit a 1280x720 window
CANVAS_MIN_ZOOM = 0.65  # fitting a tall graph stops where node text stays readable: pan for more
_ACK = "nb_canvas_ack"  # the sequence number of the last canvas event applied
_DRAWN = "nb_canvas_drawn"  # (view key, canvas_state) last drawn: rebuilt only when it changes
_PARAM_ERRORS = "nb_param_errors"  # (graph version, {(node, param): message})
_ERROR = "nb_error"  # an Open or fix failure, shown once, in the next run of this page
_UPLOADS = "nb_uploads"  # how many files were opened: part of the uploader's key
_FIT = "nb_fit"  # grows when the canvas should fit the graph into its view
_GROUPS_OPEN = "nb_groups_open"  # the canvas's open groups (None: canvas.default_open); a view
_TOASTS = "nb_toasts"  # (text, icon) said by a callback, shown by the run that follows
_PALETTE = "nb_palette_round"  # grows with every palette click: a fresh, empty set of pills
_TABLE = "nb_layer_table"  # (the analysis' infos, column names, DataFrame) last shown

TEMPLATES = {
    "resnet": (N_("Small ResNet"), N_("8×8 digits · two residual blocks")),
    "lenet5": (N_("LeNet-5"), N_("28×28 digits · the classic CNN")),
    "lstm_classifier": (N_("LSTM classifier"), N_("Digit rows read as a sequence")),
    "gru_conv1d": (N_("Conv1d + GRU"), N_("Digit rows · convolution, then recurrence")),
    "transformer_encoder": (N_("Transformer encoder"), N_("Token sequences · self-attention")),
    "alexnet_digits28": (N_("AlexNet-style"), N_("28×28 digits · five convolutions")),
    "vgg_bn_digits": (N_("VGG-style with BatchNorm"), N_("8×8 digits · 3×3 convolution blocks")),
    "mobilenet_block_digits": (
        N_("MobileNet-style block"),
        N_("8×8 digits · depthwise-separable, ReLU6, squeeze-excitation"),
    ),
    "unet_digits": (N_("Small U-Net"), N_("8×8 digits · encoder and decoder joined by Concat")),
    "conv_autoencoder": (N_("Convolutional autoencoder"), N_("8×8 digits · reproduces its input")),
    "gpt_mini": (N_("GPT-mini"), N_("Text · next character, causal self-attention")),
    "dcgan_digits": (N_("DCGAN"), N_("Digits · a generator and a discriminator")),
}

# What each layer is called in a primer: shown beside PyTorch's name where it helps (in Chinese).
GLOSS = {
    "Input": N_("input"),
    "Output": N_("output"),
    "Linear": N_("fully connected layer"),
    "Flatten": N_("flatten"),
    "Permute": N_("permute dimensions"),
    "Reshape": N_("reshape"),
    "Identity": N_("identity"),
    "Conv1d": N_("1-D convolution layer"),
    "Conv2d": N_("convolution layer"),
    "ConvTranspose1d": N_("1-D transposed convolution"),
    "ConvTranspose2d": N_("transposed convolution"),
    "MaxPool1d": N_("1-D max pooling"),
    "MaxPool2d": N_("max pooling"),
    "AvgPool1d": N_("1-D average pooling"),
    "AvgPool2d": N_("average pooling"),
    "AdaptiveAvgPool1d": N_("1-D adaptive average pooling"),
    "AdaptiveAvgPool2d": N_("adaptive average pooling"),
    "AdaptiveMaxPool1d": N_("1-D adaptive max pooling"),
    "AdaptiveMaxPool2d": N_("adaptive max pooling"),
    "Upsample": N_("upsampling"),
    "BatchNorm1d": N_("1-D batch normalisation"),
    "BatchNorm2d": N_("batch normalisation"),
    "LayerNorm": N_("layer normalisation"),
    "RMSNorm": N_("RMS normalisation"),
    "GroupNorm": N_("group normalisation"),
    "InstanceNorm1d": N_("1-D instance normalisation"),
    "InstanceNorm2d": N_("instance normalisation"),
    "Dropout": N_("dropout"),
    "Dropout2d": N_("channel dropout"),
    "ReLU": N_("rectified linear unit"),
    "Softmax": N_("softmax"),
    "LogSoftmax": N_("log softmax"),
    "Embedding": N_("embedding layer"),
    "RNN": N_("recurrent neural network"),
    "GRU": N_("gated recurrent unit"),
    "LSTM": N_("long short-term memory"),
    "SequencePool": N_("sequence pooling"),
    "MultiheadAttention": N_("multi-head attention"),
    "TransformerEncoderLayer": N_("Transformer encoder layer"),
    "PositionalEncoding": N_("positional encoding"),
    "Add": N_("add (residual connection)"),
    "Multiply": N_("multiply"),
    "Concat": N_("concatenate"),
    "Chunk": N_("split into pieces"),
    "Scale": N_("scale by a constant"),
}

KEYS_SCRIPT = """
<script>
(() => {
  // Ctrl+Z and Ctrl+Shift+Z (or Ctrl+Y) press the page's own Undo and Redo, on the page and
  // inside the canvas's frame. (Delete and Backspace are the canvas's own keys.)
  if (window.nbKeys) return;
  window.nbKeys = true;
  const onKey = (event) => {
    const target = event.target;
    const tag = (target && target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || (target && target.isContentEditable)) return;
    if (!(event.ctrlKey || event.metaKey)) return;
    const key = (event.key || "").toLowerCase();
    const name = key === "y" || (key === "z" && event.shiftKey) ? "nb_redo" : key === "z" ? "nb_undo" : null;
    const button = name && document.querySelector(`.st-key-${name} button`);
    if (!button) return;
    event.preventDefault();
    event.stopPropagation();
    if (!button.disabled) button.click();
  };
  const hook = () => {
    for (const frame of document.querySelectorAll("iframe")) {
      try {
        const inner = frame.contentWindow;
        if (inner && !inner.nbKeys) {
          inner.nbKeys = true;
          inner.addEventListener("keydown", onKey, true);
        }
      } catch (error) { /* another origin's frame */ }
    }
  };
  window.addEventListener("keydown", onKey, true);
  setInterval(hook, 250);
})();
</script>
"""


# ---------------------------------------------------------------------------------------------
# Edits (Streamlit callbacks: they run before the page, so the page draws the result)


def _flash_error(message: Message) -> None:
    st.session_state[_ERROR] = message


def toast(text: str, icon: str | None = None) -> None:
    """A toast from a callback, shown by the workspace's run. Most callbacks belong to widgets
    inside the workspace fragment, and an element drawn by such a callback replaces elements at
    the top of the app (Streamlit warns so): the page's own styles and scripts."""
    st.session_state.setdefault(_TOASTS, []).append((text, icon))


def show_toasts() -> None:
    for text, icon in st.session_state.pop(_TOASTS, []):
        st.toast(text, icon=icon)


def _palette_key(category: str) -> str:
    return f"nb_palette_{category}_{st.session_state.get(_PALETTE, 0)}"


def _add_from_palette(key: str) -> None:
    """One click, one layer: the pills are replaced by fresh ones, so no value is sent twice.

    A run interrupted by the next event (a canvas echo) before it finished calls this callback
    again with the same value in the next run (Streamlit commits widget values at a run's end):
    pills of an earlier round have been handled already, and add nothing.
    """
    if key.rsplit("_", 1)[-1] != str(st.session_state.get(_PALETTE, 0)):
        return
    layer_type = st.session_state.get(key)
    st.session_state[_PALETTE] = st.session_state.get(_PALETTE, 0) + 1
    if not layer_type:
        return
    if len(state.edited_graph().nodes) >= MAX_NODES:  # a file with more could not be opened
        _flash_error(canvas.full_of_layers())
        return
    analysis = state.edited_analysis()
    shapes = {node_id: info.shape for node_id, info in analysis.infos.items()}
    graph, node_id = edit.add_node_after(
        state.edited_graph(), layer_type, state.selected_node(), shapes
    )
    graph = canvas.join_group(graph, node_id, state.selected_node())
    graph, reason = edit.fit_to_output(graph, node_id)
    state.set_edited_graph(graph)
    state.select(node_id)
    if reason is not None:
        toast(i18n.render(reason), ":material/info:")


def _delete_selection() -> None:
    """Delete the selected node (any node, the last one too), else the selected edge."""
    graph = state.edited_graph()
    node_id, edge = state.selected_node(), state.selected_edge()
    if node_id is not None:
        state.set_edited_graph(edit.delete_nodes(graph, {node_id}))
    elif edge is not None:
        state.set_edited_graph(
            graph.model_copy(update={"edges": [*graph.edges[:edge], *graph.edges[edge + 1 :]]})
        )
    state.select(None)


def _apply_fix(fix: dict[str, Any], why: Message | None = None) -> None:
    try:
        state.set_edited_graph(edit.apply_fix(state.edited_graph(), fix))
    except edit.EditError as exc:
        _flash_error(msg("The fix no longer applies: {reason}", reason=str(exc)))
        return
    toast(_("Applied: {fix}", fix=_fix_text(fix, why)), ":material/auto_fix_high:")


def _fix_text(fix: dict[str, Any], why: Message | None = None) -> str:
    """The fix's reason in the reader's language: its Message, else the contract's English."""
    if why is not None:
        return why.render()
    return i18n.render(fix["why"]) if fix.get("why") else _("apply the suggested edit")


def _new_graph() -> None:
    """A blank canvas, its Input selected: the page's script pans it into view at the zoom the
    person had (a fit would blow two nodes up to twice their size)."""
    _reset_groups()
    state.edit_part(state.GENERATOR)  # a new file opens on its (first) graph
    state.set_graph(edit.blank_graph())
    state.select("input")
    toast(_("A new, blank canvas. Undo brings your graph back."), ":material/add:")


def _load_template() -> None:
    name = st.session_state.get("nb_template")
    if name is None:
        return
    state.edit_part(state.GENERATOR)  # a new file opens on its (first) graph
    state.set_graph(state.load_template(name))
    state.select(None)
    _reset_groups()
    _fit_view()
    title = _(TEMPLATES[name][0]) if name in TEMPLATES else name
    toast(_("Loaded {name}. Undo brings your graph back.", name=title))


def _uploader_key() -> str:
    """A new key after every upload, so the next file starts from an empty uploader."""
    return f"nb_open_{st.session_state.get(_UPLOADS, 0)}"


def _open_file() -> None:
    uploaded = st.session_state.get(_uploader_key())
    if uploaded is None:
        return
    st.session_state[_UPLOADS] = st.session_state.get(_UPLOADS, 0) + 1
    if uploaded.name.lower().endswith(".py"):
        _import_python(uploaded.name, uploaded.getvalue())
        return
    if uploaded.size > MAX_FILE_BYTES:
        _flash_error(
            msg(
                "{file} is {size} bytes; a graph file may be at most {limit} bytes.",
                file=uploaded.name,
                size=f"{uploaded.size:,}",
                limit=f"{MAX_FILE_BYTES:,}",
            )
        )
        return
    try:
        graph = load_graph(uploaded.getvalue())
    except GraphFormatError as exc:
        _flash_error(
            msg("{file} is not a NetBuilder graph: {reason}", file=uploaded.name, reason=str(exc))
        )
        return
    state.edit_part(state.GENERATOR)  # a new file opens on its (first) graph
    state.set_graph(with_layout(graph) if needs_layout(graph) else graph)
    state.select(None)
    _reset_groups()
    _fit_view()
    st.session_state["nb_open_popover"] = False
    toast(_("Opened {file}. Undo brings your previous graph back.", file=uploaded.name))


def import_allowed_here() -> bool:
    """Importing runs the file's code: only where the server's operator allowed it
    (NETBUILDER_ALLOW_IMPORT=1), whatever address the server listens on."""
    return import_job.import_allowed(os.environ.get(import_job.ALLOW_IMPORT_ENV))


def _import_shape() -> tuple[int, ...] | None | Message:
    """The input shape typed beside the uploader ("1, 28, 28"); None: the file's INPUT_SHAPE;
    a Message where the text is no shape (letters, '²', zero, more than 8 numbers)."""
    text = (st.session_state.get("nb_import_shape") or "").strip()
    parts = [part.strip() for part in text.strip("[]()").split(",") if part.strip()]
    if not parts:
        return None
    numbers = [int(part) for part in parts if re.fullmatch(r"[0-9]{1,8}", part)]  # ASCII only
    if len(parts) > 8 or len(numbers) != len(parts) or 0 in numbers:
        return msg(
            "the input shape {typed} is not a list of positive whole numbers, like 1, 28, 28",
            typed=repr(text[:40]),
        )
    return tuple(numbers)


def _import_python(name: str, source: bytes) -> None:
    """A .py file with build_model(): traced in a limited child process into a graph."""
    if not import_allowed_here():
        _flash_error(import_job.import_refused())
        return
    dtype = st.session_state.get("nb_import_dtype") or "float32"
    shape = _import_shape()
    if isinstance(shape, Message):
        _flash_error(msg("{file} could not be imported: {reason}", file=name, reason=shape))
        return
    with st.spinner(_("Importing {file}: running its build_model() and tracing it…", file=name)):
        outcome = import_job.import_python_file(source, shape, dtype, name=_stem(name))
    if outcome.graph is None:
        reasons = [outcome.error, *outcome.problems] if outcome.error else list(outcome.problems)
        text = "; ".join(i18n.render(reason) for reason in reasons if reason is not None)
        _flash_error(msg("{file} could not be imported: {reason}", file=name, reason=text))
        return
    state.edit_part(state.GENERATOR)  # a new file opens on its (first) graph
    state.set_graph(with_layout(outcome.graph))
    state.select(None)
    _reset_groups()
    _fit_view()
    st.session_state["nb_open_popover"] = False
    toast(_("Imported {file}. Undo brings your previous graph back.", file=name))
    for warning in outcome.warnings:
        toast(i18n.render(warning), ":material/warning:")


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0] or "imported"


def _tidy() -> None:
    state.set_edited_graph(with_layout(state.edited_graph()))
    _fit_view()


def _fit_view() -> None:
    """Ask the canvas to fit the whole graph into its view (it keeps the person's zoom else)."""
    st.session_state[_FIT] = st.session_state.get(_FIT, 0) + 1


def _view_key() -> tuple[int, str, str | None, int | None, str]:
    opened = _groups_open()
    shown = "*" if opened is None else ",".join(sorted(opened))
    return (
        state.graph_version(),
        state.editing(),
        state.selected_node(),
        state.selected_edge(),
        shown,
    )


def _groups_open() -> frozenset[str] | None:
    """The groups the person opened on the canvas, for this session; None until they open or
    close one (a graph of more than canvas.COLLAPSE_ABOVE nodes then shows them closed)."""
    return st.session_state.get(_GROUPS_OPEN)


def _reset_groups() -> None:
    """A new graph on the canvas (opened, imported, a template, a blank one): its own groups."""
    st.session_state[_GROUPS_OPEN] = None


def _toggle_group(group: str, view: canvas.GroupView) -> None:
    """Open or close one group as `view` showed it; closing the one that holds the selected
    node (shown open for it) deselects it, and closes the groups inside it too."""
    if group in view.opened:
        opened = frozenset(g for g in view.opened if g != group and not g.startswith(group + "."))
        selected = state.selected_node()
        if selected is not None and group in view.tree.ancestors(selected):
            state.select(None)
    else:
        opened = view.opened | {group}
    st.session_state[_GROUPS_OPEN] = opened


def _group_view(graph: Graph) -> canvas.GroupView:
    return canvas.group_view(graph, _groups_open(), state.selected_node())


def _rename(key: str, version: int) -> None:
    name = (st.session_state.get(key) or "").strip()
    if version != state.graph_version():  # a widget drawn for an older graph: stale
        return
    if name and name != state.current_graph().name:
        state.set_graph(edit.rename_graph(state.current_graph(), name))


def _pick_layer(key: str, version: int, selected: str | None) -> None:
    if (version, selected) == (state.graph_version(), state.selected_node()):
        state.select(st.session_state.get(key))


def _set_param(key: str, version: int, node_id: str, field: edit.ParamField) -> None:
    """Validate one typed value against the catalog; apply it, or keep the reason to show.

    Streamlit may report a widget drawn for an older graph (after an undo) or an unchanged
    value; neither is an edit, and applying it would undo the undo.
    """
    if version != state.graph_version():
        return
    raw = st.session_state.get(key)
    graph = state.edited_graph()
    node = graph.node(node_id)
    try:
        value = edit.parse_text_value(raw or "") if field.kind == "text" else raw
    except edit.ParamTextError as exc:
        problem: Message | str | None = exc.message
    else:
        value = edit.UNSET if value is None and field.kind != "text" else value
        value = edit.typed_value(node.type, node.params, field.name, value)
        current = node.params.get(field.name, edit.UNSET)
        if value == current or (current is edit.UNSET and value in (edit.UNSET, field.default)):
            return
        problem = edit.check_param(node.type, node.params, field.name, value)
    if problem is not None:
        version, errors = st.session_state.get(_PARAM_ERRORS, (None, {}))
        errors = errors if version == state.graph_version() else {}
        st.session_state[_PARAM_ERRORS] = (
            state.graph_version(),
            {**errors, (node_id, field.name): problem},
        )
        return
    state.set_edited_graph(edit.set_params(graph, node_id, {field.name: value}))


def _param_errors() -> dict[tuple[str, str], Any]:
    version, errors = st.session_state.get(_PARAM_ERRORS, (None, {}))
    return errors if version == state.graph_version() else {}


# ---------------------------------------------------------------------------------------------
# The canvas


def sync_canvas() -> None:
    """Apply the canvas events not applied yet, oldest first: each edit is one undo step.

    The canvas sends its whole queue of unacknowledged events each time, so a value that
    arrived while the page was busy is applied now; one applied already is skipped.
    """
    ack = st.session_state.get(_ACK, 0)
    for event in canvas.new_events(st.session_state.get(CANVAS_KEY), ack):
        ack = event["seq"]
        graph = state.edited_graph()
        view = _group_view(graph)
        change = canvas.apply_event(graph, event, view)
        if change.toggled is not None:
            _toggle_group(change.toggled, view)
        if change.kind == "edited":
            state.set_edited_graph(change.graph)
        elif change.kind == "moved":
            state.set_edited_graph(change.graph, record_undo=False)
        if change.selected is not None:
            state.select(change.selected)
        elif change.edge is not None:
            state.select_edge(change.edge)
        elif change.deselect:
            state.select(None)
        if change.refused is not None:
            _flash_error(change.refused)
    st.session_state[_ACK] = ack


def canvas_args(graph: Graph, analysis: Analysis, selected: str | None) -> dict[str, Any]:
    """What the canvas draws; its nodes and edges are rebuilt only when the view changed."""
    view = (*_view_key(), i18n.language())
    drawn = st.session_state.get(_DRAWN)
    if drawn is None or drawn[0] != view:
        drawn = (
            view,
            {
                **canvas.canvas_state(
                    graph, analysis, selected, state.selected_edge(), _group_view(graph)
                ),
                "add_plans": canvas.add_plans(graph, selected),
            },
        )
        st.session_state[_DRAWN] = drawn
    return {
        **drawn[1],
        "version": ":".join(map(str, view)),
        "ack": st.session_state.get(_ACK, 0),
        "fit": st.session_state.get(_FIT, 0),
        "height": CANVAS_HEIGHT,
        "min_zoom": CANVAS_MIN_ZOOM,
        "node_width": canvas.NODE_WIDTH,
        "labels": {"delete_node": _("Delete layer"), "delete_edge": _("Delete edge")},
        "palette_round": st.session_state.get(_PALETTE, 0),  # clicks the page has taken
        "layer_types": list(CATALOG),
    }


def draw_canvas(graph: Graph, analysis: Analysis, selected: str | None) -> None:
    name = _("Network canvas: drag a layer to move it, drag from a handle to connect two layers")
    graph_canvas(canvas_args(graph, analysis, selected), key=CANVAS_KEY, name=name)


# ---------------------------------------------------------------------------------------------
# Page sections


def _md(text: str) -> str:
    """User text made safe for st.markdown (no markup, links or LaTeX)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def layer_label(layer_type: str, lang: str | None = None) -> str:
    """PyTorch's name, with the primer's term beside it where the language is not English."""
    lang = lang or i18n.language()
    gloss = GLOSS.get(layer_type)
    if gloss is None or lang == i18n.DEFAULT_LANGUAGE:
        return layer_type
    return f"{layer_type} {i18n.translate(gloss, lang)}"


@functools.cache
def palette_labels(lang: str) -> dict[str, str]:
    """Every layer type's palette label in one language (the palette draws ~60 each run)."""
    return {layer_type: layer_label(layer_type, lang) for layer_type in CATALOG}


def palette() -> None:
    st.sidebar.markdown("### " + _("Layers"))
    st.sidebar.caption(_("One click adds a layer after the selected one."))
    labels = palette_labels(i18n.language())
    for category in CATEGORIES:
        types = [name for name, spec in CATALOG.items() if spec.category == category]
        key = _palette_key(category)
        st.sidebar.pills(
            _(category),
            types,
            key=key,
            format_func=labels.__getitem__,
            on_change=_add_from_palette,
            args=(key,),
        )


def toolbar(graph: Graph) -> None:
    """Icons with tooltips where words would be cut at 1280 px; the name field takes the rest."""
    name, new, undo, redo, delete, tidy, templates, opener, save = st.columns(
        [4, 1, 1, 1, 1, 1, 1.25, 1.25, 1], vertical_alignment="bottom", gap="small"
    )
    name_key = f"nb_name_{state.graph_version()}"
    name.text_input(
        _("Model name"),
        value=state.current_graph().name,  # the file's name (a GAN pair's too)
        key=name_key,
        max_chars=80,
        on_change=_rename,
        args=(name_key, state.graph_version()),
    )
    icon_button(
        new,
        "nb_new",
        ":material/note_add:",
        _("New graph"),
        _("New: a blank canvas (Undo brings this graph back)"),
        _new_graph,
    )
    icon_button(
        undo,
        "nb_undo",
        ":material/undo:",
        _("Undo"),
        _("Undo (Ctrl+Z)"),
        state.undo,
        not state.can_undo(),
    )
    icon_button(
        redo,
        "nb_redo",
        ":material/redo:",
        _("Redo"),
        _("Redo (Ctrl+Shift+Z)"),
        state.redo,
        not state.can_redo(),
    )
    nothing_selected = state.selected_node() is None and state.selected_edge() is None
    icon_button(
        delete,
        "nb_delete",
        ":material/delete:",
        _("Delete the selection"),
        _("Delete the selected layer or edge (Delete, Backspace)"),
        _delete_selection,
        nothing_selected,
    )
    icon_button(
        tidy,
        "nb_tidy",
        ":material/account_tree:",
        _("Tidy the layout"),
        _("Tidy: lay the graph out again and fit it into the view"),
        _tidy,
    )
    templates.menu_button(
        _("Templates"),
        state.template_names(),
        help=_("Templates: start from a classic model (Undo brings this graph back)"),
        key="nb_template",
        icon=":material/dashboard:",
        format_func=_template_label,
        on_click=_load_template,
        width="stretch",
    )
    with opener.popover(
        _("Open a file"),
        help=_("Open a graph file (.json) or import a PyTorch model (.py)"),
        icon=":material/folder_open:",
        width="stretch",
        key="nb_open_popover",
        on_change="rerun",
    ) as drawer:
        if drawer.open:  # drawn only while open: they cost every edit's run otherwise
            open_file_form()
    save.download_button(
        _("Save the graph"),
        key="nb_save",
        # the whole file (both graphs of a GAN pair), written when it is clicked, not on every
        # edit: dumping a big graph was a tenth of an edit's server time
        data=functools.partial(dump_graph, state.current_graph()),
        file_name=f"{_file_stem(state.current_graph().name)}.json",
        mime="application/json",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
        help=_("Download the graph as a .json file"),
    )


def open_file_form() -> None:
    """The Open popover's uploader, and for a .py file its input shape and dtype."""
    allowed = import_allowed_here()
    st.file_uploader(
        _("A graph file saved by NetBuilder (.json), or a PyTorch model file (.py)"),
        type=["json", "py"],
        key=_uploader_key(),
        on_change=_open_file,
        max_upload_size=max(1, MAX_FILE_BYTES // 1_000_000),
    )
    widgets.uploader_note("nb_open_", max(1, MAX_FILE_BYTES // 1_000_000), ["json", "py"])
    if allowed:
        st.text_input(
            _("Input shape for a .py file"),
            key="nb_import_shape",
            placeholder=_("e.g. 1, 28, 28 (empty: the file's INPUT_SHAPE)"),
        )
        st.selectbox(_("Input dtype"), ["float32", "int64"], key="nb_import_dtype")
    else:
        st.caption(i18n.render(import_job.import_refused()))


def icon_button(
    column: Any, key: str, icon: str, name: str, tip: str, action: Any, disabled: bool = False
) -> None:
    """A toolbar icon: `name` is what a screen reader says (its text is hidden on screen by
    TOOLBAR_STYLE; the glyph is aria-hidden), `tip` what a pointer's hover shows."""
    column.button(
        name, key=key, icon=icon, help=tip, on_click=action, disabled=disabled, width="stretch"
    )


def _template_label(name: str) -> str:
    if name not in TEMPLATES:
        return name
    title, what = TEMPLATES[name]
    return f"{_(title)} · {_(what)}"


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def summary_metrics(analysis: Analysis, with_memory: bool = True) -> None:
    """The graph's counts; the memory sentence too unless a layer's form needs the room (it is
    always in the Size figure's help)."""
    params = analysis.total_params
    memory = estimate_memory(analysis.graph, analysis)
    memory_text = _(
        "Memory: {activations} of activations per sample; a training step at batch size"
        " {batch} with Adam needs about {training} (weights, gradients and optimizer state"
        " {state}).",
        activations=format_bytes(memory.activation_bytes_per_sample),
        batch=memory.batch_size,
        training=format_bytes(memory.training_bytes),
        state=format_bytes(memory.weights_and_state_bytes),
    )
    columns = st.columns(3)
    columns[0].metric(  # a million or more in three figures: the column fits no more at 1280 px
        _("Parameters"),
        f"{params:,}" if params < 1_000_000 else _si(params),
        help=_("{count} trainable parameters", count=f"{params:,}"),
    )
    columns[1].metric(
        _("Size"),
        format_bytes(memory.parameter_bytes),
        help=_("The weights in float32, 4 bytes each") + "\n\n" + memory_text,
    )
    columns[2].metric(
        _("MACs"), _si(analysis.total_macs), help=_("Multiply-accumulates for one sample")
    )
    if with_memory:
        st.caption(memory_text)


def _si(number: int) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.2f} {suffix}"
    return str(number)


def problems(analysis: Analysis) -> None:
    """Every diagnostic, errors first, each with its one-click fix where the compiler has one;
    a typed value that was refused is said here too, so the header never claims all is well
    while a field shows a value the graph does not have."""
    found = sorted(analysis.diagnostics, key=lambda d: d.severity != "error")
    refused = len(_param_errors())
    if refused:
        st.warning(
            _(
                "A value you typed was not applied (the reason is beside its field); the graph"
                " keeps the previous value.",
            ),
            icon=":material/edit_off:",
        )
    if not found:
        if not refused:
            st.success(_("No problems: every shape fits."), icon=":material/check_circle:")
        return
    with st.container(border=True, height=340 if len(found) > 3 else "content"):
        st.markdown("**" + _("Problems ({count})", count=len(found)) + "**")
        for index, diagnostic in enumerate(found):
            _diagnostic(diagnostic, f"all_{index}")


def _diagnostic(diagnostic: Diagnostic, key: str) -> None:
    show = st.error if diagnostic.severity == "error" else st.warning
    show(
        _md(diagnostic.text.render()),
        icon=":material/error:" if diagnostic.severity == "error" else ":material/warning:",
    )
    if diagnostic.fix is not None:
        st.button(
            _("Fix: {fix}", fix=_fix_text(diagnostic.fix, diagnostic.why)),
            key=f"nb_fix_{key}",
            icon=":material/auto_fix_high:",
            on_click=_apply_fix,
            args=(diagnostic.fix, diagnostic.why),
        )


AXES = {"1d": ("L",), "2d": ("H", "W"), "3d": ("D", "H", "W")}


def formula_lines(explanation: Any, layer_type: str) -> list[str]:
    """The formula with the numbers plugged in, one line per axis, each named (H: ..., W: ...).

    The catalog gives a Message per axis (or a list of them); older text gives "a; b", one part
    per spatial axis of a 1d/2d layer, which is named here.
    """
    if explanation is None:
        return []
    if isinstance(explanation, (list, tuple)):
        return [i18n.render(part) for part in explanation]
    parts = [part.strip() for part in i18n.render(explanation).split("; ") if part.strip()]
    axes = AXES.get(layer_type[-2:].lower())
    named = any(part[:2] in {"L:", "D:", "H:", "W:"} for part in parts)
    if axes is None or len(axes) != len(parts) or named:
        return parts
    return [f"{axis}: {part}" for axis, part in zip(axes, parts, strict=True)]


def inspector(graph: Graph, analysis: Analysis, selected: str | None) -> None:
    ids = [node.id for node in graph.nodes]
    pick_key = f"nb_pick_{state.graph_version()}_{selected}"
    st.selectbox(
        _("Layer"),
        ids,
        index=ids.index(selected) if selected in ids else None,
        key=pick_key,
        placeholder=_("Click a node on the canvas"),
        on_change=_pick_layer,
        args=(pick_key, state.graph_version(), selected),
    )
    if selected is None:
        st.caption(
            _(
                "Select a layer to edit its parameters. Draw an edge by dragging from a node's"
                " bottom handle to another node's top handle. Delete or Backspace deletes the"
                " selected layer or edge; Ctrl+Z undoes, Ctrl+Shift+Z redoes. The wheel scrolls"
                " the page; Ctrl + wheel (or a pinch) zooms the canvas."
            )
        )
        return
    node = graph.node(selected)
    spec = CATALOG[node.type]
    info = analysis.infos.get(selected, NodeInfo(None))
    st.markdown(f"#### {layer_label(node.type)} · {_md(node.id)}")
    param_form(node)  # first: the fields are in view without scrolling at 1280x720
    shape = "?" if info.shape is None else str(list(info.shape))
    st.markdown(
        _(
            "Output `{shape}` · {params} params · {macs} MACs",
            shape=shape,
            params=f"{info.params or 0:,}",
            macs=_si(info.macs or 0),
        )
    )
    # Plain monospace text: st.code's syntax highlighter was the browser's largest cost per edit.
    st.text(
        "\n".join([_(spec.formula), *formula_lines(info.explained, node.type)]), width="stretch"
    )
    st.caption(_(spec.description))
    st.button(
        _("Delete layer"), icon=":material/delete:", on_click=_delete_selection, type="secondary"
    )


def param_form(node: Any) -> None:
    """One widget per catalog param: numbers with ranges, selects, checkboxes, typed text."""
    fields = edit.param_fields(node.type)
    if not fields:
        st.caption(_("This layer has no parameters."))
        return
    errors = _param_errors()
    version = state.graph_version()
    for field in fields:
        key = f"nb_param_{version}_{node.id}_{field.name}"
        current = node.params.get(field.name, field.default)
        help_text = _(field.help) if field.help else ""
        if not field.required:
            help_text += " " + _("(default {value})", value=repr(field.default))
        common = {
            "key": key,
            "help": help_text.strip(),
            "on_change": _set_param,
            "args": (key, version, node.id, field),
        }
        if field.kind == "bool":
            st.checkbox(field.name, value=bool(current), **common)
        elif field.kind == "choice":
            choices = list(field.choices)
            st.selectbox(
                field.name,
                choices,
                index=choices.index(current) if current in choices else 0,
                **common,
            )
        elif field.kind == "int":
            st.number_input(
                field.name,
                value=current if isinstance(current, int) else None,
                step=1,  # no min/max here: Streamlit would refuse in English, on hover only;
                **common,  # the catalog's range is checked by _set_param and said beside it
            )
        elif field.kind == "float":
            st.number_input(
                field.name,
                value=float(current) if isinstance(current, int | float) else None,
                step=0.01 if (field.maximum or 2) <= 1 else 0.1,
                format="%g",
                **common,
            )
        else:
            st.text_input(
                field.name,
                value=edit.value_text(current),
                placeholder=_(field.help) if field.help else None,
                **common,
            )
        problem = errors.get((node.id, field.name))
        if problem:
            st.error(_md(i18n.render(problem)), icon=":material/error:")


def layer_table(analysis: Analysis) -> None:
    """A torchinfo-like table: every layer in execution order, shape, params and MACs."""
    layer, kind, shape, params, macs, live = (
        _("Layer"), _("Type"), _("Output shape"), _("Params"), _("MACs"), _("In model"),
    )  # fmt: skip
    rows = _table_rows(analysis, (layer, kind, shape, params, macs, live))
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        height="content" if len(rows) <= 60 else 720,
        column_config={
            params: st.column_config.NumberColumn(format="localized"),
            macs: st.column_config.NumberColumn(format="localized"),
        },
    )


def _table_rows(analysis: Analysis, columns: tuple[str, ...]) -> Any:
    """The table as an Arrow table, built once per analysis and language: a node moved on the
    canvas reruns the page but changes no row, and Streamlit sends an Arrow table as it is
    (a DataFrame is converted on every run)."""
    cached = st.session_state.get(_TABLE)
    if cached is not None and cached[0] is analysis.infos and cached[1] == columns:
        return cached[2]  # the same figures (a moved node keeps its analysis' infos)
    import pyarrow as pa

    infos = [(n, analysis.infos.get(n, NodeInfo(None))) for n in analysis.order]
    layer, kind, shape, params, macs, live = columns
    rows = pa.table(
        {
            layer: [node_id for node_id, _info in infos],
            kind: [analysis.node_type(node_id) for node_id, _info in infos],
            shape: ["?" if i.shape is None else str(list(i.shape)) for _n, i in infos],
            params: pa.array([i.params or 0 for _n, i in infos], pa.int64()),
            macs: pa.array([i.macs or 0 for _n, i in infos], pa.int64()),
            live: pa.array([node_id in analysis.live for node_id, _info in infos], pa.bool_()),
        }
    )
    st.session_state[_TABLE] = (analysis.infos, columns, rows)
    return rows


# The toolbar's icons show no words (they would be cut at 1280 px), yet each has a name for a
# screen reader: its label stays in the page, out of sight (the usual visually-hidden rule).
TOOLBAR_KEYS = (
    "nb_new",
    "nb_undo",
    "nb_redo",
    "nb_delete",
    "nb_tidy",
    "nb_template",
    "nb_open_popover",
    "nb_save",
)
TOOLBAR_STYLE = (
    ", ".join(f".st-key-{key} button [data-testid=stMarkdownContainer]" for key in TOOLBAR_KEYS)
    + """ {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;
  clip-path: inset(50%); white-space: nowrap; border: 0;
}"""
)

# A palette pill's name wraps onto a second line rather than being cut ("ConvTranspose1d
# 一维转置卷积层" is wider than the sidebar).
PALETTE_STYLE = """
[class*="st-key-nb_palette_"] button { height: auto; max-width: 100%; }
[class*="st-key-nb_palette_"] button * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}"""

STYLE = (
    """
<style>
"""
    + TOOLBAR_STYLE
    + PALETTE_STYLE
    + """
[data-testid="stMetricValue"] { font-size: 1.35rem; white-space: nowrap; }
[data-testid="stMetricLabel"] p { white-space: nowrap; overflow: visible; }
</style>
"""
)


@st.fragment
def workspace() -> None:
    """The toolbar, the canvas, the summary, the form and the table: everything that shows the
    graph, in one fragment. A canvas event or a toolbar or form edit reruns this alone, not the
    sidebar's palette around it (about a third less for the browser to draw per edit); a palette
    click reruns the whole page, this included.
    """
    sync_canvas()  # the canvas's events since the last run, before anything is drawn
    show_toasts()
    graph = state.edited_graph()
    selected = state.selected_node()
    notice = state.take_notice()
    if notice:
        st.warning(_md(i18n.render(notice)))
    if state.is_pair():
        part_switch()
    toolbar(graph)  # before the analysis: undo and open stay usable whatever the graph holds
    error = st.session_state.pop(_ERROR, None)  # shown once: not again after other pages
    if error is not None:
        st.error(_md(i18n.render(error)), icon=":material/error:")
    analysis = state.edited_analysis()
    left, right = st.columns([13, 7], gap="medium")
    with left:
        draw_canvas(graph, analysis, selected)
    with right:
        summary_metrics(analysis, with_memory=selected is None)
        problems(analysis)
        with st.container(border=True):
            inspector(graph, analysis, selected)
    st.markdown("#### " + _("Layers"))
    layer_table(analysis)


PART_LABELS = {
    state.GENERATOR: N_("Generator"),
    state.DISCRIMINATOR: N_("Discriminator"),
}


def part_switch() -> None:
    """A GAN pair's two graphs, one canvas: the switch chooses which one it shows and edits;
    what keeps the two from playing together is said here, whichever is shown."""
    st.session_state["nb_part_choice"] = state.editing()
    st.segmented_control(
        _("GAN pair"),
        state.PARTS,
        format_func=lambda part: _(PART_LABELS[part]),
        key="nb_part_choice",
        on_change=_switch_part,
        label_visibility="collapsed",
    )
    for problem in state.pair_problems():
        st.error(_md(i18n.render(problem)), icon=":material/error:")


def _switch_part() -> None:
    chosen = st.session_state.get("nb_part_choice")
    if chosen is not None and chosen != state.editing():
        state.edit_part(chosen)
        _reset_groups()
        _fit_view()


def render() -> None:
    state.through_the_app()
    st.html(STYLE)
    st.html(KEYS_SCRIPT, unsafe_allow_javascript=True)
    palette()
    workspace()


if __name__ == "__main__":
    render()
