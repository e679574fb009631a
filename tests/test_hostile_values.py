"""Hostile values: every parameter of every type at the extremes of its bounds (and just beyond)
is either refused by name when the file is read, or compiles into a model.py whose every name is
defined (no `nan`, no `inf`): generated code never raises NameError."""

from __future__ import annotations

import ast
import builtins
import math
import typing
from typing import Any

import annotated_types
import pytest
from pydantic import ValidationError

from builder.catalog import CATALOG, MAX_SIZE
from builder.graph import GraphFormatError, parse_graph
from compiler import analyse, generate_source
from tests.modelkit import load_module
from tests.test_layers_vs_torch import CASES

# Numbers tried in every numeric field besides the field's own bounds: around 0, 1, the float
# bounds used by the catalog (1000) and the int bound (MAX_SIZE), and what JSON readers accept.
POOL: list[Any] = [
    -MAX_SIZE - 1,
    -MAX_SIZE,
    -1001,
    -1000,
    -8,
    -7,
    -1,
    0,
    1,
    2,
    7,
    1000,
    1001,
    MAX_SIZE,
    MAX_SIZE + 1,
    -1e3,
    0.0,
    5e-324,
    1e-300,
    0.5,
    1.0,
    1e3,
    1e300,
    math.nan,
    math.inf,
    -math.inf,
]
FIRST_CASE = {layer: (shape, params, dtype) for shape, layer, params, dtype in reversed(CASES)}
FIRST_CASE["Input"] = ([4], {"shape": [4]}, "float32")
FIRST_CASE["Output"] = ([4], {}, "float32")
FIRST_CASE["Concat"] = ([3, 4], {}, "float32")  # joins the Input with itself
# Whole-list params with no extremes of their own: every list of extremes is refused by name or
# is an error at the node (the test still proves that), none compiles.
NO_VALID_EXTREMES = {"Permute", "Reshape"}


def bounds_of(annotation: Any, metadata: list[Any]) -> list[float]:
    """Every bound written on a field (ge/gt/le/lt, also inside unions and lists), with the
    nearest value on each side of a strict one."""
    found: list[float] = []
    for item in metadata:
        for name in ("ge", "le"):
            if isinstance(getattr(item, name, None), (int, float)):
                found.append(getattr(item, name))
        if isinstance(item, (annotated_types.Gt, annotated_types.Lt)) or hasattr(item, "gt"):
            for name, direction in (("gt", math.inf), ("lt", -math.inf)):
                value = getattr(item, name, None)
                if isinstance(value, (int, float)):
                    found += [value, math.nextafter(value, direction)]
    for arg in typing.get_args(annotation):
        if isinstance(arg, (annotated_types.BaseMetadata,)) or hasattr(arg, "metadata"):
            found += bounds_of(None, list(getattr(arg, "metadata", [arg])))
        elif not isinstance(arg, (str, int, float, bool)) and arg is not None:
            found += bounds_of(arg, [])
    return found


def holds_numbers(annotation: Any) -> bool:
    """int or float somewhere in the type (bool, str and Literal choices are not numbers)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return False
    return any(holds_numbers(arg) for arg in typing.get_args(annotation))


def numeric_fields(layer: str) -> dict[str, list[Any]]:
    """field -> the values to try: its bounds, the pool, and per-axis lists of both ends."""
    model = CATALOG[layer].params
    tries: dict[str, list[Any]] = {}
    for name, field in model.model_fields.items():
        if not holds_numbers(field.annotation):
            continue
        own = bounds_of(field.annotation, list(field.metadata))
        values = own + POOL
        values += [[v, v] for v in (0, 1, MAX_SIZE, MAX_SIZE + 1, -1)]
        tries[name] = values
    return tries


def graph_for(layer: str, params: dict[str, Any]) -> dict[str, Any]:
    """The layer's first torch case, with these params."""
    shape, _, dtype = FIRST_CASE[layer]
    nodes: list[dict[str, Any]] = [
        {"id": "in", "type": "Input", "params": {"shape": shape, "dtype": dtype}}
    ]
    if layer == "Input":
        nodes = [{"id": "in", "type": "Input", "params": params}]
    elif layer != "Output":
        nodes.append({"id": "n1", "type": layer, "params": params})
    nodes.append({"id": "out", "type": "Output", "params": params if layer == "Output" else {}})
    ids = [n["id"] for n in nodes]
    edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:])]
    if CATALOG[layer].min_inputs == 2:
        edges.append({"source": "in", "target": "n1", "port": 1})
    return {"format": "netbuilder.graph/1", "name": "extreme", "nodes": nodes, "edges": edges}


def undefined_names(source: str) -> set[str]:
    """Names model.py reads but never defines (builtins, imports, defs, args, assignments)."""
    tree = ast.parse(source)
    defined = set(dir(builtins))
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return loaded - defined


LAYERS_WITH_NUMBERS = [layer for layer in CATALOG if numeric_fields(layer)]


@pytest.mark.parametrize("layer", LAYERS_WITH_NUMBERS)
def test_every_numeric_param_at_its_extremes_is_refused_by_name_or_compiles_cleanly(
    layer: str,
) -> None:
    base = FIRST_CASE[layer][1]
    compiled = 0
    for field_name, values in numeric_fields(layer).items():
        for value in values:
            params = {**base, field_name: value}
            try:
                CATALOG[layer].params.model_validate(params)
            except ValidationError:
                with pytest.raises(GraphFormatError, match=field_name):
                    parse_graph(graph_for(layer, params))
                continue
            analysis = analyse(parse_graph(graph_for(layer, params)))
            if not analysis.ok:
                assert all(error.node for error in analysis.errors)
                continue
            source = generate_source(analysis)
            assert not undefined_names(source), (layer, field_name, value)
            module = load_module(source)
            if analysis.total_params < 2_000_000:
                module.build_model()  # runs every constructor: a NameError would show here
            compiled += 1
    if layer not in NO_VALID_EXTREMES:
        assert compiled, f"no extreme value of {layer} compiled: the test would prove nothing"


def test_non_finite_floats_are_refused_with_the_field_named() -> None:
    for value in (math.nan, math.inf, -math.inf):
        graph = graph_for("LeakyReLU", {"negative_slope": value})
        with pytest.raises(GraphFormatError, match="negative_slope must be a float from -1000"):
            parse_graph(graph)


def test_the_undefined_name_check_would_catch_nan_in_code() -> None:
    assert undefined_names("import torch\nx = torch.nn.LeakyReLU(negative_slope=nan)\n") == {"nan"}
