"""ONNX export: every template and every catalog layer type exports with torch.onnx.export, and
onnxruntime computes what PyTorch computes (within 1e-4) at several batch sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from builder.catalog import CATALOG, example_graphs
from builder.graph import Graph, load_graph, parse_graph
from compiler import analyse, generate_source
from export.onnx_export import (
    INPUT_NAME,
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


# Built from every catalog entry's examples (builder.catalog.example_graphs), not written here:
# a new layer type with an example is exported and checked without touching this file.
COVERAGE = {name: parse_graph(data) for name, data in example_graphs().items()}


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


def test_coverage_graphs_use_every_layer_type() -> None:
    used = {node.type for g in COVERAGE.values() for node in g.nodes}
    assert used == set(CATALOG), f"give {set(CATALOG) - used} an example in its catalog entry"


@pytest.mark.parametrize("name", sorted(set(CATALOG) - {"Input", "Output"}))
def test_every_layer_type_has_an_example_that_compiles_alone(name: str) -> None:
    for example in CATALOG[name].examples or pytest.fail(f"{name} has no example"):
        layers = [(name, dict(example.params) or dict(CATALOG[name].starter))]
        if CATALOG[name].min_inputs > 1:
            continue  # a merge needs two inputs: its examples run in the coverage graphs
        assert analyse(chain(list(example.shape), layers, example.dtype)).ok


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
