"""Auto-layout for graphs that come without positions (templates, imported files). Pure.

Top to bottom, one row per layer of the longest path from the Input (a small Sugiyama layout):
an edge that skips rows reserves a slot in every row it passes, so a residual connection runs
beside the block it skips instead of through its nodes, and each row is ordered by where its
inputs sit, which keeps edges from crossing in the usual chains and residual blocks.
"""

from __future__ import annotations

import networkx as nx

from builder.graph import Graph

ROW_HEIGHT = 120.0
COLUMN_WIDTH = 240.0
CANVAS_ORIGIN = (330.0, 30.0)  # the main column, placed for the canvas's first view at zoom 1

Position = tuple[float, float]


def auto_layout(graph: Graph, origin: Position = CANVAS_ORIGIN) -> dict[str, Position]:
    """Positions for every node: rows of ROW_HEIGHT, slots of COLUMN_WIDTH centred on origin x."""
    order = {node.id: index for index, node in enumerate(graph.nodes)}
    dag = _acyclic(graph, order)
    layer = _longest_path_layers(dag, order)
    rows = _rows_with_reservations(dag, layer, order)
    ox, oy = origin
    positions: dict[str, Position] = {}
    for depth, row in enumerate(rows):
        for slot, item in enumerate(row):
            if isinstance(item, str):
                x = ox + (slot - (len(row) - 1) / 2) * COLUMN_WIDTH
                positions[item] = (x, oy + depth * ROW_HEIGHT)
    return positions


def needs_layout(graph: Graph) -> bool:
    """True when some node has no position (a template or an imported file)."""
    return any(node.position is None for node in graph.nodes)


def with_layout(graph: Graph, origin: Position = CANVAS_ORIGIN) -> Graph:
    """The graph with every node placed by auto_layout."""
    positions = auto_layout(graph, origin)
    nodes = [node.model_copy(update={"position": positions[node.id]}) for node in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})


def _acyclic(graph: Graph, order: dict[str, int]) -> nx.DiGraph:
    """The graph's edges as a DAG: an edge that would close a cycle is left out of the layout."""
    dag = nx.DiGraph()
    dag.add_nodes_from(order)
    for edge in graph.edges:
        if edge.source not in order or edge.target not in order or edge.source == edge.target:
            continue
        if edge.source in dag and nx.has_path(dag, edge.target, edge.source):
            continue
        dag.add_edge(edge.source, edge.target)
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
