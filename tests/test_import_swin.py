"""torchvision's Swin Transformers import and round-trip: their shifted-window attention is a
WindowAttention node (v2: cosine attention and the MLP position bias), their patch merging a
Pad, Slices and a Concat; the imported graph, exported again with the original's weights, gives
the same outputs in eval mode (max |diff| < 1e-4) and has the same parameter count. Skips
cleanly where torchvision is not installed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from compiler.importer import import_model
from tests.test_import_classics import assert_round_trip

models = pytest.importorskip("torchvision.models")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One thread, as `make test`'s workers have: on two shared cores, two threads per process
    make these models' matrix products several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str) -> nn.Module:
    """A Swin with 10 classes whose qkv biases are all non-zero (v2 must ignore the key's)."""
    torch.manual_seed(0)
    model = models.get_model(name, num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "qkv") and module.qkv.bias is not None:
                module.qkv.bias.uniform_(-0.5, 0.5)
    return model


def imported(name: str, shape: tuple[int, ...]) -> tuple[nn.Module, Counter[str]]:
    """The model, after checking that it imports, has torch's parameter count and
    round-trips; the graph's node types, counted."""
    model = build(name)
    result = import_model(model, shape)
    assert_round_trip(
        model, result, torch.randn(2, *shape, generator=torch.Generator().manual_seed(7))
    )
    return model, Counter(node.type for node in result.graph.nodes)


def test_swin_t_imports_as_window_attention_and_patch_merging_and_round_trips() -> None:
    _, types = imported("swin_t", (3, 64, 64))
    assert types["WindowAttention"] == 12  # one per block: depths 2, 2, 6, 2
    assert types["Slice"] == 3 * 6  # three patch mergings: two row slices, four column slices
    assert types["Pad"] == 0  # 16 x 16, 8 x 8 and 4 x 4 maps: even, nothing to pad


def test_swin_v2_t_with_cosine_attention_and_the_mlp_bias_round_trips() -> None:
    model, types = imported("swin_v2_t", (3, 64, 64))
    assert types["WindowAttention"] == 12
    assert model.features[1][0].attn.qkv.bias.abs().min() > 0  # the key's bias is there, unused


def test_odd_maps_are_padded_for_the_windows_and_for_patch_merging() -> None:
    # 36 / 4 = 9: windows of 7 over a 9 x 9 map pad it to 14 x 14 (and keep the shift); patch
    # merging pads 9 -> 10, then 5 -> 6 and 3 -> 4
    _, types = imported("swin_t", (3, 36, 36))
    assert types["Pad"] == 3
