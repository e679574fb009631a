"""Auto-layout: every node placed, edges pointing down, no overlaps, skips drawn beside blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pages.parts.canvas import NODE_WIDTH
from builder.graph import Graph, load_graph, parse_graph
from builder.layout import COLUMN_WIDTH, ROW_HEIGHT, auto_layout, needs_layout, with_layout

TEMPLATES = sorted(
    (Path(__file__).resolve().parent.parent / "builder" / "templates").glob("*.json")
)


def template(name: str) -> Graph:
    return load_graph(next(p for p in TEMPLATES if p.stem == name).read_text())


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_every_template_gets_a_position_for_every_node_without_overlaps(path):
    graph = load_graph(path.read_text())
    positions = auto_layout(graph)
    assert set(positions) == {n.id for n in graph.nodes}
    assert len(set(positions.values())) == len(positions)
    assert NODE_WIDTH < COLUMN_WIDTH  # nodes in one row never touch


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_every_edge_points_down_at_least_one_row(path):
    graph = load_graph(path.read_text())
    positions = auto_layout(graph)
    for edge in graph.edges:
        assert positions[edge.target][1] - positions[edge.source][1] >= ROW_HEIGHT


def test_a_chain_is_one_straight_column_from_the_origin():
    graph = template("lenet5")
    positions = auto_layout(graph, origin=(100.0, 20.0))
    assert {x for x, _ in positions.values()} == {100.0}
    assert [positions[n.id][1] for n in graph.nodes] == [
        20.0 + i * ROW_HEIGHT for i in range(len(graph.nodes))
    ]


def test_a_residual_skip_runs_beside_the_block_it_skips():
    graph = template("resnet")
    positions = auto_layout(graph)
    skip_x = positions["stem_relu"][0]
    assert positions["b1_add"][0] == skip_x
    start, end = positions["stem_relu"][1], positions["b1_add"][1]
    between = [n for n, (x, y) in positions.items() if start < y < end]
    assert between
    for node_id in between:  # the straight skip edge misses every node of the block
        assert abs(positions[node_id][0] - skip_x) >= NODE_WIDTH / 2


def test_a_cycle_is_laid_out_instead_of_failing():
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [{"id": i, "type": "ReLU"} for i in "abc"],
            "edges": [{"source": s, "target": t} for s, t in ("ab", "bc", "ca", "aa")],
        }
    )
    assert set(auto_layout(graph)) == {"a", "b", "c"}


def test_with_layout_fills_positions_and_needs_layout_notices_missing_ones():
    graph = template("lstm_classifier")
    assert needs_layout(graph)
    placed = with_layout(graph)
    assert not needs_layout(placed)
    assert [n.id for n in placed.nodes] == [n.id for n in graph.nodes]
    assert placed.edges == graph.edges


def test_an_empty_graph_has_an_empty_layout():
    assert auto_layout(parse_graph({"format": "netbuilder.graph/1", "nodes": []})) == {}
