"""The CUDA path: run by benchmarks/gpu_check.sh on a GPU machine, skipped cleanly elsewhere.

Each test says what a person training on a GPU relies on: AMP learns, stop/resume is exact on
the device (CUDA RNG state included), a model too large for the GPU ends in a named status, the
exported train.py runs on one GPU, and `auto` picks CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from builder.graph import Graph, load_graph, parse_graph
from runtime import store
from runtime.runs import create_run
from runtime.trainer import TrainConfig, train_run

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "builder" / "templates"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def template(name: str) -> Graph:
    return load_graph((TEMPLATES / f"{name}.json").read_text())


def mlp_with_dropout() -> Graph:
    """Linear layers and Dropout: deterministic matmuls, and Dropout draws on the CUDA RNG."""
    return parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "mlp",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [1, 8, 8]}},
                {"id": "flat", "type": "Flatten"},
                {"id": "fc1", "type": "Linear", "params": {"out_features": 128}},
                {"id": "act", "type": "ReLU"},
                {"id": "drop", "type": "Dropout", "params": {"p": 0.3}},
                {"id": "fc2", "type": "Linear", "params": {"out_features": 10}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [
                {"source": a, "target": b}
                for a, b in [
                    ("in", "flat"),
                    ("flat", "fc1"),
                    ("fc1", "act"),
                    ("act", "drop"),
                    ("drop", "fc2"),
                    ("fc2", "out"),
                ]
            ],
        }
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "weights.pt", weights_only=True)


def test_lenet5_learns_with_amp_on_cuda(tmp_path: Path) -> None:
    folder = create_run(
        tmp_path,
        template("lenet5"),
        TrainConfig(dataset="digits-28", epochs=4, lr=2e-3, device="cuda", amp=True),
    )
    result = train_run(folder)
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy >= 0.9


def test_auto_picks_cuda(tmp_path: Path) -> None:
    folder = create_run(tmp_path, mlp_with_dropout(), TrainConfig(epochs=1, device="auto"))
    assert train_run(folder).status == "completed"
    assert store.read_status(folder)["device"].startswith("cuda")


def test_stop_and_resume_on_cuda_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, device="cuda", lr=3e-3)
    reference = create_run(tmp_path / "reference", mlp_with_dropout(), config)
    assert train_run(reference).status == "completed"

    folder = create_run(tmp_path / "interrupted", mlp_with_dropout(), config)
    (folder / store.STOP_FILE).touch()
    assert train_run(folder).status == "stopped"
    (folder / store.STOP_FILE).unlink()
    assert train_run(folder).status == "completed"

    a, b = weights(reference), weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_too_large_for_the_gpu_ends_in_a_named_status(tmp_path: Path) -> None:
    free, _total = torch.cuda.mem_get_info()
    width = 50_000
    rows = int(free // (4 * width)) * 4  # a weight matrix four times the free memory
    huge = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "huge",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [width]}},
                {"id": "fc", "type": "Linear", "params": {"out_features": min(rows, 10_000_000)}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [{"source": "in", "target": "fc"}, {"source": "fc", "target": "out"}],
        }
    )
    config = TrainConfig(dataset="sine", epochs=1, device="cuda")
    try:
        folder = create_run(tmp_path, huge, config)
    except ValueError as refused:  # refused before anything was built: that is a named status too
        assert "memory" in str(refused).lower()
        return
    result = train_run(folder)
    assert result.status == "failed"
    assert "memory" in result.message.lower() and "Traceback" not in result.message


def test_the_exported_train_py_runs_on_one_gpu_and_learns(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    export = [sys.executable, "-m", "compiler", "export", str(TEMPLATES / "lenet5.json")]
    subprocess.run([*export, "-o", str(out), "--train"], check=True, cwd=ROOT)
    checkpoints = tmp_path / "ck"
    command = [sys.executable, "train.py", "--device", "cuda", "--epochs", "2", "--amp"]
    done = subprocess.run(
        [*command, "--out", str(checkpoints)], cwd=out, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [
        json.loads(line) for line in (checkpoints / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["epoch"] == 2 and records[-1]["val_accuracy"] > 0.5
    weights = torch.load(checkpoints / "model.pt", weights_only=True)
    assert all(not value.is_cuda for value in weights.values()), "saved for any machine"
