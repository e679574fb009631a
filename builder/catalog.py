"""The layer catalog: everything NetBuilder knows about each layer type, in one entry per type.

The entries live in builder/layers/, one module per family, as torch.nn keeps its modules
(conv.py, pooling.py, normalization.py, activation.py, dropout.py, sparse.py, rnn.py,
transformer.py, upsampling.py, merge.py; Input, Output and Linear in core.py). Each entry holds
the parameter schema (a pydantic model: types, defaults, ranges, choices), the palette category
and starter params, the number of inputs, the shape rule, the parameter and MAC counts, the
PyTorch constructor it emits and its forward expression, the torch modules and functional forms
it stands for, and its teaching text (a description and the formula it applies).

This index collects them into CATALOG and derives the tables others need from them (the
importer's module and functional tables, the sequence, view and attention types, the README's
layer table); nothing here is typed a second time. Adding a layer type means adding one entry
to its family's ENTRIES (and one case to tests/test_layers_vs_torch.py).

`python -m builder.catalog --readme` rewrites the README's layer table from the catalog;
`--check` exits 1 when the README's table differs from it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from builder.layers import (
    activation,
    conv,
    core,
    dropout,
    merge,
    normalization,
    pooling,
    rnn,
    sparse,
    transformer,
    upsampling,
)
from builder.layers.base import (
    CATEGORIES,
    MAX_SIZE,
    Advice,
    Argument,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NoParams,
    NotMappable,
    Params,
    Shape,
    Tensor,
    fitting_divisor,
    shape_text,
)
from builder.layers.core import (
    CLASS_LOSSES,
    LOSS_CHOICES,
    LOSSES,
    SOFTMAX_LOSSES,
    OutputParams,
)
from i18n import Message, msg

FAMILIES = (
    core,
    conv,
    upsampling,
    pooling,
    normalization,
    dropout,
    activation,
    sparse,
    rnn,
    transformer,
    merge,
)

CATALOG: dict[str, LayerSpec] = {spec.name: spec for family in FAMILIES for spec in family.ENTRIES}

ParamsReader = Callable[[Any], dict[str, Any]]

# Types whose output is time-first [T, F] (a Conv1d after one is told to Permute first).
SEQUENCE_TYPES = frozenset(name for name, spec in CATALOG.items() if spec.sequence_output)
# Types whose output is their input or a view of it: no new memory.
VIEW_TYPES = frozenset(name for name, spec in CATALOG.items() if spec.view_of_input)
# Types that accept int64 token ids; every other layer needs an Embedding before it.
TOKEN_ID_TYPES = frozenset(name for name, spec in CATALOG.items() if spec.takes_token_ids)
# Types that hold attention weights a run can show.
ATTENTION_TYPES = frozenset(name for name, spec in CATALOG.items() if spec.attends)


def module_table() -> dict[type, tuple[str, ParamsReader]]:
    """{torch.nn class: (catalog type, its params_from_module)}, from each entry's torch_modules:
    what the importer maps a live module with."""
    from torch import nn

    table: dict[type, tuple[str, ParamsReader]] = {}
    for spec in CATALOG.values():
        for name in spec.torch_modules:
            assert spec.params_from_module is not None, spec.name
            table[getattr(nn, name)] = (spec.name, spec.params_from_module)
    return table


def functional_table() -> dict[str, str]:
    """{qualified name of a functional form or tensor method: catalog type}."""
    return {name: spec.name for spec in CATALOG.values() for name in spec.functional}


def functional_handling(spec: LayerSpec) -> str:
    """How the importer reads the arguments of this type's functional forms: 'reader' (the
    importer's reader named by functional_reader), 'arguments' (by position and keyword),
    'none' (the type has no params) or 'missing' (a type with params that says neither,
    which tests/test_catalog.py refuses: its params would silently be the defaults)."""
    if spec.functional_reader is not None:
        return "reader"
    if spec.functional_args:
        return "arguments"
    return "none" if not spec.params.model_fields else "missing"


def describe_param_errors(model: type[Params], exc: ValidationError, given: dict[str, Any]) -> str:
    """One readable line for a params ValidationError: field, expectation, offending value."""
    return str(param_problem(model, exc, given))


def param_problem(model: type[Params], exc: ValidationError, given: dict[str, Any]) -> Message:
    """describe_param_errors as a Message, to render in the reader's language."""
    problems: dict[str, Message] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            problem = msg("unknown parameter {name!r} (known: {known})", name=name, known=known)
        elif error["type"] == "missing":
            expect = model.model_fields[name].description or ""
            problem = msg("{name} is required ({expect})", name=name, expect=msg(expect))
        elif name in model.model_fields:
            expect = model.model_fields[name].description
            problem = msg(
                "{name} must be {expect}, got {value}",
                name=name,
                expect=msg(expect) if expect else error["msg"],
                value=shown(given.get(name)),
            )
        else:
            # a model validator's sentence (N_-marked where it is raised): translated if known
            problem = msg("{problem}", problem=msg(error["msg"].removeprefix("Value error, ")))
        problems.setdefault(str(problem), problem)
    return joined(list(problems.values()))


def joined(parts: list[Message]) -> Message:
    """Several sentences as one Message: 'a; b; c' in any language."""
    if len(parts) == 1:
        return parts[0]
    return msg("{first}; {rest}", first=parts[0], rest=joined(parts[1:]))


def shown(value: Any) -> str:
    """A given value for a message, cut short; NaN and Infinity as a JSON file writes them."""
    text = json.dumps(value) if isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "ATTENTION_TYPES",
    "CATALOG",
    "CATEGORIES",
    "CLASS_LOSSES",
    "LOSS_CHOICES",
    "LOSSES",
    "MAX_SIZE",
    "SEQUENCE_TYPES",
    "SOFTMAX_LOSSES",
    "TOKEN_ID_TYPES",
    "VIEW_TYPES",
    "Advice",
    "Argument",
    "Example",
    "Fix",
    "LayerError",
    "LayerSpec",
    "NoParams",
    "NotMappable",
    "OutputParams",
    "Params",
    "Shape",
    "Tensor",
    "describe_param_errors",
    "example_graphs",
    "functional_handling",
    "functional_table",
    "joined",
    "param_problem",
    "fitting_divisor",
    "module_table",
    "readme_table",
    "shape_text",
]


# ---------------------------------------------------------------------------------------------
# Example graphs: every entry's examples, built into a few graphs (the ONNX coverage graphs)


def example_graphs() -> dict[str, dict[str, Any]]:
    """One graph file (a dict) per example input: Input -> each example layer -> Flatten, all
    joined by a Concat -> Output. A layer of several inputs gets the Input and Identity copies
    of it. Between them these graphs use every entry that has examples."""
    groups: dict[tuple[tuple[int, ...], str], list[tuple[str, dict[str, Any]]]] = {}
    for spec in CATALOG.values():
        for example in spec.examples:
            params = dict(example.params) or dict(spec.starter)
            groups.setdefault((example.shape, example.dtype), []).append((spec.name, params))
    return {
        f"{dtype} {shape_text(shape)}": _example_graph(list(shape), dtype, layers)
        for (shape, dtype), layers in groups.items()
    }


def _example_graph(
    shape: list[int], dtype: str, layers: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": "in", "type": "Input", "params": {"shape": shape, "dtype": dtype}}
    ]
    edges: list[dict[str, Any]] = []
    for i, (layer_type, params) in enumerate(layers):
        nodes.append({"id": f"n{i}", "type": layer_type, "params": params})
        for port in range(max(CATALOG[layer_type].min_inputs, 1)):
            source = "in" if port == 0 else f"n{i}_copy{port}"
            if port:
                nodes.append({"id": source, "type": "Identity", "params": {}})
                edges.append({"source": "in", "target": source})
            edges.append({"source": source, "target": f"n{i}", "port": port})
        nodes.append({"id": f"flat{i}", "type": "Flatten", "params": {}})
        edges.append({"source": f"n{i}", "target": f"flat{i}"})
    last = "flat0"
    if len(layers) > 1:
        last = "joined"
        nodes.append({"id": last, "type": "Concat", "params": {"dim": 1}})
        edges += [{"source": f"flat{i}", "target": last, "port": i} for i in range(len(layers))]
    nodes.append({"id": "out", "type": "Output", "params": {}})
    edges.append({"source": last, "target": "out"})
    return {"format": "netbuilder.graph/1", "name": "examples", "nodes": nodes, "edges": edges}


# ---------------------------------------------------------------------------------------------
# The README's layer table, generated from the entries

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_START = "<!-- layer table: generated by `python -m builder.catalog --readme`; do not edit -->"
TABLE_END = "<!-- end of the layer table -->"


def param_summary(params: type[Params]) -> str:
    """'out_channels (req.), stride (1), padding (0)': each param with its default."""
    parts = []
    for name, info in params.model_fields.items():
        default = "req." if info.is_required() else json.dumps(info.default)
        parts.append(f"{name} ({default})")
    return ", ".join(parts) or "-"


def readme_rows() -> list[tuple[str, str, str]]:
    """(types, params, input -> output) per row. Neighbouring entries share a row where they
    read the same (the activations without params) or are the 1d/2d variants of one
    definition (their shapes joined: '[C, L] / [C, H, W]')."""
    rows: list[tuple[list[str], str, list[str]]] = []
    for spec in CATALOG.values():
        params = param_summary(spec.params)
        if rows and rows[-1][1] == params and _same_row(rows[-1], spec):
            rows[-1][0].append(spec.name)
            if spec.shapes not in rows[-1][2]:
                rows[-1][2].append(spec.shapes)
        else:
            rows.append(([spec.name], params, [spec.shapes]))
    return [(", ".join(names), params, " / ".join(shapes)) for names, params, shapes in rows]


def _same_row(row: tuple[list[str], str, list[str]], spec: LayerSpec) -> bool:
    """The same shapes, or the same name but for its dimension (Conv1d, Conv2d)."""
    family = re.sub(r"\dd$", "Nd", spec.name)
    return row[2] == [spec.shapes] or re.sub(r"\dd$", "Nd", row[0][-1]) == family != spec.name


def readme_table() -> str:
    """The README's layer table, as markdown between its two markers."""
    lines = [TABLE_START, "| type | params (default) | input -> output |", "| --- | --- | --- |"]
    lines += [f"| {names} | {params} | {shapes} |" for names, params, shapes in readme_rows()]
    return "\n".join([*lines, TABLE_END])


def with_readme_table(text: str) -> str:
    """The README text with its layer table replaced by the catalog's."""
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    return text[:start] + readme_table() + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.catalog")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's layer table")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    if args.readme:
        README.write_text(with_readme_table(text), encoding="utf-8")
        return 0
    if args.check:
        if with_readme_table(text) != text:
            print("README.md's layer table differs: run python -m builder.catalog --readme")
            return 1
        print("README.md's layer table is the catalog's")
        return 0
    print(readme_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
