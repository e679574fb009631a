"""Runs: trainer processes, live metrics, stop, kill -9, resume, bad checkpoints, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from builder.graph import Graph, load_graph, parse_graph
from runtime import store
from runtime.runs import (
    RunError,
    checkpoint_path,
    create_run,
    list_runs,
    read_metrics,
    read_run,
    resume_run,
    start_run,
    stop_run,
)
from runtime.trainer import TrainConfig, load_model_source, train_run

ROOT = Path(__file__).parents[1]
TEMPLATES = ROOT / "builder" / "templates"
CONFIG = TrainConfig(dataset="digits-rows", epochs=12, lr=3e-3)


def lstm() -> Graph:
    return load_graph((TEMPLATES / "lstm_classifier.json").read_text())


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "weights.pt", weights_only=True)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CONFIG trained without interruption, in this process."""
    folder = create_run(tmp_path_factory.mktemp("reference"), lstm(), CONFIG)
    assert train_run(folder).status == "completed"
    return folder


def stopped_after_one_step(runs: Path, graph: Graph | None = None) -> Path:
    """A run whose stop was requested before it began: it stops, with a checkpoint, at step 1."""
    folder = create_run(runs, graph or lstm(), CONFIG)
    (folder / store.STOP_FILE).touch()
    assert train_run(folder).status == "stopped"
    (folder / store.STOP_FILE).unlink()
    store.update_status(folder, status="stopped")
    return folder


# -- the trainer process ---------------------------------------------------------------------


def test_metrics_reach_a_reader_within_a_second_and_stop_resume_is_exact(
    tmp_path: Path, reference: Path
):
    began = time.monotonic()
    run_id = start_run(tmp_path, lstm(), CONFIG)
    assert time.monotonic() - began < 1.0, "start_run returns at once"
    assert read_run(tmp_path, run_id).status in ("queued", "running")

    latencies, offset, steps = [], 0, []
    while len(steps) < 60:
        records, offset = read_metrics(tmp_path, run_id, offset)
        now = time.time()
        for record in records:
            if record["kind"] == "step":
                latencies.append(now - record["time"])
                steps.append(record["step"])
        assert read_run(tmp_path, run_id).status in ("queued", "running")
        time.sleep(0.05)
    assert max(latencies) < 1.0
    assert steps == list(range(1, len(steps) + 1)), "each record is read exactly once"

    assert stop_run(tmp_path, run_id).status == "stopping"
    wait_for(lambda: read_run(tmp_path, run_id).status == "stopped")
    stopped = read_run(tmp_path, run_id)
    state = torch.load(stopped.path / "checkpoints" / "state.pt", weights_only=True)
    assert state["progress"]["step"] == stopped.step > 0
    assert stopped.message.startswith(f"stopped at step {stopped.step}")

    assert resume_run(tmp_path, run_id).status in ("queued", "running")
    wait_for(lambda: read_run(tmp_path, run_id).status == "completed")
    done = read_run(tmp_path, run_id)
    assert done.step == read_run(reference.parent, reference.name).step
    assert same_weights(weights(done.path), weights(reference))


def test_a_killed_trainer_is_interrupted_keeps_its_metrics_and_resumes_exactly(
    tmp_path: Path, reference: Path
):
    run_id = start_run(tmp_path, lstm(), CONFIG)

    def epochs_logged() -> int:
        return sum(r["kind"] == "epoch" for r in read_metrics(tmp_path, run_id)[0])

    wait_for(lambda: epochs_logged() >= 2 and (tmp_path / run_id / "checkpoints/state.pt").exists())
    os.kill(store.read_status(tmp_path / run_id)["pid"], signal.SIGKILL)
    wait_for(lambda: read_run(tmp_path, run_id).status == "interrupted", 10)
    info = read_run(tmp_path, run_id)
    assert "ended unexpectedly" in info.message and "resume" in info.message
    assert epochs_logged() >= 2, "everything written before the kill is still readable"

    resume_run(tmp_path, run_id)
    wait_for(lambda: read_run(tmp_path, run_id).status == "completed")
    assert same_weights(weights(tmp_path / run_id), weights(reference))
    records, _ = read_metrics(tmp_path, run_id)
    assert any(r["kind"] == "event" and "resumed from" in r["message"] for r in records)


def test_two_runs_train_side_by_side_in_their_own_processes(tmp_path: Path):
    long = CONFIG.model_copy(update={"epochs": 10_000})
    runs = [start_run(tmp_path, lstm(), long), start_run(tmp_path, lstm(), long)]
    wait_for(lambda: all(read_run(tmp_path, r).step > 0 for r in runs))
    assert all(read_run(tmp_path, r).status == "running" for r in runs)
    pids = {store.read_status(tmp_path / r)["pid"] for r in runs}
    assert len(pids) == 2 and os.getpid() not in pids
    for run_id in runs:
        stop_run(tmp_path, run_id)
    wait_for(lambda: all(read_run(tmp_path, r).status == "stopped" for r in runs))


def test_checkpoint_is_a_plain_state_dict_for_the_generated_model(tmp_path: Path, reference: Path):
    assert checkpoint_path(reference.parent, reference.name) == reference / "checkpoints/weights.pt"
    model = load_model_source((reference / "model.py").read_text())
    model.load_state_dict(torch.load(reference / "checkpoints/weights.pt", weights_only=True))
    fresh = create_run(tmp_path, lstm(), CONFIG)
    assert checkpoint_path(tmp_path, fresh.name) is None


# -- bad checkpoints -------------------------------------------------------------------------


class _Payload:
    """Pickles into a call that would create a file; weights_only loading must refuse it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_corrupt_checkpoint_fails_with_a_clear_message(tmp_path: Path):
    folder = stopped_after_one_step(tmp_path)
    (folder / "checkpoints" / "state.pt").write_bytes(b"\x00 definitely not a checkpoint")
    result = train_run(folder)
    assert result.status == "failed"
    assert "checkpoint state.pt is corrupt or not a NetBuilder checkpoint" in result.message
    assert read_run(tmp_path, folder.name).message == result.message


def test_checkpoint_with_code_in_it_is_refused_and_never_run(tmp_path: Path):
    folder = stopped_after_one_step(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save(
        {"format": "netbuilder.checkpoint/1", "model": _Payload(marker)},
        folder / "checkpoints/state.pt",
    )
    result = train_run(folder)
    assert result.status == "failed" and "corrupt or not a NetBuilder checkpoint" in result.message
    assert not marker.exists()


def test_foreign_checkpoints_are_named_as_such(tmp_path: Path):
    folder = stopped_after_one_step(tmp_path)
    state = folder / "checkpoints/state.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    assert "is not a NetBuilder training checkpoint" in train_run(folder).message

    wider = json.loads((TEMPLATES / "lstm_classifier.json").read_text())
    wider["nodes"][1]["params"]["hidden_size"] = 32
    other = stopped_after_one_step(tmp_path / "other", parse_graph(wider))
    (other / "checkpoints/state.pt").replace(state)
    store.update_status(folder, status="stopped")
    assert "does not fit this graph" in train_run(folder).message


def test_warm_start_from_a_corrupt_checkpoint_fails_clearly(tmp_path: Path):
    source = stopped_after_one_step(tmp_path)
    (source / "checkpoints/weights.pt").write_bytes(b"garbage")
    folder = create_run(tmp_path, lstm(), CONFIG, warm_start_from=source.name)
    result = train_run(folder)
    assert result.status == "failed" and "warm-start-weights.pt is corrupt" in result.message


# -- the run store ---------------------------------------------------------------------------


def test_runs_are_listed_newest_first_and_survive_a_broken_status(tmp_path: Path):
    first = create_run(tmp_path, lstm(), CONFIG)
    second = create_run(tmp_path, lstm(), CONFIG)
    (first / store.STATUS_FILE).write_text("{ torn")
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == [second.name, first.name]
    assert runs[1].status == "failed" and "status.json is unreadable" in runs[1].message
    assert list_runs(tmp_path / "missing") == []


def test_read_metrics_returns_only_complete_lines(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    with (folder / store.METRICS_FILE).open("ab") as file:
        file.write(b'{"kind": "event", "step": 0, "message": "a"}\n{"kind": "ev')
    records, offset = read_metrics(tmp_path, folder.name)
    assert [r["message"] for r in records] == ["a"]
    assert read_metrics(tmp_path, folder.name, offset) == ([], offset)
    with (folder / store.METRICS_FILE).open("ab") as file:
        file.write(b'ent", "step": 1, "message": "b"}\n')
    records, _ = read_metrics(tmp_path, folder.name, offset)
    assert [r["message"] for r in records] == ["b"]


def test_a_resumed_log_starts_on_a_fresh_line_after_a_torn_write(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "step", "st')
    log = store.MetricsLog(path)
    log.write([{"kind": "event", "step": 3, "message": "resumed"}])
    log.close()
    assert store.read_records(path)[0] == [{"kind": "event", "step": 3, "message": "resumed"}]


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "", ".hidden"])
def test_run_ids_cannot_leave_the_runs_folder(tmp_path: Path, bad_id: str):
    with pytest.raises(RunError, match="not a run id"):
        read_run(tmp_path, bad_id)


def test_only_stopped_or_interrupted_runs_resume(reference: Path):
    with pytest.raises(RunError, match="is completed; only a stopped or interrupted run resumes"):
        resume_run(reference.parent, reference.name)


def test_a_graph_with_errors_is_not_started(tmp_path: Path):
    data = json.loads((TEMPLATES / "lstm_classifier.json").read_text())
    data["edges"] = data["edges"][:-1]
    with pytest.raises(RunError, match="the graph has .* error"):
        start_run(tmp_path, parse_graph(data), CONFIG)
    assert list_runs(tmp_path) == []


# -- the command line ------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_trains_prints_epochs_then_one_json_line_and_lists_the_run(tmp_path: Path):
    graph = str(TEMPLATES / "lstm_classifier.json")
    done = cli(
        "train", graph, "--dataset", "digits-rows", "--epochs", "2", "--lr", "0.005", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/2  train loss") and lines[1].startswith("epoch 2/2")
    summary = json.loads(lines[-1])
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert 0 <= summary["val_accuracy"] <= 1 and summary["val_loss"] > 0
    run = Path(summary["run"])
    assert run.parent == Path("runs") and (tmp_path / run / "model.py").exists()
    assert store.read_status(tmp_path / run)["pid"] > 0

    listed = cli("runs", cwd=tmp_path)
    assert listed.returncode == 0 and run.name in listed.stdout and "completed" in listed.stdout


def test_cli_regression_reports_null_accuracy(tmp_path: Path):
    rows = ["x1,x2,y"] + [f"{i % 5},{i % 3},{(i % 5) * 0.5 + (i % 3) * 0.25}" for i in range(60)]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            {
                "format": "netbuilder.graph/1",
                "nodes": [
                    {"id": "in", "type": "Input", "params": {"shape": [2]}},
                    {"id": "fit", "type": "Linear", "params": {"out_features": 1}},
                    {"id": "out", "type": "Output"},
                ],
                "edges": [{"source": "in", "target": "fit"}, {"source": "fit", "target": "out"}],
            }
        )
    )
    done = cli("train", str(graph), "--dataset", "table.csv", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["val_accuracy"] is None


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        ("{not json", 2, "not valid JSON"),
        (json.dumps({"format": "netbuilder.graph/1", "nodes": []}), 1, "the graph has"),
    ],
)
def test_cli_bad_input_is_one_line_on_stderr(tmp_path: Path, content: str, code: int, message: str):
    (tmp_path / "g.json").write_text(content)
    done = cli("train", "g.json", cwd=tmp_path)
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_hand_edited_bad_config_fails_with_the_field_named(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    (folder / store.CONFIG_FILE).write_text(json.dumps({"epochs": -1}))
    result = train_run(folder)
    assert result.status == "failed"
    assert result.message.startswith("config.json is not a valid training config: epochs:")
    assert read_run(tmp_path, folder.name).status == "failed"
