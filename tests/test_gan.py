"""GANs: a generator/discriminator pair in one graph file (old files unaffected), checked
together, trained in alternating steps by the shared loop, with losses, verdicts and samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builder.graph import GraphFormatError, load_graph
from compiler import analyse
from runtime import store
from compiler.gan import check_pair, discriminator_graph
from runtime.loop import discriminator_loss, generator_loss
from runtime.runs import create_run
from runtime.trainer import TrainConfig, train_run

HERE = Path(__file__).resolve().parent
PAIR = HERE / "data" / "mlp_gan.json"
TEMPLATES = HERE.parent / "builder" / "templates"


def pair_data() -> dict:
    return json.loads(PAIR.read_text())


def test_a_plain_graph_file_has_no_discriminator():
    graph = load_graph((TEMPLATES / "lenet5.json").read_text())
    assert discriminator_graph(graph) is None


def test_the_pair_is_one_graph_file_whose_discriminator_is_a_graph_too():
    graph = load_graph(PAIR.read_text())
    judge = discriminator_graph(graph)
    assert [n.id for n in graph.nodes][0] == "noise" and judge is not None
    assert [n.type for n in judge.nodes][:2] == ["Input", "Flatten"]
    assert check_pair(analyse(graph), analyse(judge), (1, 8, 8)) == []


def test_a_malformed_discriminator_is_named():
    data = pair_data() | {"discriminator": [1, 2]}
    with pytest.raises(GraphFormatError, match="'discriminator' must be an object"):
        discriminator_graph(load_graph(json.dumps(data)))


def test_the_pair_is_checked_together():
    data = pair_data()
    data["discriminator"]["nodes"][0]["params"]["shape"] = [1, 4, 4]
    data["discriminator"]["nodes"][4]["params"]["out_features"] = 2
    graph = load_graph(json.dumps(data))
    problems = [
        str(p) for p in check_pair(analyse(graph), analyse(discriminator_graph(graph)), (1, 8, 8))
    ]
    assert problems == [
        "the discriminator takes [1, 4, 4] but the generator outputs [1, 8, 8]; set the"
        " discriminator's Input shape to [1, 8, 8]",
        "the discriminator outputs [2]; it must output one score [1] per sample (end it with a"
        " Linear of out_features=1, no Sigmoid)",
    ]
    (problem,) = check_pair(analyse(graph), analyse(discriminator_graph(graph)), (1, 28, 28))[:1]
    assert "the generator outputs [1, 8, 8] but the data's samples are [1, 28, 28]" in str(problem)


def test_the_losses_are_the_standard_ones():
    real, fake = torch.randn(8, 1), torch.randn(8, 1)
    expected_d = -(torch.log(torch.sigmoid(real)) + torch.log(1 - torch.sigmoid(fake))).mean()
    assert torch.allclose(discriminator_loss("non_saturating", real, fake), expected_d, atol=1e-6)
    non_saturating = -torch.log(torch.sigmoid(fake)).mean()
    assert torch.allclose(generator_loss("non_saturating", fake), non_saturating, atol=1e-6)
    minimax = torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(generator_loss("minimax", fake), minimax, atol=1e-6)
    assert torch.allclose(generator_loss("least_squares", fake), 0.5 * ((fake - 1) ** 2).mean())
    assert torch.allclose(
        discriminator_loss("least_squares", real, fake),
        0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean(),
    )


def train_pair(runs: Path, path: Path, **config) -> tuple[object, list[dict], Path]:
    graph = load_graph(path.read_text())
    folder = create_run(runs, graph, TrainConfig(dataset="digits", device="cpu", **config))
    result = train_run(folder)
    records, _ = store.read_records(folder / store.METRICS_FILE)
    return result, records, folder


def test_a_gan_trains_and_its_samples_move_towards_the_data(tmp_path: Path):
    result, records, folder = train_pair(tmp_path, PAIR, epochs=6, lr=1e-3)
    assert result.status == "completed", result.message
    steps = [r for r in records if r["kind"] == "gan"]
    assert len(steps) == result.step and all(math.isfinite(r["d_loss"]) for r in steps)
    assert all(0 <= r["d_real"] <= 1 and 0 <= r["d_fake"] <= 1 for r in steps)
    samples = [r for r in records if r["kind"] == "samples"]
    assert [samples[0]["step"], samples[-1]["step"]] == [0, result.step]  # untrained, and last
    grids = [np.asarray(r["images"]) for r in samples]
    assert grids[0].shape == (16, 1, 8, 8)
    assert not np.allclose(grids[0], grids[-1])  # the samples change as it trains
    from runtime.datasets import load_dataset

    mean_digit = load_dataset("digits").x.mean(0).numpy()
    distance = [float(np.abs(grid.mean(0) - mean_digit).mean()) for grid in grids]
    assert distance[-1] < 0.6 * distance[0]
    assert (folder / "discriminator.py").exists()
    assert (folder / store.CHECKPOINT_DIR / "discriminator.pt").exists()
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, 7))


def test_a_pair_that_does_not_fit_the_data_fails_with_a_sentence(tmp_path: Path):
    graph = load_graph(PAIR.read_text())
    folder = create_run(tmp_path, graph, TrainConfig(dataset="digits-28", epochs=1, device="cpu"))
    result = train_run(folder)
    assert result.status == "failed"
    assert result.message.startswith("the generator outputs [1, 8, 8] but the data's samples")


def test_the_dcgan_template_is_a_checked_pair_that_starts_to_draw_digits(tmp_path: Path):
    template = TEMPLATES / "dcgan_digits.json"
    graph = load_graph(template.read_text())
    judge = discriminator_graph(graph)
    assert judge is not None
    assert check_pair(analyse(graph), analyse(judge), (1, 8, 8)) == []
    result, records, _ = train_pair(tmp_path, template, epochs=3, lr=5e-4)
    assert result.status == "completed", result.message
    grids = [np.asarray(r["images"]) for r in records if r["kind"] == "samples"]
    from runtime.datasets import load_dataset

    mean_digit = load_dataset("digits").x.mean(0).numpy()
    distance = [float(np.abs(grid.mean(0) - mean_digit).mean()) for grid in grids]
    assert distance[-1] < 0.6 * distance[0]
    # digits are mostly dark with bright strokes: the samples' pixels spread out likewise
    assert grids[-1].std() > 2 * grids[0].std()


def test_the_pair_exports_both_players_and_train_py_ends_with_the_apps_weights(tmp_path: Path):
    import importlib.util
    import sys

    from export.bundle import bundle_files

    template = TEMPLATES / "dcgan_digits.json"
    graph = load_graph(template.read_text())
    config = TrainConfig(dataset="digits", epochs=2, lr=5e-4, seed=3, device="cpu")
    files = bundle_files(graph, analyse(graph), config.model_dump())
    assert set(files) == {
        "model.py",
        "generator.py",
        "discriminator.py",
        "train.py",
        "loop.py",
        "run.py",
        "builtin_data.py",
        "graph.json",
        "README.md",
    }
    folder = tmp_path / "bundle"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    names = ("generator", "discriminator", "model", "builtin_data", "loop", "run", "train")
    try:
        for name in names:
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
        exported = sys.modules["train"].main(["--out", str(tmp_path / "ck")])
    finally:
        for name in names:
            sys.modules.pop(name, None)
    run = create_run(tmp_path / "runs", graph, config)
    assert train_run(run).status == "completed"
    app = torch.load(run / store.CHECKPOINT_DIR / store.WEIGHTS_FILE, weights_only=True)
    script = exported.state_dict()
    assert app.keys() == script.keys()
    assert all(torch.equal(app[key], script[key]) for key in app)
    samples = torch.load(tmp_path / "ck" / "samples.pt", weights_only=True)
    assert samples.shape == (16, 1, 8, 8)


def test_a_gan_takes_the_runs_optimizer_and_its_learning_rates_follow_the_schedule(tmp_path):
    from runtime.loop import learning_rate

    settings = dict(epochs=2, lr=0.05, optimizer="sgd", schedule="cosine", warmup_steps=3)
    result, records, folder = train_pair(tmp_path, PAIR, **settings)
    assert result.status == "completed", result.message
    config = TrainConfig.model_validate_json((folder / store.CONFIG_FILE).read_text())
    assert (config.optimizer, config.schedule) == ("sgd", "cosine")
    steps = [r for r in records if r["kind"] == "gan"]
    total = result.step
    assert [r["lr"] for r in steps] == [learning_rate(config, r["step"] - 1, total) for r in steps]
    assert steps[0]["lr"] < steps[3]["lr"] > steps[-1]["lr"]  # warm-up, then the cosine decay
    state = torch.load(folder / store.CHECKPOINT_DIR / store.STATE_FILE, weights_only=True)
    for player in ("generator", "discriminator"):  # torch.optim.SGD's own state, both players
        group = state["optimizers"][player]["param_groups"][0]
        assert "betas" not in group and group["momentum"] == 0
        assert group["lr"] == pytest.approx(steps[-1]["lr"])


def test_a_gan_clips_both_players_gradients_and_stops_on_the_generators_patience(
    tmp_path, monkeypatch
):
    clipped: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def watched(parameters, max_norm):
        clipped.append(max_norm)
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", watched)
    result, records, _ = train_pair(
        tmp_path, PAIR, epochs=8, lr=1e-9, grad_clip=0.5, early_stopping_patience=1
    )
    assert result.status == "completed", result.message
    assert clipped == [0.5] * (2 * result.step)  # D's and G's gradients, every step
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) < 8 and "generator's loss has not improved" in result.message


def test_a_gans_train_py_has_a_flag_for_every_setting_that_acts_on_a_gan_and_no_other():
    from export.trainscript import gan_train_source
    from runtime.settings import APP_ONLY, GAN_UNUSED

    graph = load_graph((TEMPLATES / "dcgan_digits.json").read_text())
    source = gan_train_source(analyse(graph))
    for name in TrainConfig.model_fields:
        flag = f'"--{name.replace("_", "-")}"'
        assert (flag in source) == (name not in APP_ONLY + GAN_UNUSED), name
