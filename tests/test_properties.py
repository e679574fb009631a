"""Property tests: random graphs with chains, residual Adds and Concats.

Accepted graphs: the exported module's forward produces exactly the predicted shape at every node
and the predicted parameter count. Rejected graphs: every error names a node, and the failing
layer's own torch code fails on the same inputs too, except where NetBuilder is deliberately
stricter than PyTorch (listed below, each with the reason).
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from builder.graph import parse_graph
from compiler import analyse
from tests.modelkit import assert_matches_torch, layer_runs_in_torch

# Where PyTorch would run but silently do something else than a person means.
STRICTER_THAN_TORCH = (
    "inputs must have one shape",  # Add/Multiply: no implicit broadcasting between branches
    "needs [T, F] input",  # a [F] vector into RNN/attention would be read as one unbatched sequence
    "needs [T, E] input",
    "is the batch dimension",  # dims that count the batch may not touch it
    "needs [C, H, W] input",  # Dropout2d on other shapes
    "needs [C, L] input",  # InstanceNorm1d: torch reads a [B, F] batch as one unbatched [C, L]
    "different numbers of dims",  # Add/Multiply: torch would align the batch with another dim
    "positions beyond max_len",  # max_len 1: torch would add the one row to every step
    "removes more than the layer makes",  # ConvTranspose: torch returns an empty tensor
)

SHAPE_KEEPING = [
    "ReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Identity",
    "LeakyReLU",
    "Dropout",
    "ReLU6",
    "ELU",
    "Hardswish",
    "Hardsigmoid",
    "Softplus",
    "PReLU",
]


def layer_choices(shape: tuple[int, ...]) -> list[str]:
    rank = len(shape)
    common = SHAPE_KEEPING + [
        "Linear",
        "LayerNorm",
        "RMSNorm",
        "Softmax",
        "LogSoftmax",
        "Reshape",
        "Permute",
        "Flatten",
        "Upsample",
        "InstanceNorm1d",
        "PositionalEncoding",
    ]
    by_rank = {
        1: ["BatchNorm1d"],
        2: [
            "Conv1d",
            "MaxPool1d",
            "AvgPool1d",
            "AdaptiveAvgPool1d",
            "BatchNorm1d",
            "LSTM",
            "GRU",
            "RNN",
            "MultiheadAttention",
            "TransformerEncoderLayer",
            "SequencePool",
            "GroupNorm",
            "ConvTranspose1d",
            "AdaptiveMaxPool1d",
            "PositionalEncoding",
        ],
        3: [
            "Conv2d",
            "Conv2d",
            "MaxPool2d",
            "AvgPool2d",
            "AdaptiveAvgPool2d",
            "BatchNorm2d",
            "GroupNorm",
            "Dropout2d",
            "ConvTranspose2d",
            "AdaptiveMaxPool2d",
            "InstanceNorm2d",
            "Upsample",
        ],
    }
    return common + by_rank.get(rank, [])


@st.composite
def layer_params(draw: st.DrawFn, layer: str, shape: tuple[int, ...]) -> dict[str, Any]:
    small = st.integers(1, 4)
    spatial2 = st.one_of(small, st.lists(small, min_size=2, max_size=2))
    pad2 = st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), min_size=2, max_size=2))
    rank = len(shape)
    if layer in ("Conv1d", "Conv2d"):
        spatial = small if layer == "Conv1d" else spatial2
        params = {"out_channels": draw(st.sampled_from([2, 4, 6])), "kernel_size": draw(spatial)}
        if draw(st.booleans()):
            params["padding"] = draw(
                st.sampled_from(["same", "valid"])
                | (st.integers(0, 2) if layer == "Conv1d" else pad2)
            )
        if draw(st.booleans()):
            params["stride"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            params["dilation"] = draw(st.integers(1, 2))
        if draw(st.booleans()):
            params["groups"] = draw(st.sampled_from([1, 2]))
        return params
    if layer.startswith(("MaxPool", "AvgPool")):
        params = {"kernel_size": draw(st.integers(1, 4))}
        if draw(st.booleans()):
            params["stride"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            params["padding"] = draw(st.integers(0, 2))
        if draw(st.booleans()):
            params["ceil_mode"] = True
        if layer.startswith("MaxPool") and draw(st.booleans()):
            params["dilation"] = draw(st.integers(1, 2))
        return params
    if layer.startswith(("AdaptiveAvgPool", "AdaptiveMaxPool")):
        return {"output_size": draw(st.integers(1, 3))}
    if layer.startswith("ConvTranspose"):
        params = {"out_channels": draw(st.sampled_from([2, 4, 6])), "kernel_size": draw(small)}
        for name, values in (
            ("stride", st.integers(1, 3)),
            ("padding", st.integers(0, 2)),
            ("output_padding", st.integers(0, 2)),
            ("dilation", st.integers(1, 2)),
            ("groups", st.sampled_from([1, 2])),
        ):
            if draw(st.booleans()):
                params[name] = draw(values)
        return params
    if layer == "Upsample":
        mode = draw(st.sampled_from(["nearest", "linear", "bilinear"]))
        if draw(st.booleans()):
            return {"size": draw(st.integers(1, 12)), "mode": mode}
        return {"scale_factor": draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5])), "mode": mode}
    if layer == "PReLU":
        return {"num_parameters": draw(st.sampled_from([1, shape[0], 3]))}
    if layer == "ELU":
        return {"alpha": draw(st.floats(0.0, 2.0))}
    if layer == "Softplus":
        return {"beta": draw(st.floats(0.1, 3.0)), "threshold": draw(st.floats(1.0, 30.0))}
    if layer == "PositionalEncoding":
        return {
            "kind": draw(st.sampled_from(["learned", "sinusoidal"])),
            "max_len": draw(st.integers(max(1, shape[0] - 1), shape[0] + 3)),
        }
    if layer.startswith("InstanceNorm"):
        return {"affine": draw(st.booleans())}
    if layer == "Linear":
        return {"out_features": draw(st.integers(1, 12)), "bias": draw(st.booleans())}
    if layer == "GroupNorm":
        return {"num_groups": draw(st.integers(1, 4))}
    if layer in ("LSTM", "GRU", "RNN"):
        return {
            "hidden_size": draw(st.integers(1, 6)),
            "num_layers": draw(st.integers(1, 2)),
            "bidirectional": draw(st.booleans()),
        }
    if layer == "MultiheadAttention":
        return {"num_heads": draw(st.integers(1, 4)), "causal": draw(st.booleans())}
    if layer == "TransformerEncoderLayer":
        return {
            "nhead": draw(st.integers(1, 4)),
            "dim_feedforward": 8,
            "norm_first": draw(st.booleans()),
        }
    if layer == "SequencePool":
        return {"mode": draw(st.sampled_from(["last", "mean", "max"]))}
    if layer in ("Softmax", "LogSoftmax"):
        return {"dim": draw(st.integers(-rank - 1, rank))}
    if layer == "Flatten":
        return {"start_dim": draw(st.integers(0, rank)) if draw(st.booleans()) else 1}
    if layer == "Permute":
        dims = draw(st.permutations(list(range(1, rank + 1))))
        return {"dims": [0, *dims]}
    if layer == "Reshape":
        total = 1
        for size in shape:
            total *= size
        if draw(st.booleans()):
            return {"shape": [total]}
        return {"shape": [draw(st.sampled_from([1, 2, 3, 4])), -1]}
    return {}


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["image", "image", "sequence", "vector"]))
    if kind == "image":
        shape = [draw(st.integers(1, 4)), draw(st.integers(1, 10)), draw(st.integers(1, 10))]
    elif kind == "sequence":
        shape = [draw(st.integers(1, 6)), draw(st.sampled_from([2, 4, 6, 8]))]
    else:
        shape = [draw(st.integers(1, 16))]
    nodes: list[dict[str, Any]] = [{"id": "in", "type": "Input", "params": {"shape": shape}}]
    edges: list[dict[str, Any]] = []
    last = "in"
    for index in range(draw(st.integers(1, 7))):
        shapes = {
            k: v.shape
            for k, v in analyse(_graph(nodes, edges)).infos.items()
            if v.shape is not None
        }
        node_id = f"n{index}"
        merge = draw(st.sampled_from([None, None, None, "Add", "Concat", "Multiply"]))
        if merge:
            same = [k for k, s in shapes.items() if s == shapes[last] and k != last]
            same_rank = [k for k, s in shapes.items() if len(s) == len(shapes[last]) and k != last]
            pool = same if merge != "Concat" else same_rank
            other = draw(st.sampled_from(pool or sorted(shapes)))
            params = {"dim": draw(st.integers(1, len(shapes[last])))} if merge == "Concat" else {}
            nodes.append({"id": node_id, "type": merge, "params": params})
            edges += [
                {"source": last, "target": node_id},
                {"source": other, "target": node_id, "port": 1},
            ]
        else:
            layer = draw(st.sampled_from(layer_choices(shapes[last])))
            nodes.append(
                {"id": node_id, "type": layer, "params": draw(layer_params(layer, shapes[last]))}
            )
            edges.append({"source": last, "target": node_id})
        last = node_id
        if analyse(_graph(nodes, edges)).infos[node_id].shape is None:
            break
    nodes.append({"id": "out", "type": "Output"})
    edges.append({"source": last, "target": "out"})
    return _graph(nodes, edges)


def _graph(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]):
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": "random", "nodes": nodes, "edges": edges}
    )


@given(graphs())
def test_random_graphs_agree_with_torch(graph) -> None:
    analysis = analyse(graph)
    event("accepted" if analysis.ok else "rejected")
    if analysis.ok:
        assert_matches_torch(analysis)
        return
    for error in analysis.errors:
        assert error.node is not None
        node = graph.node(error.node)
        inputs = [
            (analysis.infos[s].shape, analysis.infos[s].dtype) for s in analysis.inputs[error.node]
        ]
        if layer_runs_in_torch(node.type, node.params, inputs):
            event("rejected, torch runs: stricter rule")
            assert any(rule in error.message for rule in STRICTER_THAN_TORCH), error.message
            if "inputs must have one shape" in error.message:
                import torch

                try:
                    torch.broadcast_shapes(*[(2, *shape) for shape, _ in inputs])
                except RuntimeError:
                    raise AssertionError(
                        "torch fails here, so the layer must not have run"
                    ) from None


@st.composite
def hostile_params(draw: st.DrawFn) -> tuple[str, str, Any]:
    """A layer, one of its numeric params and a value at, near or beyond one of its bounds."""
    from tests.test_hostile_values import LAYERS_WITH_NUMBERS, numeric_fields

    layer = draw(st.sampled_from(LAYERS_WITH_NUMBERS))
    fields = numeric_fields(layer)
    name = draw(st.sampled_from(sorted(fields)))
    anchor = draw(st.sampled_from([v for v in fields[name] if not isinstance(v, list)]))
    nudged = st.one_of(
        st.just(anchor),
        st.integers(-3, 3).map(lambda step: anchor + step),
        st.floats(0.5, 2.0).map(lambda scale: anchor * scale),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    value = draw(st.one_of(nudged, st.lists(nudged, min_size=1, max_size=3)))
    return layer, name, value


@given(hostile_params())
def test_values_at_and_beyond_bounds_are_named_errors_or_valid_analyses(drawn) -> None:
    """Never another exception: a GraphFormatError naming the field, or an analysis (and, for
    a valid one, its model.py)."""
    from builder.graph import GraphFormatError
    from compiler import generate_source
    from tests.test_hostile_values import FIRST_CASE, graph_for, undefined_names

    layer, name, value = drawn
    params = {**FIRST_CASE[layer][1], name: value}
    try:
        graph = parse_graph(graph_for(layer, params))
    except GraphFormatError as exc:
        event("refused by name")
        assert name in str(exc) or "Upsample takes exactly one" in str(exc), str(exc)
        return
    analysis = analyse(graph)
    event("valid" if analysis.ok else "error at a node")
    if analysis.ok:
        assert not undefined_names(generate_source(analysis))
    else:
        assert all(error.node for error in analysis.errors)
