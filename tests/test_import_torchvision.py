"""The goal from torchvision: its classification builders import and round-trip (the imported
graph, exported again with the original's weights, gives the same outputs in eval mode, max
|diff| < 1e-4, and the same parameter count), at least 90% of a representative model per family;
the rest are refused with every unsupported op named. All builders: benchmarks/import_coverage.py.
Skips cleanly where torchvision is not installed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compiler import analyse
from compiler.importer import ImportResult, import_file, import_model
from tests.test_import_classics import exported_twin

models = pytest.importorskip("torchvision.models")

REPRESENTATIVES = [
    "resnet18",
    "vgg11_bn",
    "alexnet",
    "squeezenet1_0",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "googlenet",
    "densenet121",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_y_400mf",
]
INPUT_SHAPE = (3, 64, 64)


def build(name: str) -> nn.Module:
    """A torchvision builder with 10 classes and trained-looking BatchNorm statistics."""
    torch.manual_seed(0)
    options: dict[str, Any] = {"num_classes": 10}
    if name == "googlenet":
        options |= {"aux_logits": False, "init_weights": False}
    model = models.get_model(name, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def round_trip_error(model: nn.Module, result: ImportResult) -> float:
    """max |diff| between the original and its imported, exported twin on a fresh input."""
    x = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float((exported_twin(model, result)(x) - model(x)).abs().max())


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[nn.Module, ImportResult]]:
    built = {name: build(name) for name in REPRESENTATIVES}
    return {name: (model, import_model(model, INPUT_SHAPE)) for name, model in built.items()}


def test_at_least_90_percent_of_the_representatives_import_and_round_trip(outcomes) -> None:
    imported = []
    for name, (model, result) in outcomes.items():
        if result.graph is None:
            continue
        assert analyse(result.graph).total_params == sum(p.numel() for p in model.parameters())
        assert round_trip_error(model, result) < 1e-4, name
        imported.append(name)
    assert len(imported) >= 0.9 * len(REPRESENTATIVES), sorted(set(outcomes) - set(imported))


def test_resnet18_reuses_its_relu_as_separate_nodes(outcomes) -> None:
    model, result = outcomes["resnet18"]
    relus = [node for node in result.graph.nodes if node.type == "ReLU"]
    assert len(relus) == 17  # the stem's, and two per BasicBlock, each a node of its own
    assert "self.layer1.0.relu" in {node.label for node in relus}


def test_the_refused_are_refused_with_every_unsupported_op_named_at_its_line(outcomes) -> None:
    for _, result in outcomes.values():
        if result.graph is not None:
            continue
        assert result.problems
        for problem in result.problems:
            assert problem.op and ".py:" in problem.where, str(problem)
            assert "_forward_impl(x)" not in problem.where  # the op's own line, innermost


def test_shufflenet_splits_its_channels_with_one_chunk_node_per_piece(outcomes) -> None:
    """x1, x2 = x.chunk(2, dim=1) in each stride-1 block: two Chunk nodes on the same input."""
    _, result = outcomes["shufflenet_v2_x0_5"]
    assert result.problems == []
    chunks = [node for node in result.graph.nodes if node.type == "Chunk"]
    assert len(chunks) == 26  # 13 blocks with stride 1, two pieces each
    pieces = [
        (n.params.get("chunks", 2), n.params.get("dim", 1), n.params.get("index", 0))
        for n in chunks
    ]
    assert sorted(pieces) == [(2, 1, 0)] * 13 + [(2, 1, 1)] * 13  # defaults are left out


RESNET_FILE = """
from torchvision.models import resnet18

INPUT_SHAPE = (3, 64, 64)


def build_model():
    return resnet18(num_classes=10)
"""


def test_resnet18_imports_from_a_file_with_every_shape_known(tmp_path) -> None:
    (tmp_path / "my_resnet.py").write_text(RESNET_FILE)
    result = import_file(tmp_path / "my_resnet.py")
    assert result.problems == [] and result.warnings == []
    analysis = analyse(result.graph)
    assert analysis.ok and analysis.total_params == 11_181_642
    assert all(analysis.infos[node.id].shape is not None for node in result.graph.nodes)
    (head,) = [node for node, path in result.module_paths.items() if path == "fc"]
    assert analysis.infos[head].shape == (10,)
