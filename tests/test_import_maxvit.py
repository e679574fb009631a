"""torchvision's MaxViT imports and round-trips: its relative-position attention is a
RelativeAttention node, SwapAxes (torch.swapaxes) a Permute, the window partition and
departition Reshapes and Permutes, MBConv's squeeze-excitation and stochastic depth as in the
other torchvision models. maxvit_t at 224 x 224 is slow on a CPU, so the tests build small
MaxViTs from the same class, which run the same code; the imported graph, exported again with
the original's weights, gives the same outputs in eval mode (max |diff| < 1e-4) and has the
same parameter count. Skips cleanly where torchvision is not installed."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from compiler.importer import import_model
from tests.test_import_classics import assert_round_trip

maxvit = pytest.importorskip("torchvision.models.maxvit")


def build(size: int, partition: int, channels: list[int]) -> nn.Module:
    """A small MaxViT with 10 classes, one layer per block and heads of 4 features."""
    torch.manual_seed(0)
    return maxvit.MaxVit(
        input_size=(size, size),
        stem_channels=8,
        partition_size=partition,
        block_channels=channels,
        block_layers=[1] * len(channels),
        head_dim=4,
        stochastic_depth_prob=0.2,
        num_classes=10,
    ).eval()


def imported(model: nn.Module, size: int) -> Counter[str]:
    """The graph's node types, counted, after checking that the model imports, has torch's
    parameter count and round-trips."""
    shape = (3, size, size)
    result = import_model(model, shape)
    assert_round_trip(
        model, result, torch.randn(2, *shape, generator=torch.Generator().manual_seed(7))
    )
    return Counter(node.type for node in result.graph.nodes)


def test_a_small_maxvit_imports_as_relative_attention_and_round_trips() -> None:
    # 32 x 32: the stem halves it to 16, the two blocks to 8 and 4, each parted into 2 x 2
    types = imported(build(32, 2, [8, 16]), 32)
    assert types["RelativeAttention"] == 4  # a window and a grid attention per layer
    assert types["Permute"] >= 4 * 3  # partition, departition and, for grids, two swaps


def test_windows_larger_than_the_grid_of_windows_round_trip() -> None:
    # 64 x 64: blocks of 16 x 16 and 8 x 8 in windows of 4 x 4, so the grid attention's groups
    # (4 x 4 positions, strided) differ from its windows (16 and 4 per map)
    types = imported(build(64, 4, [8, 16]), 64)
    assert types["RelativeAttention"] == 4
