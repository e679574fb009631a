"""Classic single-file models a learner copies from tutorials (tests/fixtures/import/) import,
and the imported graph, exported again, computes what the original computes with the original's
weights, with the same parameter count; what cannot be imported is refused by name and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compiler import analyse, generate_source
from compiler.codegen import attribute_names
from compiler.importer import (
    ImportResult,
    ModelImportError,
    convert_state_dict,
    import_file,
    import_model,
    load_build_model,
)
from tests.modelkit import load_module

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "import"


def exported_twin(model: nn.Module, result: ImportResult) -> nn.Module:
    """The imported graph exported again (codegen's model.py), holding the original's weights
    (strict loading: every weight of the export comes from the original)."""
    analysis = analyse(result.graph)
    twin = load_module(generate_source(analysis)).build_model().eval()
    names = attribute_names(analysis)
    twin.load_state_dict(convert_state_dict(model.state_dict(), result.module_paths, names))
    return twin


def assert_round_trip(model: nn.Module, result: ImportResult, x: torch.Tensor) -> None:
    """Same parameter count, and the same outputs for a fresh input (eval mode)."""
    assert result.problems == [], [str(p) for p in result.problems]
    assert analyse(result.graph).total_params == sum(p.numel() for p in model.parameters())
    twin = exported_twin(model, result)
    with torch.no_grad():
        expected = model.eval()(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        assert (twin(x) - expected).abs().max() < 1e-4


def fixture(name: str):  # noqa: ANN201 - a module of the user's code
    return load_build_model(FIXTURES / f"{name}.py")


def sample(shape: tuple[int, ...], dtype: torch.dtype, batch: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if dtype == torch.int64:
        return torch.randint(0, 30, (batch, *shape), generator=generator)
    return torch.randn((batch, *shape), generator=generator)


def types_of(result: ImportResult) -> list[str]:
    return [node.type for node in result.graph.nodes]


def test_mnist_cnn_with_functional_pooling_and_log_softmax_round_trips() -> None:
    module = fixture("mnist_cnn")
    model = module.build_model()
    result = import_model(model, module.INPUT_SHAPE)
    assert_round_trip(model, result, sample(module.INPUT_SHAPE, torch.float32))
    assert types_of(result) == [
        "Input", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten",
        "Linear", "ReLU", "Dropout", "Linear", "LogSoftmax", "Output",
    ]  # fmt: skip


def test_mnist_cnn_imports_from_its_file_as_a_new_user_would() -> None:
    result = import_file(FIXTURES / "mnist_cnn.py")
    assert result.problems == [] and result.graph.name == "mnist_cnn"
    assert analyse(result.graph).total_params == 1_199_882


def test_lstm_classifier_reading_the_last_hidden_state_round_trips() -> None:
    module = fixture("lstm_classifier")
    model = module.build_model()
    result = import_model(model, module.INPUT_SHAPE, "int64")
    assert_round_trip(model, result, sample(module.INPUT_SHAPE, torch.int64))
    assert "SequencePool" in types_of(result)  # h_n[-1]: the last step of a one-way LSTM


@pytest.mark.parametrize("part, shape", [("Generator", (16, 1, 1)), ("Discriminator", (3, 64, 64))])
def test_dcgan_takes_the_single_device_branch_and_round_trips(
    part: str, shape: tuple[int, ...]
) -> None:
    model = getattr(fixture("dcgan"), part)(ngpu=2)  # `input.is_cuda and self.ngpu > 1`
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 1.5)
    result = import_model(model, shape)
    assert_round_trip(model, result, sample(shape, torch.float32))


def test_lstm_language_model_with_an_optional_hidden_argument_round_trips() -> None:
    module = fixture("lstm_lm")
    model = module.build_model()
    result = import_model(model, module.INPUT_SHAPE, "int64")
    assert_round_trip(model, result, sample(module.INPUT_SHAPE, torch.int64))
    assert types_of(result).count("Dropout") == 2  # one parameter-free module, called twice
    assert [str(w) for w in result.warnings] == [
        "forward returns 2 values; the graph keeps the first, the output"
    ]


def test_transformer_language_model_takes_the_has_mask_branch_as_a_causal_encoder() -> None:
    module = fixture("word_transformer_lm")
    model = module.build_model()
    result = import_model(model, module.INPUT_SHAPE, "int64")
    assert_round_trip(model, result, sample(module.INPUT_SHAPE, torch.int64))
    encoders = [n for n in result.graph.nodes if n.type == "TransformerEncoderLayer"]
    assert len(encoders) == 2 and all(n.params["causal"] for n in encoders)
    (position,) = [n for n in result.graph.nodes if n.type == "PositionalEncoding"]
    assert position.params == {"kind": "sinusoidal", "max_len": 64, "dropout": 0.5}  # its own
    (scale,) = [n for n in result.graph.nodes if n.type == "Scale"]
    assert scale.params == {"factor": 4.0}  # * math.sqrt(self.ninp), ninp = 16


def test_a_second_required_input_is_refused_with_a_sentence_that_says_so() -> None:
    with pytest.raises(ModelImportError) as caught:
        import_file(FIXTURES / "two_inputs.py")
    assert str(caught.value) == (
        "forward takes a second required input 'context': a NetBuilder graph has exactly one"
        " input (give context a default, e.g. context=None, if the model works without it)"
    )


def test_tied_weights_are_refused_naming_both_call_sites() -> None:
    result = import_file(FIXTURES / "tied_weights.py")
    assert result.graph is None
    (problem,) = result.problems
    assert problem.op == "nn.Linear (self.decoder)"
    assert problem.where == "tied_weights.py:18 in forward: return self.decoder(self.encoder(x))"
    assert "uses the weights of self.encoder a second time (first at tied_weights.py:18" in str(
        problem.why
    )
