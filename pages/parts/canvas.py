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

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import i18n
from i18n import Message, msg
from builder import edit
from builder.catalog import CATALOG
from builder.graph import MAX_EDGES, MAX_NODES, Edge, Graph, Node
from builder.groups import ROOT, GroupTree, group_tree
from builder.layout import GROUP_PAD, GROUP_TITLE, ROW_HEIGHT
from compiler.analysis import Analysis, Diagnostic, NodeInfo

NODE_WIDTH = 200  # px; builder/layout.py's columns leave room for it
NODE_HEIGHT = 72.0  # px, about what a node's face takes: a group's frame goes round it
COLLAPSE_ABOVE = 60  # a graph with more nodes opens with its top-level groups collapsed
BOX_ROOM = 40.0  # px a closed group's row is taller than a layer's: its box has more lines
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
    graph: Graph,
    analysis: Analysis,
    selected: str | None,
    selected_edge: int | None = None,
    view: GroupView | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The nodes and edges the canvas draws: shapes, counts and problems on nodes, shapes on
    edges. About 250 bytes a node, so a 600-node import stays small. With a `view` (group_view),
    a collapsed group is one box and an open one a frame round what it holds."""
    view = view or group_view(graph, None, selected)
    by_node: dict[str | None, list[Diagnostic]] = {}
    for diagnostic in analysis.diagnostics:
        by_node.setdefault(diagnostic.node, []).append(diagnostic)
    by_id = {node.id: node for node in graph.nodes}
    nodes = []
    for canvas_id, parent in view.drawn:
        x, y = view.positions[canvas_id]
        group = view.group_of.get(canvas_id)
        if group is None:
            face = node_face(
                by_id[canvas_id],
                analysis.infos.get(canvas_id, NodeInfo(None)),
                sorted(by_node.get(canvas_id, []), key=lambda d: d.severity != "error"),
                canvas_id == selected,
            )
        else:
            face = group_face(graph, analysis, view, group, by_node)
        face.update({"x": x, "y": y})
        if parent is not None:
            face["parent"] = parent
        if canvas_id in view.frames:
            face["w"], face["h"] = view.frames[canvas_id]
        nodes.append(face)
    edges = []
    joined: set[str] = set()
    for index, edge in enumerate(graph.edges):
        source = view.shown_as.get(edge.source, edge.source)
        target = view.shown_as.get(edge.target, edge.target)
        if source == target:
            continue  # inside a collapsed group
        label = _edge_label(analysis, edge.source)
        if (source, target) == (edge.source, edge.target):
            edges.append(edge_face(index, edge, label, index == selected_edge))
        elif f"~{source}->{target}" not in joined:  # edges into a box drawn once, not for picking
            joined.add(f"~{source}->{target}")
            face = edge_face(index, Edge(source=source, target=target), label)
            edges.append(face | {"id": f"~{source}->{target}", "joined": True})
    return {"nodes": nodes, "edges": edges}


# ---------------------------------------------------------------------------------------------
# Groups: an imported model's modules as boxes (builder/groups.py)


@dataclass(frozen=True)
class GroupView:
    """What the canvas shows of a graph's groups, for one set of open groups.

    tree: the groups, with a big graph's runs of top-level layers between them added ("stem",
    "head"); drawn: (canvas id, id of the frame it sits in) for every face, frames before what
    they hold; group_of: canvas id -> group; canvas_ids: group -> canvas id; shown_as: node ->
    the collapsed box drawn for it; positions: where each face is drawn (absolute); frames:
    an open group's frame size; opened: the open groups.
    """

    tree: GroupTree
    drawn: list[tuple[str, str | None]]
    group_of: dict[str, str]
    canvas_ids: dict[str, str]
    shown_as: dict[str, str]
    positions: dict[str, tuple[float, float]]
    frames: dict[str, tuple[float, float]]
    opened: frozenset[str]
    run_kinds: dict[str, str]


RUN = "~"  # a run's group name starts with it; a module path never does
RUN_NAMES = {"stem": i18n.N_("stem"), "head": i18n.N_("head"), "middle": i18n.N_("layers")}


def default_open(graph: Graph) -> frozenset[str]:
    """A small graph opens with every group open; one of more than COLLAPSE_ABOVE nodes with
    every group closed (ResNet-50: stem, layer1 .. layer4, head)."""
    if len(graph.nodes) > COLLAPSE_ABOVE:
        return frozenset()
    return frozenset(view_tree(graph)[0].groups)


def view_tree(graph: Graph) -> tuple[GroupTree, dict[str, str]]:
    """The module groups and, in a graph of more than COLLAPSE_ABOVE nodes with groups, each
    run of two or more top-level layers between them as a group of its own (its kind: stem,
    middle or head), so the whole model reads as a few boxes."""
    tree = group_tree(graph)
    kinds: dict[str, str] = {}
    if len(graph.nodes) <= COLLAPSE_ABOVE or not tree.child_groups[ROOT]:
        return tree, kinds
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    types = {node.id: node.type for node in graph.nodes}
    units = [(min(order[n] for n in tree.members[g]), "g", g) for g in tree.child_groups[ROOT]]
    units += [(order[n], "n", n) for n in tree.child_nodes[ROOT]]
    runs: list[list[str]] = [[]]
    breaks: list[bool] = []  # after each run but the last: whether a group ends it
    for _first, kind, unit in sorted(units):
        if kind == "n" and types[unit] not in ("Input", "Output"):
            runs[-1].append(unit)
            continue
        breaks.append(kind == "g")
        runs.append([])
    before = [any(breaks[:index]) for index in range(len(runs))]
    after = [any(breaks[index:]) for index in range(len(runs))]
    for index, run in enumerate(runs):
        if len(run) < 2:
            continue
        kind = "middle" if before[index] and after[index] else "head" if before[index] else "stem"
        name = f"{RUN}{kind}{index}"
        kinds[name] = kind
        tree.parent[name] = ROOT
        tree.child_groups[ROOT].append(name)
        tree.child_groups[name], tree.child_nodes[name] = [], list(run)
        tree.members[name] = list(run)
        for node_id in run:
            tree.of_node[node_id] = name
            tree.child_nodes[ROOT].remove(node_id)
    tree.child_groups[ROOT].sort(key=lambda g: min(order[n] for n in tree.members[g]))
    return tree, kinds


def group_view(graph: Graph, opened: frozenset[str] | None, selected: str | None) -> GroupView:
    """The faces to draw: each group open (a frame round its insides) or closed (one box in
    their place, what follows moved up by the rows it held); the selected node's groups open.
    `opened` None: default_open."""
    tree, kinds = view_tree(graph)
    if opened is None:
        opened = default_open(graph)
    opened = frozenset(opened) | frozenset(tree.ancestors(selected) if selected else ())
    taken = {node.id for node in graph.nodes}
    canvas_ids: dict[str, str] = {}
    for group in tree.groups:
        canvas_id = "group:" + group
        while canvas_id in taken:  # a node's id may be anything
            canvas_id += "#"
        taken.add(canvas_id)
        canvas_ids[group] = canvas_id
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    file_xy = {node.id: node.position or (0.0, 0.0) for node in graph.nodes}
    drawn: list[tuple[str, str | None]] = []
    shown_as: dict[str, str] = {}
    closed: list[str] = []

    def visit(level: str, frame: str | None) -> None:
        units = [
            (min(order[n] for n in tree.members[g]), g, True) for g in tree.child_groups[level]
        ]
        units += [(order[n], n, False) for n in tree.child_nodes[level]]
        for _first, unit, is_group in sorted(units):
            if not is_group:
                drawn.append((unit, frame))
            elif unit in opened:
                drawn.append((canvas_ids[unit], frame))
                visit(unit, canvas_ids[unit])
            else:
                drawn.append((canvas_ids[unit], frame))
                closed.append(unit)
                shown_as.update({n: canvas_ids[unit] for n in tree.members[unit]})

    visit(ROOT, None)
    # A closed group keeps one row: from the top of its band (its frame's name above its first
    # row, and those of the groups inside it that start there) to the bottom of its last row.
    ys = {g: [file_xy[n][1] for n in tree.members[g]] for g in tree.groups}
    tops: dict[str, float] = {}
    cuts: list[tuple[float, float]] = []
    for group in closed:
        inner = [group, *(g for g in tree.groups if g.startswith(group + "."))]
        if group in kinds:  # a run of top-level layers: no frame, no band
            inner = []
        first, last = min(ys[group]), max(ys[group])
        tops[group] = first - GROUP_TITLE * sum(min(ys[g]) == first for g in inner)
        bottom = last + GROUP_PAD * sum(max(ys[g]) == last for g in inner)
        cuts.append((tops[group], max(tops[group], bottom - BOX_ROOM)))
    squeeze = _squeeze(cuts)
    positions = {n: (x, squeeze(y)) for n, (x, y) in file_xy.items() if n not in shown_as}
    feeders: dict[str, set[str]] = {}  # face -> the faces with an edge into it
    for edge in graph.edges:
        source = shown_as.get(edge.source, edge.source)
        target = shown_as.get(edge.target, edge.target)
        if source != target:
            feeders.setdefault(target, set()).add(source)
    for group in closed:  # in the order the data reaches them: a box under the one feeding it
        above = {positions[f][0] for f in feeders.get(canvas_ids[group], ()) if f in positions}
        xs = [file_xy[n][0] for n in tree.members[group]]
        column = Counter(xs).most_common(1)[0][0]  # where most of it runs
        if len(above) == 1 and min(xs) <= min(above) <= max(xs):  # within its own columns
            column = above.pop()
        positions[canvas_ids[group]] = (column, squeeze(tops[group]))
    frames: dict[str, tuple[float, float]] = {}
    for group in sorted(opened & set(tree.groups), key=lambda g: -_depth(tree, g)):
        box = _frame_box(tree, group, canvas_ids, positions, frames, shown_as)
        positions[canvas_ids[group]] = (box[0], box[1])
        frames[canvas_ids[group]] = (box[2] - box[0], box[3] - box[1])
    return GroupView(
        tree,
        drawn,
        {canvas_id: group for group, canvas_id in canvas_ids.items()},
        canvas_ids,
        shown_as,
        positions,
        frames,
        opened & frozenset(tree.groups),
        kinds,
    )


def join_group(graph: Graph, node_id: str, anchor: str | None) -> Graph:
    """A layer added after `anchor` joins the group the anchor sits in (an edit inside a group
    keeps the grouping): its module is that group's path."""
    if anchor is None or anchor == node_id:
        return graph
    group = group_tree(graph).of_node.get(anchor, ROOT)
    if group == ROOT:
        return graph
    nodes = [n.model_copy(update={"module": group}) if n.id == node_id else n for n in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})


def _depth(tree: GroupTree, group: str) -> int:
    depth = 0
    while group != ROOT:
        group, depth = tree.parent[group], depth + 1
    return depth


def _squeeze(cuts: list[tuple[float, float]]) -> Any:
    """y -> y moved up by the lengths of the cuts (low, high] above it, overlaps counted once."""
    merged: list[tuple[float, float]] = []
    for low, high in sorted(cuts):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))

    def squeeze(y: float) -> float:
        return round(y - sum(max(0.0, min(y, high) - low) for low, high in merged), 1)

    return squeeze


def _frame_box(
    tree: GroupTree,
    group: str,
    canvas_ids: dict[str, str],
    positions: dict[str, tuple[float, float]],
    frames: dict[str, tuple[float, float]],
    shown_as: dict[str, str],
) -> tuple[float, float, float, float]:
    """An open group's frame: round the faces it holds (inner frames already sized), with
    room for its name above."""
    faces = {shown_as.get(n, n) for n in tree.child_nodes[group]}
    faces |= {canvas_ids[g] for g in tree.child_groups[group]}
    left = top = float("inf")
    right = bottom = float("-inf")
    for face in faces:
        x, y = positions[face]
        width, height = frames.get(face, (NODE_WIDTH, NODE_HEIGHT))
        left, top = min(left, x), min(top, y)
        right, bottom = max(right, x + width), max(bottom, y + height)
    return (left - GROUP_PAD, top - GROUP_TITLE, right + GROUP_PAD, bottom + GROUP_PAD)


def group_face(
    graph: Graph,
    analysis: Analysis,
    view: GroupView,
    group: str,
    by_node: dict[str | None, list[Diagnostic]],
) -> dict[str, Any]:
    """A group as the canvas draws it: its name, how many layers, the shapes going in and out,
    its parameter count (the sum of its layers', as PyTorch sums a submodule's)."""
    members = view.tree.members[group]
    inside = set(members)
    shapes_in = _shapes(
        analysis, [e.source for e in graph.edges if e.target in inside and e.source not in inside]
    )
    if not shapes_in:
        shapes_in = _shapes(analysis, [n for n in members if graph.node(n).type == "Input"])
    shapes_out = _shapes(
        analysis, [e.source for e in graph.edges if e.source in inside and e.target not in inside]
    )
    count = sum(analysis.infos.get(n, NodeInfo(None)).params or 0 for n in members)
    problems = [d for n in members for d in by_node.get(n, [])]
    kind = view.run_kinds.get(group)
    if kind is not None:
        title = i18n._(RUN_NAMES[kind])
        detail = f"{members[0]} … {members[-1]}"
    else:
        parent = view.tree.parent[group]
        title = group[len(parent) + 1 :] if parent != ROOT else group
        title = group if title.isdigit() else title
        detail = ""
    opened = group in view.opened
    return {
        "id": view.canvas_ids[group],
        "kind": "frame" if opened else "group",
        "type": title,
        "name": detail,
        "params": i18n._("{count} layers", count=len(members)),
        "shape": " → ".join(part for part in (shapes_in, shapes_out) if part),
        "count": i18n._("{count} params", count=f"{count:,}") if count else "",
        "note": i18n._("{count} problems inside", count=len(problems)) if problems else "",
        "note_severity": node_status(problems) if problems else "",
        "status": node_status(problems),
        "selected": False,
        "open": opened,
        "toggle_label": (
            i18n._("Close {group}", group=title) if opened else i18n._("Open {group}", group=title)
        ),
    }


def _shapes(analysis: Analysis, sources: list[str]) -> str:
    """The distinct output shapes of `sources`, in order: '[64, 16, 16]' or '[8] + [16]'."""
    texts: list[str] = []
    for source in sources:
        text = _edge_label(analysis, source) or "?"
        if text not in texts:
            texts.append(text)
    return " + ".join(texts)


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
    toggled: str | None = None  # a group to open or close (a view setting, not an edit)


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


def apply_event(
    graph: Graph, event: Mapping[str, Any], view: GroupView | None = None
) -> CanvasEdit:
    """One event, checked against the graph: unknown ids, self-loops, bad numbers and values
    of the wrong type (a forged event) change nothing. With the `view` the canvas showed, a
    move is read in its places (a closed group's rows squeezed out; a box or frame dragged
    moves what it holds) and a group may be opened or closed."""
    if not isinstance(event, Mapping):
        return CanvasEdit(graph, "none")
    if view is not None and event.get("kind") == "toggle_group":
        group = (
            view.group_of.get(event.get("group")) if isinstance(event.get("group"), str) else None
        )
        return CanvasEdit(graph, "none", toggled=group)
    if view is not None and event.get("kind") == "move":
        positions = event.get("positions")
        if isinstance(positions, Mapping):
            event = {"kind": "move", "positions": _file_positions(graph, view, positions)}
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


def _file_positions(
    graph: Graph, view: GroupView, positions: Mapping[Any, Any]
) -> dict[str, list[float]]:
    """Where faces were dropped on the canvas, as node positions in the file: each dragged face
    moves by how far it went from where it was drawn, a group's face with all it holds."""
    placed = {node.id: node.position or (0.0, 0.0) for node in graph.nodes}
    moved: dict[str, list[float]] = {}
    for face, position in list(positions.items())[:MAX_NODES]:
        drawn = view.positions.get(face) if isinstance(face, str) else None
        if drawn is None or not _is_point(position):
            continue
        dx, dy = position[0] - drawn[0], position[1] - drawn[1]
        group = view.group_of.get(face)
        for node_id in view.tree.members[group] if group is not None else [face]:
            if node_id in placed and node_id not in moved:
                moved[node_id] = [placed[node_id][0] + dx, placed[node_id][1] + dy]
    return moved


def _is_point(position: Any) -> bool:
    return (
        isinstance(position, list | tuple)
        and len(position) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
        and all(abs(v) < 1e7 for v in position)  # also refuses NaN
    )


def _apply_positions(graph: Graph, positions: Any) -> Graph:
    if not isinstance(positions, Mapping):
        return graph
    wanted: dict[str, tuple[float, float]] = {}
    for node_id, position in positions.items():
        if _is_point(position):
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
