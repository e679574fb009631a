"""Each layer type: the inferred shape and parameter count equal those of the real torch module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from builder.catalog import CATALOG, Tensor
from builder.graph import Graph, parse_graph
from compiler import analyse, generate_source
from tests.modelkit import (
    assert_matches_torch,
    chain_graph,
    layer_runs_in_torch,
    load_module,
)

CASES: list[tuple[list[int], str, dict, str]] = [
    ([1, 28, 28], "Conv2d", {"out_channels": 6, "kernel_size": 5, "padding": 2}, "float32"),
    (
        [3, 17, 23],
        "Conv2d",
        {"out_channels": 8, "kernel_size": [3, 5], "stride": [2, 3]},
        "float32",
    ),
    (
        [4, 16, 16],
        "Conv2d",
        {"out_channels": 8, "kernel_size": 3, "dilation": 2, "groups": 4},
        "float32",
    ),
    (
        [4, 9, 10],
        "Conv2d",
        {"out_channels": 6, "kernel_size": 4, "padding": "same", "dilation": 2},
        "float32",
    ),
    (
        [2, 7, 7],
        "Conv2d",
        {"out_channels": 3, "kernel_size": 3, "padding": "valid", "bias": False},
        "float32",
    ),
    (
        [2, 7, 7],
        "Conv2d",
        {"out_channels": 3, "kernel_size": 2, "padding": [1, 0], "stride": 2},
        "float32",
    ),
    (
        [3, 50],
        "Conv1d",
        {"out_channels": 5, "kernel_size": 7, "stride": 3, "padding": 2},
        "float32",
    ),
    (
        [4, 20],
        "Conv1d",
        {"out_channels": 4, "kernel_size": 4, "padding": "same", "groups": 2},
        "float32",
    ),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, "float32"),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 2, "ceil_mode": True}, "float32"),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 3, "dilation": 2, "stride": 1}, "float32"),
    ([13, 11], "MaxPool2d", {"kernel_size": 2}, "float32"),
    ([3, 13], "MaxPool1d", {"kernel_size": 3, "stride": 2, "ceil_mode": True}, "float32"),
    (
        [3, 12, 12],
        "AvgPool2d",
        {"kernel_size": 5, "stride": 3, "padding": 2, "ceil_mode": True},
        "float32",
    ),
    ([3, 12], "AvgPool1d", {"kernel_size": 4, "count_include_pad": False, "padding": 1}, "float32"),
    ([5, 9, 7], "AdaptiveAvgPool2d", {"output_size": [2, 3]}, "float32"),
    ([5, 9], "AdaptiveAvgPool1d", {"output_size": 4}, "float32"),
    ([3, 4, 5], "Flatten", {}, "float32"),
    ([3, 4, 5], "Flatten", {"start_dim": 2}, "float32"),
    ([3, 4, 5, 6], "Flatten", {"start_dim": 2, "end_dim": -2}, "float32"),
    ([12], "Linear", {"out_features": 7}, "float32"),
    ([5, 12], "Linear", {"out_features": 3, "bias": False}, "float32"),
    ([6], "BatchNorm1d", {}, "float32"),
    ([6, 10], "BatchNorm1d", {"affine": False}, "float32"),
    ([6, 4, 4], "BatchNorm2d", {"momentum": None, "eps": 1e-3}, "float32"),
    ([6, 10], "LayerNorm", {}, "float32"),
    ([6, 10], "LayerNorm", {"bias": False}, "float32"),
    ([6, 10], "RMSNorm", {}, "float32"),
    ([6, 10], "RMSNorm", {"elementwise_affine": False, "eps": 1e-6}, "float32"),
    ([6, 4, 4], "GroupNorm", {"num_groups": 3}, "float32"),
    ([6, 4], "Dropout", {"p": 0.2}, "float32"),
    ([6, 4, 4], "Dropout2d", {}, "float32"),
    ([6, 4], "ReLU", {}, "float32"),
    ([6, 4], "GELU", {"approximate": "tanh"}, "float32"),
    ([6, 4], "SiLU", {}, "float32"),
    ([6, 4], "Tanh", {}, "float32"),
    ([6, 4], "Sigmoid", {}, "float32"),
    ([6, 4], "Identity", {}, "float32"),
    ([6, 4], "LeakyReLU", {"negative_slope": 0.2}, "float32"),
    ([6, 4], "Softmax", {"dim": 1}, "float32"),
    ([12], "Embedding", {"num_embeddings": 20, "embedding_dim": 8, "padding_idx": 0}, "int64"),
    ([3, 4], "Embedding", {"num_embeddings": 5, "embedding_dim": 2}, "int64"),
    ([7, 5], "RNN", {"hidden_size": 6, "nonlinearity": "relu"}, "float32"),
    ([7, 5], "LSTM", {"hidden_size": 6}, "float32"),
    (
        [7, 5],
        "LSTM",
        {"hidden_size": 6, "num_layers": 3, "bidirectional": True, "dropout": 0.1},
        "float32",
    ),
    ([7, 5], "GRU", {"hidden_size": 4, "num_layers": 2, "bias": False}, "float32"),
    ([7, 5], "GRU", {"hidden_size": 4, "bidirectional": True}, "float32"),
    ([7, 8], "MultiheadAttention", {"num_heads": 2}, "float32"),
    ([7, 8], "MultiheadAttention", {"num_heads": 4, "bias": False, "causal": True}, "float32"),
    ([7, 8], "TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16}, "float32"),
    (
        [7, 8],
        "TransformerEncoderLayer",
        {"nhead": 4, "activation": "gelu", "norm_first": True, "bias": False},
        "float32",
    ),
    (
        [7, 8],
        "TransformerEncoderLayer",
        {"nhead": 2, "dim_feedforward": 16, "causal": True},
        "float32",
    ),
    ([7, 8], "SequencePool", {"mode": "last"}, "float32"),
    ([7, 8], "SequencePool", {"mode": "mean"}, "float32"),
    ([7, 8, 3], "SequencePool", {"mode": "max"}, "float32"),
    ([2, 3, 4], "Permute", {"dims": [0, 3, 1, 2]}, "float32"),
    ([2, 3, 4], "Reshape", {"shape": [6, -1]}, "float32"),
    ([2, 3, 4], "Reshape", {"shape": [24]}, "float32"),
    ([4, 7, 5], "ConvTranspose2d", {"out_channels": 6, "kernel_size": 2, "stride": 2}, "float32"),
    (
        [4, 7, 5],
        "ConvTranspose2d",
        {
            "out_channels": 6,
            "kernel_size": [3, 4],
            "stride": [2, 3],
            "padding": 1,
            "output_padding": [1, 2],
            "groups": 2,
            "bias": False,
        },
        "float32",
    ),
    (
        [4, 7, 5],
        "ConvTranspose2d",
        {"out_channels": 2, "kernel_size": 3, "dilation": 2, "output_padding": 1},
        "float32",
    ),
    (
        [3, 9],
        "ConvTranspose1d",
        {"out_channels": 5, "kernel_size": 4, "stride": 3, "padding": 2, "output_padding": 2},
        "float32",
    ),
    ([3, 5, 7], "Upsample", {"scale_factor": 2.0}, "float32"),
    (
        [3, 5, 7],
        "Upsample",
        {"scale_factor": [1.5, 2.7], "mode": "bilinear", "align_corners": True},
        "float32",
    ),
    ([3, 5, 7], "Upsample", {"size": [8, 9], "mode": "bilinear"}, "float32"),
    ([3, 5], "Upsample", {"scale_factor": 3.3, "mode": "linear"}, "float32"),
    ([3, 5], "Upsample", {"size": 11}, "float32"),
    ([5, 9, 7], "AdaptiveMaxPool2d", {"output_size": [2, 3]}, "float32"),
    ([5, 9], "AdaptiveMaxPool1d", {"output_size": 4}, "float32"),
    ([6, 4], "ReLU6", {}, "float32"),
    ([6, 4], "ELU", {"alpha": 0.5}, "float32"),
    ([6, 4], "PReLU", {}, "float32"),
    ([6, 4, 3], "PReLU", {"num_parameters": 6, "init": 0.1}, "float32"),
    ([6, 4], "Hardswish", {}, "float32"),
    ([6, 4], "Hardsigmoid", {}, "float32"),
    ([6, 4], "Softplus", {"beta": 2.0, "threshold": 10.0}, "float32"),
    ([6, 4], "LogSoftmax", {"dim": 1}, "float32"),
    ([10], "LogSoftmax", {"dim": -1}, "float32"),
    ([6, 10], "InstanceNorm1d", {}, "float32"),
    ([6, 10], "InstanceNorm1d", {"affine": True, "track_running_stats": True}, "float32"),
    ([6, 4, 5], "InstanceNorm2d", {"affine": True, "eps": 1e-3}, "float32"),
    ([7, 8], "PositionalEncoding", {"max_len": 16}, "float32"),
    ([7, 8], "PositionalEncoding", {"kind": "sinusoidal", "max_len": 7, "dropout": 0.1}, "float32"),
    ([7, 5], "PositionalEncoding", {"kind": "sinusoidal", "max_len": 9}, "float32"),
    ([6, 5, 4], "Chunk", {"chunks": 4, "index": 2}, "float32"),  # 6 in 4: 2, 2, 2
    ([6, 5], "Chunk", {"chunks": 2, "dim": -1, "index": 1}, "float32"),  # 5 in 2: 3, 2
    ([7], "Chunk", {"chunks": 3, "index": 2}, "float32"),  # 7 in 3: 3, 3, 1
    ([3, 4], "Scale", {"factor": -0.5}, "float32"),
    ([6, 4], "Mish", {}, "float32"),
    ([6, 4], "GLU", {}, "float32"),
    ([6, 4, 3], "GLU", {"dim": 1}, "float32"),
    ([5, 8], "GLU", {"dim": -1}, "float32"),
    ([8, 3, 5], "PixelShuffle", {"upscale_factor": 2}, "float32"),
    ([27, 2, 2], "PixelShuffle", {"upscale_factor": 3}, "float32"),
    ([5, 6], "LearnedConstant", {"shape": [1, 6]}, "float32"),
    ([7], "LearnedConstant", {"shape": [3, 1, 1], "init": "normal"}, "int64"),
    ([4, 9, 6], "Slice", {"dim": 2, "start": 1, "step": 2}, "float32"),
    ([4, 9, 6], "Slice", {"dim": -1, "start": -4, "stop": -1}, "float32"),
    ([4, 9, 6], "Pad", {"pad": [0, 1, 2, 0]}, "float32"),
    ([7, 5], "Pad", {"pad": [1, 2, 0, 0], "value": -1.0}, "float32"),
    ([9, 7, 8], "WindowAttention", {"num_heads": 2, "window_size": 4, "shift_size": 2}, "float32"),
    (
        [6, 5, 8],
        "WindowAttention",
        {"num_heads": 4, "window_size": [3, 2], "shift_size": [1, 1], "v2": True},
        "float32",
    ),
    ([3, 3, 4], "WindowAttention", {"num_heads": 1, "qkv_bias": False}, "float32"),
    ([3, 4, 8], "RelativeAttention", {"head_dim": 4}, "float32"),
    ([2, 9, 6], "RelativeAttention", {"head_dim": 2}, "float32"),
]


@pytest.mark.parametrize(("shape", "layer", "params", "dtype"), CASES, ids=lambda v: str(v))
def test_shape_and_param_count_match_torch(shape, layer, params, dtype) -> None:
    analysis = analyse(chain_graph(shape, (layer, params), dtype=dtype))
    assert_matches_torch(analysis)


def test_every_layer_type_is_covered() -> None:
    # (several inputs: the merges, and Reparameterize, held to the PyTorch VAE example in
    # tests/test_import_patterns.py)
    several = {"Add", "Multiply", "Concat", "Reparameterize"}
    covered = {case[1] for case in CASES} | {"Input", "Output"} | several
    assert covered == set(CATALOG)


@pytest.mark.parametrize(
    ("shape", "layer", "params", "fragment"),
    [
        ([1, 3, 3], "Conv2d", {"out_channels": 2, "kernel_size": 5}, "exceeds padded input 3x3"),
        ([1, 8, 8], "Conv2d", {"out_channels": 2, "kernel_size": 3, "dilation": 4}, "dilated 9x9"),
        ([3, 8, 8], "Conv2d", {"out_channels": 4, "kernel_size": 3, "groups": 2}, "groups=2"),
        (
            [3, 8, 8],
            "Conv2d",
            {"out_channels": 4, "kernel_size": 3, "padding": "same", "stride": 2},
            "stride 1",
        ),
        ([2, 5], "MaxPool1d", {"kernel_size": 6}, "exceeds"),
        ([2, 5, 5], "MaxPool2d", {"kernel_size": 2, "padding": 2}, "at most half"),
        ([5, 4], "GroupNorm", {"num_groups": 2}, "must divide"),
        ([5, 6], "MultiheadAttention", {"num_heads": 4}, "must divide"),
        ([5, 6], "TransformerEncoderLayer", {"nhead": 4}, "must divide"),
        ([2, 3, 4], "Reshape", {"shape": [5, -1]}, "not divisible"),
        ([2, 3, 4], "Reshape", {"shape": [5, 5]}, "element counts"),
        ([2, 3, 4], "Permute", {"dims": [0, 1, 1, 2]}, "permutation"),
        (
            [4, 5, 5],
            "ConvTranspose2d",
            {"out_channels": 2, "kernel_size": 3, "stride": 2, "output_padding": 2},
            "smaller than the stride",
        ),
        (
            [4, 5],
            "ConvTranspose1d",
            {"out_channels": 2, "kernel_size": 1, "padding": 3},
            "removes more",
        ),
        ([3, 5, 7], "Upsample", {"scale_factor": 2.0, "mode": "linear"}, "use bilinear"),
        ([3, 5, 7], "Upsample", {"size": [4, 4, 4]}, "one value per spatial dim"),
        ([6, 4], "PReLU", {"num_parameters": 4}, "num_parameters=4"),
        ([6, 4], "LogSoftmax", {"dim": 3}, "out of range"),
        ([9, 8], "PositionalEncoding", {"max_len": 8}, "max_len is 8"),
        ([3, 1, 1], "InstanceNorm2d", {}, "more than one value per channel"),
        ([3, 1], "InstanceNorm1d", {}, "more than one value per channel"),
        ([9, 8], "PositionalEncoding", {"max_len": 8, "kind": "sinusoidal"}, "max_len is 8"),
        ([6, 5, 4], "Chunk", {"chunks": 4, "index": 3}, "makes 3 pieces"),  # 2, 2, 2
        ([6, 5], "Chunk", {"dim": 3}, "out of range"),
        ([5, 7], "GLU", {}, "its size 7 is odd"),
    ],
)
def test_rejected_layer_fails_in_torch_too(shape, layer, params, fragment) -> None:
    analysis = analyse(chain_graph(shape, (layer, params)))
    assert [e.node for e in analysis.errors] == ["n1"]
    assert fragment in analysis.errors[0].message
    assert analysis.infos["out"].shape is None
    assert_torch_fails(layer, params, [shape])


def assert_torch_fails(layer: str, params: dict, shapes: list[list[int]]) -> None:
    """Build the layer's own emitted constructor and forward expression and run it in torch."""
    spec = CATALOG[layer]
    typed = spec.params.model_validate(params)
    tensors = [Tensor(tuple(s)) for s in shapes]
    namespace = {"torch": torch, "nn": nn, "args": [torch.randn(2, *s) for s in shapes]}

    class Holder(nn.Module):
        pass

    holder = Holder()
    names = [f"args[{i}]" for i in range(len(shapes))]
    if spec.helper is not None:
        exec(spec.helper[1], namespace)
    with pytest.raises((RuntimeError, ValueError, AssertionError, IndexError, NotImplementedError)):
        if spec.module is not None:
            holder.layer = eval(spec.module(typed, tensors), namespace)
        eval(spec.call(typed, "layer", names), {**namespace, "self": holder})


def merge_graph(shape: list[int], branch: list[tuple[str, dict]], merge: str) -> Graph:
    """Input -> branch... -> merge(Input, branch end) -> Output."""
    ids = ["in"] + [f"b{i}" for i in range(len(branch))]
    nodes = [{"id": "in", "type": "Input", "params": {"shape": shape}}]
    nodes += [{"id": f"b{i}", "type": t, "params": p} for i, (t, p) in enumerate(branch)]
    nodes += [{"id": "m", "type": merge}, {"id": "out", "type": "Output"}]
    edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:])]
    edges += [{"source": "in", "target": "m"}, {"source": ids[-1], "target": "m"}]
    edges += [{"source": "m", "target": "out"}]
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": "t", "nodes": nodes, "edges": edges}
    )


@pytest.mark.parametrize("merge", ["Add", "Multiply"])
def test_channel_gate_broadcasts_as_in_torch(merge: str) -> None:
    """Squeeze-and-excitation: [C, 1, 1] scales every pixel of [C, H, W]."""
    graph = merge_graph(
        [4, 6, 5], [("AdaptiveAvgPool2d", {"output_size": 1}), ("Sigmoid", {})], merge
    )
    analysis = analyse(graph)
    assert analysis.infos["b0"].shape == (4, 1, 1)
    assert analysis.infos["m"].shape == (4, 6, 5)
    assert_matches_torch(analysis)


def test_one_row_broadcasts_over_time_as_in_torch() -> None:
    """[1, E] (one vector for every step) against [T, E]."""
    branch = [
        ("Permute", {"dims": [0, 2, 1]}),
        ("AdaptiveAvgPool1d", {"output_size": 1}),
        ("Permute", {"dims": [0, 2, 1]}),
    ]
    analysis = analyse(merge_graph([5, 8], branch, "Add"))
    assert analysis.infos["b2"].shape == (1, 8)
    assert analysis.infos["m"].shape == (5, 8)
    assert_matches_torch(analysis)


def test_inputs_of_different_ranks_are_refused_with_the_reason() -> None:
    """Torch would align [8] with [B, 5, 8] from the right: silently wrong where B == 5."""
    analysis = analyse(merge_graph([5, 8], [("SequencePool", {"mode": "mean"})], "Add"))
    assert [e.node for e in analysis.errors] == ["m"]
    assert "different numbers of dims" in analysis.errors[0].message
    assert "mix the batch" in analysis.errors[0].message


def test_mismatched_sizes_that_are_not_one_are_refused_as_in_torch() -> None:
    analysis = analyse(merge_graph([3, 4], [("Linear", {"out_features": 5})], "Add"))
    assert [e.node for e in analysis.errors] == ["m"]
    assert "got [3, 4] and [3, 5]" in analysis.errors[0].message
    assert not layer_runs_in_torch("Add", {}, [((3, 4), "float32"), ((3, 5), "float32")])


def test_sinusoidal_encoding_is_the_transformer_papers_table() -> None:
    """P[t, 2i] = sin(t / 10000^(2i/E)), P[t, 2i+1] = cos(t / 10000^(2i/E)), added to x."""
    analysis = analyse(
        chain_graph([6, 5], ("PositionalEncoding", {"kind": "sinusoidal", "max_len": 10}))
    )
    model = load_module(generate_source(analysis)).build_model().eval()
    x = torch.zeros(1, 6, 5)
    got = model(x)[0]
    t = torch.arange(6, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(5, dtype=torch.float64)
    angle = t / 10000 ** ((i - i % 2) / 5)
    expected = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    assert torch.allclose(got.double(), expected, atol=1e-5)


def test_a_causal_encoder_layer_never_looks_ahead() -> None:
    """Changing the last position leaves every earlier output unchanged (and not so without)."""
    for causal in (True, False):
        layer = (
            "TransformerEncoderLayer",
            {"nhead": 2, "dim_feedforward": 16, "dropout": 0.0, "causal": causal},
        )
        model = (
            load_module(generate_source(analyse(chain_graph([5, 8], layer)))).build_model().eval()
        )
        x = torch.randn(1, 5, 8)
        changed = x.clone()
        changed[0, -1] += 1.0
        with torch.no_grad():
            same = torch.allclose(model(x)[0, :-1], model(changed)[0, :-1], atol=1e-6)
        assert same == causal
