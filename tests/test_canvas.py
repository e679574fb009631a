"""The graph <-> streamlit-flow adapter: what each node and edge shows, and what edits mean."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from pages.canvas import (
    apply_canvas,
    graph_to_flow,
    key_params_text,
    looks_different,
    sent_in,
)
from builder.graph import Graph, load_graph, parse_graph
from builder.layout import with_layout
from compiler.analysis import analyse

TEMPLATES = Path(__file__).resolve().parent.parent / "builder" / "templates"


def lenet() -> Graph:
    return with_layout(load_graph((TEMPLATES / "lenet5.json").read_text()))


def browser_value(graph: Graph, selected: str | None = None) -> dict:
    """What the canvas sends back when it shows this graph unchanged (an echo)."""
    flow = graph_to_flow(graph, analyse(graph), selected, 1)
    value = copy.deepcopy(flow.asdict())
    return {"nodes": value["nodes"], "edges": value["edges"], "selectedId": None, "timestamp": 2}


def node_content(graph: Graph, node_id: str) -> str:
    flow = graph_to_flow(graph, analyse(graph), None, 1)
    return next(n for n in flow.nodes if n.id == node_id).data["content"]


# -- graph -> canvas --------------------------------------------------------------------------


def test_each_node_shows_type_key_params_shape_and_torch_parameter_count():
    content = node_content(lenet(), "c1")
    torch_count = sum(p.numel() for p in nn.Conv2d(1, 6, 5, padding=2).parameters())
    assert "Conv2d" in content and "out 6 · k 5 · pad 2" in content
    assert "[6, 28, 28]" in content and f"{torch_count:,} params" in content


def test_edges_are_labelled_with_the_shape_they_carry_and_can_be_deleted():
    graph = lenet()
    flow = graph_to_flow(graph, analyse(graph), None, 1)
    labels = {(e.source, e.target): e.label for e in flow.edges}
    assert labels[("s4", "flatten")] == "[16, 5, 5]"
    assert labels[("flatten", "f5")] == "[400]"
    assert all(e.deletable and e.marker_end.get("type") == "arrowclosed" for e in flow.edges)


def test_nodes_are_connectable_deletable_and_never_share_a_style_dict():
    graph = lenet()
    flow = graph_to_flow(graph, analyse(graph), "c1", 1)
    assert all(n.connectable and n.deletable for n in flow.nodes)
    assert len({id(n.style) for n in flow.nodes}) == len(flow.nodes)
    assert all(n.selected is False for n in flow.nodes)  # the style shows it; see the next test
    kinds = {n.id: n.type for n in flow.nodes}
    assert kinds["image"] == "input" and kinds["out"] == "output" and kinds["c1"] == "default"


def test_no_node_is_selectable_for_the_backspace_key_which_the_component_never_reports():
    """React Flow deletes selected, deletable elements on Backspace; 1.6.1 sends no value for it."""
    graph = lenet()
    flow = graph_to_flow(graph, analyse(graph), "c1", 1)
    sent = [n.asdict() for n in flow.nodes]
    assert sent and all(n["selectable"] is False and n["selected"] is False for n in sent)
    assert all(e.deletable and not e.focusable for e in flow.edges)  # the right-click menu deletes


def test_every_node_carries_the_timestamp_of_the_state_it_was_sent_in():
    graph = lenet()
    value = {"nodes": [n.asdict() for n in graph_to_flow(graph, analyse(graph), None, 41).nodes]}
    assert sent_in(value) == 41
    value["nodes"][0]["data"]["sent_in"] = 40
    assert sent_in(value) is None
    assert sent_in({"nodes": [{"id": "a", "data": {"content": ""}}]}) is None


def test_a_node_cut_off_from_the_output_says_so_in_one_short_line():
    graph = lenet()
    graph = graph.model_copy(
        update={"edges": [e for e in graph.edges if (e.source, e.target) != ("f5", "relu5")]}
    )
    analysis = analyse(graph)
    assert any("does not lead to the Output" in d.message for d in analysis.warnings)
    flow = graph_to_flow(graph, analysis, None, 1)
    f5 = next(n for n in flow.nodes if n.id == "f5")
    assert ">not connected to the Output</div>" in f5.data["content"]
    assert (
        "does not lead" not in f5.data["content"]
        and "connect it or delete" not in f5.data["content"]
    )


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
    flow = graph_to_flow(graph, analyse(graph), None, 1)
    c3 = next(n for n in flow.nodes if n.id == "c3")
    assert "#dc2626" in c3.style["border"]
    assert "kernel 15x15 (dilated 15x15) exceeds padded input 14x14" in c3.data["content"]
    ok = next(n for n in flow.nodes if n.id == "c1")
    assert "#dc2626" not in ok.style["border"]


def test_user_text_is_escaped_on_the_canvas():
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [
                {"id": "<img src=x onerror=alert(1)>", "type": "Input", "params": {"shape": [3]}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [{"source": "<img src=x onerror=alert(1)>", "target": "out"}],
        }
    )
    content = node_content(graph, "<img src=x onerror=alert(1)>")
    assert "<img" not in content and "&lt;img src=x onerror=alert(1)&gt;" in content


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


# -- canvas -> graph --------------------------------------------------------------------------


def test_an_echo_of_the_sent_state_changes_nothing():
    graph = lenet()
    change = apply_canvas(graph, browser_value(graph))
    assert change.kind == "none" and change.graph == graph


def test_a_dragged_node_is_a_move_not_an_edit():
    graph = lenet()
    value = browser_value(graph)
    value["nodes"][3]["position"] = {"x": 512.345, "y": 77.0}
    change = apply_canvas(graph, value)
    assert change.kind == "moved"
    assert change.graph.node(value["nodes"][3]["id"]).position == (512.3, 77.0)


def test_an_edge_drawn_in_the_browser_is_added_with_the_next_port():
    graph = lenet()
    value = browser_value(graph)
    value["edges"].append({"id": "st-flow-edge_image-s2", "source": "image", "target": "s2"})
    change = apply_canvas(graph, value)
    assert change.kind == "edited"
    new = [e for e in change.graph.edges if (e.source, e.target) == ("image", "s2")]
    assert len(new) == 1 and new[0].port == 1
    assert any("takes exactly 1 input" in d.message for d in analyse(change.graph).errors)


def test_an_edge_deleted_in_the_browser_is_removed():
    graph = lenet()
    value = browser_value(graph)
    value["edges"] = [e for e in value["edges"] if (e["source"], e["target"]) != ("f5", "relu5")]
    change = apply_canvas(graph, value)
    assert change.kind == "edited"
    assert ("f5", "relu5") not in {(e.source, e.target) for e in change.graph.edges}


def test_a_node_deleted_in_the_browser_is_deleted_and_bridged():
    graph = lenet()
    value = browser_value(graph)
    value["nodes"] = [n for n in value["nodes"] if n["id"] != "relu1"]
    value["edges"] = [e for e in value["edges"] if "relu1" not in (e["source"], e["target"])]
    change = apply_canvas(graph, value)
    assert change.kind == "edited"
    assert "relu1" not in {n.id for n in change.graph.nodes}
    assert ("c1", "s2") in {(e.source, e.target) for e in change.graph.edges}
    assert analyse(change.graph).ok


def test_the_browser_cannot_change_types_or_params():
    graph = lenet()
    value = browser_value(graph)
    value["nodes"][1]["type"] = "output"
    value["nodes"][1]["data"] = {"content": "hacked", "params": {"out_channels": 999}}
    assert apply_canvas(graph, value).graph == graph


def test_unknown_ids_and_self_loops_from_the_browser_are_ignored():
    graph = lenet()
    value = browser_value(graph)
    value["nodes"].append({"id": "ghost", "position": {"x": 0, "y": 0}, "data": {}})
    value["edges"] += [
        {"id": "x", "source": "ghost", "target": "c1"},
        {"id": "y", "source": "c1", "target": "c1"},
    ]
    assert apply_canvas(graph, value).kind == "none"


def test_malformed_values_change_nothing():
    graph = lenet()
    for value in ({}, {"nodes": None, "edges": None}, {"nodes": [1, "x"], "edges": [None]}):
        change = apply_canvas(graph, value)
        assert change.kind == "none" and change.graph == graph


def test_a_clicked_node_becomes_the_selection():
    graph = lenet()
    value = browser_value(graph)
    value["selectedId"] = "f6"
    assert apply_canvas(graph, value).selected == "f6"
    assert apply_canvas(graph, browser_value(graph, selected="c3")).selected is None  # an echo
    value["selectedId"] = "3:relu1->s2"  # an edge clicked: no node selection
    assert apply_canvas(graph, value).selected is None


def test_the_canvas_is_sent_again_when_the_browser_shows_something_else():
    graph = lenet()
    flow = graph_to_flow(graph, analyse(graph), None, 1)
    same = browser_value(graph)
    assert not looks_different(flow, same)
    edited = copy.deepcopy(same)
    edited["nodes"][0]["data"]["content"] = "typed in the Edit Node dialog"
    assert looks_different(flow, edited)
    looped = copy.deepcopy(same)
    looped["edges"].append({"id": "y", "source": "c1", "target": "c1"})
    assert looks_different(flow, looped)


def test_a_clicked_edge_is_named_by_its_index_and_shown_selected():
    from pages.canvas import edge_index

    graph = lenet()
    flow = graph_to_flow(graph, analyse(graph), None, 1, selected_edge=2)
    assert edge_index(graph, flow.edges[2].id) == 2
    assert flow.edges[2].style["strokeWidth"] > flow.edges[1].style["strokeWidth"]
    assert edge_index(graph, "9999:a->b") is None and edge_index(graph, None) is None
