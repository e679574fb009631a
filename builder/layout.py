"""Auto-layout for graphs that come without positions (templates, imported files). Pure.

Top to bottom, one row per layer of the longest path from the Input (a small Sugiyama layout):
an edge that skips rows reserves a slot in every row it passes, so a residual connection runs
beside the block it skips instead of through its nodes, and each row is ordered by where its
inputs sit, which keeps edges from crossing in the usual chains and residual blocks.

Groups (builder/groups.py: the module paths of an imported model) are laid out as units: each
group's inside first, then the group as one box in its parent's rows (a row as tall as its
tallest box), with room around it for the frame and the name the canvas draws. A graph without
groups is laid out exactly as before.
"""

from __future__ import annotations

import networkx as nx

from builder.graph import Graph
from builder.groups import ROOT, GroupTree, group_tree

ROW_HEIGHT = 120.0
COLUMN_WIDTH = 240.0
CANVAS_ORIGIN = (330.0, 30.0)  # the main column, placed for the canvas's first view at zoom 1
GROUP_PAD = 14.0  # px between a group's frame and what it holds, at the sides and the bottom
GROUP_TITLE = 34.0  # px above a group's first row, for its name

Position = tuple[float, float]
ENTRY = "entry"  # where a group's inputs come in from (units are "n:..." and "g:...")


def auto_layout(graph: Graph, origin: Position = CANVAS_ORIGIN) -> dict[str, Position]:
    """Positions for every node: rows of ROW_HEIGHT, slots of COLUMN_WIDTH centred on origin x;
    a group takes a box of rows and slots of its own."""
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    edges = [(edge.source, edge.target) for edge in graph.edges]
    placed, _left, _right, _height = _lay_out(ROOT, group_tree(graph), edges, order)
    ox, oy = origin
    return {node_id: (ox + x, oy + y) for node_id, (x, y) in placed.items()}


def _lay_out(
    level: str, tree: GroupTree, edges: list[tuple[str, str]], order: dict[str, int]
) -> tuple[dict[str, Position], float, float, float]:
    """One group's (or the whole graph's) nodes, placed relative to its top and to the middle
    of its rows, and the box they take: left, right, height."""
    unit_of: dict[str, str] = {}  # node id -> the unit at this level that holds it
    first: dict[str, int] = {}
    inside: dict[str, tuple[dict[str, Position], float, float, float]] = {}
    for group in tree.child_groups[level]:
        unit = "g:" + group
        inside[unit] = _lay_out(group, tree, edges, order)
        unit_of.update({node_id: unit for node_id in tree.members[group]})
        first[unit] = min(order[node_id] for node_id in tree.members[group])
    for node_id in tree.child_nodes[level]:
        unit_of[node_id] = "n:" + node_id
        first["n:" + node_id] = order[node_id]
    unit_edges = [
        (unit_of[source], unit_of[target])
        for source, target in edges
        if source in unit_of and target in unit_of and unit_of[source] != unit_of[target]
    ]
    # An edge from outside the group into a later row (a residual skip into the block's add)
    # reserves slots from the group's top, as it would in the whole graph, so it runs beside.
    entering = {unit_of[t] for s, t in edges if t in unit_of and s not in unit_of}
    if level != ROOT and entering:
        first[ENTRY] = -1
        unit_edges += [(ENTRY, unit) for unit in sorted(entering)]
    dag = _acyclic(unit_edges, first)
    rows = _rows_with_reservations(dag, _longest_path_layers(dag, first), first)
    if ENTRY in first:
        rows[0].remove(ENTRY)
        rows = [row for row in rows if row] if not rows[0] else rows

    def size(item: Slot) -> Position:
        if not isinstance(item, str) or item not in inside:
            return (COLUMN_WIDTH, ROW_HEIGHT)
        _placed, left, right, height = inside[item]
        return (right - left + 2 * GROUP_PAD, height + GROUP_TITLE + GROUP_PAD)

    placed: dict[str, Position] = {}
    top, left_edge, right_edge = 0.0, 0.0, 0.0
    for row in rows:
        widths = [size(item)[0] for item in row]
        cursor = -sum(widths) / 2 + COLUMN_WIDTH / 2
        left_edge, right_edge = min(left_edge, cursor), max(right_edge, cursor + sum(widths))
        for item, width in zip(row, widths):
            if isinstance(item, str) and item in inside:
                nodes, inner_left, _right, _height = inside[item]
                for node_id, (x, y) in nodes.items():
                    placed[node_id] = (cursor + GROUP_PAD + x - inner_left, top + GROUP_TITLE + y)
            elif isinstance(item, str):
                placed[item[2:]] = (cursor, top)
            cursor += width
        top += max(size(item)[1] for item in row)
    return placed, left_edge, right_edge, top


def needs_layout(graph: Graph) -> bool:
    """True when some node has no position (a template or an imported file)."""
    return any(node.position is None for node in graph.nodes)


def with_layout(graph: Graph, origin: Position = CANVAS_ORIGIN) -> Graph:
    """The graph with every node placed by auto_layout."""
    positions = auto_layout(graph, origin)
    nodes = [node.model_copy(update={"position": positions[node.id]}) for node in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})


def _acyclic(edges: list[tuple[str, str]], order: dict[str, int]) -> nx.DiGraph:
    """The edges as a DAG: an edge that would close a cycle is left out of the layout."""
    dag = nx.DiGraph()
    dag.add_nodes_from(order)
    for source, target in edges:
        if source not in order or target not in order or source == target:
            continue
        if source in dag and nx.has_path(dag, target, source):
            continue
        dag.add_edge(source, target)
    return dag


def _longest_path_layers(dag: nx.DiGraph, order: dict[str, int]) -> dict[str, int]:
    layer: dict[str, int] = {}
    for node in nx.lexicographical_topological_sort(dag, key=order.__getitem__):
        layer[node] = max((layer[p] + 1 for p in dag.predecessors(node)), default=0)
    return layer


Slot = str | tuple[str, str, int]  # a node id, or (source, target, row) held for a long edge


def _rows_with_reservations(
    dag: nx.DiGraph, layer: dict[str, int], order: dict[str, int]
) -> list[list[Slot]]:
    """Each row's slots in left-to-right order, after one barycentre sweep from the top."""
    depth = max(layer.values(), default=-1) + 1
    rows: list[list[Slot]] = [[] for _ in range(depth)]
    above: dict[Slot, list[Slot]] = {}
    for node in sorted(layer, key=order.__getitem__):
        rows[layer[node]].append(node)
        above[node] = []
    for source, target in dag.edges:
        previous: Slot = source
        for row in range(layer[source] + 1, layer[target]):
            held = (source, target, row)
            rows[row].append(held)
            above[held] = [previous]
            previous = held
        above[target].append(previous)
    slot_of: dict[Slot, float] = {}
    for row_items in rows:
        row_items.sort(key=lambda item: (_barycentre(item, above, slot_of), _tiebreak(item, order)))
        middle = (len(row_items) - 1) / 2
        slot_of.update({item: slot - middle for slot, item in enumerate(row_items)})
    return rows


def _barycentre(item: Slot, above: dict[Slot, list[Slot]], slot_of: dict[Slot, float]) -> float:
    parents = [slot_of[p] for p in above[item] if p in slot_of]
    return sum(parents) / len(parents) if parents else 0.0


def _tiebreak(item: Slot, order: dict[str, int]) -> tuple[int, int]:
    """Real nodes before reserved slots, then file order: the main chain stays on the left."""
    if isinstance(item, str):
        return (0, order[item])
    return (1, order[item[1]])
