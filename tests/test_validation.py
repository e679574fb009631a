"""Graph-level validation: every independent error at once, each on its node, with fixes as data."""

from __future__ import annotations

from builder.graph import parse_graph
from compiler import analyse
from tests.modelkit import assert_matches_torch, chain_graph


def graph(nodes: list[tuple[str, str, dict]], edges: list[tuple[str, str]]):
    return parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "g",
            "nodes": [{"id": i, "type": t, "params": p} for i, t, p in nodes],
            "edges": [{"source": s, "target": t} for s, t in edges],
        }
    )


def test_cycle_is_reported_with_its_node_ids() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [4]}),
            ("a", "Linear", {"out_features": 4}),
            ("b", "Add", {}),
            ("c", "ReLU", {}),
            ("out", "Output", {}),
        ],
        [("in", "a"), ("a", "b"), ("b", "c"), ("c", "b"), ("c", "out")],
    )
    analysis = analyse(g)
    cycle_errors = [e for e in analysis.errors if "cycle" in e.message]
    assert len(cycle_errors) == 1
    assert "'b' -> 'c' -> 'b'" in cycle_errors[0].message
    assert analysis.infos["out"].shape is None
    assert analysis.infos["a"].shape == (4,)


def test_missing_input_output_and_unknown_edge_are_all_reported() -> None:
    g = graph([("a", "Linear", {"out_features": 4})], [("ghost", "a")])
    messages = [e.message for e in analyse(g).errors]
    assert any("no Input node" in m for m in messages)
    assert any("no Output node" in m for m in messages)
    assert any("refers to no node 'ghost'" in m for m in messages)
    assert any("has no input" in m for m in messages)


def test_independent_errors_are_all_reported_and_downstream_nodes_stay_quiet() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [3, 8, 8]}),
            ("big", "Conv2d", {"out_channels": 4, "kernel_size": 9}),
            ("after", "ReLU", {}),
            ("gn", "GroupNorm", {"num_groups": 2}),
            ("cat", "Concat", {}),
            ("out", "Output", {}),
        ],
        [
            ("in", "big"),
            ("big", "after"),
            ("in", "gn"),
            ("after", "cat"),
            ("gn", "cat"),
            ("cat", "out"),
        ],
    )
    analysis = analyse(g)
    assert sorted(e.node for e in analysis.errors) == ["big", "gn"]
    assert analysis.infos["after"].shape is None
    assert analysis.infos["cat"].shape is None
    assert analysis.errors[0].message.startswith("Conv2d 'big': kernel 9x9 (dilated 9x9) exceeds")


def test_arity_of_merges_and_single_input_layers() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [4]}),
            ("r1", "ReLU", {}),
            ("r2", "ReLU", {}),
            ("two", "ReLU", {}),
            ("add", "Add", {}),
            ("out", "Output", {}),
        ],
        [("in", "r1"), ("in", "r2"), ("r1", "two"), ("r2", "two"), ("r1", "add"), ("add", "out")],
    )
    errors = {e.node: e.message for e in analyse(g).errors}
    assert "takes exactly 1 input, has 2" in errors["two"]
    assert "needs at least 2 inputs, has 1" in errors["add"]


def test_int64_only_feeds_an_embedding() -> None:
    analysis = analyse(chain_graph([5], ("Linear", {"out_features": 3}), dtype="int64"))
    assert "only an Embedding" in analysis.errors[0].message
    float_to_embedding = analyse(
        chain_graph([5], ("Embedding", {"num_embeddings": 9, "embedding_dim": 2}))
    )
    assert "set the Input's dtype to int64" in float_to_embedding.errors[0].message


def test_dead_end_branch_is_a_warning_and_left_out_of_the_model() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [4]}),
            ("fc", "Linear", {"out_features": 2}),
            ("dangling", "Linear", {"out_features": 100}),
            ("out", "Output", {}),
        ],
        [("in", "fc"), ("fc", "out"), ("in", "dangling")],
    )
    analysis = analyse(g)
    assert analysis.ok
    assert [w.node for w in analysis.warnings] == ["dangling"]
    assert analysis.total_params == 10
    assert_matches_torch(analysis)


def test_two_inputs_is_an_error_on_the_second() -> None:
    g = graph(
        [("in", "Input", {"shape": [4]}), ("in2", "Input", {"shape": [4]}), ("out", "Output", {})],
        [("in", "out")],
    )
    assert [e.node for e in analyse(g).errors] == ["in2"]


def test_flatten_fix_for_linear_on_an_image() -> None:
    analysis = analyse(chain_graph([16, 5, 5], ("Linear", {"out_features": 10})))
    assert analysis.ok  # PyTorch runs it, on the last dim only: a warning with a fix
    warning = analysis.warnings[0]
    assert warning.fix == {
        "insert": {"type": "Flatten", "params": {}},
        "between": ["in", "n1"],
        "why": warning.fix["why"],
    }
    assert analysis.infos["n1"].shape == (16, 5, 10)


def test_residual_projection_fix_for_channel_and_stride_change() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [16, 8, 8]}),
            ("down", "Conv2d", {"out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1}),
            ("add", "Add", {}),
            ("out", "Output", {}),
        ],
        [("in", "down"), ("down", "add"), ("in", "add"), ("add", "out")],
    )
    error = analyse(g).errors[0]
    assert error.node == "add"
    assert error.fix["insert"] == {
        "type": "Conv2d",
        "params": {"out_channels": 32, "kernel_size": 1, "stride": 2},
    }
    assert error.fix["between"] == ["in", "add"]


def test_same_padding_fix_when_kernel_exceeds_input() -> None:
    error = analyse(
        chain_graph([1, 3, 3], ("Conv2d", {"out_channels": 2, "kernel_size": 5}))
    ).errors[0]
    assert error.fix == {
        "set": {"node": "n1", "params": {"padding": "same"}},
        "why": error.fix["why"],
    }


def test_permute_fix_between_conv1d_and_rnn() -> None:
    analysis = analyse(
        chain_graph(
            [4, 20], ("Conv1d", {"out_channels": 8, "kernel_size": 3}), ("LSTM", {"hidden_size": 5})
        )
    )
    assert analysis.warnings[0].node == "n2"
    assert analysis.warnings[0].fix["insert"] == {"type": "Permute", "params": {"dims": [0, 2, 1]}}


def test_concat_joins_in_port_order() -> None:
    g = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "g",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [2, 4]}},
                {"id": "wide", "type": "Linear", "params": {"out_features": 6}},
                {"id": "cat", "type": "Concat", "params": {"dim": -1}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [
                {"source": "wide", "target": "cat", "port": 1},
                {"source": "in", "target": "cat", "port": 0},
                {"source": "in", "target": "wide"},
                {"source": "cat", "target": "out"},
            ],
        }
    )
    analysis = analyse(g)
    assert analysis.inputs["cat"] == ["in", "wide"]
    assert analysis.infos["cat"].shape == (2, 10)
    assert_matches_torch(analysis)


def test_conv_explanation_plugs_in_the_numbers() -> None:
    analysis = analyse(
        chain_graph([1, 28, 28], ("Conv2d", {"out_channels": 6, "kernel_size": 5, "padding": 2}))
    )
    assert "O = floor((28 + 2*2 - 1*(5-1) - 1)/1) + 1 = 28" in analysis.infos["n1"].explanation


def test_interlocked_cycles_in_one_component_are_one_error_not_a_crash() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [4]}),
            ("a", "ReLU", {}),
            ("b", "Add", {}),
            ("c", "Add", {}),
            ("out", "Output", {}),
        ],
        [("in", "a"), ("a", "b"), ("b", "c"), ("c", "b"), ("c", "a"), ("in", "c"), ("c", "out")],
    )
    analysis = analyse(g)
    cycle_errors = [e for e in analysis.errors if "cycle" in e.message]
    assert len(cycle_errors) == 1 and cycle_errors[0].node in {"a", "b", "c"}
    assert all(analysis.infos[n].shape is None for n in ("a", "b", "c", "out"))


def classifier(head: list[tuple[str, dict]], output: dict | None = None):
    """Input [6] -> Linear 4 -> head... -> Output (with `output` params)."""
    layers = [("fc", "Linear", {"out_features": 4})] + [
        (f"h{i}", t, p) for i, (t, p) in enumerate(head)
    ]
    ids = ["in"] + [i for i, _, _ in layers] + ["out"]
    nodes = [("in", "Input", {"shape": [6]}), *layers, ("out", "Output", output or {})]
    return graph(nodes, list(zip(ids, ids[1:])))


def test_softmax_before_a_loss_that_applies_its_own_is_a_warning_with_a_removal_fix() -> None:
    from builder.edit import apply_fix

    g = classifier([("Softmax", {"dim": 1})])
    analysis = analyse(g)
    assert analysis.ok
    (warning,) = analysis.warnings
    assert warning.node == "out"
    assert "expects raw scores (logits)" in warning.message
    assert warning.fix["remove"] == {"node": "h0"}
    fixed = analyse(apply_fix(g, warning.fix))
    assert fixed.ok and not fixed.warnings
    assert fixed.inputs["out"] == ["fc"]


def test_log_softmax_before_cross_entropy_suggests_the_nll_loss() -> None:
    from builder.edit import apply_fix

    g = classifier([("LogSoftmax", {"dim": -1})], {"loss": "cross_entropy"})
    (warning,) = analyse(g).warnings
    assert warning.fix["set"] == {"node": "out", "params": {"loss": "nll"}}
    fixed = analyse(apply_fix(g, warning.fix))
    assert fixed.ok and not fixed.warnings


def test_softmax_before_a_regression_loss_is_not_warned_about() -> None:
    assert not analyse(classifier([("Softmax", {})], {"loss": "mse"})).warnings


def test_class_loss_needs_scores_per_class() -> None:
    g = graph(
        [
            ("in", "Input", {"shape": [2, 4, 4]}),
            ("c", "Conv2d", {"out_channels": 3, "kernel_size": 1}),
            ("out", "Output", {"loss": "cross_entropy"}),
        ],
        [("in", "c"), ("c", "out")],
    )
    (error,) = analyse(g).errors
    assert error.node == "out"
    assert "needs scores shaped [classes] or [T, classes], got [3, 4, 4]" in error.message


def test_label_smoothing_belongs_to_cross_entropy_only() -> None:
    (error,) = analyse(classifier([], {"loss": "mse", "label_smoothing": 0.1})).errors
    assert "label_smoothing applies to cross_entropy only" in error.message
    assert error.fix["set"]["params"] == {"label_smoothing": 0.0}


def test_the_chosen_loss_is_readable_for_the_trainer() -> None:
    from compiler.analysis import loss_of, output_loss, resolved_loss

    g = classifier([], {"loss": "cross_entropy", "label_smoothing": 0.2})
    assert output_loss(g).loss == "cross_entropy"
    assert loss_of(analyse(g)).label_smoothing == 0.2
    assert output_loss(classifier([])).loss == "auto"
    assert resolved_loss("auto", integer_targets=True) == "cross_entropy"
    assert resolved_loss("auto", integer_targets=False) == "mse"
    assert resolved_loss("huber", integer_targets=True) == "huber"


def test_diagnostics_are_data_with_a_code_and_values() -> None:
    g = chain_graph([1, 3, 3], ("Conv2d", {"out_channels": 2, "kernel_size": 5}))
    (error,) = analyse(g).errors
    entry = error.to_json()
    assert entry["code"].startswith("kernel {kernel} (dilated {dilated}) exceeds padded input")
    assert entry["values"]["padded"] == "3x3"
    assert entry["message"] == error.message


def test_sigmoid_before_bce_with_logits_is_a_warning_with_a_removal_fix() -> None:
    from builder.edit import apply_fix

    g = classifier([("Sigmoid", {})], {"loss": "bce_with_logits"})
    (warning,) = analyse(g).warnings
    assert "applies sigmoid itself" in warning.message
    assert warning.fix["remove"] == {"node": "h0"}
    assert not analyse(apply_fix(g, warning.fix)).warnings


def test_softmax_before_nll_says_to_use_log_softmax() -> None:
    (warning,) = analyse(classifier([("Softmax", {"dim": 1})], {"loss": "nll"})).warnings
    assert "use LogSoftmax instead" in warning.message
    assert not analyse(classifier([("LogSoftmax", {"dim": 1})], {"loss": "nll"})).warnings


def test_a_model_level_parameter_problem_reads_in_chinese_too() -> None:
    from builder.catalog import CATALOG, param_problem
    from pydantic import ValidationError

    params = CATALOG["Upsample"].params
    given = {"size": 4, "scale_factor": 2.0}
    try:
        params.model_validate(given)
    except ValidationError as exc:
        problem = param_problem(params, exc, given)
    else:
        raise AssertionError("size and scale_factor together must be refused")
    assert problem.render("en") == "Upsample takes exactly one of size and scale_factor"
    assert problem.render("zh") == "Upsample 只能在 size 和 scale_factor 中二选一"
