"""Every template is valid, compiles, and runs with exactly the predicted shapes and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from builder.graph import load_graph
from compiler import analyse
from tests.modelkit import assert_matches_torch

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.json"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_is_valid_and_matches_torch(path: Path) -> None:
    analysis = analyse(load_graph(path.read_text()))
    assert analysis.ok and not analysis.warnings
    assert_matches_torch(analysis)


def test_lenet5_has_its_published_parameter_count() -> None:
    analysis = analyse(load_graph((TEMPLATE_DIR / "lenet5.json").read_text()))
    assert analysis.total_params == 61_706


def test_resnet_template_equals_a_hand_written_resnet() -> None:
    """Parameter count against torch modules written out by hand, not by our generator."""

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]

    modules = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)]
    modules += block(16, 16, 1) + block(16, 32, 2)
    modules += [nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32), nn.Linear(32, 10)]
    expected = sum(p.numel() for m in modules for p in m.parameters())
    analysis = analyse(load_graph((TEMPLATE_DIR / "resnet.json").read_text()))
    assert analysis.total_params == expected


def test_transformer_template_equals_hand_written_modules() -> None:
    modules = [
        nn.Embedding(16, 32),
        nn.Conv1d(32, 32, 3, padding="same"),
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
        nn.Linear(32, 16),
    ]
    expected = sum(p.numel() for m in modules for p in m.parameters())
    data = json.loads((TEMPLATE_DIR / "transformer_encoder.json").read_text())
    assert analyse(load_graph(json.dumps(data))).total_params == expected
