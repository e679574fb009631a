"""ONNX export: every template and every catalog layer type exports with torch.onnx.export, and
onnxruntime computes what PyTorch computes (within 1e-4) at several batch sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from builder.catalog import CATALOG
from builder.graph import Graph, load_graph, parse_graph
from compiler import analyse, generate_source
from export.onnx_export import (
    INPUT_NAME,
    UNEXPORTABLE,
    OnnxExportError,
    export_graph_onnx,
    export_onnx,
    unexportable_layers,
)
from tests.modelkit import load_module, random_input

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.json"))
TOLERANCE = 1e-4


def graph(
    shape: list[int],
    nodes: list[tuple[str, str, dict]],
    edges: list[tuple[str, str]],
    dtype: str = "float32",
) -> Graph:
    """A graph from (id, type, params) and (source, target) pairs; the input is 'in'."""
    return parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "onnx-check",
            "nodes": [{"id": "in", "type": "Input", "params": {"shape": shape, "dtype": dtype}}]
            + [{"id": i, "type": t, "params": p} for i, t, p in nodes],
            "edges": [{"source": s, "target": t, "port": n} for n, (s, t) in enumerate(edges)],
        }
    )


def chain(shape: list[int], layers: list[tuple[str, dict]], dtype: str = "float32") -> Graph:
    ids = ["in"] + [f"n{i}" for i in range(len(layers))] + ["out"]
    nodes = [(f"n{i}", t, p) for i, (t, p) in enumerate(layers)] + [("out", "Output", {})]
    return graph(shape, nodes, list(zip(ids, ids[1:])), dtype)


# Between them these graphs use every catalog layer type (checked below).
COVERAGE = {
    "image": chain(
        [3, 12, 12],
        [
            ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": 1}),
            ("BatchNorm2d", {}),
            ("ReLU", {}),
            ("GroupNorm", {"num_groups": 2}),
            ("Dropout2d", {"p": 0.3}),
            ("MaxPool2d", {"kernel_size": 2}),
            ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": "same", "groups": 2}),
            ("SiLU", {}),
            ("AvgPool2d", {"kernel_size": 2}),
            ("AdaptiveAvgPool2d", {"output_size": 2}),
            ("GELU", {"approximate": "tanh"}),
            ("Flatten", {}),
            ("Linear", {"out_features": 16}),
            ("LeakyReLU", {"negative_slope": 0.1}),
            ("Dropout", {}),
            ("Tanh", {}),
            ("Linear", {"out_features": 5}),
            ("Sigmoid", {}),
            ("Softmax", {}),
            ("Identity", {}),
        ],
    ),
    "sequence": chain(
        [8, 6],
        [
            ("Permute", {"dims": [0, 2, 1]}),
            ("Conv1d", {"out_channels": 8, "kernel_size": 3, "padding": 1}),
            ("BatchNorm1d", {}),
            ("MaxPool1d", {"kernel_size": 2}),
            ("AvgPool1d", {"kernel_size": 1}),
            ("AdaptiveAvgPool1d", {"output_size": 4}),
            ("Permute", {"dims": [0, 2, 1]}),
            ("RNN", {"hidden_size": 8}),
            ("LSTM", {"hidden_size": 8, "bidirectional": True}),
            ("GRU", {"hidden_size": 8, "num_layers": 2}),
            ("LayerNorm", {}),
            ("MultiheadAttention", {"num_heads": 2, "causal": True}),
            ("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16}),
            ("RMSNorm", {"eps": 1e-6}),
            ("Reshape", {"shape": [32]}),
            ("Reshape", {"shape": [4, -1]}),
            ("SequencePool", {"mode": "mean"}),
        ],
    ),
    "growing": chain(
        [3, 6, 6],
        [
            (
                "ConvTranspose2d",
                {"out_channels": 4, "kernel_size": 3, "stride": 2, "output_padding": 1},
            ),
            ("InstanceNorm2d", {"affine": True}),
            ("ReLU6", {}),
            ("Upsample", {"scale_factor": 1.5, "mode": "bilinear"}),
            ("Upsample", {"size": [9, 9]}),
            ("AdaptiveMaxPool2d", {"output_size": 3}),
            ("PReLU", {"num_parameters": 4}),
            ("Hardswish", {}),
            ("ELU", {"alpha": 0.5}),
            ("Hardsigmoid", {}),
            ("Softplus", {"beta": 2.0}),
            ("Flatten", {}),
            ("Linear", {"out_features": 5}),
            ("LogSoftmax", {"dim": 1}),
        ],
    ),
    "positions": chain(
        [6, 8],
        [
            ("PositionalEncoding", {"kind": "sinusoidal", "max_len": 10}),
            ("PositionalEncoding", {"max_len": 6, "dropout": 0.1}),
            ("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16, "causal": True}),
            ("Permute", {"dims": [0, 2, 1]}),
            ("ConvTranspose1d", {"out_channels": 4, "kernel_size": 3, "stride": 2}),
            ("InstanceNorm1d", {}),
            ("Upsample", {"scale_factor": 2.0, "mode": "linear"}),
            ("AdaptiveMaxPool1d", {"output_size": 13}),
        ],
    ),
    "gate": graph(
        [4, 6, 6],
        [
            ("squeeze", "AdaptiveAvgPool2d", {"output_size": 1}),
            ("excite", "Sigmoid", {}),
            ("scaled", "Multiply", {}),
            ("out", "Output", {}),
        ],
        [
            ("in", "squeeze"),
            ("squeeze", "excite"),
            ("in", "scaled"),
            ("excite", "scaled"),
            ("scaled", "out"),
        ],
    ),
    "tokens": chain(
        [5],
        [
            ("Embedding", {"num_embeddings": 10, "embedding_dim": 8}),
            ("MultiheadAttention", {"num_heads": 2}),
            ("SequencePool", {"mode": "last"}),
        ],
        dtype="int64",
    ),
    "merges": graph(
        [4, 6],
        [
            ("a", "Linear", {"out_features": 6}),
            ("b", "Tanh", {}),
            ("sum", "Add", {}),
            ("product", "Multiply", {}),
            ("joined", "Concat", {"dim": 2}),
            ("pool", "SequencePool", {"mode": "max"}),
            ("out", "Output", {}),
        ],
        [
            ("in", "a"),
            ("in", "b"),
            ("a", "sum"),
            ("b", "sum"),
            ("sum", "product"),
            ("b", "product"),
            ("product", "joined"),
            ("a", "joined"),
            ("joined", "pool"),
            ("pool", "out"),
        ],
    ),
    "pieces": graph(  # ShuffleNet's split: two pieces of the channels, one scaled, joined again
        [6, 5],
        [
            ("first", "Chunk", {"chunks": 2, "index": 0}),
            ("second", "Chunk", {"chunks": 2, "index": 1}),
            ("scaled", "Scale", {"factor": 2.5}),
            ("joined", "Concat", {"dim": 1}),
            ("out", "Output", {}),
        ],
        [
            ("in", "first"),
            ("in", "second"),
            ("second", "scaled"),
            ("scaled", "joined"),
            ("first", "joined"),
            ("joined", "out"),
        ],
    ),
}


def randomised(model: nn.Module) -> nn.Module:
    """Default-scale weights, nudged, and random normalisation statistics, so that no layer
    hides behind its initial values (zero biases, running mean 0, running variance 1)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.rand(tensor.shape, generator=generator) - 0.5
            tensor.copy_(noise + 1 if "running_var" in name else tensor + 0.1 * noise)
    return model.eval()


def onnx_matches_torch(graph: Graph, batches: tuple[int, ...] = (3, 5)) -> float:
    """Export the compiled graph and return the largest |onnxruntime - torch| over the batches."""
    analysis = analyse(graph)
    assert analysis.ok, analysis.errors
    model = randomised(load_module(generate_source(analysis)).build_model())
    session = onnxruntime.InferenceSession(
        export_onnx(model, random_input(analysis, 2)), providers=["CPUExecutionProvider"]
    )
    worst = 0.0
    for batch in batches:
        x = random_input(analysis, batch)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {INPUT_NAME: x.numpy()})
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_every_template_exports_and_onnxruntime_matches_torch(template: Path) -> None:
    assert onnx_matches_torch(load_graph(template.read_text()), batches=(1, 3, 5)) <= TOLERANCE


def test_coverage_graphs_use_every_exportable_layer_type() -> None:
    used = {node.type for g in COVERAGE.values() for node in g.nodes}
    missing = set(CATALOG) - set(UNEXPORTABLE) - used
    assert (
        not missing
    ), f"add {missing} to a COVERAGE graph (or, if it cannot export, to UNEXPORTABLE)"
    assert used == set(CATALOG) - set(UNEXPORTABLE)


@pytest.mark.parametrize("name", COVERAGE)
def test_every_layer_type_exports_and_onnxruntime_matches_torch(name: str) -> None:
    assert onnx_matches_torch(COVERAGE[name]) <= TOLERANCE


def test_no_graph_of_exportable_layers_is_reported_as_unexportable() -> None:
    for g in COVERAGE.values():
        assert unexportable_layers(analyse(g)) == []


def test_export_does_not_change_the_model() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    export_onnx(model, torch.randn(2, 4))
    assert model.training


def test_a_model_that_cannot_export_raises_a_named_error() -> None:
    class BranchesOnValues(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(OnnxExportError, match="torch.onnx.export failed: TorchExportError"):
        export_onnx(BranchesOnValues(), torch.randn(2, 3))


def test_a_graph_exports_with_a_runs_trained_weights() -> None:
    graph = load_graph((TEMPLATE_DIR / "resnet.json").read_text())
    analysis = analyse(graph)
    trained = randomised(load_module(generate_source(analysis)).build_model())
    session = onnxruntime.InferenceSession(export_graph_onnx(analysis, trained.state_dict()))
    x = random_input(analysis, 4)
    with torch.no_grad():
        expected = trained(x).numpy()
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_weights_of_another_graph_are_refused_by_name() -> None:
    lenet = analyse(load_graph((TEMPLATE_DIR / "lenet5.json").read_text()))
    resnet = analyse(load_graph((TEMPLATE_DIR / "resnet.json").read_text()))
    weights = load_module(generate_source(resnet)).build_model().state_dict()
    with pytest.raises(OnnxExportError, match="the weights do not fit this graph"):
        export_graph_onnx(lenet, weights)


def test_adaptive_max_pool_that_onnx_cannot_express_is_named_before_export() -> None:
    uneven = chain([4, 26], [("AdaptiveMaxPool1d", {"output_size": 5})])
    (reason,) = unexportable_layers(analyse(uneven))
    assert str(reason).startswith("AdaptiveMaxPool1d 'n0': ONNX has no adaptive max pooling")
    with pytest.raises(OnnxExportError, match="divides the input size, here \\[26\\] by \\[5\\]"):
        export_graph_onnx(analyse(uneven))
