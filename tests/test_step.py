"""One training step written out (runtime/step.py, `python -m runtime step`), judged by PyTorch:
every output, gradient and update it shows is computed again here with forward hooks,
torch.autograd.grad and torch.optim on the same weights and samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import torch.nn.functional as F
from torch import nn

from builder.graph import Graph, dump_graph, parse_graph
from compiler.analysis import analyse
from compiler.codegen import attribute_names
from runtime import runs, store
from runtime.__main__ import main
from runtime.metrics import MAX_FEATURE_CHANNELS, capture_feature_maps
from runtime.settings import TrainConfig
from runtime.step import (
    StepError,
    StepRecord,
    explain_gradient,
    explain_loss,
    explain_output,
    explain_update,
    take_step,
)
from runtime.trainer import train_run
from tests.modelkit import load_module, vae_graph

TORCH_OPTIMIZERS = {  # what each name means, written out here rather than read from the runtime
    "sgd": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd),
    "momentum": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd),
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
    "rmsprop": lambda p, lr, wd: torch.optim.RMSprop(p, lr=lr, weight_decay=wd),
}


def graph_of(
    input_shape: list[int],
    *layers: tuple[str, dict[str, Any]],
    dtype: str = "float32",
    loss: dict[str, Any] | None = None,
) -> Graph:
    """Input -> layers (ids n1, n2, ...) -> Output with the given loss."""
    nodes = [{"id": "in", "type": "Input", "params": {"shape": input_shape, "dtype": dtype}}]
    nodes += [{"id": f"n{i}", "type": t, "params": p} for i, (t, p) in enumerate(layers, start=1)]
    nodes.append({"id": "out", "type": "Output", "params": loss or {}})
    ids = [n["id"] for n in nodes]
    edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:])]
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": "t", "nodes": nodes, "edges": edges}
    )


CONV_NET = (
    [1, 8, 8],
    ("Conv2d", {"out_channels": 3, "kernel_size": 3, "padding": 1, "stride": 2}),
    ("ReLU", {}),
    ("MaxPool2d", {"kernel_size": 2}),
    ("Flatten", {}),
    ("Linear", {"out_features": 4}),
)
BATCHNORM_NET = (
    [2, 4, 4],
    ("Conv2d", {"out_channels": 3, "kernel_size": 3, "padding": "same"}),
    ("BatchNorm2d", {}),
    ("AvgPool2d", {"kernel_size": 2}),
    ("Flatten", {}),
    ("Linear", {"out_features": 3}),
    ("Softmax", {"dim": -1}),
)
LSTM_NET = (
    [5, 3],
    ("LSTM", {"hidden_size": 4}),
    ("SequencePool", {"mode": "last"}),
    ("Linear", {"out_features": 3}),
)
ATTENTION_NET = (
    [4, 8],
    ("MultiheadAttention", {"num_heads": 2}),
    ("LayerNorm", {}),
    ("SequencePool", {"mode": "mean"}),
    ("Linear", {"out_features": 3}),
)


def batch(
    shape: list[int], size: int, classes: int = 3, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, *shape, generator=generator), torch.randint(
        0, classes, (size,), generator=generator
    )


def record_for(
    layers: tuple, size: int = 2, optimizer: str = "adam", decay: float = 0.0, **loss: Any
) -> tuple[Graph, StepRecord]:
    shape, *rest = layers
    graph = graph_of(shape, *rest, loss=loss or None)
    x, y = batch(shape, size)
    settings = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=decay, seed=3)
    return graph, take_step(analyse(graph), x, y, settings)


def torch_replay(graph: Graph, record: StepRecord, optimizer: str, decay: float = 0.0) -> dict:
    """The same step by hand: the recorded first weights, forward hooks on every module, the
    loss as F computes it, torch.autograd.grad and torch.optim; on one thread as the step runs
    (Adam turns a gradient that is zero but for rounding, a bias before BatchNorm, into a full
    step, so both must round alike)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _replay(graph, record, optimizer, decay)
    finally:
        torch.set_num_threads(before)


def _replay(graph: Graph, record: StepRecord, optimizer: str, decay: float) -> dict:
    analysis = analyse(graph)
    model = load_module(record.source).build_model()
    model.load_state_dict(record.before)
    model.train()
    names = attribute_names(analysis)
    outputs: dict[str, torch.Tensor] = {}
    for node_id, attribute in names.items():
        module = getattr(model, attribute, None)
        if isinstance(module, nn.Module):

            def keep(_m: nn.Module, _a: Any, out: Any, node_id: str = node_id) -> None:
                outputs[node_id] = out[0] if isinstance(out, tuple) else out

            module.register_forward_hook(keep)
    torch.manual_seed(record.seed)
    out = model(record.x)
    loss = {
        "cross_entropy": lambda: F.cross_entropy(
            out, record.y, label_smoothing=record.label_smoothing
        ),
        "nll": lambda: F.nll_loss(out, record.y),
        "mse": lambda: F.mse_loss(out, record.y.float().view_as(out)),
        "l1": lambda: F.l1_loss(out, record.y.float().view_as(out)),
        "huber": lambda: F.huber_loss(out, record.y.float().view_as(out)),
        "bce_with_logits": lambda: F.binary_cross_entropy_with_logits(
            out, record.y.float().view_as(out)
        ),
    }[record.loss_name]()
    ids = list(outputs)
    parameters = dict(model.named_parameters())
    grads = torch.autograd.grad(
        loss, [outputs[i] for i in ids] + list(parameters.values()), retain_graph=True
    )
    step = TORCH_OPTIMIZERS[optimizer](list(parameters.values()), 0.01, decay)
    for p, g in zip(parameters.values(), grads[len(ids) :], strict=True):
        p.grad = g
    step.step()
    return {
        "loss": float(loss.detach()),
        "outputs": {i: o.detach() for i, o in outputs.items()},
        "node_grads": dict(zip(ids, grads[: len(ids)], strict=True)),
        "grads": dict(zip(parameters, grads[len(ids) :], strict=True)),
        "after": {k: v.detach() for k, v in model.state_dict().items()},
    }


@pytest.mark.parametrize(
    "layers",
    [CONV_NET, BATCHNORM_NET, LSTM_NET, ATTENTION_NET],
    ids=["conv", "batchnorm", "lstm", "attention"],
)
def test_every_output_gradient_and_update_matches_torch(layers: tuple) -> None:
    graph, record = record_for(layers)
    judge = torch_replay(graph, record, "adam")
    assert record.loss_before == pytest.approx(judge["loss"], rel=1e-6)
    for node_id, output in judge["outputs"].items():
        torch.testing.assert_close(record.nodes[node_id].output, output, msg=node_id)
        torch.testing.assert_close(
            record.nodes[node_id].grad, judge["node_grads"][node_id], msg=node_id
        )
    for name, grad in judge["grads"].items():
        torch.testing.assert_close(record.grads[name], grad, msg=name)
    for name, value in judge["after"].items():  # weights and BatchNorm's running statistics
        torch.testing.assert_close(record.after[name], value, msg=name)


def test_functional_nodes_and_the_input_have_their_output_and_gradient() -> None:
    graph, record = record_for(LSTM_NET)
    pooled = record.nodes["n2"]  # SequencePool: no module, read from the forward's locals
    lstm_out = record.nodes["n1"].output
    torch.testing.assert_close(pooled.output, lstm_out[:, -1])
    torch.testing.assert_close(pooled.grad, record.nodes["n1"].grad[:, -1])
    x = record.x.clone().requires_grad_(True)
    model = load_module(record.source).build_model()
    model.load_state_dict(record.before)
    loss = F.cross_entropy(model.train()(x), record.y)
    (dx,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(record.nodes["in"].grad, dx)


@pytest.mark.parametrize("optimizer", list(TORCH_OPTIMIZERS))
def test_each_optimizer_steps_as_torch_optim_and_its_rule_gives_the_new_weight(
    optimizer: str,
) -> None:
    graph, record = record_for(CONV_NET, optimizer=optimizer, decay=0.1)
    judge = torch_replay(graph, record, optimizer, decay=0.1)
    for name in judge["grads"]:
        torch.testing.assert_close(record.after[name], judge["after"][name], msg=name)
    for name, index in (("n5.weight", (2, 5)), ("n1.weight", (1, 0, 2, 1)), ("n1.bias", (0,))):
        explained = explain_update(record, name, index)
        assert explained.torch_value == pytest.approx(float(judge["after"][name][index]), abs=1e-7)
        assert explained.value == pytest.approx(explained.torch_value, abs=1e-6), explained.lines
    assert record.loss_after != record.loss_before


@pytest.mark.parametrize(
    "loss, targets",
    [
        ({"loss": "cross_entropy"}, "classes"),
        ({"loss": "cross_entropy", "label_smoothing": 0.2}, "classes"),
        ({"loss": "nll"}, "classes"),
        ({"loss": "mse"}, "values"),
        ({"loss": "l1"}, "values"),
        ({"loss": "huber"}, "values"),
        ({"loss": "bce_with_logits"}, "bits"),
    ],
)
def test_each_loss_written_out_gives_torchs_loss(loss: dict, targets: str) -> None:
    graph = graph_of([6], ("Linear", {"out_features": 4}), loss=loss)
    generator = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(3, 6, generator=generator)
    y = {
        "classes": torch.tensor([0, 3, 1]),
        "values": 2 * torch.randn(3, 4, generator=generator),
        "bits": torch.randint(0, 2, (3, 4), generator=generator).float(),
    }[targets]
    record = take_step(analyse(graph), x, y, TrainConfig(optimizer="sgd", lr=0.1))
    judge = torch_replay(graph, record, "sgd")
    explained = explain_loss(record)
    assert record.loss_before == pytest.approx(judge["loss"], rel=1e-6)
    assert explained.value == pytest.approx(judge["loss"], rel=1e-5), explained.lines


@pytest.mark.parametrize(
    "layers, node, index",
    [
        (CONV_NET, "n1", (2, 1, 2)),  # a strided, padded convolution's window sum
        (CONV_NET, "n1", (0, 0, 0)),  # a window that reads padding
        (CONV_NET, "n2", (1, 2, 0)),  # ReLU
        (CONV_NET, "n3", (2, 1, 1)),  # max pooling
        (CONV_NET, "n5", (3,)),  # Linear w.x + b
        (BATCHNORM_NET, "n1", (1, 2, 3)),  # "same" padding
        (BATCHNORM_NET, "n2", (2, 0, 3)),  # BatchNorm with the batch's statistics
        (BATCHNORM_NET, "n3", (1, 1, 0)),  # average pooling
        (BATCHNORM_NET, "n6", (1,)),  # softmax
    ],
)
def test_an_output_element_written_out_gives_torchs_value(
    layers: tuple, node: str, index: tuple
) -> None:
    graph, record = record_for(layers)
    judge = torch_replay(graph, record, "adam")
    for sample in (0, 1):
        explained = explain_output(record, node, index, sample)
        assert explained.torch_value == pytest.approx(
            float(judge["outputs"][node][(sample, *index)])
        )
        assert explained.agrees, (explained.value, explained.torch_value, explained.lines)


@pytest.mark.parametrize(
    "layers, name, index",
    [
        (CONV_NET, "n5.weight", (1, 7)),
        (CONV_NET, "n5.bias", (2,)),
        (CONV_NET, "n1.weight", (2, 0, 1, 2)),  # strided and padded
        (CONV_NET, "n1.bias", (1,)),
        (BATCHNORM_NET, "n1.weight", (1, 1, 0, 2)),  # "same" padding, two input channels
    ],
)
def test_the_chain_rule_written_out_gives_torchs_gradient(
    layers: tuple, name: str, index: tuple
) -> None:
    graph, record = record_for(layers, size=3)
    judge = torch_replay(graph, record, "adam")
    explained = explain_gradient(record, name, index)
    assert explained.torch_value == pytest.approx(float(judge["grads"][name][index]), abs=1e-7)
    assert explained.agrees, (explained.value, explained.torch_value, explained.lines)


def test_dropout_masks_repeat_from_the_seed() -> None:
    graph = graph_of(
        [16],
        ("Linear", {"out_features": 32}),
        ("Dropout", {"p": 0.5}),
        ("Linear", {"out_features": 3}),
    )
    x, y = batch([16], 4)
    settings = TrainConfig(optimizer="sgd", lr=0.1, seed=11)
    record = take_step(analyse(graph), x, y, settings)
    again = take_step(analyse(graph), x, y, settings)
    dropped = record.nodes["n2"].output == 0
    assert 0 < dropped.float().mean() < 1
    torch.testing.assert_close(record.nodes["n2"].output, again.nodes["n2"].output)
    model = load_module(record.source).build_model()  # as README says a check repeats them
    model.load_state_dict(record.before)
    model.train()
    torch.manual_seed(settings.seed)
    torch.testing.assert_close(model(x), record.output)
    other = take_step(analyse(graph), x, y, settings.model_copy(update={"seed": 12}))
    assert not torch.equal(other.nodes["n2"].output == 0, dropped)


def test_batchnorm_with_one_sample_is_refused_with_a_sentence() -> None:
    shape, *layers = BATCHNORM_NET
    x, y = batch(shape, 1)
    with pytest.raises(StepError, match="at least 2 samples"):
        take_step(analyse(graph_of(shape, *layers)), x, y, TrainConfig())


def test_the_same_seed_gives_the_same_first_weights_as_a_run() -> None:
    graph, record = record_for(CONV_NET)
    torch.manual_seed(3)  # what the trainer does before it builds the model
    model = load_module(record.source).build_model()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(record.before[name], value)


# ---------------------------------------------------------------------------------------------
# The command


def digits_graph() -> Graph:
    """CONV_NET with a head of 10 scores: a classifier of the 8x8 digits."""
    shape, *layers = CONV_NET
    return graph_of(shape, *layers[:-1], ("Linear", {"out_features": 10}))


def write_graph(folder: Path, graph: Graph) -> Path:
    path = folder / "graph.json"
    path.write_text(dump_graph(graph))
    return path


def test_the_command_writes_files_a_check_can_repeat(tmp_path: Path) -> None:
    graph = graph_of(
        [1, 8, 8],
        ("Conv2d", {"out_channels": 2, "kernel_size": 3}),
        ("ReLU", {}),
        ("Flatten", {}),
        ("Dropout", {"p": 0.3}),
        ("Linear", {"out_features": 10}),
    )
    out = tmp_path / "step"
    code = main(
        ["step", str(write_graph(tmp_path, graph)), "--dataset", "digits", "--index", "5",
         "--batch", "2", "--optimizer", "momentum", "--lr", "0.05", "--seed", "4", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    step = json.loads((out / "step.json").read_text())
    module = load_module((out / "model.py").read_text())
    model = module.build_model()
    model.load_state_dict(torch.load(out / "before.pt", weights_only=True))
    x = torch.tensor(step["input"]["values"]).view(step["input"]["shape"])
    y = torch.tensor(step["target"]["values"]).view(step["target"]["shape"])
    assert step["mode"] == "train" and step["index"] == 5
    assert step["optimizer"]["name"] == "momentum" and step["optimizer"]["momentum"] == 0.9
    model.train()
    torch.manual_seed(step["seed"])
    out_ = model(x)
    loss = F.cross_entropy(out_, y)
    assert step["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert step["nodes"]["out"]["output"]["first"] == pytest.approx(out_[0].tolist(), abs=1e-6)
    parameters = dict(model.named_parameters())
    grads = dict(zip(parameters, torch.autograd.grad(loss, list(parameters.values())), strict=True))
    optimizer = torch.optim.SGD(parameters.values(), lr=step["optimizer"]["lr"], momentum=0.9)
    for name, p in parameters.items():
        p.grad = grads[name]
        assert step["params"][name]["grad"]["first"] == pytest.approx(
            grads[name].flatten()[:64].tolist(), abs=1e-6
        )
    optimizer.step()
    after = torch.load(out / "after.pt", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(after[name], value, msg=name)
        if name in step["params"]:
            assert step["params"][name]["after"]["first"] == pytest.approx(
                value.flatten()[:64].tolist()
            )
    assert set(step["nodes"]) == {"in", "n1", "n2", "n3", "n4", "n5", "out"}


def test_the_command_starts_from_a_runs_checkpoint(tmp_path: Path) -> None:
    graph = digits_graph()
    folder = runs.create_run(
        tmp_path / "runs", graph, TrainConfig(dataset="digits", optimizer="sgd", lr=0.5)
    )
    torch.manual_seed(99)
    trained = load_module((folder / store.MODEL_FILE).read_text()).build_model().state_dict()
    (folder / store.CHECKPOINT_DIR).mkdir()
    torch.save(trained, folder / store.CHECKPOINT_DIR / store.WEIGHTS_FILE)
    out = tmp_path / "step"
    code = main(["step", str(write_graph(tmp_path, graph)), "--from-run", folder.name,
                 "--runs", str(tmp_path / "runs"), "--out", str(out)])  # fmt: skip
    assert code == 0
    before = torch.load(out / "before.pt", weights_only=True)
    for name, value in trained.items():
        torch.testing.assert_close(before[name], value)
    step = json.loads((out / "step.json").read_text())
    assert step["optimizer"]["name"] == "sgd" and step["optimizer"]["lr"] == 0.5  # the run's
    assert step["dataset"] == "digits"


@pytest.mark.parametrize(
    "arguments, code, words",
    [
        (["--dataset", "digits", "--index", "1797"], 1, "not in digits"),
        (["--dataset", "digits", "--index", "-1"], 1, "not in digits"),
        (["--dataset", "no-such-set"], 2, "unknown dataset"),
        (["--dataset", "missing.csv"], 2, "no such data file"),
        (["--dataset", "digits", "--lr", "-1"], 2, "--lr"),
        (["--dataset", "sine"], 1, "sine samples are"),
        (["--from-run", "nope"], 2, "no run"),
    ],
)
def test_a_bad_step_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list[str], code: int, words: str
) -> None:
    path = write_graph(tmp_path, digits_graph())
    assert main(["step", str(path), *arguments, "--out", str(tmp_path / "o")]) == code
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_graph_that_is_not_a_graph_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["step", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_second_step_goes_on_from_the_weights_and_the_optimizers_state() -> None:
    shape, *layers = CONV_NET
    analysis = analyse(graph_of(shape, *layers))
    batches = [batch(shape, 2, seed=1), batch(shape, 2, seed=2)]
    settings = TrainConfig(optimizer="adam", lr=0.01, seed=3)
    first = take_step(analysis, *batches[0], settings)
    second = take_step(analysis, *batches[1], settings, first.after, first.optimizer_saved)
    torch.manual_seed(3)
    model = load_module(first.source).build_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(second.after[name], value, msg=name)
    explained = explain_update(second, "n5.weight", (1, 3))
    assert explained.agrees and "t = 2" in " ".join(map(str, explained.lines))


# ---------------------------------------------------------------------------------------------
# What each layer sees: feature maps recorded during training


def test_feature_maps_are_the_convolutions_outputs_cut_to_the_budget() -> None:
    conv = nn.Conv2d(1, 12, kernel_size=3, padding=1)
    holder = nn.Sequential(conv, nn.ReLU())
    example = torch.randn(1, 1, 80, 70)
    maps = capture_feature_maps(holder, {"c": conv}, example)["c"]
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(conv(example)[0, :MAX_FEATURE_CHANNELS], (64, 64))
    torch.testing.assert_close(maps, expected)
    assert holder.training  # put back as it was


def test_a_run_records_its_convolutions_feature_maps(tmp_path: Path) -> None:
    config = TrainConfig(
        dataset="digits", epochs=1, batch_size=512, attention_every=2, device="cpu"
    )
    folder = runs.create_run(tmp_path, digits_graph(), config)
    assert train_run(folder).status == "completed"
    records = store.read_records(folder / store.METRICS_FILE)[0]
    maps = [r for r in records if r.get("kind") == "feature_maps"]
    assert [r["step"] for r in maps] == [1, 2]  # the first step, then every attention_every
    assert {r["node"] for r in maps} == {"n1"}
    assert torch.tensor(maps[-1]["maps"]).shape == (3, 4, 4)


def test_a_vae_step_reports_torchs_loss_for_the_same_weights_input_and_noise(
    tmp_path: Path,
) -> None:
    """`python -m runtime step` on a VAE: the loss in step.json is the VAE loss computed here from
    model.py, before.pt, the input and torch.manual_seed(seed) before model(x) (which draws the
    Reparameterize noise): (sum BCE(x_hat, x) - 0.5 * sum(1 + logvar - mu^2 - exp(logvar))) / B;
    its gradients and Adam's update are torch's too."""
    graph = parse_graph(vae_graph([1, 8, 8]))
    out = tmp_path / "step"
    code = main(
        ["step", str(write_graph(tmp_path, graph)), "--dataset", "digits", "--index", "7",
         "--batch", "3", "--seed", "5", "--lr", "0.01", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    step = json.loads((out / "step.json").read_text())
    model = load_module((out / "model.py").read_text()).build_model()
    model.load_state_dict(torch.load(out / "before.pt", weights_only=True))
    x = torch.tensor(step["input"]["values"]).view(step["input"]["shape"])
    assert step["target"]["values"] == step["input"]["values"]  # a VAE rebuilds its input
    names = attribute_names(analyse(graph))
    codes: dict[str, torch.Tensor] = {}
    for node in ("mu", "logvar"):
        module = getattr(model, names[node])
        module.register_forward_hook(lambda m, i, o, node=node: codes.__setitem__(node, o))
    model.train()
    torch.manual_seed(step["seed"])
    rebuilt = model(x)
    mu, logvar = codes["mu"], codes["logvar"]
    reconstruction = F.binary_cross_entropy(rebuilt, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = (reconstruction + kl) / len(x)
    assert step["loss_function"]["name"] == "vae"
    assert step["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    parameters = dict(model.named_parameters())
    grads = dict(zip(parameters, torch.autograd.grad(loss, list(parameters.values())), strict=True))
    optimizer = torch.optim.Adam(parameters.values(), lr=0.01)
    for name, p in parameters.items():
        p.grad = grads[name]
        assert step["params"][name]["grad"]["first"] == pytest.approx(
            grads[name].flatten()[:64].tolist(), abs=1e-6
        )
    optimizer.step()
    after = torch.load(out / "after.pt", weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(after[name], value, msg=name)


def vae_record(seed: int = 1) -> StepRecord:
    analysis = analyse(parse_graph(vae_graph([6])))
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(3, dtype=torch.int64)  # unused: a VAE's target is its input
    return take_step(analysis, x, labels, TrainConfig(seed=seed))


def test_the_vae_loss_written_out_gives_torchs_loss() -> None:
    record = vae_record()
    explained = explain_loss(record)
    assert explained.agrees and explained.value == pytest.approx(record.loss_before, rel=1e-6)
    text = "\n".join(
        line if isinstance(line, str) else line.render("en") for line in explained.lines
    )
    assert "KL = −0.5·Σ(1 + logvar − mu² − e^logvar)" in text and "KL(z) = " in text
    assert "z: mu = [" in text and "Σ BCE = " in text
    totals = [line for line in explained.lines if isinstance(line, str) and line.startswith("L =")]
    assert totals[0] == "L = (Σ BCE(ŷ, x) + Σ KL) / B"  # the formula, then its numbers, once
    assert len(totals) == 2 and totals[1] == explained.lines[-1] and " / " in totals[1]
    assert all(line.render("zh") for line in explained.lines if not isinstance(line, str))


def test_a_vae_step_taken_again_draws_the_same_noise() -> None:
    """Rewind takes the step again: the seed draws the Reparameterize noise, so it is the same
    step; another seed draws other noise."""
    first, again, other = vae_record(seed=1), vae_record(seed=1), vae_record(seed=2)
    assert first.loss_before == again.loss_before and first.loss_after == again.loss_after
    assert torch.equal(first.nodes["z"].output, again.nodes["z"].output)
    for name, value in first.after.items():
        assert torch.equal(value, again.after[name])
    assert not torch.equal(first.nodes["z"].output, other.nodes["z"].output)
