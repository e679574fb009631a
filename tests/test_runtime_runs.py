"""Runs: trainer processes, live metrics, stop (escalating), kill -9, resume, the queue,
deletion, sizes, bad checkpoints, and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from builder.graph import Graph, load_graph, parse_graph
from compiler.gan import with_discriminator
from runtime import runs as runs_module
from runtime import store
from runtime.runs import (
    MAX_TRAINERS_ENV,
    RunError,
    checkpoint_path,
    create_run,
    delete_run,
    disk_usage,
    list_runs,
    read_metrics,
    read_run,
    resume_run,
    start_run,
    stop_run,
)
from runtime.trainer import TrainConfig, load_model_source, train_run
from tests.modelkit import chain_graph

ROOT = Path(__file__).parents[1]
TEMPLATES = ROOT / "builder" / "templates"
CONFIG = TrainConfig(dataset="digits-rows", epochs=12, lr=3e-3)
# Long enough to be killed between its first checkpoint (after CHECKPOINT_MIN_SECONDS of
# training) and its end, on a quiet machine too: about 28 ms an epoch here, 4 s in all. On a
# busy one the trainer (niced) takes much longer: its waits get DEADLINE.
KILLED_CONFIG = CONFIG.model_copy(update={"epochs": 150})
DEADLINE = 240.0


@pytest.fixture(autouse=True)
def no_trainer_outlives_its_test(tmp_path: Path):
    """A failed test must not leave trainers running on a shared machine, nor runs waiting."""
    yield
    for status in tmp_path.rglob(store.STATUS_FILE):
        (status.parent / store.STOP_FILE).touch()  # a waiting run is never admitted
        try:
            pid = json.loads(status.read_text()).get("pid")
        except ValueError:
            continue
        if isinstance(pid, int) and pid != os.getpid():
            try:  # torchrun's trainers with it
                for process in [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]:
                    process.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


def huge() -> Graph:
    """Two Linear(10_000_000): 2e14 parameters, 800 TB; nothing may try to build it."""
    return parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "huge",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [10_000_000]}},
                {"id": "a", "type": "Linear", "params": {"out_features": 10_000_000}},
                {"id": "b", "type": "Linear", "params": {"out_features": 10_000_000}},
                {"id": "out", "type": "Output"},
            ],
            "edges": [
                {"source": "in", "target": "a"},
                {"source": "a", "target": "b"},
                {"source": "b", "target": "out"},
            ],
        }
    )


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
def reference(tmp_path_factory: pytest.TempPathFactory, as_in_a_trainer) -> Path:
    """CONFIG trained without interruption, in this process (on a trainer's threads)."""
    return trained_through(tmp_path_factory.mktemp("reference"), CONFIG, as_in_a_trainer)


def trained_through(folder: Path, config: TrainConfig, as_in_a_trainer) -> Path:  # noqa: ANN001
    run = create_run(folder, lstm(), config)
    with as_in_a_trainer():
        assert train_run(run).status == "completed"
    return run


def stopped_after_one_step(runs: Path, graph: Graph | None = None) -> Path:
    """A run whose stop was requested before it began: it stops, with a checkpoint, at step 1."""
    folder = create_run(runs, graph or lstm(), CONFIG)
    (folder / store.STOP_FILE).touch()
    assert train_run(folder).status == "stopped"
    (folder / store.STOP_FILE).unlink()
    store.update_status(folder, status="stopped")
    return folder


# -- the trainer process ---------------------------------------------------------------------


def test_metrics_reach_a_reader_as_they_are_written_and_stop_resume_is_exact(
    tmp_path: Path, reference: Path
):
    run_id = start_run(tmp_path, lstm(), CONFIG)
    assert read_run(tmp_path, run_id).status in ("queued", "running")

    offset, steps = 0, []
    while len(steps) < 60:  # how fast they arrive is measured in benchmarks/first_point.py
        records, offset = read_metrics(tmp_path, run_id, offset)
        steps += [record["step"] for record in records if record["kind"] == "step"]
        assert read_run(tmp_path, run_id).status in ("queued", "running")
        time.sleep(0.05)
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
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, as_in_a_trainer
):
    """Killed after its first checkpoint, resumed, the run's next epochs end with exactly the
    losses of the same run trained without interruption: the weights, the optimizer, the data
    order and the random state all came back. It is then stopped: training its remaining epochs
    would add nothing but minutes on a loaded machine, where the trainer is niced."""
    run_id = start_run(tmp_path, lstm(), KILLED_CONFIG)

    def records() -> list[dict]:
        return read_metrics(tmp_path, run_id)[0]

    def epochs_logged() -> int:
        return sum(r["kind"] == "epoch" for r in records())

    wait_for(
        lambda: epochs_logged() >= 2 and (tmp_path / run_id / "checkpoints/state.pt").exists(),
        DEADLINE,
    )
    os.kill(store.read_status(tmp_path / run_id)["pid"], signal.SIGKILL)
    wait_for(lambda: read_run(tmp_path, run_id).status == "interrupted", DEADLINE)
    info = read_run(tmp_path, run_id)
    assert "ended unexpectedly" in info.message and "resume" in info.message
    assert epochs_logged() >= 2, "everything written before the kill is still readable"

    def epochs_since_resumed() -> list[dict]:
        written = records()
        resumed = [i for i, r in enumerate(written) if "resumed from" in r.get("message", "")]
        later = written[resumed[0] + 1 :] if resumed else []
        return [record for record in later if record["kind"] == "epoch"]

    resume_run(tmp_path, run_id)
    wait_for(lambda: len(epochs_since_resumed()) >= 3, DEADLINE)
    stop_run(tmp_path, run_id)
    wait_for(lambda: read_run(tmp_path, run_id).status in ("stopped", "completed"), DEADLINE)

    resumed = epochs_since_resumed()[:3]
    # the same run, uninterrupted, to the last epoch compared (the schedule is constant, so
    # nothing in the first epochs depends on how many follow)
    shorter = KILLED_CONFIG.model_copy(update={"epochs": resumed[-1]["epoch"]})
    reference = trained_through(tmp_path_factory.mktemp("reference"), shorter, as_in_a_trainer)
    expected = {
        record["epoch"]: record
        for record in store.read_records(reference / store.METRICS_FILE)[0]
        if record["kind"] == "epoch"
    }
    for record in resumed:
        same = expected[record["epoch"]]
        assert (record["train_loss"], record["val_loss"]) == (same["train_loss"], same["val_loss"])


def test_a_run_on_two_processes_is_started_by_torchrun_writes_once_stops_and_resumes(
    tmp_path: Path,
):
    """ "All GPUs", tried on CPU: torchrun starts two trainers joined by gloo; the first alone
    writes metrics and checkpoints, a stop stops both at the same batch, and a resume goes on
    where they stopped; at the end both hold the same weights."""
    config = CONFIG.model_copy(update={"epochs": 4, "processes": 2, "device": "cpu"})
    run_id = start_run(tmp_path, lstm(), config)
    wait_for(lambda: any(r["kind"] == "step" for r in read_metrics(tmp_path, run_id)[0]), 120)
    assert psutil.Process(store.read_status(tmp_path / run_id)["pid"]).children(recursive=True)
    assert stop_run(tmp_path, run_id).status == "stopping"
    wait_for(lambda: read_run(tmp_path, run_id).status == "stopped", 120)
    stopped = read_run(tmp_path, run_id)
    assert (tmp_path / run_id / "checkpoints" / "state.pt").exists() and stopped.step > 0

    resume_run(tmp_path, run_id)
    wait_for(lambda: read_run(tmp_path, run_id).status in ("completed", "failed"), 180)
    done = read_run(tmp_path, run_id)
    assert done.status == "completed", done.message
    records, _ = read_metrics(tmp_path, run_id)
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, done.step + 1)), "each step recorded once, by one process"
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    events = [r["message"] for r in records if r["kind"] == "event"]
    assert "the weights agree on all 2 processes" in events
    assert any("resumed from" in event for event in events)
    assert store.read_status(tmp_path / run_id)["device"] == "cpu x2"


def test_two_runs_train_side_by_side_in_their_own_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "2")
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


# -- trainer processes: liveness, the queue, escalating stop, deletion --------------------------

LONG = CONFIG.model_copy(update={"epochs": 10_000})


def fake_trainer(tmp_path: Path, *, ignore_term: bool) -> tuple[Path, subprocess.Popen[bytes]]:
    """A run recorded as running whose 'trainer' never looks at the stop flag (a stuck step),
    optionally ignoring SIGTERM too, with a checkpoint already written."""
    folder = create_run(tmp_path, lstm(), CONFIG)
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN);" if ignore_term else ""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import signal, time; {ignore} print('ready', flush=True);" " time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    started = runs_module.process_start_time(process.pid)
    store.update_status(folder, status="running", pid=process.pid, pid_started=started, step=7)
    (folder / store.CHECKPOINT_DIR).mkdir()
    (folder / store.CHECKPOINT_DIR / store.STATE_FILE).write_bytes(b"the last checkpoint")
    return folder, process


def test_a_reused_pid_reads_as_interrupted(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    mine = runs_module.process_start_time(os.getpid())
    store.update_status(folder, status="running", pid=os.getpid(), pid_started=mine)
    assert read_run(tmp_path, folder.name).status == "running"
    store.update_status(folder, pid_started=mine - 3600)  # same pid, another process's birth
    info = read_run(tmp_path, folder.name)
    assert info.status == "interrupted" and "ended unexpectedly" in info.message


def test_a_zombie_trainer_reads_as_interrupted(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = runs_module.process_start_time(child.pid)
    store.update_status(folder, status="running", pid=child.pid, pid_started=started)
    wait_for(lambda: runs_module.psutil.Process(child.pid).status() == "zombie", 30)
    assert read_run(tmp_path, folder.name).status == "interrupted"
    child.wait()


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_stop_escalates_and_always_ends_stopped_with_the_checkpoint(
    tmp_path: Path, ignore_term: bool
):
    folder, process = fake_trainer(tmp_path, ignore_term=ignore_term)
    assert stop_run(tmp_path, folder.name, grace=0.2, kill_grace=0.5).status == "stopping"
    wait_for(lambda: process.poll() is not None, 30)
    wait_for(lambda: store.read_status(folder)["status"] == "stopped", 30)
    info = read_run(tmp_path, folder.name)
    assert info.status == "stopped" and "last checkpoint is kept" in info.message
    assert process.returncode == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    state = folder / store.CHECKPOINT_DIR / store.STATE_FILE
    assert state.read_bytes() == b"the last checkpoint"


def test_a_trainer_killed_while_stopping_reads_as_stopped(tmp_path: Path):
    folder, process = fake_trainer(tmp_path, ignore_term=False)
    (folder / store.STOP_FILE).touch()
    process.kill()
    process.wait()
    assert read_run(tmp_path, folder.name).status == "stopped"


def test_runs_beyond_the_trainer_limit_queue_and_start_as_slots_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    first = start_run(tmp_path, lstm(), LONG)
    second = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: read_run(tmp_path, first).step > 0)
    assert read_run(tmp_path, second).status == "queued"
    assert store.read_status(tmp_path / second)["pid"] is None
    stop_run(tmp_path, first)
    wait_for(lambda: read_run(tmp_path, first).status == "stopped")
    wait_for(lambda: read_run(tmp_path, second).step > 0)
    assert read_run(tmp_path, second).status == "running"
    stop_run(tmp_path, second)
    wait_for(lambda: read_run(tmp_path, second).status == "stopped")


def test_a_queued_run_stops_without_ever_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    first = start_run(tmp_path, lstm(), LONG)
    second = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: read_run(tmp_path, first).step > 0)
    assert stop_run(tmp_path, second).status == "stopped"
    assert store.read_status(tmp_path / second)["pid"] is None
    delete_run(tmp_path, first)
    assert [run.id for run in list_runs(tmp_path)] == [second]


def test_the_trainers_default_to_one_per_core_and_at_least_two(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MAX_TRAINERS_ENV, raising=False)
    assert runs_module.max_trainers() == max(2, os.cpu_count() or 1)
    monkeypatch.setenv(MAX_TRAINERS_ENV, "3")
    assert runs_module.max_trainers() == 3


def test_deleting_a_running_run_ends_its_trainer_and_removes_its_folder(tmp_path: Path):
    run_id = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: read_run(tmp_path, run_id).step > 0)
    status = store.read_status(tmp_path / run_id)
    delete_run(tmp_path, run_id)
    assert not (tmp_path / run_id).exists() and list_runs(tmp_path) == []
    assert not runs_module._alive(status["pid"], status["pid_started"])
    with pytest.raises(RunError, match="there is no run"):
        read_run(tmp_path, run_id)


def test_the_runs_table_says_how_much_disk_each_run_takes(reference: Path):
    files = [path for path in reference.rglob("*") if path.is_file()]
    expected = sum(path.stat().st_size for path in files)
    assert disk_usage(reference) == expected > 0
    assert read_run(reference.parent, reference.name).disk_bytes == expected


# -- sizes: refused before anything is built ----------------------------------------------------


def test_a_model_too_big_for_the_device_is_refused_before_a_run_exists(tmp_path: Path):
    with pytest.raises(RunError) as refused:
        start_run(tmp_path, huge(), CONFIG)
    text = str(refused.value)
    assert "the model needs 3.2 PB to train at batch size 64" in text
    assert " has only " in text and "could never start" in text
    assert refused.value.detail.values["need"] == "3.2 PB"
    assert list_runs(tmp_path) == []


def test_a_gan_pair_is_sized_with_both_players(tmp_path: Path):
    """A small generator with a discriminator too big to train (1e14 parameters): the pair is
    refused before a run exists, with the figures; the template's own pair starts."""
    pair = load_graph((TEMPLATES / "dcgan_digits.json").read_text())
    wide = ("Linear", {"out_features": 10_000_000})
    giant = chain_graph([1, 8, 8], ("Flatten", {}), wide, wide, ("Linear", {"out_features": 1}))
    with pytest.raises(RunError) as refused:
        start_run(tmp_path, with_discriminator(pair, giant), CONFIG)
    assert "the model needs" in str(refused.value) and " has only " in str(refused.value)
    assert list_runs(tmp_path) == []
    start_run(tmp_path, pair, CONFIG.model_copy(update={"epochs": 1}))  # the real pair fits


def test_the_trainer_refuses_a_model_too_big_first_thing(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)  # fits when created; the graph then grows
    (folder / store.GRAPH_FILE).write_text(huge().model_dump_json())
    (folder / store.MODEL_FILE).write_text("raise SystemExit('the model must never be built')")
    result = train_run(folder)
    assert result.status == "failed" and "the model needs 3.2 PB" in str(result.message)
    status = store.read_status(folder)
    assert status["message"].startswith("the model needs 3.2 PB to train")
    assert status["message_data"]["code"].startswith("the model needs {need} to train")
    assert status["message_data"]["values"]["need"] == "3.2 PB"
    info = read_run(tmp_path, folder.name)
    assert info.message == status["message"]
    assert runs_module.status_text(info, "zh").startswith("模型以批大小 64 训练需要 3.2 PB")
    assert runs_module.status_label(info.status, "zh") == "失败"


def test_a_failing_run_records_a_sentence_and_logs_the_traceback(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    (folder / store.MODEL_FILE).write_text("def build_model():\n    raise RuntimeError('boom')\n")
    store.update_status(folder, status="stopped")
    resume_run(tmp_path, folder.name)  # through the queue and the warm trainer process
    wait_for(lambda: read_run(tmp_path, folder.name).status == "failed")
    status = store.read_status(folder)
    assert status["message"] == "RuntimeError: boom" and "Traceback" not in status["message"]
    log = (folder / store.LOG_FILE).read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom" in log


# -- the command line: one line, never a traceback ----------------------------------------------


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_cli_refuses_a_model_too_big_with_both_figures(tmp_path: Path):
    (tmp_path / "huge.json").write_text(huge().model_dump_json())
    done = cli("train", "huge.json", cwd=tmp_path)
    assert done.returncode == 1
    line = one_line_error(done)
    assert line.startswith("error: the model needs 3.2 PB") and "has only" in line
    assert not (tmp_path / "runs").exists() or list_runs(tmp_path / "runs") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "no-such-set"], "unknown dataset 'no-such-set'"),
        (["--dataset", "missing.csv"], "no such data file: missing.csv"),
        (["--epochs", "many"], "argument --epochs: invalid int value"),
        (["--epochs", "0"], "--epochs:"),
        (["--lr", "nan"], "--lr:"),
        (["--device", "tpu"], "argument --device: invalid choice"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_bad_dataset_or_flag_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
):
    done = cli("train", str(TEMPLATES / "lstm_classifier.json"), *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in one_line_error(done)


def test_cli_run_that_fails_prints_the_sentence_its_status_records(tmp_path: Path):
    done = cli(
        "train", str(TEMPLATES / "lstm_classifier.json"), "--dataset", "digits", cwd=tmp_path
    )
    assert done.returncode == 1
    assert "digits samples are" in one_line_error(done)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed"
    status = store.read_status(tmp_path / summary["run"])
    assert status["status"] == "failed" and status["message"] == done.stderr.strip()


def test_cli_runs_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path):
    (tmp_path / "taken").write_text("a file where the runs folder should be")
    done = cli(
        "train", str(TEMPLATES / "lstm_classifier.json"), "--dataset", "digits-rows",
        "--runs", "taken/runs", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot write the run folder in taken/runs" in one_line_error(done)


def test_cli_graph_with_a_non_finite_value_is_one_line(tmp_path: Path):
    data = json.loads((TEMPLATES / "lstm_classifier.json").read_text())
    data["nodes"][1]["params"]["dropout"] = float("nan")
    (tmp_path / "g.json").write_text(json.dumps(data))  # Python writes NaN, as JSON readers accept
    done = cli("train", "g.json", "--dataset", "digits-rows", cwd=tmp_path)
    assert done.returncode in (1, 2)
    one_line_error(done)


def test_a_trainer_never_runs_the_launching_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Streamlit puts the running page script in sys.modules["__main__"]; multiprocessing would
    run it again in each child. The trainer must start without rendering the page."""
    marker = tmp_path / "page-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    page = type(sys)("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    run_id = start_run(tmp_path / "runs", lstm(), LONG)
    wait_for(lambda: read_run(tmp_path / "runs", run_id).step > 0)
    delete_run(tmp_path / "runs", run_id)
    assert not marker.exists()


def test_a_trainer_forked_from_the_warm_server_trains_on_several_threads(tmp_path: Path):
    """OpenMP's worker threads do not survive a fork: a forkserver that had started them would
    hand every trainer a pool that hangs in its first parallel op. A fresh server, two threads."""
    script = f"""
import time
from pathlib import Path
from builder.graph import load_graph
from runtime.runs import read_run, start_run
from runtime.trainer import TrainConfig
runs = Path({str(tmp_path / "runs")!r})
graph = load_graph(Path({str(TEMPLATES / "resnet.json")!r}).read_text())
run_id = start_run(runs, graph, TrainConfig(epochs=1))
deadline = time.monotonic() + 120
while read_run(runs, run_id).status not in ("completed", "failed") and time.monotonic() < deadline:
    time.sleep(0.2)
info = read_run(runs, run_id)
print(info.status, info.step)
"""
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    output = tmp_path / "launcher.txt"  # a file, not a pipe: a hung trainer would hold a pipe open
    with output.open("w") as sink:
        launched = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    assert launched.returncode == 0, output.read_text()[-2000:]
    status, step = output.read_text().split()[-2:]
    assert status == "completed" and int(step) > 0


def test_a_stops_late_escalation_leaves_the_run_alone_once_it_was_resumed(tmp_path: Path):
    """Stop, then Resume before the Stop's escalation thread records its forced stop (seen on
    a loaded machine with a Ray run): the resumed run must stay queued, not read as stopped."""
    runs = runs_module
    folder = create_run(tmp_path, lstm(), CONFIG)
    store.update_status(folder, status="running", pid=111, pid_started=1.0)
    stopped_trainer = runs._trainer_of(store.read_status(folder))
    store.update_status(folder, status="queued", pid=None, pid_started=None)  # resumed
    runs._record_forced_stop(folder, stopped_trainer)
    assert store.read_status(folder)["status"] == "queued"
    store.update_status(folder, status="running", pid=111, pid_started=1.0)  # not resumed
    runs._record_forced_stop(folder, stopped_trainer)
    assert store.read_status(folder)["status"] == "stopped"
