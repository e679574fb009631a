"""Generated code: black-formatted, standalone, and safe against hostile ids and names."""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import black
import pytest
from torch import nn

from builder.graph import parse_graph
from compiler import analyse, generate_source
from compiler.codegen import LINE_LENGTH, RESERVED, class_name, identifier
from tests.modelkit import assert_matches_torch, load_module

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.json"))
HOSTILE = [
    'a"; import os; os.system("touch /tmp/pwned") #',
    "x\nimport os\nos.system('touch /tmp/pwned')",
    '"""\nimport os\n"""',
    "__import__('os').system('touch /tmp/pwned')",
    "training",
    "self",
    "class",
    "1st layer",
    "\u2028\r\x0c\\",
    "",
    "ünïcödé",
]


def hostile_graph(ids: list[str], name: str):
    nodes = [{"id": "in\nput'\"", "type": "Input", "params": {"shape": [4]}, "label": "'''\"\"\""}]
    nodes += [
        {"id": node_id or " ", "type": "Linear", "params": {"out_features": 4}, "label": node_id}
        for node_id in ids
    ]
    nodes.append({"id": "out", "type": "Output"})
    order = [n["id"] for n in nodes]
    edges = [{"source": a, "target": b} for a, b in zip(order, order[1:])]
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": name, "nodes": nodes, "edges": edges}
    )


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_ids_and_names_cannot_inject_code(name: str, monkeypatch, tmp_path) -> None:
    analysis = analyse(hostile_graph(HOSTILE, name))
    source = generate_source(analysis)
    calls: list[str] = []
    real_import = builtins.__import__

    def watching_import(module, globals=None, *args, **kwargs):
        if globals is not None and globals.get("__name__") == "generated_model":
            calls.append(module)
        return real_import(module, globals, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", watching_import)
    module = load_module(source)
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert set(calls) <= {"torch"}
    assert not Path("/tmp/pwned").exists()
    tree = ast.parse(source)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported == {"torch", "nn"}
    calls_in_source = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "system" not in calls_in_source
    assert_matches_torch(analysis)
    assert isinstance(module.build_model(), nn.Module)


def test_identifiers_are_valid_unique_and_not_reserved() -> None:
    for text in HOSTILE:
        name = identifier(text)
        assert name.isidentifier() and name not in RESERVED
    assert identifier("Conv 1") == "conv_1"
    assert class_name("tiny-resnet") == "TinyResnet"
    assert class_name('"""') == "Model"
    assert class_name("none") == "NoneModel"


def test_reserved_names_cover_every_nn_module_attribute() -> None:
    public = {name for name in dir(nn.Module) if not name.startswith("_")}
    assert public <= RESERVED


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_generated_code_is_black_formatted(path: Path) -> None:
    source = generate_source(analyse(parse_graph(json.loads(path.read_text()))))
    assert black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH)) == source


def test_long_lines_are_wrapped_the_way_black_would() -> None:
    nodes = [
        {"id": "in", "type": "Input", "params": {"shape": [7, 8]}},
        {
            "id": "a_rather_long_encoder_layer_name_here",
            "type": "TransformerEncoderLayer",
            "params": {
                "nhead": 2,
                "dim_feedforward": 16,
                "dropout": 0.25,
                "activation": "gelu",
                "layer_norm_eps": 1e-6,
                "norm_first": True,
                "bias": False,
            },
        },
        {
            "id": "another_rather_long_attention_name",
            "type": "MultiheadAttention",
            "params": {"num_heads": 2, "causal": True, "dropout": 0.1},
        },
        {"id": "out", "type": "Output"},
    ]
    ids = [n["id"] for n in nodes]
    graph = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "long",
            "nodes": nodes,
            "edges": [{"source": a, "target": b} for a, b in zip(ids, ids[1:])],
        }
    )
    analysis = analyse(graph)
    source = generate_source(analysis)
    assert max(len(line) for line in source.splitlines()) <= LINE_LENGTH
    assert black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH)) == source
    assert_matches_torch(analysis)


def test_forward_reads_in_topological_order_with_named_attributes() -> None:
    source = generate_source(
        analyse(parse_graph(json.loads((TEMPLATE_DIR / "resnet.json").read_text())))
    )
    assert (
        "self.b1_conv1 = nn.Conv2d(16, 16, kernel_size=3, padding=1, bias=False)  # [16, 8, 8]"
        in source
    )
    assert "b1_add = b1_bn2 + stem_relu  # Add: [16, 8, 8]" in source
    assert "return self.head(flatten)" in source
    assert source.index("b1_add = b1_bn2") < source.index("b2_conv1 = self.b2_conv1(")


def test_generation_refuses_an_invalid_graph() -> None:
    analysis = analyse(hostile_graph([], "x"))
    broken = analysis.graph.model_copy(update={"edges": []})
    with pytest.raises(ValueError):
        generate_source(analyse(broken))


def test_positional_encoding_class_is_emitted_only_where_used_and_once() -> None:
    from tests.modelkit import chain_graph

    plain = generate_source(analyse(chain_graph([5, 8], ("Linear", {"out_features": 8}))))
    assert "PositionalEncoding" not in plain and "causal_mask" not in plain
    two = chain_graph(
        [5, 8],
        ("PositionalEncoding", {"max_len": 5}),
        ("PositionalEncoding", {"kind": "sinusoidal", "max_len": 9}),
        ("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 8, "causal": True}),
        ("MultiheadAttention", {"num_heads": 2, "causal": True}),
    )
    source = generate_source(analyse(two))
    assert source.count("class PositionalEncoding(nn.Module):") == 1
    assert source.count("def causal_mask(") == 1
    assert black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH)) == source
    assert_matches_torch(analyse(two))


def test_a_graph_named_like_a_helper_gets_another_class_name() -> None:
    assert class_name("positional encoding") != "PositionalEncoding"


def test_fix_divisors_divide_and_fit_whatever_the_sizes() -> None:
    from builder.catalog import fitting_divisor

    for n in (1, 6, 97, 360, 9_999_991, 10_000_000):
        for limit in (1, 3, 4, 8, 64, 1000, 9_999_989, 10_000_000):
            d = fitting_divisor(n, limit)
            assert n % d == 0 and 1 <= d <= limit
    assert fitting_divisor(6, 4) == 3  # the largest, where the limit is small
    assert fitting_divisor(360, 8) == 8
