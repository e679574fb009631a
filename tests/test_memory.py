"""compiler/memory.py: the sizes a model needs, judged against PyTorch, and the budget error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from builder.graph import Graph, load_graph, parse_graph
from compiler.analysis import analyse
from compiler.codegen import generate_source
from compiler.memory import (
    DEFAULT_PARAMETER_BUDGET,
    OPTIMIZER_COPIES,
    budget_diagnostic,
    does_not_fit,
    estimate_memory,
    format_bytes,
    over_parameter_budget,
)
from runtime.loop import make_optimizer
from runtime.trainer import TrainConfig, load_model_source

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "builder" / "templates"


def template(name: str) -> Graph:
    return load_graph((TEMPLATES / f"{name}.json").read_text())


def huge() -> Graph:
    return parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "huge",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [10_000_000]}},
                {"id": "a", "type": "Linear", "params": {"out_features": 10_000_000}},
                {"id": "b", "type": "Linear", "params": {"out_features": 10_000_000}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [
                {"source": "in", "target": "a"},
                {"source": "a", "target": "b"},
                {"source": "b", "target": "out"},
            ],
        }
    )


def built(graph: Graph) -> nn.Module:
    return load_model_source(generate_source(analyse(graph)))


@pytest.mark.parametrize("name", ["lenet5", "resnet", "lstm_classifier", "transformer_encoder"])
def test_parameter_bytes_are_what_torch_allocates(name: str):
    graph = template(name)
    model = built(graph)
    expected = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate_memory(graph, analyse(graph)).parameter_bytes == expected


def test_activations_per_sample_are_the_outputs_torch_computes_for_lenet():
    """Every layer's output for one sample, plus the input; views (Flatten) add nothing."""
    graph = template("lenet5")
    model = built(graph)
    sizes: list[int] = []
    for module in model.modules():
        if not list(module.children()) and not isinstance(module, nn.Flatten):
            module.register_forward_hook(
                lambda _m, _i, out: sizes.append(out.numel() * out.element_size())
            )
    sample = torch.zeros(1, 1, 28, 28)
    model(sample)
    expected = sum(sizes) + sample.numel() * sample.element_size()
    assert estimate_memory(graph, analyse(graph)).activation_bytes_per_sample == expected


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_COPIES))
def test_optimizer_state_copies_match_what_torch_keeps(optimizer: str):
    graph = template("lenet5")
    model = built(graph)
    opt = make_optimizer(TrainConfig(optimizer=optimizer), list(model.parameters()))
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    opt.step()
    kept = sum(
        value.numel() * value.element_size()
        for state in opt.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0  # not Adam's step counter
    )
    estimate = estimate_memory(graph, analyse(graph), optimizer=optimizer)
    assert estimate.optimizer_bytes == kept


def test_a_training_step_adds_gradients_optimizer_state_and_the_batch_activations():
    graph = template("lenet5")
    one = estimate_memory(graph, analyse(graph), batch_size=1, optimizer="adam")
    many = estimate_memory(graph, analyse(graph), batch_size=64, optimizer="adam")
    assert one.training_bytes == 4 * one.parameter_bytes + one.activation_bytes_per_sample
    assert many.training_bytes - one.training_bytes == 63 * one.activation_bytes_per_sample


def test_bytes_read_as_people_write_them():
    assert [format_bytes(n) for n in (0, 999, 1_500, 246_824, 3_200_008_000_000_000)] == [
        "0 B", "999 B", "1.5 kB", "246.8 kB", "3.2 PB",
    ]  # fmt: skip


def test_parameters_beyond_the_budget_are_a_message_with_both_figures():
    graph = huge()
    estimate = estimate_memory(graph, analyse(graph))
    problem = over_parameter_budget(estimate)
    assert problem is not None and problem.values["need"] == "800.0 TB"
    assert str(problem).startswith("the model needs 800.0 TB for parameters alone")
    assert "over the budget of 16.0 GB" in str(problem)
    lenet = template("lenet5")
    assert over_parameter_budget(estimate_memory(lenet, analyse(lenet))) is None
    assert budget_diagnostic(graph, analyse(graph)).node == "a"  # the largest layer
    assert budget_diagnostic(graph, analyse(graph), budget=10**16) is None


def test_a_device_that_is_too_small_gets_both_figures():
    graph = template("lenet5")
    estimate = estimate_memory(graph, analyse(graph))
    assert does_not_fit(estimate, "cpu", estimate.training_bytes) is None
    refusal = does_not_fit(estimate, "cuda", 1_000_000)
    assert refusal is not None
    assert f"needs {format_bytes(estimate.training_bytes)} to train at batch size 64" in str(
        refusal
    )
    assert "but cuda has only 1.0 MB available" in str(refusal)


def test_compiler_check_reports_a_model_beyond_the_budget_as_an_error(tmp_path: Path):
    path = tmp_path / "huge.json"
    path.write_text(huge().model_dump_json())
    done = subprocess.run(
        [sys.executable, "-m", "compiler", "check", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    [error] = report["errors"]
    assert error["node"] == "a" and "800.0 TB for parameters alone" in error["message"]
    assert report["memory"]["parameter_bytes"] == 800_000_080_000_000
    assert DEFAULT_PARAMETER_BUDGET < report["memory"]["parameter_bytes"]
