"""Two app servers behind a sticky load balancer share one NETBUILDER_HOME (issue 20): their pools
over one runs folder never run more trainers than allowed between them, and a run started from
one server is seen, stopped and resumed from the other. Each server is a plain Python process
importing runtime.runs; this test's own process is the second server where one is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runtime import runs as runs_module
from runtime import store
from runtime.runs import (
    MAX_PER_WORKSPACE_ENV,
    MAX_TRAINERS_ENV,
    list_runs,
    read_run,
    resume_run,
    status_text,
    stop_run,
)

ROOT = Path(__file__).parents[1]
DEADLINE = 180.0

# A server: it starts `count` runs in its workspace once told to go, then keeps its pool going
# until told to quit. With "fake" its trainers are processes that sleep (the pool's choices only).
SERVER = """
import json, subprocess, sys, time
from pathlib import Path
from builder.graph import load_graph
from runtime import runs, store
from runtime.trainer import TrainConfig

root, workspace, count, fake = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
if fake == "fake":
    def sleeping_trainer(folder):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        started = runs.process_start_time(process.pid)
        store.update_status(folder, status="running", pid=process.pid, pid_started=started)
        return runs._Trainer(process.pid, started, process)
    runs._launch = sleeping_trainer
graph = load_graph(Path("builder/templates/lstm_classifier.json").read_text())
config = TrainConfig(dataset="digits-rows", epochs=10_000, lr=3e-3)
(root / f"{workspace}.ready").touch()
while not (root / "go").exists():
    time.sleep(0.01)
ids = [runs.start_run(root / workspace, graph, config) for _ in range(count)]
(root / f"{workspace}.started").write_text(json.dumps(ids))
while not (root / "quit").exists():
    time.sleep(0.05)
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Starts server processes over tmp_path; at the end they quit and no trainer outlives it."""
    started: list[subprocess.Popen[bytes]] = []

    def start(workspace: str, count: int, fake: bool, **env: str) -> None:
        command = [sys.executable, "-c", SERVER, str(tmp_path), workspace, str(count)]
        log = (tmp_path / f"{workspace}.log").open("wb")
        started.append(
            subprocess.Popen(
                [*command, "fake" if fake else "real"],
                cwd=ROOT,
                env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    yield start
    (tmp_path / "quit").touch()
    for status in tmp_path.rglob(store.STATUS_FILE):
        (status.parent / store.STOP_FILE).touch()
        pid = json.loads(status.read_text()).get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            try:
                psutil.Process(pid).kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(condition: Callable[[], bool], seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def trainers_alive(root: Path) -> int:
    """Trainers alive over the runs root, counted from the status files (pid and start time)."""
    count = 0
    for path in root.glob(f"*/*/{store.STATUS_FILE}"):
        status = json.loads(path.read_text())
        count += runs_module._alive(status.get("pid"), status.get("pid_started"))
    return count


def all_runs(root: Path) -> list[runs_module.RunInfo]:
    return [run for workspace in runs_module.workspaces(root) for run in list_runs(workspace)]


def test_two_servers_pools_over_one_runs_folder_never_run_more_trainers_than_allowed(
    tmp_path: Path, servers: Callable[..., None]
):
    limits = {MAX_TRAINERS_ENV: "2", MAX_PER_WORKSPACE_ENV: "2"}
    servers("first", 3, fake=True, **limits)
    servers("second", 3, fake=True, **limits)
    wait_for(lambda: (tmp_path / "first.ready").exists() and (tmp_path / "second.ready").exists())
    (tmp_path / "go").touch()  # both start their runs at once

    def settled(queued: int) -> bool:
        assert trainers_alive(tmp_path) <= 2, "the two pools admitted more than allowed"
        runs = all_runs(tmp_path)
        waiting = [run for run in runs if run.status == "queued"]
        return (
            len(runs) == 6
            and len(waiting) == queued
            and all(status_text(run).endswith("2 of 2 trainers busy") for run in waiting)
        )

    wait_for(lambda: settled(queued=4))
    assert trainers_alive(tmp_path) == 2
    places = sorted(
        status_text(run).split(":")[0] for run in all_runs(tmp_path) if run.status == "queued"
    )
    assert places == [f"waiting, number {place} in line" for place in (1, 2, 3, 4)]

    running = next(run for run in all_runs(tmp_path) if run.status == "running")
    stop_run(running.path.parent, running.id, grace=0)  # from a third process: this one
    wait_for(lambda: read_run(running.path.parent, running.id).status == "stopped")
    wait_for(lambda: settled(queued=3))
    assert trainers_alive(tmp_path) == 2


def test_a_run_started_on_one_server_is_seen_stopped_and_resumed_from_the_other(
    tmp_path: Path, servers: Callable[..., None]
):
    servers("learner", 1, fake=False)
    wait_for(lambda: (tmp_path / "learner.ready").exists())
    (tmp_path / "go").touch()
    wait_for(lambda: (tmp_path / "learner.started").exists())
    [run_id] = json.loads((tmp_path / "learner.started").read_text())
    workspace = tmp_path / "learner"
    wait_for(lambda: read_run(workspace, run_id).step > 0)  # seen here, trained there

    assert stop_run(workspace, run_id).status == "stopping"
    wait_for(lambda: read_run(workspace, run_id).status == "stopped")
    stopped = read_run(workspace, run_id).step
    first_trainer = store.read_status(workspace / run_id)["pid"]

    assert resume_run(workspace, run_id).status in ("queued", "running")
    wait_for(lambda: read_run(workspace, run_id).step > stopped)
    assert read_run(workspace, run_id).status == "running"
    assert store.read_status(workspace / run_id)["pid"] != first_trainer
    stop_run(workspace, run_id)
    wait_for(lambda: read_run(workspace, run_id).status == "stopped")
