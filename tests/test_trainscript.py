"""The exported train.py: readable, standalone, runs the app's own loop (the same weights as a run
in the app), carries the app's settings as flags derived from TrainConfig, trains, checkpoints,
resumes exactly, rejects bad data by name, and runs under torchrun (2 CPU processes, gloo) with
the same result on every rank and about the same accuracy as one process."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import black
import numpy as np
import pytest
import torch

from builder.graph import Graph, load_graph, parse_graph
from compiler import analyse
from export.bundle import bundle_files
from export.trainscript import train_source
from runtime import store
from runtime.runs import create_run
from runtime.settings import APP_ONLY, TrainConfig
from runtime.trainer import train_run
from tests.modelkit import vae_graph

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "builder" / "templates").glob("*.json"))
BUNDLE_MODULES = ("model", "builtin_data", "loop", "run", "csv_table", "train")
SMALL_CNN = [
    ("Conv2d", {"out_channels": 8, "kernel_size": 3, "padding": 1}),
    ("BatchNorm2d", {}),
    ("ReLU", {}),
    ("MaxPool2d", {"kernel_size": 2}),
    ("Flatten", {}),
    ("Linear", {"out_features": 10}),
]
FAST = ["--device", "cpu", "--epochs", "3", "--lr", "0.01"]


def chain(shape: list[int], layers: list[tuple[str, dict]], dtype: str = "float32") -> Graph:
    nodes = [{"id": "in", "type": "Input", "params": {"shape": shape, "dtype": dtype}}]
    nodes += [{"id": f"n{i}", "type": t, "params": p} for i, (t, p) in enumerate(layers)]
    nodes.append({"id": "out", "type": "Output"})
    edges = [{"source": a["id"], "target": b["id"]} for a, b in zip(nodes, nodes[1:])]
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": "t", "nodes": nodes, "edges": edges}
    )


def write_bundle(folder: Path, graph: Graph, defaults: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in bundle_files(graph, analyse(graph), defaults).items():
        (folder / name).write_text(text)
    return folder


def load_train(folder: Path) -> types.ModuleType:
    """Import a bundle's train.py with its own model.py, loop.py and builtin_data.py, as
    `python train.py` would see them."""
    modules = {}
    for name in BUNDLE_MODULES:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = modules[name]
        spec.loader.exec_module(modules[name])
    return modules["train"]


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[tuple[Path, types.ModuleType]]:
    """A small CNN's bundle on the [1, 8, 8] digits, with train.py imported."""
    folder = write_bundle(tmp_path / "bundle", chain([1, 8, 8], SMALL_CNN))
    try:
        yield folder, load_train(folder)
    finally:
        forget_bundle()


def forget_bundle() -> None:
    for name in BUNDLE_MODULES:
        sys.modules.pop(name, None)


def last_record(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The text


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_train_py_is_black_formatted_and_standalone(template: Path) -> None:
    source = train_source(analyse(load_graph(template.read_text())))
    assert black.format_str(source, mode=black.Mode(line_length=88)) == source
    assert max(len(line) for line in source.splitlines()) <= 88
    tree = ast.parse(source)
    top = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert top <= {
        "__future__",
        "argparse",
        "json",
        "math",
        "os",
        "time",
        "pathlib",
        "torch",
        "model",
        "loop",
        "run",
        "builtin_data",
        "csv_table",
    }
    inner = {
        alias.name if isinstance(node, ast.Import) else node.module
        for function in tree.body
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert inner <= {"numpy", "image_folder"}  # the bundle's picture reader needs Pillow


@pytest.mark.parametrize("name", ["loop.py", "run.py", "builtin_data.py"])
def test_the_bundle_carries_the_runtimes_own_loop_and_data_verbatim(name: str) -> None:
    graph = load_graph(TEMPLATES[0].read_text())
    files = bundle_files(graph, analyse(graph))
    assert files[name] == (ROOT / "runtime" / name).read_text()
    tree = ast.parse(files[name])
    top = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    standard = {"__future__", "collections", "contextlib", "dataclasses", "functools", "json"}
    standard |= {"math", "os", "pathlib", "random", "tempfile", "time", "typing"}
    assert top <= standard | {"torch"}


def test_train_py_carries_the_apps_settings_as_defaults(tmp_path: Path) -> None:
    chosen = {"epochs": 7, "batch_size": 32, "lr": 0.05, "optimizer": "momentum"}
    chosen |= {"schedule": "cosine", "warmup_steps": 10, "grad_clip": 1.0, "amp": True}
    chosen |= {"weight_decay": 1e-4, "seed": 3, "early_stopping_patience": 2, "val_fraction": 0.1}
    chosen |= {"dataset": "digits", "report_every": 5}  # TrainConfig fields train.py ignores
    folder = write_bundle(tmp_path, chain([1, 8, 8], SMALL_CNN), chosen)
    try:
        args = load_train(folder).parse_args([])
    finally:
        forget_bundle()
    assert (args.epochs, args.batch_size, args.lr, args.optimizer) == (7, 32, 0.05, "momentum")
    assert (args.schedule, args.warmup_steps, args.grad_clip, args.amp) == ("cosine", 10, 1.0, True)
    assert (args.weight_decay, args.seed, args.val_fraction) == (1e-4, 3, 0.1)
    assert (args.early_stopping_patience, args.dataset, args.target) == (2, "digits", "label")


def test_train_py_has_a_flag_for_every_trainconfig_field_outside_the_app(bundle) -> None:
    _, train = bundle
    args = vars(train.parse_args([]))
    fields = set(TrainConfig.model_fields) - set(APP_ONLY)
    app_only = set(APP_ONLY) - {"label_column"}  # train.py reads CSV files too
    assert fields <= set(args) and not app_only & set(args)
    assert set(args) - fields == {"data", "label_column", "out", "resume"}
    defaults = TrainConfig().model_dump()
    assert all(args[name] == defaults[name] for name in fields if name != "dataset")


@pytest.mark.parametrize(
    "bad", [{"lr": -1}, {"lr": float("nan")}, {"optimizer": "os.system('x')"}, {"epochs": "5; x"}]
)
def test_settings_out_of_range_are_refused_before_they_reach_code(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig.model_validate(bad)


def test_a_hostile_graph_name_cannot_break_out_of_the_docstring() -> None:
    graph = chain([64], [("Linear", {"out_features": 10})])
    graph = graph.model_copy(
        update={"name": "x'''\"\"\"\nimport os; os.system('touch /tmp/pwned')\n"}
    )
    tree = ast.parse(train_source(analyse(graph)))
    docstring = ast.get_docstring(tree)
    assert docstring is not None and "import os" not in [
        line.strip() for line in docstring.splitlines()
    ]
    assert not any(
        isinstance(node, ast.Attribute) and node.attr == "system" for node in ast.walk(tree)
    )


@pytest.mark.parametrize(
    "shape, dtype, output, expected",
    [
        ([1, 8, 8], "float32", 10, (1, 8, 8)),
        ([8, 8], "float32", 10, (8, 8)),
        ([1, 28, 28], "float32", 10, (1, 28, 28)),
        ([16], "int64", 16, (16,)),
        ([32, 1], "float32", 1, (32, 1)),
    ],
)
def test_built_in_data_fits_the_models_input(tmp_path, shape, dtype, output, expected) -> None:
    layers = [("Embedding", {"num_embeddings": 16, "embedding_dim": 4})] if dtype == "int64" else []
    layers += [("Flatten", {}), ("Linear", {"out_features": output})]
    folder = write_bundle(tmp_path, chain(shape, layers, dtype))
    try:
        train = load_train(folder)
        x, y = train.load_data(train.parse_args([]))
    finally:
        forget_bundle()
    assert tuple(x.shape[1:]) == expected and x.dtype == getattr(torch, dtype)
    if output == 1:
        assert y.shape == (len(x), 1) and y.is_floating_point()
    else:
        assert y.dtype == torch.int64 and int(y.max()) == output - 1 and int(y.min()) == 0


def test_without_fitting_built_in_data_the_data_flag_is_required(tmp_path: Path) -> None:
    folder = write_bundle(
        tmp_path, chain([3, 5], [("Flatten", {}), ("Linear", {"out_features": 2})])
    )
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert (
        "no built-in dataset fits input [3, 5]; pass --data FILE.csv or FILE.npz" in result.stderr
    )


def test_the_bundle_carries_the_apps_own_csv_reader_verbatim_needing_only_numpy() -> None:
    graph = load_graph(TEMPLATES[0].read_text())
    files = bundle_files(graph, analyse(graph))
    assert files["csv_table.py"] == (ROOT / "runtime" / "csv_table.py").read_text()
    tree = ast.parse(files["csv_table.py"])
    top = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert top <= {"__future__", "csv", "io", "dataclasses", "typing", "numpy"}


def test_trains_on_a_csv_as_the_app_reads_it_word_labels_becoming_classes(tmp_path) -> None:
    from runtime.datasets import dataset_from_upload

    rows = "\n".join(f"{i % 7},{i % 3},{'dog' if i % 2 else 'cat'}" for i in range(60))
    data = f"weight,legs,kind\n{rows}\n"
    (tmp_path / "pets.csv").write_text(data)
    folder = write_bundle(tmp_path / "bundle", chain([2], [("Linear", {"out_features": 2})]))
    try:
        train = load_train(folder)
        x, y = train.load_data(train.parse_args(["--data", str(tmp_path / "pets.csv")]))
        app = dataset_from_upload("pets.csv", data.encode())
        assert torch.equal(x, app.x) and torch.equal(y, app.y)
        train.main([*FAST, "--epochs", "1", "--data", str(tmp_path / "pets.csv")])
    finally:
        forget_bundle()
    assert (folder / "checkpoints" / "model.pt").is_file()


def test_checkpoints_go_beside_train_py_wherever_it_is_started_from(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "bundle", chain([1, 8, 8], SMALL_CNN))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, str(folder / "train.py"), *FAST, "--epochs", "1"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (folder / "checkpoints" / "last.pt").is_file() and not list(elsewhere.iterdir())


class Recorder:
    """Hooks that keep the sample indices of every step."""

    def __init__(self, hooks) -> None:
        self.seen: list[list[int]] = []
        self.base = hooks

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def after_step(self, done) -> None:
        self.seen.append(done.index.tolist())


def test_processes_split_each_global_batch_and_the_seed_drives_the_shuffle(bundle) -> None:
    _, train = bundle
    loop = sys.modules["loop"]
    args = train.parse_args(["--batch-size", "8", "--seed", "5", "--epochs", "1"])
    x, y = torch.randn(40, 1, 8, 8), torch.zeros(40, dtype=torch.long)
    shares = []
    for rank in (0, 1):
        data = loop.split(x, y, args)
        model = sys.modules["model"].build_model()
        hooks = Recorder(loop.Hooks())
        optimizer = loop.make_optimizer(args, list(model.parameters()))
        trainer = loop.Loop(model, optimizer, data, args, "auto", hooks=hooks, rank=rank, world=2)
        trainer.train()
        shares.append(hooks.seen)
    order = loop.epoch_order(5, 0, 32).tolist()
    assert len(shares[0]) == len(shares[1]) == 4  # 32 training samples, global batches of 8
    for step, (first, second) in enumerate(zip(*shares, strict=True)):
        batch = order[step * 8 : (step + 1) * 8]
        assert first == batch[0::2] and second == batch[1::2]


# ---------------------------------------------------------------------------------------------
# Training


DROPOUT_CNN = [*SMALL_CNN[:4], ("Dropout", {"p": 0.3}), *SMALL_CNN[4:]]


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "adamw", "schedule": "cosine", "warmup_steps": 5, "grad_clip": 0.5},
        {"optimizer": "momentum", "batch_size": 479, "schedule": "step", "weight_decay": 1e-3},
    ],
    ids=["adamw-cosine-clip", "momentum-step-single-sample-batch"],
)
def test_a_run_in_the_app_and_train_py_end_with_identical_weights(tmp_path, settings) -> None:
    config = TrainConfig(dataset="digits", epochs=2, lr=0.01, seed=7, device="cpu", **settings)
    graph = chain([1, 8, 8], DROPOUT_CNN)
    run = create_run(tmp_path / "runs", graph, config)
    assert train_run(run).status == "completed"
    app = torch.load(run / store.CHECKPOINT_DIR / store.WEIGHTS_FILE, weights_only=True)
    folder = write_bundle(tmp_path / "bundle", graph, config.model_dump())
    try:
        script = load_train(folder).main(["--out", str(tmp_path / "ck")]).state_dict()
    finally:
        forget_bundle()
    assert app.keys() == script.keys()
    assert all(torch.equal(app[key], script[key]) for key in app)
    assert any(not torch.equal(app[key], value) for key, value in fresh_weights(graph).items())


def fresh_weights(graph: Graph) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return load_train_model(graph).state_dict()


def load_train_model(graph: Graph) -> torch.nn.Module:
    from runtime.trainer import load_model_source

    return load_model_source(bundle_files(graph, analyse(graph))["model.py"])


def test_trains_on_digits_and_saves_weights_that_load_safely_into_model_py(
    bundle, tmp_path
) -> None:
    folder, train = bundle
    model = train.main([*FAST, "--out", str(tmp_path / "ck")])
    record = last_record(tmp_path / "ck")
    assert record["epoch"] == 3 and record["val_accuracy"] > 0.8
    weights = torch.load(tmp_path / "ck" / "model.pt", weights_only=True)
    fresh = sys.modules["model"].build_model()
    fresh.load_state_dict(weights)  # strict: every key of model.py, nothing else
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)


def test_resume_continues_exactly_where_the_run_stopped(bundle, tmp_path) -> None:
    _, train = bundle
    straight = train.main([*FAST, "--out", str(tmp_path / "a")]).state_dict()
    train.main([*FAST, "--epochs", "2", "--out", str(tmp_path / "b")])
    resumed = train.main([*FAST, "--resume", "--out", str(tmp_path / "b")]).state_dict()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert last_record(tmp_path / "a")["val_loss"] == last_record(tmp_path / "b")["val_loss"]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_early_stopping_ends_the_run_after_patience_epochs_without_progress(tmp_path) -> None:
    layers = [("Flatten", {}), ("Linear", {"out_features": 10})]  # lr 1e-30: weights never move
    folder = write_bundle(tmp_path / "b", chain([1, 8, 8], layers))
    try:
        train = load_train(folder)
        frozen = ["--optimizer", "sgd", "--lr", "1e-30", "--early-stopping-patience", "2"]
        train.main([*FAST, "--epochs", "6", *frozen, "--out", str(tmp_path / "ck")])
    finally:
        forget_bundle()
    lines = (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_without_a_checkpoint_says_so(bundle, tmp_path) -> None:
    _, train = bundle
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.main([*FAST, "--resume", "--out", str(tmp_path / "empty")])


def test_trains_on_an_npz_file_and_amp_on_cpu_stays_float32(bundle, tmp_path) -> None:
    _, train = bundle
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()
    np.savez(tmp_path / "mine.npz", X=x.numpy(), y=y.numpy())
    train.main(
        [
            *FAST,
            "--epochs",
            "1",
            "--amp",
            "--data",
            str(tmp_path / "mine.npz"),
            "--out",
            str(tmp_path / "ck"),
        ]
    )
    record = last_record(tmp_path / "ck")
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"X": np.zeros((4, 3, 8, 8), np.float32), "y": np.zeros(4, np.int64)}, "the model takes"),
        (
            {"X": np.zeros((4, 1, 8, 8), np.float32), "y": np.full(4, 12)},
            "labels run from 12 to 12",
        ),
        ({"X": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)}, "y has 3"),
        ({"inputs": np.zeros((4, 1, 8, 8), np.float32)}, "named X and y"),
        ({"X": np.array([{"evil": 1}] * 4, dtype=object), "y": np.zeros(4)}, "cannot read"),
    ],
)
def test_bad_data_files_stop_with_a_named_message(bundle, tmp_path, arrays, message) -> None:
    _, train = bundle
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit, match=message):
        train.main([*FAST, "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "ck")])


@pytest.fixture
def vae_bundle(tmp_path: Path) -> Iterator[tuple[Path, types.ModuleType]]:
    """A VAE's bundle (the loss vae) on the [1, 8, 8] digits, with train.py imported."""
    folder = write_bundle(tmp_path / "bundle", parse_graph(vae_graph([1, 8, 8])))
    try:
        yield folder, load_train(folder)
    finally:
        forget_bundle()


def test_a_vae_on_data_outside_0_1_stops_with_a_named_message(vae_bundle, tmp_path) -> None:
    """Not torch's "all elements of target should be between 0 and 1" from inside the loop."""
    _, train = vae_bundle
    np.savez(tmp_path / "bad.npz", X=np.full((4, 1, 8, 8), 255, np.float32), y=np.zeros(4))
    with pytest.raises(SystemExit, match=r"needs values in \[0, 1\], but X holds values from 255"):
        train.main([*FAST, "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "ck")])


def test_a_vae_trains_on_the_digits_whatever_its_labels(vae_bundle, tmp_path) -> None:
    _, train = vae_bundle
    train.main(["--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "ck")])
    assert np.isfinite(last_record(tmp_path / "ck")["train_loss"])


def test_a_diverging_run_stops_with_advice_and_keeps_no_bad_checkpoint(bundle, tmp_path) -> None:
    _, train = bundle
    with pytest.raises(SystemExit, match="the loss is not finite at step .*lower --lr"):
        train.main([*FAST, "--optimizer", "sgd", "--lr", "1e30", "--out", str(tmp_path / "ck")])
    assert not (tmp_path / "ck" / "model.pt").exists()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_asking_for_cuda_without_a_gpu_says_what_to_do(bundle, tmp_path) -> None:
    _, train = bundle
    with pytest.raises(SystemExit, match="no CUDA GPU is visible.*choose auto or cpu"):
        train.main(["--device", "cuda", "--out", str(tmp_path / "ck")])


# ---------------------------------------------------------------------------------------------
# torchrun


LAUNCHER = """import os, sys, torch
import train
model = train.main(sys.argv[1:])
torch.save(model.state_dict(), f"rank{os.environ['RANK']}.pt")
"""


def test_torchrun_two_cpu_processes_agree_and_match_one_process(bundle, tmp_path) -> None:
    folder, train = bundle
    (folder / "launch.py").write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(folder)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, "launch.py", *FAST, "--out", "ddp"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    assert result.stdout.count("epoch 3") == 1  # only rank 0 logs

    train.main([*FAST, "--out", str(tmp_path / "single")])
    distributed, single = last_record(folder / "ddp"), last_record(tmp_path / "single")
    assert distributed["val_accuracy"] > 0.8
    assert abs(distributed["val_accuracy"] - single["val_accuracy"]) < 0.05
