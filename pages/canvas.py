"""The graph <-> streamlit-flow adapter: what the canvas shows, and what a canvas edit means. Pure.

Tested with streamlit-flow-component 1.6.1. The Python side owns the graph: the canvas only
reports ids, positions and edges back, and `apply_canvas` merges those into the current graph,
so nothing a browser sends can change a layer's type or parameters. Quirks of 1.6.1 handled here:
nodes and edges are built with connectable/deletable set (both default to False), every edge is
rebuilt with its arrow and label (edges drawn in the browser come back without them), and each
node gets its own style dict (the constructor's default dict is shared between nodes).
Backspace deletes what React Flow has selected, and the component never reports it; so nodes
are not selectable (a click still reports the node; the style shows the page's selection), and a
clicked edge (1.6.1 ignores `selectable` on edges) makes the page send its state again, which
clears the edge's selection. Deleting goes through the right-click menus, which do report.
Every node carries the timestamp of the state it was sent in, so the page can tell a late echo
of an older state (`sent_in`).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streamlit_flow.elements import StreamlitFlowEdge, StreamlitFlowNode
from streamlit_flow.state import StreamlitFlowState

import i18n
from builder import edit
from builder.catalog import CATALOG
from builder.graph import Graph, Node
from compiler.analysis import Analysis, Diagnostic, NodeInfo

NODE_WIDTH = 200
MAX_MESSAGE = 90
SELECTED_CLASS = "nb-selected"  # the page's script brings this node into view
STAMP = "sent_in"  # node data key: the timestamp of the state the node was sent in
SHORT_MESSAGES = {"does not lead to the Output": i18n.N_("not connected to the Output")}

SHORT_NAMES = {
    "out_channels": "out",
    "out_features": "out",
    "kernel_size": "k",
    "stride": "s",
    "padding": "pad",
    "output_size": "out",
    "hidden_size": "hidden",
    "num_layers": "layers",
    "bidirectional": "bidirectional",
    "num_heads": "heads",
    "nhead": "heads",
    "dim_feedforward": "ff",
    "num_embeddings": "vocab",
    "embedding_dim": "dim",
    "num_groups": "groups",
    "negative_slope": "slope",
}

INK = "#1f2937"
MUTED = "#6b7280"
COLOURS = {
    "ok": {"border": "#cbd5e1", "background": "#ffffff", "accent": "#2563eb"},
    "warning": {"border": "#d97706", "background": "#fffbeb", "accent": "#b45309"},
    "error": {"border": "#dc2626", "background": "#fef2f2", "accent": "#b91c1c"},
    "selected": {"border": "#2563eb", "background": "#eff6ff", "accent": "#2563eb"},
}

Change = Literal["none", "moved", "edited"]


# ---------------------------------------------------------------------------------------------
# Graph -> canvas


def key_params_text(node: Node) -> str:
    """The node's key params, short: 'out 16 · k 3 · pad 1' (defaults left out)."""
    spec = CATALOG.get(node.type)
    if spec is None:
        return ""
    fields = spec.params.model_fields
    parts = []
    for name in spec.key_params:
        info = fields[name]
        value = node.params.get(name, None if info.is_required() else info.default)
        if value is None or (not info.is_required() and value == info.default):
            continue
        if node.type == "Input" and name == "shape":  # the output shape line shows it
            continue
        label = SHORT_NAMES.get(name, name)
        if value is True:
            parts.append(label)
        elif value is not False:
            parts.append(f"{label} {_value_text(name, value)}")
    return " · ".join(parts)


SPATIAL = frozenset({"kernel_size", "stride", "padding", "output_size"})


def _value_text(name: str, value: Any) -> str:
    """3×5 for a window size, [0, 2, 1] for any other list."""
    if isinstance(value, list):
        if name in SPATIAL:
            return "×".join(str(v) for v in value)
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def node_status(diagnostics: list[Diagnostic]) -> str:
    if any(d.severity == "error" for d in diagnostics):
        return "error"
    return "warning" if diagnostics else "ok"


def node_html(node: Node, info: NodeInfo, diagnostics: list[Diagnostic]) -> str:
    """The node's face: type and id, key params, output shape and parameter count, problems.

    Every piece of user text is HTML-escaped: the canvas renders HTML.
    """
    status = node_status(diagnostics)
    colours = COLOURS[status]
    title = f"<b style='color:{INK}'>{_esc(node.type)}</b>"
    if node.id.lower() != node.type.lower():
        title += f" <span style='color:{MUTED}'>{_esc(node.id)}</span>"
    params = key_params_text(node)
    count = i18n._("{count} params", count=f"{info.params:,}") if info.params else ""
    rows = [
        f"<div style='margin:0;line-height:1.35;overflow-wrap:anywhere'>{title}</div>",
        (
            f"<div style='margin:0;color:{MUTED};font-size:11px'>{_esc(params)}</div>"
            if params
            else ""
        ),
    ]
    if info.shape is not None:
        shape = "[" + ", ".join(map(str, info.shape)) + "]"
        rows.append(
            "<div style='margin:0;display:flex;justify-content:space-between;gap:8px;font-size:11px'>"
            f"<code style='margin:0;color:{colours['accent']};background:none;padding:0'>{shape}</code>"
            f"<span style='margin:0;color:{MUTED}'>{count}</span></div>"
        )
    elif not diagnostics:
        rows.append(
            f"<div style='margin:0;color:{MUTED};font-size:11px'>"
            + _esc(i18n._("shape unknown: an earlier layer has a problem"))
            + "</div>"
        )
    for diagnostic in diagnostics[:1]:
        rows.append(
            f"<div style='margin:4px 0 0;color:{COLOURS[diagnostic.severity]['accent']};"
            f"font-size:11px;line-height:1.3;overflow-wrap:anywhere'>{_esc(_short(diagnostic, node))}</div>"
        )
    return "<div style='margin:0;text-align:left'>" + "".join(rows) + "</div>"


def _short(diagnostic: Diagnostic, node: Node) -> str:
    """The message's first clause, without the "Type 'id': " prefix the node already shows.

    The whole message, with its advice, is in the page's problem list; the node stays small.
    """
    english = str(diagnostic.message)
    for start, short in SHORT_MESSAGES.items():
        if start in english:
            return i18n._(short)
    message = diagnostic.text.render().removeprefix(f"{node.type} {node.id!r}: ")
    message = message.removeprefix(f"{node.type} {node.id!r} ").split("; ")[0]
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def node_style(status: str, selected: bool) -> dict[str, Any]:
    """A fresh style dict for one node (never shared: streamlit-flow mutates it)."""
    colours = COLOURS["selected"] if selected and status == "ok" else COLOURS[status]
    return {
        "width": f"{NODE_WIDTH}px",
        "padding": "8px 10px",
        "borderRadius": "8px",
        "border": f"{2 if status != 'ok' or selected else 1}px solid {colours['border']}",
        "background": colours["background"],
        "fontSize": "12px",
        "color": INK,
        "boxShadow": "0 1px 2px rgba(15, 23, 42, 0.08)",
    }


def _node_kind(layer_type: str) -> str:
    return {"Input": "input", "Output": "output"}.get(layer_type, "default")


def graph_to_flow(
    graph: Graph,
    analysis: Analysis,
    selected: str | None,
    timestamp: int,
    selected_edge: int | None = None,
) -> StreamlitFlowState:
    """The canvas state for a graph: shapes, counts and problems on nodes, shapes on edges.

    `timestamp` must be newer than the last one the browser sent, or the canvas keeps its own state.
    """
    by_node: dict[str | None, list[Diagnostic]] = {}
    for diagnostic in analysis.diagnostics:
        by_node.setdefault(diagnostic.node, []).append(diagnostic)
    nodes = []
    for node in graph.nodes:
        info = analysis.infos.get(node.id, NodeInfo(None))
        found = sorted(by_node.get(node.id, []), key=lambda d: d.severity != "error")
        x, y = node.position or (0.0, 0.0)
        nodes.append(
            StreamlitFlowNode(
                id=node.id,
                pos=(x, y),
                data={"content": node_html(node, info, found), STAMP: timestamp},
                node_type=_node_kind(node.type),
                source_position="bottom",
                target_position="top",
                selected=False,  # shown by the style; React Flow would let Backspace delete it
                selectable=False,
                connectable=True,
                deletable=True,
                style=node_style(node_status(found), node.id == selected),
                className=SELECTED_CLASS if node.id == selected else "",
            )
        )
    edges = [
        StreamlitFlowEdge(
            id=edge_id(index, edge.source, edge.target),
            source=edge.source,
            target=edge.target,
            edge_type="default",
            marker_end={"type": "arrowclosed", "color": "#64748b"},
            deletable=True,
            focusable=False,
            label=_edge_label(analysis, edge.source),
            label_style={"fontSize": "10px", "fill": "#334155", "fontFamily": "monospace"},
            label_show_bg=True,
            label_bg_style={"fill": "#f8fafc", "fillOpacity": 0.95},
            style=_edge_style(index == selected_edge),
        )
        for index, edge in enumerate(graph.edges)
    ]
    return StreamlitFlowState(nodes=nodes, edges=edges, selected_id=selected, timestamp=timestamp)


def _edge_style(selected: bool) -> dict[str, Any]:
    if selected:
        return {"stroke": COLOURS["selected"]["border"], "strokeWidth": 3}
    return {"stroke": "#64748b", "strokeWidth": 1.5}


def _edge_label(analysis: Analysis, source: str) -> str:
    info = analysis.infos.get(source)
    if info is None or info.shape is None:
        return ""
    return "[" + ", ".join(map(str, info.shape)) + "]"


# ---------------------------------------------------------------------------------------------
# Canvas -> graph


@dataclass(frozen=True)
class CanvasEdit:
    """What a value sent by the canvas means for the graph.

    kind: "none" (an echo of what Python sent), "moved" (positions only: no undo step needed)
    or "edited" (nodes deleted, edges added or removed). selected: the node the person picked,
    or None when the value says nothing about the selection.
    """

    graph: Graph
    kind: Change
    selected: str | None
    edge: int | None = None  # the index of the edge the person clicked, if they clicked one


def sent_in(value: Mapping[str, Any]) -> int | None:
    """The timestamp of the state a canvas value is based on, or None when its nodes disagree.

    Every node of a state carries the same stamp; a value that mixes stamps or lacks them is
    not one the browser built from a single state.
    """
    nodes = value.get("nodes")
    stamps = {
        n["data"].get(STAMP) if isinstance(n.get("data"), Mapping) else None
        for n in (nodes if isinstance(nodes, list) else [])
        if isinstance(n, Mapping)
    }
    stamp = stamps.pop() if len(stamps) == 1 else None
    return stamp if isinstance(stamp, int) else None


def apply_canvas(graph: Graph, value: Mapping[str, Any]) -> CanvasEdit:
    """Merge a canvas value ({nodes, edges, selectedId, timestamp}) into the graph.

    Only ids, positions and edge ends are read; nodes or edges naming unknown ids are ignored.
    A node missing from the canvas was deleted there, and is deleted the way the page deletes.
    """
    known = {node.id for node in graph.nodes}
    nodes, edges = value.get("nodes"), value.get("edges")
    canvas_nodes = [n for n in nodes if isinstance(n, Mapping)] if isinstance(nodes, list) else []
    present = {n.get("id") for n in canvas_nodes} & known
    if not present or not isinstance(edges, list):  # not a value the canvas sends: no news
        return CanvasEdit(graph, "none", None)
    deleted = known - present
    updated = edit.delete_nodes(graph, deleted) if deleted else _apply_edges(graph, edges)
    kind: Change = "edited" if updated != graph else "none"
    moved = _apply_positions(updated, canvas_nodes)
    if kind == "none" and moved != updated:
        kind = "moved"
    return CanvasEdit(
        moved, kind, _selection(value, present), edge_index(moved, value.get("selectedId"))
    )


def edge_id(index: int, source: str, target: str) -> str:
    return f"{index}:{source}->{target}"


def edge_index(graph: Graph, chosen: Any) -> int | None:
    """The index of the graph edge a canvas edge id names (as graph_to_flow made it), or None."""
    if not isinstance(chosen, str) or ":" not in chosen:
        return None
    head = chosen.split(":", 1)[0]
    index = int(head) if head.isdigit() else -1
    if not 0 <= index < len(graph.edges):
        return None
    edge = graph.edges[index]
    return index if chosen == edge_id(index, edge.source, edge.target) else None


def _apply_edges(graph: Graph, canvas_edges: list[Any]) -> Graph:
    known = {node.id for node in graph.nodes}
    wanted = Counter(
        (e.get("source"), e.get("target"))
        for e in canvas_edges
        if isinstance(e, Mapping)
        and e.get("source") in known
        and e.get("target") in known
        and e.get("source") != e.get("target")
    )
    have = Counter((e.source, e.target) for e in graph.edges)
    if wanted == have:
        return graph
    keep = Counter(wanted)
    edges = []
    for existing in graph.edges:
        pair = (existing.source, existing.target)
        if keep[pair] > 0:
            keep[pair] -= 1
            edges.append(existing)
    updated = graph.model_copy(update={"edges": edges})
    for (source, target), count in keep.items():
        for _ in range(count):
            updated = edit.connect(updated, source, target)
    return updated


def _apply_positions(graph: Graph, canvas_nodes: list[Mapping[str, Any]]) -> Graph:
    positions = {}
    for canvas_node in canvas_nodes:
        position = canvas_node.get("position")
        if isinstance(position, Mapping):
            x, y = position.get("x"), position.get("y")
            if isinstance(x, int | float) and isinstance(y, int | float):
                positions[canvas_node.get("id")] = (round(float(x), 1), round(float(y), 1))
    if not positions:
        return graph
    nodes = []
    changed = False
    for node in graph.nodes:
        position = positions.get(node.id)
        if position is not None and position != node.position:
            node = node.model_copy(update={"position": position})
            changed = True
        nodes.append(node)
    return graph.model_copy(update={"nodes": nodes}) if changed else graph


def _selection(value: Mapping[str, Any], present: set[Any]) -> str | None:
    chosen = value.get("selectedId")
    return chosen if chosen in present else None


def looks_different(flow: StreamlitFlowState, value: Mapping[str, Any]) -> bool:
    """True when the browser shows nodes or edges other than those of `flow`, the state sent.

    The canvas's own Edit Node / Edit Edge dialogs change content, kinds and labels that the
    graph does not hold, and an edge the graph refused (a node wired to itself) would stay drawn;
    sending the state again puts the graph's view back.
    """
    nodes = {n.id: (n.data.get("content"), n.type) for n in flow.nodes}
    edges = {e.id: (e.label, e.type) for e in flow.edges}
    shown = Counter(
        (e.get("source"), e.get("target"))
        for e in value.get("edges") or []
        if isinstance(e, Mapping)
    )
    if shown != Counter((e.source, e.target) for e in flow.edges):
        return True
    for node in value.get("nodes") or []:
        if isinstance(node, Mapping) and node.get("id") in nodes:
            data = node.get("data") if isinstance(node.get("data"), Mapping) else {}
            if (data.get("content"), node.get("type")) != nodes[node["id"]]:
                return True
    for edge in value.get("edges") or []:
        if isinstance(edge, Mapping) and edge.get("id") in edges:
            if (edge.get("label"), edge.get("type")) != edges[edge["id"]]:
                return True
    return False
