"""The layer catalog: everything NetBuilder knows about each layer type, in one entry per type.

The entries live in builder/layers/, one module per family, as torch.nn keeps its modules
(conv.py, pooling.py, normalization.py, activation.py, dropout.py, sparse.py, rnn.py,
transformer.py, upsampling.py, merge.py; Input, Output and Linear in core.py). Each entry holds
the parameter schema (a pydantic model: types, defaults, ranges, choices), the palette category
and starter params, the number of inputs, the shape rule, the parameter and MAC counts, the
PyTorch constructor it emits and its forward expression, the torch modules and functional forms
it stands for, and its teaching text (a description and the formula it applies).

This index collects them into CATALOG and derives the tables others need from them (the
importer's module table); nothing here is typed a second time. Adding a layer type means adding
one entry to its family's ENTRIES (and one case to tests/test_layers_vs_torch.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    SEQUENCE_TYPES,
    Advice,
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
from builder.layers.core import CLASS_LOSSES, LOSSES, SOFTMAX_LOSSES, OutputParams
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
    "CATALOG",
    "CATEGORIES",
    "CLASS_LOSSES",
    "LOSSES",
    "MAX_SIZE",
    "SEQUENCE_TYPES",
    "SOFTMAX_LOSSES",
    "Advice",
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
    "functional_table",
    "joined",
    "param_problem",
    "fitting_divisor",
    "module_table",
    "shape_text",
]
