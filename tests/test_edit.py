"""Graph edits behind the Build page: adding, deleting, connecting, params, fixes, undo/redo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from builder import edit
from builder.catalog import CATALOG
from builder.graph import Graph, GraphFormatError, dump_graph, load_graph, parse_graph, typed_params
from compiler.analysis import analyse

TEMPLATES = Path(__file__).resolve().parent.parent / "builder" / "templates"


def chain(*layers: tuple[str, dict], shape: list[int] | None = None) -> Graph:
    """Input -> layers... -> Output, ids n1, n2, ..."""
    nodes = [{"id": "in", "type": "Input", "params": {"shape": shape or [1, 8, 8]}}]
    nodes += [{"id": f"n{i}", "type": t, "params": p} for i, (t, p) in enumerate(layers, 1)]
    nodes.append({"id": "out", "type": "Output"})
    ids = [n["id"] for n in nodes]
    edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:])]
    return parse_graph({"format": "netbuilder.graph/1", "nodes": nodes, "edges": edges})


def pairs(graph: Graph) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in graph.edges}


def torch_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- undo / redo ------------------------------------------------------------------------------


def test_undo_and_redo_walk_the_history_both_ways():
    a, b, c = (chain(("ReLU", {})) for _ in range(3))
    history = edit.record(edit.record(edit.History(a), b), c)
    assert edit.undo(history).present is b
    assert edit.undo(edit.undo(history)).present is a
    assert edit.redo(edit.undo(edit.undo(history))).present is b
    assert not edit.undo(edit.undo(history)).can_undo


def test_a_new_edit_after_undo_drops_the_redo_branch():
    a, b, c = (chain(("ReLU", {})) for _ in range(3))
    history = edit.record(edit.undo(edit.record(edit.History(a), b)), c)
    assert history.present is c and not history.can_redo and history.past == (a,)


def test_replace_changes_the_present_without_an_undo_step():
    a, b, moved = (chain(("ReLU", {})) for _ in range(3))
    history = edit.replace(edit.record(edit.History(a), b), moved)
    assert history.present is moved and history.past == (a,)


def test_history_keeps_at_most_the_limit():
    history = edit.History(chain())
    for _ in range(edit.HISTORY_LIMIT + 10):
        history = edit.record(history, chain())
    assert len(history.past) == edit.HISTORY_LIMIT


def test_undo_and_redo_with_nothing_to_do_change_nothing():
    history = edit.History(chain())
    assert edit.undo(history) is history and edit.redo(history) is history


# -- adding layers ----------------------------------------------------------------------------


def test_adding_after_a_node_with_one_output_splices_it_into_that_edge():
    graph = chain(("Conv2d", {"out_channels": 4, "kernel_size": 3}), ("ReLU", {}))
    added, node_id = edit.add_node_after(graph, "BatchNorm2d", "n1")
    assert {("n1", node_id), (node_id, "n2")} <= pairs(added)
    assert ("n1", "n2") not in pairs(added)
    assert analyse(added).ok


def test_adding_with_nothing_selected_goes_just_before_the_output():
    graph = chain(("Flatten", {}))
    added, node_id = edit.add_node_after(graph, "Linear", None)
    assert {("n1", node_id), (node_id, "out")} <= pairs(added)


def test_adding_after_the_output_also_goes_before_it():
    added, node_id = edit.add_node_after(chain(("Flatten", {})), "Linear", "out")
    assert (node_id, "out") in pairs(added)


def test_adding_after_a_branch_point_starts_a_new_branch():
    graph = load_graph((TEMPLATES / "resnet.json").read_text())
    added, node_id = edit.add_node_after(graph, "ReLU", "stem_relu")
    assert ("stem_relu", node_id) in pairs(added)
    assert {("stem_relu", "b1_conv1"), ("stem_relu", "b1_add")} <= pairs(added)
    assert not [e for e in added.edges if e.source == node_id]


def test_an_added_input_is_left_unconnected():
    added, node_id = edit.add_node_after(chain(("ReLU", {})), "Input", "n1")
    assert not [e for e in added.edges if node_id in (e.source, e.target)]


def test_new_ids_are_unique_and_readable():
    graph = chain(("ReLU", {}))
    graph, first = edit.add_node_after(graph, "MaxPool2d", "n1")
    graph, second = edit.add_node_after(graph, "MaxPool2d", first)
    assert (first, second) == ("max_pool2d_1", "max_pool2d_2")


def test_splicing_moves_the_layers_below_down_one_row():
    graph = chain(("ReLU", {}))
    graph = graph.model_copy(
        update={
            "nodes": [
                n.model_copy(update={"position": (0.0, 100.0 * i)})
                for i, n in enumerate(graph.nodes)
            ]
        }
    )
    added, node_id = edit.add_node_after(graph, "Identity", "in")
    assert added.node(node_id).position == (0.0, edit.ROW_HEIGHT)
    assert added.node("n1").position == (0.0, 100.0 + edit.ROW_HEIGHT)
    assert added.node("out").position == (0.0, 200.0 + edit.ROW_HEIGHT)


@pytest.mark.parametrize("layer_type", sorted(CATALOG))
def test_every_layer_type_starts_with_valid_params(layer_type):
    node = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "nodes": [
                {"id": "x", "type": layer_type, "params": edit.starter_params(layer_type, (8, 16))}
            ],
        }
    ).nodes[0]
    typed_params(node)


def test_a_linear_added_after_flatten_counts_what_torch_counts():
    graph = chain(("Conv2d", {"out_channels": 4, "kernel_size": 3}), ("Flatten", {}))
    shapes = {k: v.shape for k, v in analyse(graph).infos.items()}
    added, node_id = edit.add_node_after(graph, "Linear", "n2", shapes)
    analysis = analyse(added)
    assert analysis.ok
    assert analysis.infos[node_id].params == torch_params(nn.Linear(4 * 6 * 6, 64))


def test_attention_heads_are_chosen_to_divide_the_width():
    graph = chain(("Linear", {"out_features": 12}), shape=[5, 3])
    shapes = {k: v.shape for k, v in analyse(graph).infos.items()}
    added, node_id = edit.add_node_after(graph, "MultiheadAttention", "n1", shapes)
    analysis = analyse(added)
    assert analysis.ok
    heads = added.node(node_id).params["num_heads"]
    torch_layer = nn.MultiheadAttention(12, heads, batch_first=True)
    assert analysis.infos[node_id].params == torch_params(torch_layer)


def test_an_unknown_layer_type_is_refused():
    with pytest.raises(edit.EditError, match="unknown layer type"):
        edit.add_node_after(chain(), "Conv9d", None)


# -- deleting and connecting ------------------------------------------------------------------


def test_deleting_a_layer_in_a_chain_bridges_the_gap():
    graph = chain(
        ("Conv2d", {"out_channels": 4, "kernel_size": 3}),
        ("ReLU", {}),
        ("MaxPool2d", {"kernel_size": 2}),
    )
    deleted = edit.delete_nodes(graph, {"n2"})
    assert "n2" not in {n.id for n in deleted.nodes}
    assert ("n1", "n3") in pairs(deleted)
    assert analyse(deleted).ok


def test_deleting_a_merge_removes_its_edges_without_bridging():
    graph = load_graph((TEMPLATES / "resnet.json").read_text())
    deleted = edit.delete_nodes(graph, {"b1_add"})
    assert not [e for e in deleted.edges if "b1_add" in (e.source, e.target)]
    assert ("b1_bn2", "b1_relu") not in pairs(deleted)


def test_connecting_gives_each_new_input_the_next_port():
    graph = chain(("ReLU", {}), ("Concat", {"dim": 1}))
    connected = edit.connect(graph, "in", "n2")
    ports = {(e.source, e.port) for e in connected.edges if e.target == "n2"}
    assert ports == {("n1", 0), ("in", 1)}
    assert analyse(connected).infos["n2"].shape == (2, 8, 8)


def test_connecting_an_unknown_node_is_refused():
    with pytest.raises(edit.EditError, match="no node"):
        edit.connect(chain(), "in", "ghost")


def test_connecting_a_node_to_itself_is_refused():
    with pytest.raises(edit.EditError, match="itself"):
        edit.connect(chain(("ReLU", {})), "n1", "n1")


def test_edits_never_change_the_graph_they_were_given():
    graph = chain(("Conv2d", {"out_channels": 4, "kernel_size": 3}), ("ReLU", {}))
    before = dump_graph(graph)
    edit.add_node_after(graph, "Dropout", "n1")
    edit.delete_nodes(graph, {"n2"})
    edit.set_params(graph, "n1", {"out_channels": 9})
    edit.connect(graph, "in", "n2")
    assert dump_graph(graph) == before


# -- params -----------------------------------------------------------------------------------


def test_set_params_merges_and_unset_restores_the_default():
    graph = chain(("Conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}))
    changed = edit.set_params(graph, "n1", {"out_channels": 8, "padding": edit.UNSET})
    assert changed.node("n1").params == {"out_channels": 8, "kernel_size": 3}


def test_set_params_keeps_an_explicit_none():
    graph = chain(("BatchNorm2d", {}))
    assert edit.set_params(graph, "n1", {"momentum": None}).node("n1").params == {"momentum": None}


def test_param_fields_follow_the_catalog_types():
    fields = {f.name: f for f in edit.param_fields("Conv2d")}
    assert fields["out_channels"].kind == "int" and fields["out_channels"].minimum == 1
    assert fields["out_channels"].required
    assert fields["bias"].kind == "bool" and fields["bias"].default is True
    assert fields["padding"].kind == "text"
    gelu = {f.name: f for f in edit.param_fields("GELU")}
    assert gelu["approximate"].kind == "choice" and gelu["approximate"].choices == ("none", "tanh")
    dropout = {f.name: f for f in edit.param_fields("Dropout")}
    assert (dropout["p"].kind, dropout["p"].minimum, dropout["p"].maximum) == ("float", 0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("3, 5", [3, 5]),
        ("[3, 5]", [3, 5]),
        ("same", "same"),
        ("'same'", "same"),
        ("none", None),
        ("", edit.UNSET),
        ("0.5", 0.5),
    ],
)
def test_typed_text_becomes_a_value(text, value):
    assert edit.parse_text_value(text) == value


@pytest.mark.parametrize("value", [3, [3, 5], "same", None])
def test_value_text_reads_back_as_the_same_value(value):
    assert edit.parse_text_value(edit.value_text(value)) == value


def test_check_param_explains_a_bad_value_and_accepts_a_good_one():
    params = {"out_channels": 4, "kernel_size": 3}
    assert str(edit.check_param("Conv2d", params, "kernel_size", "abc")) == (
        "kernel_size must be a positive int or list of 2, got 'abc'"
    )
    assert edit.check_param("Conv2d", params, "kernel_size", [3, 5]) is None
    assert "out_channels is required" in str(
        edit.check_param("Conv2d", params, "out_channels", edit.UNSET)
    )


# -- compiler fixes ---------------------------------------------------------------------------


def test_the_flatten_fix_gives_the_head_torch_expects():
    graph = chain(
        ("Conv2d", {"out_channels": 4, "kernel_size": 3}), ("Linear", {"out_features": 10})
    )
    advice = [d for d in analyse(graph).diagnostics if d.fix]
    assert advice and "insert" in advice[0].fix
    fixed = analyse(edit.apply_fix(graph, advice[0].fix))
    assert fixed.ok and not fixed.warnings
    reference = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    assert fixed.total_params == torch_params(reference)
    assert fixed.infos["out"].shape == tuple(reference(torch.zeros(1, 1, 8, 8)).shape[1:])


def test_the_same_padding_fix_keeps_the_size_as_torch_does():
    graph = chain(("Conv2d", {"out_channels": 4, "kernel_size": 11}))
    error = next(d for d in analyse(graph).errors if d.fix)
    fixed = analyse(edit.apply_fix(graph, error.fix))
    assert fixed.ok
    out = nn.Conv2d(1, 4, 11, padding="same")(torch.zeros(1, 1, 8, 8))
    assert fixed.infos["n1"].shape == tuple(out.shape[1:])


def test_the_projection_fix_repairs_a_widened_residual_block():
    graph = load_graph((TEMPLATES / "resnet.json").read_text())
    widened = edit.set_params(graph, "b1_conv2", {"out_channels": 32})
    widened = edit.set_params(widened, "b2_conv1", {"out_channels": 32})
    error = next(d for d in analyse(widened).errors if d.node == "b1_add")
    fixed = analyse(edit.apply_fix(widened, error.fix))
    assert fixed.ok, [d.message for d in fixed.errors]


def test_a_fix_for_an_edge_that_is_gone_is_refused():
    fix = {"insert": {"type": "Flatten", "params": {}}, "between": ["in", "ghost"]}
    with pytest.raises(edit.EditError, match="no edge"):
        edit.apply_fix(chain(), fix)


# -- any sequence of edits leaves a graph that analyses, saves and opens again -----------------

EDITS = st.lists(
    st.tuples(
        st.sampled_from(["add", "delete", "connect", "fix"]),
        st.sampled_from(sorted(CATALOG)),
        st.integers(0, 50),
        st.integers(0, 50),
    ),
    max_size=12,
)


@given(EDITS)
def test_any_edit_sequence_keeps_a_graph_that_analyses_and_round_trips(steps):
    graph = load_graph((TEMPLATES / "lenet5.json").read_text())
    for action, layer_type, a, b in steps:
        ids = [n.id for n in graph.nodes]
        if action == "add":
            graph, _ = edit.add_node_after(graph, layer_type, ids[a % len(ids)] if ids else None)
        elif action == "delete" and ids:
            graph = edit.delete_nodes(graph, {ids[a % len(ids)]})
        elif action == "connect" and ids and ids[a % len(ids)] != ids[b % len(ids)]:
            graph = edit.connect(graph, ids[a % len(ids)], ids[b % len(ids)])
        elif action == "fix":
            fixes = [d.fix for d in analyse(graph).diagnostics if d.fix]
            if fixes:
                graph = edit.apply_fix(graph, fixes[a % len(fixes)])
    ids = {n.id for n in graph.nodes}
    assert all(e.source in ids and e.target in ids for e in graph.edges)
    analyse(graph)  # the Build page analyses after every edit: it must never raise
    try:
        reopened = load_graph(dump_graph(graph))
    except GraphFormatError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"edited graph no longer opens: {exc}")
    assert reopened == graph


def test_a_blank_graph_is_an_input_wired_to_the_output_and_valid():
    from compiler.analysis import analyse

    graph = edit.blank_graph()
    assert [n.type for n in graph.nodes] == ["Input", "Output"]
    assert analyse(graph).ok


def test_deleting_a_layer_from_a_chain_moves_the_rest_up_into_the_gap():
    graph = edit.blank_graph()
    graph, flat = edit.add_node_after(graph, "Flatten", None)
    graph, relu = edit.add_node_after(graph, "ReLU", flat)
    output_y = graph.node("output").position[1]
    after = edit.delete_nodes(graph, {flat})
    assert after.node(relu).position == graph.node(flat).position
    assert after.node("output").position[1] == output_y - edit.ROW_HEIGHT


def test_a_linear_feeding_the_output_gets_one_output_per_class_of_the_matching_dataset():
    graph = edit.blank_graph()
    graph, flat = edit.add_node_after(graph, "Flatten", None)
    graph, linear = edit.add_node_after(graph, "Linear", flat)
    fitted, reason = edit.fit_to_output(graph, linear)
    assert fitted.node(linear).params["out_features"] == 10
    assert reason is not None and "10 classes" in str(reason)
    graph, hidden = edit.add_node_after(fitted, "Linear", flat)  # feeds the other Linear
    assert edit.fit_to_output(graph, hidden) == (graph, None)


def test_the_known_inputs_are_the_builtin_datasets_shapes_and_classes():
    from runtime.datasets import load_dataset

    for shape, (name, classes) in edit.KNOWN_INPUTS.items():
        dataset = load_dataset(name)
        assert (dataset.sample_shape, dataset.num_classes) == (shape, classes)


@pytest.mark.parametrize("typed", ["1000000", "[1000000]", "1000000,"])
def test_an_input_shape_typed_as_one_number_reads_as_the_list_of_it(typed: str) -> None:
    params = {"shape": [1, 28, 28]}
    value = edit.typed_value("Input", params, "shape", edit.parse_text_value(typed))
    assert value == [1000000]
    assert edit.check_param("Input", params, "shape", value) is None


def test_a_number_where_a_number_is_allowed_stays_a_number() -> None:
    params = {"in_channels": 1, "out_channels": 8, "kernel_size": 5}
    assert edit.typed_value("Conv2d", params, "kernel_size", 3) == 3


def test_a_fix_that_inserts_a_layer_makes_room_for_it() -> None:
    from builder.layout import COLUMN_WIDTH, ROW_HEIGHT, with_layout
    from pages.parts.state import load_template

    graph = edit.delete_nodes(with_layout(load_template("lenet5")), {"flatten"})
    fix = next(d.fix for d in analyse(graph).warnings if d.fix and "insert" in d.fix)
    assert fix["insert"]["type"] == "Flatten"
    fixed = edit.apply_fix(graph, fix)
    placed = [(n.id, n.position) for n in fixed.nodes]
    assert all(position is not None for _, position in placed)
    overlapping = [
        (a, b)
        for i, (a, pa) in enumerate(placed)
        for b, pb in placed[i + 1 :]
        if abs(pa[0] - pb[0]) < COLUMN_WIDTH and abs(pa[1] - pb[1]) < ROW_HEIGHT
    ]
    assert not overlapping
    assert analyse(fixed).ok and not analyse(fixed).warnings
