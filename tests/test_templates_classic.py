"""The classic templates a learner expects (issue 10 section 5): AlexNet-style on 28x28 digits,
VGG-style with BatchNorm, a MobileNet-style block (depthwise-separable conv, ReLU6,
squeeze-excitation with a broadcasting Multiply) and a small U-Net-style encoder/decoder
(ConvTranspose2d, skip Concat) used as an autoencoder. Each compiles with PyTorch's shapes and
counts, exports (model.py and ONNX), trains a few steps through the runtime, and the classifiers
learn above chance (10 classes: 10%)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from builder.graph import Graph, load_graph
from compiler import analyse, generate_source
from export.onnx_export import export_graph_onnx
from runtime.runs import create_run
from runtime.trainer import TrainConfig, load_model_source, train_run
from tests.modelkit import assert_matches_torch

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"

# template -> (the dataset it trains on, its input shape, output shape)
CLASSIFIERS = {
    "alexnet_digits28": ("digits-28", [1, 28, 28]),
    "vgg_bn_digits": ("digits", [1, 8, 8]),
    "mobilenet_block_digits": ("digits", [1, 8, 8]),
}
AUTOENCODER = "unet_digits"
EVERY = [*CLASSIFIERS, AUTOENCODER]


def template(name: str) -> Graph:
    return load_graph((TEMPLATES / f"{name}.json").read_text())


def train(tmp_path: Path, name: str, **config: Any):  # noqa: ANN201 - the runtime's RunResult
    folder = create_run(tmp_path, template(name), TrainConfig(**config))
    return train_run(folder)


@pytest.mark.parametrize("name", EVERY)
def test_template_compiles_with_pytorchs_shapes_and_counts(name: str) -> None:
    analysis = analyse(template(name))
    assert analysis.ok and not analysis.warnings, analysis.errors + analysis.warnings
    assert_matches_torch(analysis)


@pytest.mark.parametrize("name", EVERY)
def test_template_exports_to_model_py_and_onnx(name: str) -> None:
    analysis = analyse(template(name))
    model = load_model_source(generate_source(analysis)).eval()
    shape = analysis.infos[analysis.graph.nodes[0].id].shape
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape[0] == 2
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load_from_string(export_graph_onnx(analysis)))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_template_learns_its_dataset_above_chance(name: str, tmp_path: Path) -> None:
    dataset, shape = CLASSIFIERS[name]
    assert template(name).nodes[0].params["shape"] == shape
    result = train(tmp_path, name, dataset=dataset, epochs=3, lr=2e-3, batch_size=32)
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy >= 0.3


def test_unet_template_is_an_image_to_image_autoencoder_on_digits(tmp_path: Path) -> None:
    analysis = analyse(template(AUTOENCODER))
    output = next(n for n in analysis.graph.nodes if n.type == "Output")
    assert analysis.infos[output.id].shape == (1, 8, 8)
    types = {n.type for n in analysis.graph.nodes}
    assert {"ConvTranspose2d", "Concat"} <= types
    if "target" not in TrainConfig.model_fields:
        pytest.skip("the runtime's target='input' (train to reproduce the input) is not here yet")
    result = train(tmp_path, AUTOENCODER, dataset="digits", target="input", epochs=2, lr=2e-3)
    assert result.status == "completed", result.message
