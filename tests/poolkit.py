"""What the trainer-pool tests share: a real run that trains for long, a stand-in trainer that
only sleeps, waiting on a run's status, and the fixture that leaves no run or trainer behind."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from builder.graph import Graph, load_graph
from runtime import runs as runs_module
from runtime import store
from runtime.runs import read_run
from runtime.trainer import TrainConfig

ROOT = Path(__file__).parents[1]
CONFIG = TrainConfig(dataset="digits-rows", epochs=12, lr=3e-3)
LONG = CONFIG.model_copy(update={"epochs": 10_000})
DEADLINE = 180.0  # a trainer's first start loads torch in a forkserver: slow on a loaded machine


@pytest.fixture(autouse=True)
def nothing_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """No run of the test stays queued in the pool, and no trainer of it keeps running (a
    module that imports this fixture gets it for each of its tests)."""
    yield
    for status in tmp_path.rglob(store.STATUS_FILE):
        (status.parent / store.STOP_FILE).touch()  # a waiting run is never admitted
    for status in tmp_path.rglob(store.STATUS_FILE):
        try:
            pid = json.loads(status.read_text()).get("pid")
        except (ValueError, AttributeError):
            continue
        if isinstance(pid, int) and pid != os.getpid():
            try:
                psutil.Process(pid).kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


def lstm() -> Graph:
    return load_graph((ROOT / "builder" / "templates" / "lstm_classifier.json").read_text())


def wait_for(condition: Callable[[], bool], seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def status_of(runs_dir: Path, run_id: str) -> str:
    return read_run(runs_dir, run_id).status


def stopped_and_let_go(runs_dir: Path, run_id: str) -> bool:
    """The run reads stopped and no action holds it: a Stop's escalation records the forced stop
    under the run's lock, and a Resume in that instant is told the run is busy (as it should)."""
    if status_of(runs_dir, run_id) != "stopped":
        return False
    handle = os.open(runs_dir / run_id / runs_module.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(handle)


def sleeping_trainer(folder: Path) -> runs_module._Trainer:
    """Stands in for a forked trainer where only the pool's choices are tested: a process that
    sleeps, recorded as the run's running trainer."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = runs_module.process_start_time(process.pid)
    store.update_status(folder, status="running", pid=process.pid, pid_started=started)
    return runs_module._Trainer(process.pid, started, process)
