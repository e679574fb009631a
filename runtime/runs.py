"""Runs: one folder per training run, so that nothing is lost across page reloads and restarts.

A run folder holds graph.json, config.json, model.py (the exact source trained), an append-only
metrics.jsonl, status.json, checkpoints/ and, for an upload, the uploaded data. The trainer runs
in its own process and records its pid; a reader that finds that process gone reports the run
as "interrupted", with every metric written until then still readable.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.graph import Graph, dump_graph
from compiler.analysis import analyse
from compiler.codegen import generate_source, identifier
from runtime import store
from runtime.datasets import MAX_UPLOAD_BYTES
from runtime.trainer import TrainConfig

Status = Literal[
    "queued", "running", "stopping", "stopped", "completed", "diverged", "failed", "interrupted"
]
ACTIVE = ("queued", "running")
RESUMABLE = ("stopped", "interrupted")
QUEUED_GRACE_SECONDS = 60.0
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ROOT = Path(__file__).resolve().parents[1]


class RunError(ValueError):
    """A run cannot be created, found, resumed or read; the message says why."""


@dataclass
class RunInfo:
    id: str
    name: str
    status: Status
    message: str
    created: float
    dataset: str
    epochs: int
    epoch: int
    step: int
    device: str
    path: Path


def create_run(
    runs_dir: Path,
    graph: Graph,
    config: TrainConfig,
    dataset_file: Path | None = None,
    warm_start_from: str | None = None,
) -> Path:
    """Write a new run folder (queued, no trainer yet) and return it."""
    analysis = analyse(graph)
    if not analysis.ok:
        first = analysis.errors[0].message
        raise RunError(f"the graph has {len(analysis.errors)} error(s), first: {first}")
    if dataset_file is not None:
        size = dataset_file.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise RunError(
                f"{dataset_file.name} is {size / 1e6:.1f} MB; uploads are capped at"
                f" {MAX_UPLOAD_BYTES / 1e6:.0f} MB"
            )
        config = config.model_copy(update={"dataset": dataset_file.name})
    source_run = _run_dir(runs_dir, warm_start_from) if warm_start_from else None
    weights = source_run / store.CHECKPOINT_DIR / store.WEIGHTS_FILE if source_run else None
    if weights is not None and not weights.exists():
        raise RunError(f"run {warm_start_from!r} has no checkpoint to start from yet")

    run_id = (
        f"{time.strftime('%Y%m%d-%H%M%S')}-{identifier(graph.name)[:24]}-{secrets.token_hex(3)}"
    )
    folder = Path(runs_dir) / run_id
    folder.mkdir(parents=True)
    (folder / store.GRAPH_FILE).write_text(dump_graph(graph))
    (folder / store.CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    (folder / store.MODEL_FILE).write_text(generate_source(analysis))
    (folder / store.METRICS_FILE).touch()
    if dataset_file is not None:
        shutil.copyfile(dataset_file, folder / f"{store.DATA_PREFIX}{dataset_file.suffix.lower()}")
    if source_run is not None and weights is not None:
        shutil.copyfile(weights, folder / store.WARM_START_WEIGHTS)
        shutil.copyfile(source_run / store.GRAPH_FILE, folder / store.WARM_START_GRAPH)
    store.write_json(
        folder / store.STATUS_FILE,
        {
            "status": "queued",
            "message": "",
            "pid": None,
            "created": time.time(),
            "name": graph.name,
            "dataset": config.dataset,
            "epochs": config.epochs,
            "epoch": 0,
            "step": 0,
            "device": config.device,
            "warm_start_from": warm_start_from,
        },
    )
    return folder


def start_run(
    runs_dir: Path,
    graph: Graph,
    config: TrainConfig,
    dataset_file: Path | None = None,
    warm_start_from: str | None = None,
) -> str:
    """Create a run and start its trainer process; returns the run id at once."""
    folder = create_run(Path(runs_dir), graph, config, dataset_file, warm_start_from)
    _spawn(folder)
    return folder.name


def _spawn(folder: Path) -> None:
    """Start `python -m runtime worker FOLDER` in its own session, logging to trainer.log.

    The worker waits for its stdin to close before it starts, so the pid is in status.json
    before the worker can write to it.
    """
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    with (folder / store.LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "worker", str(folder.resolve())],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    store.update_status(folder, pid=process.pid)
    assert process.stdin is not None
    process.stdin.close()
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends


def _run_dir(runs_dir: Path, run_id: str) -> Path:
    if not RUN_ID.match(run_id):
        raise RunError(f"{run_id!r} is not a run id")
    folder = Path(runs_dir) / run_id
    if not (folder / store.STATUS_FILE).exists():
        raise RunError(f"there is no run {run_id!r} in {runs_dir}")
    return folder


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _info(folder: Path) -> RunInfo:
    try:
        status = store.read_status(folder)
    except (OSError, ValueError) as exc:
        status = {"status": "failed", "message": f"status.json is unreadable ({exc})"}
    state, message = _effective_status(folder, status)
    return RunInfo(
        id=folder.name,
        name=str(status.get("name", folder.name)),
        status=state,
        message=message,
        created=float(status.get("created", folder.stat().st_mtime)),
        dataset=str(status.get("dataset", "")),
        epochs=int(status.get("epochs", 0)),
        epoch=int(status.get("epoch", 0)),
        step=int(status.get("step", 0)),
        device=str(status.get("device", "")),
        path=folder,
    )


def _effective_status(folder: Path, status: dict[str, Any]) -> tuple[Status, str]:
    """The recorded status, corrected for a trainer that died or was asked to stop."""
    state, message = status.get("status", "failed"), str(status.get("message", ""))
    if state not in ACTIVE:
        return state, message
    pid = status.get("pid")
    waiting = pid is None and time.time() - status.get("updated", 0) < QUEUED_GRACE_SECONDS
    if not waiting and not _alive(pid):
        return "interrupted", (
            f"the trainer process ended unexpectedly at step {status.get('step', 0)};"
            " resume to continue from the last checkpoint"
        )
    if (folder / store.STOP_FILE).exists():
        return "stopping", "stopping: writing a final checkpoint"
    return state, message


def read_run(runs_dir: Path, run_id: str) -> RunInfo:
    return _info(_run_dir(runs_dir, run_id))


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under runs_dir, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = [f for f in runs_dir.iterdir() if (f / store.STATUS_FILE).is_file()]
    return sorted((_info(f) for f in folders), key=lambda run: run.created, reverse=True)


def read_metrics(runs_dir: Path, run_id: str, offset: int = 0) -> tuple[list[dict], int]:
    """Records appended since byte offset, and the offset to pass next time."""
    return store.read_records(_run_dir(runs_dir, run_id) / store.METRICS_FILE, offset)


def stop_run(runs_dir: Path, run_id: str) -> RunInfo:
    """Ask the trainer to stop; it writes a final checkpoint within about a second."""
    folder = _run_dir(runs_dir, run_id)
    if _info(folder).status in ACTIVE:
        (folder / store.STOP_FILE).touch()
    return _info(folder)


def resume_run(runs_dir: Path, run_id: str) -> RunInfo:
    """Continue a stopped or interrupted run from its last checkpoint, in a new trainer process."""
    folder = _run_dir(runs_dir, run_id)
    info = _info(folder)
    if info.status not in RESUMABLE:
        raise RunError(
            f"run {run_id!r} is {info.status}; only a stopped or interrupted run resumes"
        )
    (folder / store.STOP_FILE).unlink(missing_ok=True)
    store.update_status(folder, status="queued", pid=None, message="resuming")
    _spawn(folder)
    return _info(folder)


def checkpoint_path(runs_dir: Path, run_id: str) -> Path | None:
    """The latest trained weights (a state_dict; torch.load(..., weights_only=True) reads it)."""
    path = _run_dir(runs_dir, run_id) / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    return path if path.exists() else None
