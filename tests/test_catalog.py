"""The catalog is the single source: every table derived from it (the importer's module and
functional tables, the palette's starter params, the README's format section) holds every type,
and what each entry says about torch is true of torch."""

from __future__ import annotations

import importlib
import operator
import pickle
from pathlib import Path

import pytest
import torch

import typing

from builder import catalog
from builder.catalog import (
    CATALOG,
    CATEGORIES,
    LOSSES,
    OutputParams,
    functional_handling,
    functional_table,
    module_table,
)
from builder.edit import starter_params
from compiler.importer import READERS
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
    "LearnedConstant",  # a Parameter joined to the activations, read where it is used
    "Reparameterize",  # a VAE's sampling, folded from its calls
    "Slice",  # x[..., start:stop:step], read from indexing
    "Pad",  # F.pad with a constant
    "WindowAttention",  # torchvision's Swin attention, not a torch.nn module
    "RelativeAttention",  # torchvision's MaxViT attention, not a torch.nn module
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
def test_params_survive_pickling_as_a_process_pool_sends_them(name: str) -> None:
    """Params classes made per dimension (conv_params(2)) are the ones their modules name."""
    params = CATALOG[name].params.model_validate(starter_params(name, (16, 8, 8)))
    assert pickle.loads(pickle.dumps(params)) == params


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


def test_readme_layer_table_is_the_one_the_catalog_generates() -> None:
    text = README.read_text(encoding="utf-8")
    assert catalog.with_readme_table(text) == text, "run python -m builder.catalog --readme"
    table = catalog.readme_table()
    for name in CATALOG:
        assert f"| {name}" in table or f", {name}" in table, name


def test_readme_names_every_output_loss() -> None:
    text = README.read_text(encoding="utf-8")
    assert all(loss in text for loss in (*LOSSES, "label_smoothing"))


def test_the_loss_choices_are_one_tuple_that_the_params_and_their_sentence_follow() -> None:
    assert typing.get_args(OutputParams.model_fields["loss"].annotation) == LOSSES
    described = OutputParams.model_fields["loss"].description or ""
    assert described == "one of " + ", ".join(LOSSES)


@pytest.mark.parametrize("name", [n for n in CATALOG if CATALOG[n].functional])
def test_every_functional_form_says_how_its_arguments_become_params(name: str) -> None:
    """A type with params and functional forms names its arguments or a reader of the importer
    (else F.leaky_relu(x, 0.2) would silently import with the default slope)."""
    spec = CATALOG[name]
    assert functional_handling(spec) != "missing", name
    if spec.functional_reader is not None:
        assert spec.functional_reader in READERS
    for argument in spec.functional_args:
        assert argument.param in spec.params.model_fields
        field = spec.params.model_fields[argument.param]
        assert field.is_required() or field.default == argument.default, argument


def test_an_entry_with_params_and_no_argument_reading_is_refused() -> None:
    from dataclasses import replace

    from compiler.importer import argument_reader

    silent = replace(CATALOG["LeakyReLU"], functional_args=())
    assert functional_handling(silent) == "missing"
    with pytest.raises(ValueError, match="neither functional_args nor functional_reader"):
        argument_reader(silent)


@pytest.mark.parametrize(
    "name", [n for n in CATALOG if CATALOG[n].view_of_input and CATALOG[n].examples]
)
def test_a_type_said_to_be_a_view_returns_its_inputs_storage_in_torch(name: str) -> None:
    """What the memory estimate leaves out (no new activation) is a view in torch: training mode,
    the output shares its input's storage."""
    for example in CATALOG[name].examples:
        params = dict(example.params) or dict(CATALOG[name].starter)
        analysis = analyse(chain_graph(list(example.shape), (name, params)))
        model = load_module(generate_source(analysis)).build_model().train()
        x = torch.randn(2, *example.shape)
        assert model(x).untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


@pytest.mark.parametrize("name", [n for n in CATALOG if CATALOG[n].torch_modules])
def test_second_output_is_said_exactly_for_modules_that_return_a_tuple(name: str) -> None:
    spec = CATALOG[name]
    example = spec.examples[0]
    params = dict(example.params) or dict(spec.starter)
    analysis = analyse(chain_graph(list(example.shape), (name, params), dtype=example.dtype))
    module = load_module(generate_source(analysis)).build_model().n1
    x = torch.randint(0, 4, (2, *example.shape)) if example.dtype == "int64" else None
    x = x if x is not None else torch.randn(2, *example.shape)
    output = module(x, x, x) if isinstance(module, torch.nn.MultiheadAttention) else module(x)
    assert isinstance(output, tuple) == (spec.second_output is not None)


def test_dimension_variants_share_one_definition() -> None:
    """Conv1d and Conv2d (and the pools and norms) differ only in their dimension."""
    for family in ("Conv", "ConvTranspose", "MaxPool", "AvgPool", "AdaptiveAvgPool"):
        one, two = CATALOG[f"{family}1d"], CATALOG[f"{family}2d"]
        assert one.params.dims == 1 and two.params.dims == 2
        assert list(one.params.model_fields) == list(two.params.model_fields)
        assert (one.infer, one.module, one.count_params) == (
            two.infer,
            two.module,
            two.count_params,
        )
