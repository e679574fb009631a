"""The graph <-> canvas adapter: what each node and edge shows, and what canvas events mean."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from builder.graph import MAX_EDGES, Graph, load_graph, parse_graph
from builder.layout import with_layout
from compiler.analysis import analyse
from pages.parts.canvas import (
    MAX_EVENTS,
    apply_event,
    canvas_state,
    edge_id,
    edge_index,
    key_params_text,
    new_events,
)
from pages.parts.flow_canvas import BUILD
from tests.modelkit import chain_graph

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "builder" / "templates"
FRONTEND = ROOT / "pages" / "flow_canvas" / "frontend" / "src"


def lenet() -> Graph:
    return with_layout(load_graph((TEMPLATES / "lenet5.json").read_text()))


def face(graph: Graph, node_id: str, selected: str | None = None) -> dict:
    state = canvas_state(graph, analyse(graph), selected)
    return next(n for n in state["nodes"] if n["id"] == node_id)


# -- graph -> canvas --------------------------------------------------------------------------


def test_each_node_shows_type_key_params_shape_and_torch_parameter_count():
    c1 = face(lenet(), "c1")
    torch_count = sum(p.numel() for p in nn.Conv2d(1, 6, 5, padding=2).parameters())
    assert c1["type"] == "Conv2d" and c1["params"] == "out 6 · k 5 · pad 2"
    assert c1["shape"] == "[6, 28, 28]" and c1["count"] == f"{torch_count:,} params"
    assert c1["status"] == "ok" and c1["note"] == "" and c1["kind"] == "layer"


def test_input_and_output_are_drawn_without_the_handle_they_cannot_use():
    graph = lenet()
    kinds = {n["id"]: n["kind"] for n in canvas_state(graph, analyse(graph), None)["nodes"]}
    assert kinds["image"] == "input" and kinds["out"] == "output" and kinds["c1"] == "layer"


def test_edges_are_labelled_with_the_shape_they_carry():
    graph = lenet()
    state = canvas_state(graph, analyse(graph), None)
    labels = {(e["source"], e["target"]): e["label"] for e in state["edges"]}
    assert labels[("s4", "flatten")] == "[16, 5, 5]"
    assert labels[("flatten", "f5")] == "[400]"


def test_the_selection_is_part_of_the_state():
    graph = lenet()
    state = canvas_state(graph, analyse(graph), "c3", selected_edge=2)
    assert [n["id"] for n in state["nodes"] if n["selected"]] == ["c3"]
    assert [i for i, e in enumerate(state["edges"]) if e["selected"]] == [2]


def test_a_node_cut_off_from_the_output_says_so_in_one_short_line():
    graph = lenet()
    graph = graph.model_copy(
        update={"edges": [e for e in graph.edges if (e.source, e.target) != ("f5", "relu5")]}
    )
    analysis = analyse(graph)
    assert any("does not lead to the Output" in d.message for d in analysis.warnings)
    f5 = face(graph, "f5")
    assert f5["note"] == "not connected to the Output" and f5["status"] == "warning"


def test_an_invalid_node_is_red_and_shows_the_compiler_message():
    graph = lenet()
    graph = graph.model_copy(
        update={
            "nodes": [
                (
                    n.model_copy(update={"params": {"out_channels": 16, "kernel_size": 15}})
                    if n.id == "c3"
                    else n
                )
                for n in graph.nodes
            ]
        }
    )
    c3 = face(graph, "c3")
    assert c3["status"] == "error" and c3["note_severity"] == "error"
    assert "kernel 15x15 (dilated 15x15) exceeds padded input 14x14" in c3["note"]
    assert face(graph, "c1")["status"] == "ok"
    assert face(graph, "f5")["shape"] == ""  # downstream of the error: no shape
    assert "earlier layer" in face(graph, "f5")["note"]


def test_user_text_reaches_the_canvas_as_text_never_as_markup():
    hostile = "<img src=x onerror=alert(1)>"
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [
                {"id": hostile, "type": "Input", "params": {"shape": [3]}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [{"source": hostile, "target": "out"}],
        }
    )
    assert face(graph, hostile)["name"] == hostile  # a text field, rendered by React as text
    source = "\n".join(p.read_text() for p in FRONTEND.glob("*.jsx"))
    assert "dangerouslySetInnerHTML" not in source and "innerHTML" not in source


def test_the_state_of_a_big_graph_stays_small():
    """streamlit-flow's state was about 1.1 kB a node and 0.5 kB an edge (inline styles, HTML)."""
    graph = with_layout(chain_graph([64], *[("Linear", {"out_features": 64})] * 600))
    size = len(json.dumps(canvas_state(graph, analyse(graph), None)))
    assert size / len(graph.nodes) < 400


def test_key_params_leave_out_defaults_and_show_flags_by_name():
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [
                {"id": "a", "type": "LSTM", "params": {"hidden_size": 32, "bidirectional": True}},
                {
                    "id": "b",
                    "type": "Conv2d",
                    "params": {"out_channels": 8, "kernel_size": [3, 5], "stride": 1},
                },
                {"id": "c", "type": "Permute", "params": {"dims": [0, 2, 1]}},
            ],
        }
    )
    assert key_params_text(graph.node("a")) == "hidden 32 · bidirectional"
    assert key_params_text(graph.node("b")) == "out 8 · k 3×5"
    assert key_params_text(graph.node("c")) == "dims [0, 2, 1]"


def test_the_built_component_is_committed_beside_its_source():
    html = (BUILD / "index.html").read_text()
    assert '<div id="root">' in html
    scripts = list((BUILD / "assets").glob("*.js"))
    assert len(scripts) == 1 and "streamlit:componentReady" in scripts[0].read_text()


# -- canvas -> graph --------------------------------------------------------------------------


def test_a_dragged_node_is_a_move_not_an_edit():
    graph = lenet()
    change = apply_event(graph, {"kind": "move", "positions": {"c3": [512.345, 77.0]}})
    assert change.kind == "moved"
    assert change.graph.node("c3").position == (512.3, 77.0)


def test_a_drawn_edge_is_added_with_the_next_port():
    graph = lenet()
    change = apply_event(graph, {"kind": "connect", "source": "image", "target": "s2"})
    assert change.kind == "edited"
    new = [e for e in change.graph.edges if (e.source, e.target) == ("image", "s2")]
    assert len(new) == 1 and new[0].port == 1
    assert any("takes exactly 1 input" in d.message for d in analyse(change.graph).errors)


def test_a_deleted_edge_is_removed_by_its_id():
    graph = lenet()
    index = next(i for i, e in enumerate(graph.edges) if (e.source, e.target) == ("f5", "relu5"))
    change = apply_event(graph, {"kind": "delete_edge", "edge": edge_id(index, "f5", "relu5")})
    assert change.kind == "edited" and change.deselect
    assert ("f5", "relu5") not in {(e.source, e.target) for e in change.graph.edges}
    stale = apply_event(
        change.graph, {"kind": "delete_edge", "edge": edge_id(index, "f5", "relu5")}
    )
    assert stale.kind == "none"  # the id names an edge that is gone: nothing else is deleted


def test_a_deleted_node_is_deleted_and_bridged():
    graph = lenet()
    change = apply_event(graph, {"kind": "delete_nodes", "nodes": ["relu1"]})
    assert change.kind == "edited"
    assert "relu1" not in {n.id for n in change.graph.nodes}
    assert ("c1", "s2") in {(e.source, e.target) for e in change.graph.edges}
    assert analyse(change.graph).ok


def test_the_last_node_can_be_deleted():
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [{"id": "x", "type": "Input", "params": {"shape": [3]}}],
        }
    )
    change = apply_event(graph, {"kind": "delete_nodes", "nodes": ["x"]})
    assert change.kind == "edited" and change.graph.nodes == []


def test_events_cannot_change_types_or_params():
    graph = lenet()
    for event in (
        {"kind": "move", "positions": {"c1": [1, 2]}, "type": "Output", "params": {"x": 1}},
        {"kind": "retype", "node": "c1", "type": "Output"},
        {"kind": "select", "node": "c1", "params": {"out_channels": 999}},
    ):
        changed = apply_event(graph, event).graph
        assert [(n.id, n.type, n.params) for n in changed.nodes] == [
            (n.id, n.type, n.params) for n in graph.nodes
        ]


def test_unknown_ids_self_loops_and_bad_numbers_change_nothing():
    graph = lenet()
    for event in (
        {"kind": "connect", "source": "ghost", "target": "c1"},
        {"kind": "connect", "source": "c1", "target": "c1"},
        {"kind": "delete_nodes", "nodes": ["ghost"]},
        {"kind": "delete_nodes", "nodes": "c1"},
        {"kind": "delete_edge", "edge": "9999:a->b"},
        {"kind": "move", "positions": {"ghost": [1, 2]}},
        {"kind": "move", "positions": {"c1": [float("nan"), 2]}},
        {"kind": "move", "positions": {"c1": [1e300, 2]}},
        {"kind": "move", "positions": {"c1": ["1", 2]}},
        {"kind": "move", "positions": [1, 2]},
        {},
    ):
        change = apply_event(graph, event)
        assert change.kind == "none" and change.graph == graph, event


def test_a_clicked_node_or_edge_becomes_the_selection():
    graph = lenet()
    assert apply_event(graph, {"kind": "select", "node": "f6"}).selected == "f6"
    assert apply_event(graph, {"kind": "select", "node": "ghost"}).selected is None
    assert (
        apply_event(graph, {"kind": "select_edge", "edge": edge_id(2, *_ends(graph, 2))}).edge == 2
    )
    assert apply_event(graph, {"kind": "deselect"}).deselect


def _ends(graph: Graph, index: int) -> tuple[str, str]:
    edge = graph.edges[index]
    return edge.source, edge.target


def test_edge_ids_name_an_edge_by_index_and_ends():
    graph = lenet()
    assert edge_index(graph, edge_id(2, *_ends(graph, 2))) == 2
    assert edge_index(graph, edge_id(2, "image", "out")) is None  # the edge at 2 is another
    assert edge_index(graph, "9999:a->b") is None and edge_index(graph, None) is None


def test_only_events_not_applied_yet_are_taken_in_order():
    value = {
        "events": [
            {"seq": 7, "kind": "deselect"},
            {"seq": 5, "kind": "select", "node": "c1"},
            {"seq": 9, "kind": "select", "node": "c3"},
            {"seq": True, "kind": "deselect"},
            {"kind": "deselect"},
            "junk",
        ]
    }
    assert [e["seq"] for e in new_events(value, 5)] == [7, 9]
    assert new_events(value, 9) == []
    for malformed in (None, {}, {"events": "x"}, [1, 2], "events"):
        assert new_events(malformed, 0) == []
    flood = {"events": [{"seq": i, "kind": "deselect"} for i in range(1, 10_000)]}
    assert len(new_events(flood, 0)) == MAX_EVENTS


def test_a_connection_past_the_edge_cap_is_refused_with_a_reason():
    """A file with more edges than the format allows could not be opened again: the canvas
    cannot make one (a hostile browser could send connections without end)."""
    graph = lenet()
    first = graph.edges[0]
    full = graph.model_copy(update={"edges": [first] * MAX_EDGES})
    change = apply_event(full, {"kind": "connect", "source": "image", "target": "s2"})
    assert change.kind == "none" and len(change.graph.edges) == MAX_EDGES
    assert change.refused is not None and f"{MAX_EDGES:,} edges" in change.refused.render("en")
    assert "条连线" in change.refused.render("zh")
    assert (
        apply_event(graph, {"kind": "connect", "source": "image", "target": "s2"}).refused is None
    )
