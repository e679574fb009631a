"""Each layer type: the inferred shape and parameter count equal those of the real torch module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from builder.catalog import CATALOG, Tensor
from compiler import analyse
from tests.modelkit import assert_matches_torch, chain_graph

CASES: list[tuple[list[int], str, dict, str]] = [
    ([1, 28, 28], "Conv2d", {"out_channels": 6, "kernel_size": 5, "padding": 2}, "float32"),
    ([3, 17, 23], "Conv2d", {"out_channels": 8, "kernel_size": [3, 5], "stride": [2, 3]}, "float32"),
    ([4, 16, 16], "Conv2d", {"out_channels": 8, "kernel_size": 3, "dilation": 2, "groups": 4}, "float32"),
    ([4, 9, 10], "Conv2d", {"out_channels": 6, "kernel_size": 4, "padding": "same", "dilation": 2}, "float32"),
    ([2, 7, 7], "Conv2d", {"out_channels": 3, "kernel_size": 3, "padding": "valid", "bias": False}, "float32"),
    ([2, 7, 7], "Conv2d", {"out_channels": 3, "kernel_size": 2, "padding": [1, 0], "stride": 2}, "float32"),
    ([3, 50], "Conv1d", {"out_channels": 5, "kernel_size": 7, "stride": 3, "padding": 2}, "float32"),
    ([4, 20], "Conv1d", {"out_channels": 4, "kernel_size": 4, "padding": "same", "groups": 2}, "float32"),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, "float32"),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 2, "ceil_mode": True}, "float32"),
    ([3, 13, 11], "MaxPool2d", {"kernel_size": 3, "dilation": 2, "stride": 1}, "float32"),
    ([13, 11], "MaxPool2d", {"kernel_size": 2}, "float32"),
    ([3, 13], "MaxPool1d", {"kernel_size": 3, "stride": 2, "ceil_mode": True}, "float32"),
    ([3, 12, 12], "AvgPool2d", {"kernel_size": 5, "stride": 3, "padding": 2, "ceil_mode": True}, "float32"),
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
    ([7, 5], "LSTM", {"hidden_size": 6, "num_layers": 3, "bidirectional": True, "dropout": 0.1}, "float32"),
    ([7, 5], "GRU", {"hidden_size": 4, "num_layers": 2, "bias": False}, "float32"),
    ([7, 5], "GRU", {"hidden_size": 4, "bidirectional": True}, "float32"),
    ([7, 8], "MultiheadAttention", {"num_heads": 2}, "float32"),
    ([7, 8], "MultiheadAttention", {"num_heads": 4, "bias": False, "causal": True}, "float32"),
    ([7, 8], "TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16}, "float32"),
    ([7, 8], "TransformerEncoderLayer", {"nhead": 4, "activation": "gelu", "norm_first": True, "bias": False}, "float32"),
    ([7, 8], "SequencePool", {"mode": "last"}, "float32"),
    ([7, 8], "SequencePool", {"mode": "mean"}, "float32"),
    ([7, 8, 3], "SequencePool", {"mode": "max"}, "float32"),
    ([2, 3, 4], "Permute", {"dims": [0, 3, 1, 2]}, "float32"),
    ([2, 3, 4], "Reshape", {"shape": [6, -1]}, "float32"),
    ([2, 3, 4], "Reshape", {"shape": [24]}, "float32"),
]


@pytest.mark.parametrize(("shape", "layer", "params", "dtype"), CASES, ids=lambda v: str(v))
def test_shape_and_param_count_match_torch(shape, layer, params, dtype) -> None:
    analysis = analyse(chain_graph(shape, (layer, params), dtype=dtype))
    assert_matches_torch(analysis)


def test_every_layer_type_is_covered() -> None:
    covered = {case[1] for case in CASES} | {"Input", "Output", "Add", "Multiply", "Concat"}
    assert covered == set(CATALOG)


@pytest.mark.parametrize(
    ("shape", "layer", "params", "fragment"),
    [
        ([1, 3, 3], "Conv2d", {"out_channels": 2, "kernel_size": 5}, "exceeds padded input 3x3"),
        ([1, 8, 8], "Conv2d", {"out_channels": 2, "kernel_size": 3, "dilation": 4}, "dilated 9x9"),
        ([3, 8, 8], "Conv2d", {"out_channels": 4, "kernel_size": 3, "groups": 2}, "groups=2"),
        ([3, 8, 8], "Conv2d", {"out_channels": 4, "kernel_size": 3, "padding": "same", "stride": 2}, "stride 1"),
        ([2, 5], "MaxPool1d", {"kernel_size": 6}, "exceeds"),
        ([2, 5, 5], "MaxPool2d", {"kernel_size": 2, "padding": 2}, "at most half"),
        ([5, 4], "GroupNorm", {"num_groups": 2}, "must divide"),
        ([5, 6], "MultiheadAttention", {"num_heads": 4}, "must divide"),
        ([5, 6], "TransformerEncoderLayer", {"nhead": 4}, "must divide"),
        ([2, 3, 4], "Reshape", {"shape": [5, -1]}, "not divisible"),
        ([2, 3, 4], "Reshape", {"shape": [5, 5]}, "element counts"),
        ([2, 3, 4], "Permute", {"dims": [0, 1, 1, 2]}, "permutation"),
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
    with pytest.raises((RuntimeError, ValueError, AssertionError, IndexError)):
        if spec.module is not None:
            holder.layer = eval(spec.module(typed, tensors), namespace)
        eval(spec.call(typed, "layer", names), {**namespace, "self": holder})
