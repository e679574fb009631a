"""The export bundle: model.py, train.py, graph.json and README.md, from the API and the CLI, and
weights trained by the app's runtime loading into the exported model.py."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits

from builder.graph import load_graph
from compiler import analyse, generate_source
from export.bundle import bundle_files, bundle_zip

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "builder" / "templates").glob("*.json"))
LENET = ROOT / "builder" / "templates" / "lenet5.json"
RESNET = ROOT / "builder" / "templates" / "resnet.json"
BUNDLE = {
    "model.py", "train.py", "loop.py", "run.py", "builtin_data.py", "csv_table.py",
    "image_folder.py", "graph.json", "README.md",
}  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def import_model_py(path: Path):
    spec = importlib.util.spec_from_file_location("exported_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_bundle_holds_its_files_and_model_py_is_the_trained_source(template: Path) -> None:
    graph = load_graph(template.read_text())
    analysis = analyse(graph)
    files = bundle_files(graph, analysis)
    if "discriminator" in (graph.model_extra or {}):  # a GAN pair: tests/test_gan.py
        readers = {"csv_table.py", "image_folder.py"}  # a GAN reads an NPZ or built-in data
        assert set(files) == BUNDLE - readers | {"generator.py", "discriminator.py"}
        assert files["generator.py"] == generate_source(analysis)
        return
    assert set(files) == BUNDLE
    assert files["model.py"] == generate_source(analysis)
    assert load_graph(files["graph.json"]) == graph
    compile(files["train.py"], "train.py", "exec")


def test_readme_says_how_to_run_on_one_device_and_many() -> None:
    graph = load_graph(LENET.read_text())
    readme = bundle_files(graph, analyse(graph), {"epochs": 12, "optimizer": "adamw"})["README.md"]
    assert "61,706 parameters" in readme and "[B, 1, 28, 28]" in readme
    assert "torchrun --nproc_per_node=4 train.py" in readme
    assert "epochs 12, adamw" in readme
    assert "--data mine.csv" in readme and "checkpoints/ beside it" in readme
    assert 'torch.load("model.pt", weights_only=True)' in readme


def test_a_graph_with_errors_is_not_exported() -> None:
    data = json.loads(LENET.read_text())
    data["nodes"][0]["params"]["shape"] = [1, 3, 3]
    graph = load_graph(json.dumps(data))
    with pytest.raises(ValueError, match="errors"):
        bundle_files(graph, analyse(graph))


def test_settings_out_of_range_are_refused() -> None:
    graph = load_graph(LENET.read_text())
    with pytest.raises(ValidationError):
        bundle_files(graph, analyse(graph), {"batch_size": 0})


def test_a_hostile_name_reaches_the_readme_only_sanitised() -> None:
    data = json.loads(LENET.read_text()) | {"name": "<script>alert(1)</script>\n# owned"}
    graph = load_graph(json.dumps(data))
    readme = bundle_files(graph, analyse(graph))["README.md"]
    assert "<script>" not in readme and "\n# owned" not in readme


def test_cli_export_without_train_writes_model_py_only(tmp_path: Path) -> None:
    result = run_cli("export", str(LENET), "-o", str(tmp_path))
    assert result.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_cli_export_train_writes_the_bundle_with_a_runs_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dataset": "digits", "lr": 0.02, "schedule": "step"}))
    result = run_cli(
        "export", str(LENET), "-o", str(tmp_path / "out"), "--train", "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == BUNDLE
    train = (tmp_path / "out" / "train.py").read_text()
    assert 'add("--lr", type=float, default=0.02,' in train
    assert 'default="step",' in train


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ('{"lr": -1}', "lr"), ("[1]", "JSON object")],
)
def test_cli_export_with_a_bad_config_exits_2_with_one_line(tmp_path, content, message) -> None:
    config = tmp_path / "config.json"
    config.write_text(content)
    result = run_cli(
        "export", str(LENET), "-o", str(tmp_path / "out"), "--train", "--config", str(config)
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_weights_trained_by_the_runtime_load_into_the_exported_model_py(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "train", str(RESNET), "--epochs", "1", "--device", "cpu"]
        + ["--runs", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (weights_file,) = (tmp_path / "runs").rglob("weights.pt")
    weights = torch.load(weights_file, weights_only=True)
    run_cli("export", str(RESNET), "-o", str(tmp_path / "bundle"), "--train")
    model = import_model_py(tmp_path / "bundle" / "model.py").build_model()
    model.load_state_dict(weights)  # strict: the same keys, the same shapes
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    accuracy = (predicted == torch.tensor(digits.target)).float().mean()
    assert accuracy > 0.3  # chance is 0.1: these are the trained weights, working in model.py


def test_the_zip_holds_the_bundle_in_one_safely_named_folder() -> None:
    graph = load_graph(LENET.read_text())
    files = bundle_files(graph, analyse(graph))
    with zipfile.ZipFile(io.BytesIO(bundle_zip(files, "../../etc/Le Net"))) as archive:
        assert sorted(archive.namelist()) == sorted(f"etc_le_net/{name}" for name in files)
        assert archive.read("etc_le_net/train.py").decode() == files["train.py"]


def test_the_bundle_readme_is_written_in_the_readers_language_and_the_code_is_not() -> None:
    graph = load_graph(LENET.read_text())
    english = bundle_files(graph, analyse(graph))
    chinese = bundle_files(graph, analyse(graph), lang="zh")
    assert "由 NetBuilder 导出：61,706 个参数" in chinese["README.md"]
    assert "Exported from NetBuilder: 61,706 parameters" in english["README.md"]
    assert not re.search(r"\{[a-z_]+\}", chinese["README.md"]), "every placeholder is filled"
    assert {k: v for k, v in chinese.items() if k != "README.md"} == {
        k: v for k, v in english.items() if k != "README.md"
    }
