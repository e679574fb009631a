"""The catalog is the single source: every table derived from it (the importer's module and
functional tables, the palette's starter params, the README's format section) holds every type,
and what each entry says about torch is true of torch."""

from __future__ import annotations

import importlib
import operator
from pathlib import Path

import pytest
import torch

from builder.catalog import CATALOG, CATEGORIES, functional_table, module_table
from builder.edit import starter_params
from compiler import analyse, generate_source
from tests.modelkit import chain_graph, load_module
from tests.test_layers_vs_torch import CASES

README = Path(__file__).resolve().parent.parent / "README.md"
# Types that stand for no single torch module: graph ends, views and merges done in forward,
# and PositionalEncoding, which torch does not have.
NO_TORCH_MODULE = {
    "Input",
    "Output",
    "Permute",
    "Reshape",
    "SequencePool",
    "Add",
    "Multiply",
    "Concat",
    "Chunk",
    "Scale",
    "PositionalEncoding",
}


def resolve(qualified: str) -> object:
    """'torch.nn.functional.relu' -> the function; 'Tensor.relu' -> the method."""
    if qualified.startswith("Tensor."):
        return getattr(torch.Tensor, qualified.removeprefix("Tensor."))
    if qualified.startswith("operator."):
        return getattr(operator, qualified.removeprefix("operator."))
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", CATALOG)
def test_entry_has_teaching_text_and_a_palette_category(name: str) -> None:
    spec = CATALOG[name]
    assert spec.name == name
    assert spec.category in CATEGORIES
    assert spec.description.strip() and spec.formula.strip()
    for field_name, field in spec.params.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"


@pytest.mark.parametrize("name", CATALOG)
def test_palette_starter_params_are_valid_for_every_type(name: str) -> None:
    CATALOG[name].params.model_validate(starter_params(name))
    CATALOG[name].params.model_validate(starter_params(name, (16, 8, 8)))


def test_every_type_with_a_torch_module_is_in_the_importers_table() -> None:
    table = module_table()
    mapped = {layer for layer, _ in table.values()}
    assert mapped == set(CATALOG) - NO_TORCH_MODULE
    for cls, (layer, reader) in table.items():
        assert issubclass(cls, torch.nn.Module)
        assert cls.__name__ in CATALOG[layer].torch_modules
        assert reader is CATALOG[layer].params_from_module


def test_every_functional_form_is_a_real_torch_callable() -> None:
    for qualified, layer in functional_table().items():
        assert callable(resolve(qualified)), (qualified, layer)
    assert functional_table()["torch.nn.functional.log_softmax"] == "LogSoftmax"
    assert functional_table()["operator.add"] == "Add"
    assert functional_table()["torch.cat"] == "Concat"


CASES_WITH_MODULES = [case for case in CASES if CATALOG[case[1]].torch_modules]


@pytest.mark.parametrize(("shape", "layer", "params", "dtype"), CASES_WITH_MODULES, ids=str)
def test_params_read_back_from_the_emitted_torch_module_equal_the_nodes(
    shape, layer, params, dtype
) -> None:
    """What the importer reads from a live module is what the node said (a round trip)."""
    analysis = analyse(chain_graph(shape, (layer, params), dtype=dtype))
    model = load_module(generate_source(analysis)).build_model()
    module = model.n1
    mapped, reader = module_table()[type(module)]
    assert mapped == layer
    spec = CATALOG[layer]
    values = reader(module)
    read = spec.params.model_validate(values)
    assert _same_meaning(read, params, spec, set(values))


def _same_meaning(read, params, spec, fields: set[str]) -> bool:
    """The fields a module holds (causal lives in forward) agree; ints and their per-axis
    lists say the same ([3, 3] is 3)."""
    given = spec.params.model_validate(params)
    for field_name in fields:
        a, b = getattr(read, field_name), getattr(given, field_name)
        if isinstance(a, list) != isinstance(b, list):
            a, b = (a if isinstance(a, list) else [a] * len(b)), (
                b if isinstance(b, list) else [b] * len(a)
            )
        if a != b:
            return False
    return True


def test_readme_documents_every_type_and_the_output_loss() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [name for name in CATALOG if f"| {name}" not in text and f", {name}" not in text]
    assert not missing, f"document {missing} in the README's layer table"
    for loss in (
        "cross_entropy",
        "nll",
        "bce_with_logits",
        "mse",
        "l1",
        "huber",
        "label_smoothing",
    ):
        assert loss in text
