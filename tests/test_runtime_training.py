"""The trainer, run in this process: it learns, and what it reports matches PyTorch's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builder.graph import Graph, load_graph, parse_graph
from compiler import analyse, generate_source
from runtime import store
from runtime.datasets import load_dataset
from runtime.loop import Loop, compute_loss, epoch_order, learning_rate, resolved_loss
from runtime.metrics import activation_probe, attention_layers, capture_attention
from runtime.runs import create_run
from runtime.trainer import (
    RunResult,
    TrainConfig,
    Trainer,
    load_model_source,
    module_attributes,
    node_types,
    split_dataset,
    train_run,
    warm_start,
)
from tests.modelkit import chain_graph

TEMPLATES = Path(__file__).parents[1] / "builder" / "templates"


def template(name: str) -> Graph:
    return load_graph((TEMPLATES / f"{name}.json").read_text())


def train(runs: Path, graph: Graph, **config: Any) -> tuple[RunResult, list[dict], Path]:
    folder = create_run(runs, graph, TrainConfig(**config))
    result = train_run(folder)
    records, _ = store.read_records(folder / store.METRICS_FILE)
    return result, records, folder


def of_kind(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["kind"] == kind]


def built(graph: Graph, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    analysis = analyse(graph)
    torch.manual_seed(seed)
    return load_model_source(generate_source(analysis)), analysis


# -- real learning ---------------------------------------------------------------------------


def test_lenet5_learns_digits(tmp_path: Path):
    result, records, _ = train(tmp_path, template("lenet5"), dataset="digits-28", epochs=4, lr=3e-3)
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy >= 0.90
    epochs = of_kind(records, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_lstm_learns_digit_rows(tmp_path: Path):
    result, _, _ = train(
        tmp_path, template("lstm_classifier"), dataset="digits-rows", epochs=12, lr=5e-3
    )
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy >= 0.80


def test_transformer_solves_the_marker_task_far_above_chance(tmp_path: Path):
    result, records, _ = train(
        tmp_path, template("transformer_encoder"), dataset="tokens", epochs=4, lr=3e-3
    )
    chance = 1 / 15  # labels are the 15 tokens other than the marker
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy > 5 * chance
    assert of_kind(records, "attention"), "an encoder run reports attention maps"


def test_sine_regression_learns_with_mse_and_reports_mae_not_accuracy(tmp_path: Path):
    graph = chain_graph(
        [32, 1],
        ("GRU", {"hidden_size": 16}),
        ("SequencePool", {"mode": "last"}),
        ("Linear", {"out_features": 1}),
    )
    result, records, _ = train(tmp_path, graph, dataset="sine", epochs=3, lr=1e-2)
    assert result.status == "completed", result.message
    variance = float(load_dataset("sine").y.var())
    assert result.val_accuracy is None and result.val_loss < 0.1 * variance
    epochs = of_kind(records, "epoch")
    assert all("train_accuracy" not in e and "val_accuracy" not in e for e in epochs)
    # the mean absolute error is reported instead, and it is at most the RMSE
    assert all(0 < e["val_mae"] <= math.sqrt(e["val_loss"]) + 1e-9 for e in epochs)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_every_optimizer_lowers_the_loss(tmp_path: Path, optimizer: str):
    graph = chain_graph([1, 8, 8], ("Flatten", {}), ("Linear", {"out_features": 10}))
    lr = 0.5 if optimizer == "sgd" else 0.05 if optimizer == "momentum" else 0.01
    result, _, _ = train(tmp_path, graph, epochs=3, lr=lr, optimizer=optimizer)
    assert result.status == "completed"
    assert result.val_loss < 0.5 * math.log(10)  # half the loss of a uniform guess


# -- what is reported ------------------------------------------------------------------------


def test_step_records_carry_loss_lr_and_throughput(tmp_path: Path):
    graph = chain_graph([1, 8, 8], ("Flatten", {}), ("Linear", {"out_features": 10}))
    _, records, _ = train(tmp_path, graph, epochs=2, batch_size=100, lr=0.01)
    steps = of_kind(records, "step")
    assert [s["step"] for s in steps] == list(range(1, 31))  # 1438 samples / 100, twice
    assert all(s["lr"] == 0.01 and math.isfinite(s["loss"]) for s in steps)
    assert all(s["epoch"] == (1 if s["step"] <= 15 else 2) for s in steps)
    assert any(s["samples_per_s"] and s["samples_per_s"] > 0 for s in steps)


def test_grad_norms_equal_a_direct_computation(tmp_path: Path):
    graph = template("lenet5")
    config = dict(dataset="digits-28", epochs=1, batch_size=32, optimizer="sgd", report_every=1)
    _, records, _ = train(tmp_path, graph, **config)
    logged = of_kind(records, "grad_norms")[0]
    assert logged["step"] == 1

    model, analysis = built(graph)
    split = split_dataset(load_dataset("digits-28"), TrainConfig(), torch.device("cpu"), "float32")
    batch = epoch_order(0, 0, len(split.x_train))[:32]
    F.cross_entropy(model(split.x_train[batch]), split.y_train[batch]).backward()
    for node_id, attribute in module_attributes(analysis).items():
        grads = [p.grad.flatten() for p in getattr(model, attribute).parameters()]
        if grads:
            expected = float(torch.cat(grads).norm())
            assert logged["norms"][node_id] == pytest.approx(expected, rel=1e-4), node_id
    assert set(logged["norms"]) == {"c1", "c3", "f5", "f6", "logits"}


@pytest.mark.parametrize(
    "layer",
    [
        ("MultiheadAttention", {"num_heads": 2}),
        ("MultiheadAttention", {"num_heads": 4, "causal": True}),
        ("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16}),
    ],
)
def test_attention_maps_are_pytorchs_weights_per_head(layer: tuple[str, dict]):
    graph = chain_graph([6, 8], layer, ("SequencePool", {"mode": "mean"}))
    model, analysis = built(graph)
    layers = attention_layers(model, module_attributes(analysis), node_types(analysis))
    x = torch.randn(1, 6, 8)
    weights = capture_attention(model, layers, x)["n1"]
    heads = layer[1].get("num_heads", layer[1].get("nhead"))
    assert weights.shape == (heads, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(heads, 6), atol=1e-5)
    assert model.training, "capturing leaves the model in training mode"
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1) if layer[1].get("causal") else None
    _, direct = layers["n1"].eval()(x, x, x, attn_mask=mask, average_attn_weights=False)
    assert torch.allclose(weights, direct[0], atol=1e-6)
    if mask is not None:
        assert float(weights[:, mask].abs().max()) == 0.0


@pytest.mark.parametrize("shift", [0, 1])
def test_a_window_attentions_map_is_its_first_windows_weights_per_head(shift: int):
    """Swin's WindowAttention records the first window's [heads, N, N] weights; unshifted, they
    are softmax(q k^T / sqrt(d) + B) of the map's top-left window, computed here with torch."""
    params = {"num_heads": 2, "window_size": 3, "shift_size": shift}
    model, analysis = built(chain_graph([6, 6, 4], ("WindowAttention", params)))
    layers = attention_layers(model, module_attributes(analysis), node_types(analysis))
    x = torch.randn(1, 6, 6, 4)
    weights = capture_attention(model, layers, x)["n1"]
    assert weights.shape == (2, 9, 9) and model.training
    assert torch.allclose(weights.sum(-1), torch.ones(2, 9), atol=1e-5)
    if shift:
        return
    layer = layers["n1"]
    window = x[0, :3, :3, :].reshape(9, 4)
    q, k, _ = F.linear(window, layer.qkv.weight, layer.qkv.bias).view(9, 3, 2, 2).unbind(1)
    scores = torch.einsum("qhd,khd->hqk", q * 2**-0.5, k) + layer.position_bias()[0]
    assert torch.allclose(weights, scores.softmax(-1).detach(), atol=1e-6)


def test_dead_fraction_counts_units_never_positive_in_the_batch():
    graph = chain_graph(
        [4], ("Linear", {"out_features": 6}), ("ReLU", {}), ("Linear", {"out_features": 2})
    )
    model, analysis = built(graph)
    with torch.no_grad():
        model.n1.weight.zero_()
        model.n1.bias.copy_(torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    probe = activation_probe(model, module_attributes(analysis), node_types(analysis))
    with probe.watching() as reading:
        model(torch.randn(16, 4))
    assert reading.dead_fractions() == {"n2": pytest.approx(0.5)}


def test_first_nonfinite_node_is_found_in_execution_order():
    graph = chain_graph(
        [4], ("Linear", {"out_features": 6}), ("ReLU", {}), ("Linear", {"out_features": 2})
    )
    model, analysis = built(graph)
    with torch.no_grad():
        model.n3.weight[0, 0] = math.inf
        model.n3.bias[1] = math.nan
    probe = activation_probe(model, module_attributes(analysis), node_types(analysis))
    with probe.watching(find_nonfinite=True) as reading:
        model(torch.ones(3, 4))
    assert reading.first_nonfinite() == "n3"


def test_health_is_reported_every_n_steps(tmp_path: Path):
    _, records, _ = train(
        tmp_path, template("lenet5"), dataset="digits-28", epochs=1, report_every=5
    )
    health = of_kind(records, "health")
    assert [h["step"] for h in health] == [5, 10, 15, 20]
    assert set(health[0]["dead_fraction"]) == {"relu1", "relu3", "relu5", "relu6"}
    assert all(0 <= v <= 1 for h in health for v in h["dead_fraction"].values())
    assert [g["step"] for g in of_kind(records, "grad_norms")] == [5, 10, 15, 20]


def test_health_can_have_its_own_cadence(tmp_path: Path):
    _, records, _ = train(
        tmp_path, template("lenet5"), dataset="digits-28", epochs=1, report_every=5, health_every=10
    )
    assert [h["step"] for h in of_kind(records, "health")] == [10, 20]
    assert [g["step"] for g in of_kind(records, "grad_norms")] == [5, 10, 15, 20]


# -- schedules -------------------------------------------------------------------------------


def torch_schedule(config: TrainConfig, total: int) -> list[float]:
    """The same schedule built from PyTorch's own schedulers, as the judge."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    after = total - config.warmup_steps
    main = {
        "constant": lambda: torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=after),
        "step": lambda: torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[after // 2, after * 3 // 4], gamma=0.1
        ),
    }[config.schedule]()
    if config.warmup_steps:
        warm = torch.optim.lr_scheduler.LinearLR(
            optimizer, 1 / config.warmup_steps, 1.0, total_iters=config.warmup_steps - 1
        )
        main = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [warm, main], milestones=[config.warmup_steps]
        )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        main.step()
    return rates


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
@pytest.mark.parametrize("warmup", [0, 8])
def test_schedules_match_pytorchs_schedulers(schedule: str, warmup: int):
    config = TrainConfig(lr=0.1, schedule=schedule, warmup_steps=warmup)
    total = 88
    ours = [learning_rate(config, step, total) for step in range(total)]
    assert ours == pytest.approx(torch_schedule(config, total), rel=1e-6, abs=1e-12)


# -- faults ----------------------------------------------------------------------------------


def test_exploding_lr_ends_as_diverged_naming_the_step_and_the_node(tmp_path: Path):
    result, records, folder = train(
        tmp_path, template("lenet5"), dataset="digits-28", epochs=3, optimizer="sgd", lr=1e6
    )
    assert result.status == "diverged"
    first_bad = next(s["step"] for s in of_kind(records, "step") if s["loss"] is None)
    assert result.message.startswith(f"diverged at step {first_bad}; lower the learning rate")
    diagnosis = [h for h in of_kind(records, "health") if h["nonfinite_node"]]
    assert diagnosis and diagnosis[-1]["step"] == first_bad
    assert diagnosis[-1]["nonfinite_node"] in {"c1", "relu1", "s2", "c3", "f5", "f6", "logits"}
    status = store.read_status(folder)
    assert status["status"] == "diverged" and status["message"] == result.message


def test_out_of_memory_suggests_half_the_batch(tmp_path: Path, monkeypatch):
    def no_memory(self, index):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Loop, "step", no_memory)
    result, records, _ = train(tmp_path, template("lstm_classifier"), dataset="digits-rows")
    assert (result.status, result.message) == ("failed", "out of memory at batch size 64; try 32")
    assert of_kind(records, "event")[-1]["message"] == result.message


def test_incompatible_dataset_fails_with_the_fix(tmp_path: Path):
    result, _, folder = train(tmp_path, template("lenet5"), dataset="digits")
    assert result.status == "failed" and "set the Input's shape to [1, 8, 8]" in result.message
    assert store.read_status(folder)["status"] == "failed"


def test_unavailable_device_is_named(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result, _, _ = train(
        tmp_path, template("lstm_classifier"), dataset="digits-rows", device="cuda"
    )
    assert result.status == "failed" and "device 'cuda' is not available" in result.message


def test_amp_without_cuda_trains_in_float32_and_says_so(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result, records, _ = train(
        tmp_path, template("lstm_classifier"), dataset="digits-rows", epochs=1, amp=True
    )
    assert result.status == "completed"
    assert any("CUDA only" in e["message"] for e in of_kind(records, "event"))


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path: Path):
    result, records, _ = train(
        tmp_path,
        template("lstm_classifier"),
        dataset="digits-rows",
        epochs=20,
        optimizer="sgd",
        lr=1e-30,  # updates vanish below float precision: the validation loss cannot improve
        early_stopping_patience=2,
    )
    assert result.status == "completed" and result.message.startswith("stopped early after epoch 3")
    assert len(of_kind(records, "epoch")) == 3


def test_no_validation_split_reports_null_validation(tmp_path: Path):
    result, records, _ = train(
        tmp_path, template("lstm_classifier"), dataset="digits-rows", epochs=1, val_fraction=0
    )
    assert result.status == "completed" and result.val_loss is None
    assert of_kind(records, "epoch")[0]["val_accuracy"] is None


def test_uploaded_csv_is_copied_into_the_run_and_trains(tmp_path: Path):
    rows = ["f1,f2,label"] + [f"{i % 7},{(i * 3) % 5},{int(i % 7 > 3)}" for i in range(200)]
    upload = tmp_path / "points.csv"
    upload.write_text("\n".join(rows) + "\n")
    graph = chain_graph(
        [2], ("Linear", {"out_features": 16}), ("ReLU", {}), ("Linear", {"out_features": 2})
    )
    folder = create_run(tmp_path / "runs", graph, TrainConfig(epochs=20, lr=0.05), upload)
    result = train_run(folder)
    assert (folder / "data.csv").read_bytes() == upload.read_bytes()
    assert json.loads((folder / store.CONFIG_FILE).read_text())["dataset"] == "points.csv"
    assert result.status == "completed" and result.val_accuracy > 0.9


# -- warm start ------------------------------------------------------------------------------


def lstm_graph(hidden_head: int | None) -> Graph:
    """The LSTM classifier, optionally with an extra Linear between the pool and the head."""
    data = json.loads((TEMPLATES / "lstm_classifier.json").read_text())
    if hidden_head:
        data["nodes"].insert(
            3, {"id": "mid", "type": "Linear", "params": {"out_features": hidden_head}}
        )
        data["edges"] = [e for e in data["edges"] if e["source"] != "last"] + [
            {"source": "last", "target": "mid"},
            {"source": "mid", "target": "head"},
        ]
    return parse_graph(data)


def test_warm_start_copies_matching_nodes_and_starts_the_rest_fresh():
    old_model, old_analysis = built(lstm_graph(None), seed=1)
    new_graph = lstm_graph(32)
    model, analysis = built(new_graph, seed=2)
    fresh_mid = model.mid.weight.clone()
    copied, fresh = warm_start(
        model, module_attributes(analysis), new_graph, lstm_graph(None), old_model.state_dict()
    )
    assert (copied, fresh) == (["lstm"], ["mid", "head"])
    for name, value in old_model.lstm.state_dict().items():
        assert torch.equal(model.lstm.state_dict()[name], value)
    assert torch.equal(model.mid.weight, fresh_mid)
    assert model.head.weight.shape == (10, 32)


def test_a_warm_started_run_records_which_nodes_were_copied(tmp_path: Path):
    runs = tmp_path / "runs"
    source = create_run(runs, lstm_graph(None), TrainConfig(dataset="digits-rows", epochs=1))
    train_run(source)
    folder = create_run(
        runs,
        lstm_graph(32),
        TrainConfig(dataset="digits-rows", epochs=1),
        warm_start_from=source.name,
    )
    result = train_run(folder)
    report = json.loads((folder / store.WARM_START_REPORT).read_text())
    assert result.status == "completed"
    assert report == {"from": source.name, "copied": ["lstm"], "fresh": ["mid", "head"]}
    records, _ = store.read_records(folder / store.METRICS_FILE)
    assert any(e["message"].startswith("warm start from run") for e in of_kind(records, "event"))


def test_a_model_without_weights_is_refused_by_name(tmp_path: Path):
    upload = tmp_path / "scores.npz"
    np.savez(upload, X=np.random.rand(20, 10).astype(np.float32), y=np.arange(20) % 10)
    folder = create_run(tmp_path / "runs", chain_graph([10], ("ReLU", {})), TrainConfig(), upload)
    result = train_run(folder)
    assert result.status == "failed" and "no trainable parameters" in result.message


# -- losses and data against the graph -------------------------------------------------------


def test_each_named_loss_is_pytorchs():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 5, generator=generator)
    labels = torch.randint(0, 5, (8,), generator=generator)
    targets = torch.randn(8, 5, generator=generator)
    expected = {
        "cross_entropy": F.cross_entropy(scores, labels, label_smoothing=0.1),
        "nll": F.nll_loss(F.log_softmax(scores, -1), labels),
        "mse": F.mse_loss(scores, targets),
        "l1": F.l1_loss(scores, targets),
        "huber": F.huber_loss(scores, targets),
        "bce_with_logits": F.binary_cross_entropy_with_logits(scores, (targets > 0).float()),
    }
    given = {
        "cross_entropy": (scores, labels),
        "nll": (F.log_softmax(scores, -1), labels),
        "mse": (scores, targets),
        "l1": (scores, targets),
        "huber": (scores, targets),
        "bce_with_logits": (scores, (targets > 0).float()),
    }
    for name, (out, y) in given.items():
        assert torch.allclose(compute_loss(name, out, y, 0.1), expected[name]), name


def test_auto_is_cross_entropy_for_labels_and_mse_for_numbers():
    assert resolved_loss("auto", torch.tensor([1, 2])) == "cross_entropy"
    assert resolved_loss("auto", torch.tensor([[0.5]])) == "mse"
    assert resolved_loss("l1", torch.tensor([1, 2])) == "l1"


def test_class_targets_per_position_average_over_every_position():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 6, 9, generator=generator)
    labels = torch.randint(0, 9, (4, 6), generator=generator)
    per_position = torch.stack(
        [F.cross_entropy(scores[:, t], labels[:, t]) for t in range(6)]
    ).mean()
    assert torch.allclose(compute_loss("cross_entropy", scores, labels), per_position)


def test_a_last_batch_of_one_is_left_out_where_batchnorm_needs_two(tmp_path: Path):
    graph = chain_graph(
        [1, 8, 8],
        ("Flatten", {}),
        ("Linear", {"out_features": 16}),
        ("BatchNorm1d", {}),
        ("Linear", {"out_features": 10}),
    )
    # 1,797 digits, 20% held out: 1,438 to train on = 3 x 479 + 1
    result, records, _ = train(tmp_path, graph, epochs=1, batch_size=479, device="cpu")
    assert result.status == "completed", result.message
    (event,) = [e for e in of_kind(records, "event") if "BatchNorm" in e["message"]]
    assert event["message"] == (
        "the last batch of each epoch holds a single sample, which BatchNorm cannot normalise;"
        " it is left out of training (1 of 1438 samples)"
    )
    assert event["code"]["code"].startswith("the last batch of each epoch")
    assert max(r["step"] for r in of_kind(records, "step")) == 3
    without = chain_graph([1, 8, 8], ("Flatten", {}), ("Linear", {"out_features": 10}))
    _, records, _ = train(tmp_path, without, epochs=1, batch_size=479, device="cpu")
    assert max(r["step"] for r in of_kind(records, "step")) == 4  # no BatchNorm: nothing left out


def test_a_next_character_model_reports_accuracy_over_every_position(tmp_path: Path):
    from runtime.builtin_data import TEXT_ALPHABET

    vocab = len(TEXT_ALPHABET)
    graph = chain_graph(
        [12],
        ("Embedding", {"num_embeddings": vocab, "embedding_dim": 16}),
        ("Linear", {"out_features": vocab}),
        dtype="int64",
    )
    result, records, folder = train(tmp_path, graph, dataset="text", epochs=2, lr=0.01)
    assert result.status == "completed", result.message
    first, last = of_kind(records, "epoch")
    assert last["val_loss"] < first["train_loss"] < math.log(vocab)
    # a bigram model: far better than chance, and its accuracy counts every position
    model, _ = built(graph)
    model.load_state_dict(torch.load(folder / "checkpoints" / "weights.pt", weights_only=True))
    data = load_dataset("text", seed=0, input_shape=(12,))
    split = split_dataset(data, TrainConfig(), torch.device("cpu"), "int64")
    with torch.no_grad():
        hits = (model.eval()(split.x_val).argmax(-1) == split.y_val).float().mean()
    assert last["val_accuracy"] == pytest.approx(float(hits), abs=1e-6) and hits > 3 / vocab


def test_a_model_learns_to_reproduce_its_input(tmp_path: Path):
    graph = chain_graph(
        [1, 8, 8],
        ("Conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}),
        ("ReLU", {}),
        ("Conv2d", {"out_channels": 1, "kernel_size": 3, "padding": 1}),
    )
    result, records, _ = train(tmp_path, graph, target="input", epochs=3, lr=0.01)
    assert result.status == "completed", result.message
    epochs = of_kind(records, "epoch")
    variance = float(load_dataset("digits").x.var())
    assert epochs[-1]["val_loss"] < 0.3 * variance
    assert "val_accuracy" not in epochs[-1] and epochs[-1]["val_mae"] > 0


def test_gpt_mini_learns_the_text_far_below_a_uniform_guess(tmp_path: Path):
    from runtime.builtin_data import TEXT_ALPHABET

    uniform = math.log(len(TEXT_ALPHABET))
    result, records, _ = train(
        tmp_path,
        template("gpt_mini"),
        dataset="text",
        epochs=1,
        batch_size=16,
        lr=3e-3,
        val_fraction=0.8,
        device="cpu",
    )
    assert result.status == "completed", result.message
    losses = [r["loss"] for r in of_kind(records, "step")]
    assert sum(losses[:3]) / 3 > 0.9 * uniform  # it starts at chance
    (epoch,) = of_kind(records, "epoch")
    assert epoch["val_loss"] < 0.75 * uniform and epoch["val_accuracy"] > 0.25
    assert of_kind(records, "attention")  # its causal attention maps are recorded per head


def test_gpt_mini_writes_text_from_a_prompt():
    from runtime.metrics import generate_text

    model, _ = built(template("gpt_mini"))
    text = generate_text(model, "the cat ", 40, 64, temperature=1.0, seed=3)
    assert len(text) == 40 and text == generate_text(model, "the cat ", 40, 64, 1.0, seed=3)
    greedy = generate_text(model, "the cat ", 10, 64, temperature=0.0)
    assert greedy == generate_text(model, "the cat ", 10, 64, temperature=0.0, seed=9)


def test_the_conv_autoencoder_learns_to_reproduce_digits(tmp_path: Path):
    result, records, _ = train(
        tmp_path, template("conv_autoencoder"), target="input", epochs=4, lr=3e-3, device="cpu"
    )
    assert result.status == "completed", result.message
    first, *_, last = of_kind(records, "epoch")
    variance = float(load_dataset("digits").x.var())
    assert last["val_loss"] < 0.5 * variance and last["val_loss"] < 0.7 * first["train_loss"]
