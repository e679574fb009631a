"""The graph <-> canvas adapter: what the canvas shows, and what a canvas event means. Pure.

The canvas is NetBuilder's own component (pages/parts/flow_canvas). Python owns the graph: it sends
each node's text already rendered (in the reader's language) and reads back events, never whole
states: "select", "select_edge", "deselect", "move", "connect", "delete_nodes", "delete_edge".
An event names ids; `apply_event` checks every id against the current graph, so nothing a
browser sends can change a layer's type or parameters, and an event about a node that is gone
changes nothing.
"""

from __future__ import annotations

import re

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import i18n
from i18n import Message, msg
from builder import edit
from builder.catalog import CATALOG
from builder.graph import MAX_EDGES, MAX_NODES, Edge, Graph, Node
from builder.layout import ROW_HEIGHT
from compiler.analysis import Analysis, Diagnostic, NodeInfo

NODE_WIDTH = 200  # px; builder/layout.py's columns leave room for it
MAX_MESSAGE = 90
MAX_EVENTS = 200  # a value longer than this is not one the canvas sends
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


def node_face(
    node: Node, info: NodeInfo, diagnostics: list[Diagnostic], selected: bool
) -> dict[str, Any]:
    """One node as the canvas draws it: plain text fields (React escapes them), no markup."""
    shape = None if info.shape is None else "[" + ", ".join(map(str, info.shape)) + "]"
    note, severity = "", ""
    if diagnostics:
        note, severity = _short(diagnostics[0], node), diagnostics[0].severity
    elif shape is None:
        note, severity = i18n._("shape unknown: an earlier layer has a problem"), "warning"
    x, y = node.position or (0.0, 0.0)
    return {
        "id": node.id,
        "x": x,
        "y": y,
        "kind": node_kind(node.type),
        "type": node.type,
        "name": node.id if node.id.lower() != node.type.lower() else "",
        "params": key_params_text(node),
        "shape": shape or "",
        "count": i18n._("{count} params", count=f"{info.params:,}") if info.params else "",
        "note": note,
        "note_severity": severity,
        "status": node_status(diagnostics),
        "selected": selected,
    }


def canvas_state(
    graph: Graph, analysis: Analysis, selected: str | None, selected_edge: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The nodes and edges the canvas draws: shapes, counts and problems on nodes, shapes on
    edges. About 250 bytes a node, so a 600-node import stays small."""
    by_node: dict[str | None, list[Diagnostic]] = {}
    for diagnostic in analysis.diagnostics:
        by_node.setdefault(diagnostic.node, []).append(diagnostic)
    nodes = [
        node_face(
            node,
            analysis.infos.get(node.id, NodeInfo(None)),
            sorted(by_node.get(node.id, []), key=lambda d: d.severity != "error"),
            node.id == selected,
        )
        for node in graph.nodes
    ]
    edges = [
        edge_face(index, edge, _edge_label(analysis, edge.source), index == selected_edge)
        for index, edge in enumerate(graph.edges)
    ]
    return {"nodes": nodes, "edges": edges}


def node_kind(layer_type: str) -> str:
    """Which handles the canvas draws: an Input has no target, an Output no source."""
    return {"Input": "input", "Output": "output"}.get(layer_type, "layer")


def edge_face(index: int, edge: Edge, label: str = "", selected: bool = False) -> dict[str, Any]:
    """One edge as the canvas draws it, named by edge_id."""
    return {
        "id": edge_id(index, edge.source, edge.target),
        "source": edge.source,
        "target": edge.target,
        "label": label,
        "selected": selected,
    }


def add_plans(graph: Graph, selected: str | None) -> dict[str, dict[str, Any]]:
    """Where the palette's next layer would go, for a layer and for an Input (edit.placement):
    the canvas draws a palette click from this at once, and the page's answer replaces it."""
    plans = {}
    for name, layer_type in (("layer", "Linear"), ("input", "Input")):
        plan = edit.placement(graph, layer_type, selected)
        splice = None
        if plan.splice is not None:
            edge = graph.edges[plan.splice]
            splice = edge_id(plan.splice, edge.source, edge.target)
        plans[name] = {
            "anchor": plan.anchor,
            "x": plan.position[0],
            "y": plan.position[1],
            "splice": splice,
            "shifted": sorted(plan.shifted),
            "row": ROW_HEIGHT,
        }
    return plans


def _edge_label(analysis: Analysis, source: str) -> str:
    info = analysis.infos.get(source)
    if info is None or info.shape is None:
        return ""
    return "[" + ", ".join(map(str, info.shape)) + "]"


def edge_id(index: int, source: str, target: str) -> str:
    return f"{index}:{source}->{target}"


def edge_index(graph: Graph, chosen: Any) -> int | None:
    """The index of the graph edge a canvas edge id names (as canvas_state made it), or None."""
    if not isinstance(chosen, str) or ":" not in chosen:
        return None
    head = chosen.split(":", 1)[0]
    index = int(head) if re.fullmatch(r"[0-9]{1,9}", head) else -1  # not '²', not 5000 digits
    if not 0 <= index < len(graph.edges):
        return None
    edge = graph.edges[index]
    return index if chosen == edge_id(index, edge.source, edge.target) else None


# ---------------------------------------------------------------------------------------------
# Canvas -> graph


@dataclass(frozen=True)
class CanvasEdit:
    """What one canvas event means for the graph.

    kind: "none" (nothing to change), "moved" (positions only: no undo step) or "edited"
    (nodes deleted, an edge added or removed). selected / edge: the node or edge the person
    picked; deselect: True when they clicked the empty pane.
    """

    graph: Graph
    kind: Change
    selected: str | None = None
    edge: int | None = None
    deselect: bool = False
    refused: Message | None = None  # why an edit was not made, for the page to say


def new_events(value: Any, after: int) -> list[Mapping[str, Any]]:
    """The events of a canvas value not applied yet (sequence number above `after`), in order.

    The canvas resends every event until the page acknowledges it, so a value that a busy
    server skipped is not lost; anything malformed is left out.
    """
    if not isinstance(value, Mapping) or not isinstance(value.get("events"), list):
        return []
    events = [
        event
        for event in value["events"][:MAX_EVENTS]
        if isinstance(event, Mapping)
        and isinstance(event.get("seq"), int)
        and not isinstance(event.get("seq"), bool)
        and event["seq"] > after
    ]
    return sorted(events, key=lambda event: event["seq"])


def apply_event(graph: Graph, event: Mapping[str, Any]) -> CanvasEdit:
    """One event, checked against the graph: unknown ids, self-loops, bad numbers and values
    of the wrong type (a forged event) change nothing."""
    if not isinstance(event, Mapping):
        return CanvasEdit(graph, "none")
    known = {node.id for node in graph.nodes}

    def node_id(value: Any) -> str | None:
        return value if isinstance(value, str) and value in known else None

    kind = event.get("kind")
    if kind == "select":
        return CanvasEdit(graph, "none", selected=node_id(event.get("node")))
    if kind == "select_edge":
        return CanvasEdit(graph, "none", edge=edge_index(graph, event.get("edge")))
    if kind == "deselect":
        return CanvasEdit(graph, "none", deselect=True)
    if kind == "move":
        moved = _apply_positions(graph, event.get("positions"))
        return CanvasEdit(moved, "moved" if moved != graph else "none")
    if kind == "connect":
        source, target = node_id(event.get("source")), node_id(event.get("target"))
        if len(graph.edges) >= MAX_EDGES:  # a file with more could not be opened again
            return CanvasEdit(graph, "none", refused=full_of_edges())
        if source is not None and target is not None and source != target:
            return CanvasEdit(edit.connect(graph, source, target), "edited")
        return CanvasEdit(graph, "none")
    if kind == "delete_nodes":
        chosen = event.get("nodes")
        gone = {n for n in chosen if node_id(n)} if isinstance(chosen, list) else set()
        if gone:
            return CanvasEdit(edit.delete_nodes(graph, gone), "edited", deselect=True)
        return CanvasEdit(graph, "none")
    if kind == "delete_edge":
        index = edge_index(graph, event.get("edge"))
        if index is None:
            return CanvasEdit(graph, "none")
        edges = [edge for i, edge in enumerate(graph.edges) if i != index]
        return CanvasEdit(graph.model_copy(update={"edges": edges}), "edited", deselect=True)
    return CanvasEdit(graph, "none")


def full_of_edges() -> Message:
    return msg(
        "The graph already has {limit} edges, the most a graph file holds: delete some first.",
        limit=f"{MAX_EDGES:,}",
    )


def full_of_layers() -> Message:
    return msg(
        "The graph already has {limit} layers, the most a graph file holds: delete some first.",
        limit=f"{MAX_NODES:,}",
    )


def _apply_positions(graph: Graph, positions: Any) -> Graph:
    if not isinstance(positions, Mapping):
        return graph
    wanted: dict[str, tuple[float, float]] = {}
    for node_id, position in positions.items():
        if (
            isinstance(position, list | tuple)
            and len(position) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
            and all(abs(v) < 1e7 for v in position)  # also refuses NaN
        ):
            wanted[node_id] = (round(float(position[0]), 1), round(float(position[1]), 1))
    nodes = []
    changed = False
    for node in graph.nodes:
        position = wanted.get(node.id)
        if position is not None and position != node.position:
            node = node.model_copy(update={"position": position})
            changed = True
        nodes.append(node)
    return graph.model_copy(update={"nodes": nodes}) if changed else graph


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
