"""The Build page: a canvas of layers with live shapes, a palette, a parameter form, a summary.

The graph lives in pages/state.py; the canvas (streamlit-flow) only shows it and reports edits.
A canvas edit reaches Python as the component's value, which is read at the top of the run,
before anything is drawn, so the same run already shows the new shapes. (The browser answers
every state it takes with an echo; an echo changes nothing and costs one cheap run.)
"""

from __future__ import annotations

import re
import time
from typing import Any

import streamlit as st
from streamlit_flow import streamlit_flow
from streamlit_flow.state import StreamlitFlowState

from builder import edit
from pages import canvas
from builder.catalog import CATALOG, CATEGORIES
from builder.graph import MAX_FILE_BYTES, Graph, GraphFormatError, dump_graph, load_graph
from builder.layout import needs_layout, with_layout
from compiler.analysis import Analysis, Diagnostic, NodeInfo
from pages import state

CANVAS_KEY = "nb_canvas"
CANVAS_HEIGHT = 740
_PUSHED = "nb_pushed"  # (graph version, selection) -> the canvas state last sent to the browser
_SEEN = "nb_canvas_seen"  # timestamp of the last canvas value applied
_PARAM_ERRORS = "nb_param_errors"  # (graph version, {(node, param): message})
_ERROR = "nb_error"  # (graph version, message): shown until the graph changes
_UPLOADS = "nb_uploads"  # how many files were opened: part of the uploader's key
_FIT = "nb_fit"  # the graph version to fit into the view: a new session's, a loaded or tidied graph

TEMPLATES = {
    "resnet": ("Small ResNet", "8×8 digits · two residual blocks"),
    "lenet5": ("LeNet-5", "28×28 digits · the classic CNN"),
    "lstm_classifier": ("LSTM classifier", "Digit rows read as a sequence"),
    "gru_conv1d": ("Conv1d + GRU", "Digit rows · convolution, then recurrence"),
    "transformer_encoder": ("Transformer encoder", "Token sequences · self-attention"),
}


# ---------------------------------------------------------------------------------------------
# Edits (Streamlit callbacks: they run before the page, so the page draws the result)


def _flash_error(message: str) -> None:
    st.session_state[_ERROR] = (state.graph_version(), message)


def _add_from_palette(key: str) -> None:
    layer_type = st.session_state.get(key)
    st.session_state[key] = None
    if not layer_type:
        return
    analysis = state.current_analysis()
    shapes = {node_id: info.shape for node_id, info in analysis.infos.items()}
    graph, node_id = edit.add_node_after(
        state.current_graph(), layer_type, state.selected_node(), shapes
    )
    state.set_graph(graph)
    state.select(node_id)


def _delete_selected() -> None:
    node_id = state.selected_node()
    if node_id is not None:
        state.set_graph(edit.delete_nodes(state.current_graph(), {node_id}))
        state.select(None)


def _apply_fix(fix: dict[str, Any]) -> None:
    try:
        state.set_graph(edit.apply_fix(state.current_graph(), fix))
    except edit.EditError as exc:
        _flash_error(f"The fix no longer applies: {exc}")
        return
    st.toast(f"Applied: {fix.get('why', 'fix')}", icon=":material/auto_fix_high:")


def _load_template() -> None:
    name = st.session_state.get("nb_template")
    if name is None:
        return
    state.set_graph(state.load_template(name))
    state.select(None)
    _fit_view()
    st.toast(f"Loaded {TEMPLATES.get(name, (name,))[0]}. Undo brings your graph back.")


def _uploader_key() -> str:
    """A new key after every upload, so the next file starts from an empty uploader."""
    return f"nb_open_{st.session_state.get(_UPLOADS, 0)}"


def _open_file() -> None:
    uploaded = st.session_state.get(_uploader_key())
    if uploaded is None:
        return
    st.session_state[_UPLOADS] = st.session_state.get(_UPLOADS, 0) + 1
    if uploaded.size > MAX_FILE_BYTES:
        _flash_error(
            f"{uploaded.name} is {uploaded.size:,} bytes; a graph file may be at most"
            f" {MAX_FILE_BYTES:,} bytes."
        )
        return
    try:
        graph = load_graph(uploaded.getvalue())
    except GraphFormatError as exc:
        _flash_error(f"{uploaded.name} is not a NetBuilder graph: {exc}")
        return
    state.set_graph(with_layout(graph) if needs_layout(graph) else graph)
    state.select(None)
    _fit_view()
    st.session_state["nb_open_popover"] = False
    st.toast(f"Opened {uploaded.name}. Undo brings your previous graph back.")


def _tidy() -> None:
    state.set_graph(with_layout(state.current_graph()))
    _fit_view()


def _fit_view() -> None:
    """Show the whole graph until it is next edited (a template's lower half was off screen)."""
    st.session_state[_FIT] = state.graph_version()


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
    if field.kind == "text":
        value = edit.parse_text_value(raw or "")
    else:
        value = edit.UNSET if raw is None else raw
    graph = state.current_graph()
    node = graph.node(node_id)
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
    state.set_graph(edit.set_params(graph, node_id, {field.name: value}))


def _param_errors() -> dict[tuple[str, str], str]:
    version, errors = st.session_state.get(_PARAM_ERRORS, (None, {}))
    return errors if version == state.graph_version() else {}


# ---------------------------------------------------------------------------------------------
# The canvas


def sync_canvas() -> None:
    """Apply the value the canvas sent since the last run (an edge drawn, a node deleted...).

    A value built from an older state than the one last sent (a late echo, arriving after a
    palette click or an undo) would undo what came since: it is dropped, and the current state
    is sent again with a newer timestamp, so the browser shows what the graph holds.
    """
    value = st.session_state.get(CANVAS_KEY)
    if not isinstance(value, dict) or value.get("timestamp") == st.session_state.get(_SEEN):
        return
    st.session_state[_SEEN] = value.get("timestamp")
    pushed = st.session_state.get(_PUSHED)
    if pushed is not None and canvas.sent_in(value) != pushed[1].timestamp:
        del st.session_state[_PUSHED]
        return
    change = canvas.apply_canvas(state.current_graph(), value)
    if change.selected is not None:
        state.select(change.selected)
    if change.kind == "edited":
        state.set_graph(change.graph)
    elif change.kind == "moved":
        state.set_graph(change.graph, record_undo=False)
        if pushed is not None:  # the browser already shows the move: nothing to send
            st.session_state[_PUSHED] = ((state.graph_version(), pushed[0][1]), pushed[1])
    clicked_edge = value.get("selectedId") is not None and change.selected is None
    if pushed is not None and (clicked_edge or canvas.looks_different(pushed[1], value)):
        del st.session_state[_PUSHED]  # sent again: a clicked edge loses React Flow's selection


def flow_state(graph: Graph, analysis: Analysis, selected: str | None) -> StreamlitFlowState:
    """The canvas state to send; rebuilt (with a newer timestamp) only when something changed.

    The browser ignores a state older than the last value it sent, and answers every state it
    takes with an echo, so an unchanged state must keep its timestamp or the two would loop.
    """
    key = (state.graph_version(), selected)
    pushed = st.session_state.get(_PUSHED)
    if pushed is not None and pushed[0] == key:
        return pushed[1]
    seen = st.session_state.get(_SEEN)
    timestamp = max(int(time.time() * 1000), int(seen) + 1 if isinstance(seen, int) else 0)
    flow = canvas.graph_to_flow(graph, analysis, selected, timestamp)
    st.session_state[_PUSHED] = (key, flow)
    return flow


def draw_canvas(graph: Graph, analysis: Analysis, selected: str | None) -> None:
    streamlit_flow(
        CANVAS_KEY,
        flow_state(graph, analysis, selected),
        height=CANVAS_HEIGHT,
        fit_view=st.session_state.get(_FIT) == state.graph_version(),
        show_controls=True,
        show_minimap=True,
        allow_new_edges=True,
        get_node_on_click=True,
        get_edge_on_click=True,
        enable_node_menu=True,
        enable_edge_menu=True,
        min_zoom=0.5,  # fitting a tall graph stops where node text stays readable
        hide_watermark=True,
        style={"border": "1px solid #e2e8f0", "borderRadius": "10px", "background": "#fcfcfd"},
    )


# ---------------------------------------------------------------------------------------------
# Page sections


def _md(text: str) -> str:
    """User text made safe for st.markdown (no markup, links or LaTeX)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def palette() -> None:
    st.sidebar.markdown("### Layers")
    st.sidebar.caption("One click adds a layer after the selected one.")
    for category in CATEGORIES:
        types = [name for name, spec in CATALOG.items() if spec.category == category]
        key = f"nb_palette_{category}"
        st.sidebar.pills(category, types, key=key, on_change=_add_from_palette, args=(key,))


def toolbar(graph: Graph) -> None:
    name, undo, redo, tidy, templates, opener, save = st.columns(
        [2, 1, 1, 1, 1.7, 1, 1], vertical_alignment="bottom"
    )
    name_key = f"nb_name_{state.graph_version()}"
    name.text_input(
        "Model name",
        value=graph.name,
        key=name_key,
        max_chars=80,
        on_change=_rename,
        args=(name_key, state.graph_version()),
    )
    undo.button(
        "Undo",
        icon=":material/undo:",
        on_click=state.undo,
        disabled=not state.can_undo(),
        width="stretch",
    )
    redo.button(
        "Redo",
        icon=":material/redo:",
        on_click=state.redo,
        disabled=not state.can_redo(),
        width="stretch",
    )
    tidy.button(
        "Tidy",
        icon=":material/account_tree:",
        on_click=_tidy,
        help="Lay the graph out again, top to bottom",
        width="stretch",
    )
    templates.menu_button(
        "Templates",
        state.template_names(),
        key="nb_template",
        icon=":material/dashboard:",
        format_func=lambda name: " · ".join(TEMPLATES.get(name, (name,))),
        on_click=_load_template,
        width="stretch",
    )
    with opener.popover(
        "Open",
        icon=":material/folder_open:",
        width="stretch",
        key="nb_open_popover",
        on_change="rerun",
    ):
        st.file_uploader(
            "A graph file saved by NetBuilder (.json)",
            type=["json"],
            key=_uploader_key(),
            on_change=_open_file,
            max_upload_size=max(1, MAX_FILE_BYTES // 1_000_000),
        )
    save.download_button(
        "Save",
        data=dump_graph(graph),
        file_name=f"{_file_stem(graph.name)}.json",
        mime="application/json",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
    )


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def summary_metrics(analysis: Analysis) -> None:
    params = analysis.total_params
    columns = st.columns(3)
    columns[0].metric("Parameters", f"{params:,}")
    columns[1].metric("Size (float32)", f"{params * 4 / 1e6:.2f} MB")
    columns[2].metric("MACs / sample", _si(analysis.total_macs))


def _si(number: int) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.2f} {suffix}"
    return str(number)


def problems(analysis: Analysis) -> None:
    """Every diagnostic, errors first, each with its one-click fix where the compiler has one."""
    found = sorted(analysis.diagnostics, key=lambda d: d.severity != "error")
    if not found:
        st.success("No problems: every shape fits.", icon=":material/check_circle:")
        return
    with st.container(border=True, height=340 if len(found) > 3 else "content"):
        st.markdown(f"**Problems ({len(found)})**")
        for index, diagnostic in enumerate(found):
            _diagnostic(diagnostic, f"all_{index}")


def _diagnostic(diagnostic: Diagnostic, key: str) -> None:
    show = st.error if diagnostic.severity == "error" else st.warning
    show(
        _md(diagnostic.message),
        icon=":material/error:" if diagnostic.severity == "error" else ":material/warning:",
    )
    if diagnostic.fix is not None:
        st.button(
            f"Fix: {diagnostic.fix.get('why', 'apply the suggested edit')}",
            key=f"nb_fix_{key}",
            icon=":material/auto_fix_high:",
            on_click=_apply_fix,
            args=(diagnostic.fix,),
        )


def inspector(graph: Graph, analysis: Analysis, selected: str | None) -> None:
    ids = [node.id for node in graph.nodes]
    pick_key = f"nb_pick_{state.graph_version()}_{selected}"
    st.selectbox(
        "Layer",
        ids,
        index=ids.index(selected) if selected in ids else None,
        key=pick_key,
        placeholder="Click a node on the canvas",
        on_change=_pick_layer,
        args=(pick_key, state.graph_version(), selected),
    )
    if selected is None:
        st.caption(
            "Select a layer to edit its parameters. Draw an edge by dragging from a node's bottom"
            " handle to another node's top handle; right-click a node or an edge to delete it"
            " (the Backspace key deletes nothing, so the canvas always shows the saved graph)."
        )
        return
    node = graph.node(selected)
    spec = CATALOG[node.type]
    info = analysis.infos.get(selected, NodeInfo(None))
    st.markdown(f"#### {node.type} · {_md(node.id)}")
    st.caption(spec.description)
    shape = "?" if info.shape is None else str(list(info.shape))
    st.markdown(f"Output `{shape}` · {info.params or 0:,} params · {_si(info.macs or 0)} MACs")
    st.code(
        spec.formula + (f"\n{info.explanation}".replace("; ", "\n") if info.explanation else ""),
        language=None,
        wrap_lines=True,
    )
    param_form(node)
    st.button("Delete layer", icon=":material/delete:", on_click=_delete_selected, type="secondary")


def param_form(node: Any) -> None:
    """One widget per catalog param: numbers with ranges, selects, checkboxes, typed text."""
    fields = edit.param_fields(node.type)
    if not fields:
        st.caption("This layer has no parameters.")
        return
    errors = _param_errors()
    version = state.graph_version()
    for field in fields:
        key = f"nb_param_{version}_{node.id}_{field.name}"
        current = node.params.get(field.name, field.default)
        help_text = field.help + ("" if field.required else f" (default {field.default!r})")
        common = {
            "key": key,
            "help": help_text,
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
                step=1,
                min_value=_int_or_none(field.minimum),
                max_value=_int_or_none(field.maximum),
                **common,
            )
        elif field.kind == "float":
            st.number_input(
                field.name,
                value=float(current) if isinstance(current, int | float) else None,
                min_value=_float_or_none(field.minimum),
                max_value=_float_or_none(field.maximum),
                step=0.01 if (field.maximum or 2) <= 1 else 0.1,
                format="%g",
                **common,
            )
        else:
            st.text_input(
                field.name, value=edit.value_text(current), placeholder=field.help, **common
            )
        problem = errors.get((node.id, field.name))
        if problem:
            st.error(_md(problem), icon=":material/error:")


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def layer_table(analysis: Analysis) -> None:
    """A torchinfo-like table: every layer in execution order, shape, params and MACs."""
    rows = []
    for node_id in analysis.order:
        info = analysis.infos.get(node_id, NodeInfo(None))
        rows.append(
            {
                "Layer": node_id,
                "Type": analysis.node_type(node_id),
                "Output shape": "?" if info.shape is None else str(list(info.shape)),
                "Params": info.params or 0,
                "MACs": info.macs or 0,
                "In model": node_id in analysis.live,
            }
        )
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        height="content" if len(rows) <= 60 else 720,
        column_config={
            "Params": st.column_config.NumberColumn(format="localized"),
            "MACs": st.column_config.NumberColumn(format="localized"),
        },
    )


STYLE = """
<style>
[data-testid="stMetricValue"] { font-size: 1.6rem; }
</style>
"""


def main() -> None:
    st.html(STYLE)
    st.session_state.setdefault(_FIT, state.graph_version())
    sync_canvas()
    graph = state.current_graph()
    selected = state.selected_node()
    notice = state.take_notice()
    if notice:
        st.warning(notice)
    palette()
    toolbar(graph)  # before the analysis: undo and open stay usable whatever the graph holds
    error = st.session_state.get(_ERROR)
    if error is not None and error[0] == state.graph_version():
        st.error(_md(error[1]), icon=":material/error:")
    analysis = state.current_analysis()
    left, right = st.columns([13, 7], gap="medium")
    with left:
        draw_canvas(graph, analysis, selected)
    with right:
        summary_metrics(analysis)
        problems(analysis)
        with st.container(border=True):
            inspector(graph, analysis, selected)
    st.markdown("#### Layers")
    layer_table(analysis)


main()
