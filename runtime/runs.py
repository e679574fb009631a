"""Runs: one folder per training run, so that nothing is lost across page reloads and restarts.

A run folder holds graph.json, config.json, model.py (the exact source trained), an append-only
metrics.jsonl, status.json, checkpoints/, trainer.log (the trainer's output, tracebacks included)
and, for an upload, the uploaded data. Each trainer runs in its own process, forked from a warm
forkserver (runtime/warm.py) so that it starts without importing torch, and records its pid and
the process's start time: a reader that finds that process gone, a zombie, or the pid reused by
another process reports the run as "interrupted", with every metric written until then readable.

At most max_trainers() trainers run at once per server; further runs wait as "queued" and start,
oldest first, as slots free. Stop escalates: the stop flag, then SIGTERM, then SIGKILL, and a run
always ends "stopped" with its last checkpoint kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import psutil
import torch

from builder.graph import Graph, dump_graph
from compiler.analysis import analyse
from compiler.codegen import generate_source, identifier
from i18n import N_, Message, msg
from runtime import store
from runtime.datasets import MAX_UPLOAD_BYTES
from runtime.launcher import CONTEXT
from runtime.sizing import check_fits
from runtime.trainer import TrainConfig

Status = Literal[
    "queued", "running", "stopping", "stopped", "completed", "diverged", "failed", "interrupted"
]
ACTIVE = ("queued", "running")
RESUMABLE = ("stopped", "interrupted")
QUEUED_GRACE_SECONDS = 60.0  # a run created outside a server may wait this long for its trainer
STOP_GRACE_SECONDS = 10.0  # after the stop flag, SIGTERM
KILL_GRACE_SECONDS = 5.0  # after SIGTERM, SIGKILL
SAME_PROCESS_SECONDS = 0.1  # psutil start times of one process agree to well within this
MAX_TRAINERS_ENV = "NETBUILDER_MAX_TRAINERS"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ROOT = Path(__file__).resolve().parents[1]

# The status names as a person reads them (rendered with i18n.translate where shown).
STATUS_LABELS: dict[str, str] = {
    "queued": N_("queued"),
    "running": N_("running"),
    "stopping": N_("stopping"),
    "stopped": N_("stopped"),
    "completed": N_("completed"),
    "diverged": N_("diverged"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
}


class RunError(ValueError):
    """A run cannot be created, found, resumed or read; `detail` says why, as a Message."""

    def __init__(self, detail: Message | str) -> None:
        self.detail = detail if isinstance(detail, Message) else Message(detail)
        super().__init__(str(self.detail))


@dataclass
class RunInfo:
    id: str
    name: str
    status: Status
    message: str  # English; `detail` is the same sentence as data, for the reader's language
    created: float
    dataset: str
    epochs: int
    epoch: int
    step: int
    device: str
    path: Path
    detail: Message = field(default_factory=lambda: Message(""))
    disk_bytes: int = 0


# ---------------------------------------------------------------------------------------------
# Creating and starting runs


def create_run(
    runs_dir: Path,
    graph: Graph,
    config: TrainConfig,
    dataset_file: Path | None = None,
    warm_start_from: str | None = None,
) -> Path:
    """Write a new run folder (queued, no trainer yet) and return it.

    Refuses, before anything is built, a graph with errors and a model that does not fit the
    memory of the device it would train on.
    """
    analysis = analyse(graph)
    if not analysis.ok:
        raise RunError(
            msg(
                "the graph has {count} error(s), first: {first}",
                count=len(analysis.errors),
                first=analysis.errors[0].message,
            )
        )
    too_big = check_fits(graph, analysis, config.batch_size, config.optimizer, config.device)
    if too_big is not None:
        raise RunError(too_big)
    if dataset_file is not None:
        size = dataset_file.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise RunError(
                msg(
                    "{file} is {size} MB; uploads are capped at {cap} MB",
                    file=dataset_file.name,
                    size=format(size / 1e6, ".1f"),
                    cap=format(MAX_UPLOAD_BYTES / 1e6, ".0f"),
                )
            )
        config = config.model_copy(update={"dataset": dataset_file.name})
    source_run = _run_dir(runs_dir, warm_start_from) if warm_start_from else None
    weights = source_run / store.CHECKPOINT_DIR / store.WEIGHTS_FILE if source_run else None
    if weights is not None and not weights.exists():
        raise RunError(
            msg("run {run} has no checkpoint to start from yet", run=repr(warm_start_from))
        )

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
    """Create a run and queue it for a trainer (it starts at once where a slot is free)."""
    folder = create_run(Path(runs_dir), graph, config, dataset_file, warm_start_from)
    _enqueue(folder)
    return folder.name


def max_trainers() -> int:
    """Trainers one server runs at once: NETBUILDER_MAX_TRAINERS, else one per GPU (1 on CPU)."""
    value = os.environ.get(MAX_TRAINERS_ENV, "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return max(1, torch.cuda.device_count())


# ---------------------------------------------------------------------------------------------
# The server's trainers: a queue, the processes it started, and the warm forkserver


@dataclass
class _Trainers:
    """This server's trainer processes and the runs waiting for one (guarded by lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[Path, BaseProcess | Torchrun | None] = field(
        default_factory=dict
    )  # None: launching
    queue: list[Path] = field(default_factory=list)


_TRAINERS = _Trainers()


def _enqueue(folder: Path) -> None:
    """Queue a run; a slot is filled in the background (the first fork may wait for the
    forkserver to finish importing), so Start returns at once."""
    store.update_status(folder, status="queued", pid=None, server=_this_process())
    with _TRAINERS.lock:
        _TRAINERS.queue.append(folder.resolve())
    threading.Thread(target=_fill_slots, daemon=True).start()


def _dequeue(folder: Path) -> bool:
    """Take a run off the queue; True when it was waiting there."""
    with _TRAINERS.lock:
        waiting = folder.resolve() in _TRAINERS.queue
        if waiting:
            _TRAINERS.queue.remove(folder.resolve())
    return waiting


def _fill_slots() -> None:
    """Start queued runs, oldest first, while fewer than max_trainers() trainers run."""
    while (folder := _next_for_a_slot()) is not None:
        try:
            process = _launch(folder) if (folder / store.STATUS_FILE).exists() else None
        except OSError:  # the run was deleted while it was being started
            process = None
        with _TRAINERS.lock:
            if process is None:
                _TRAINERS.running.pop(folder, None)
            else:
                _TRAINERS.running[folder] = process


def _next_for_a_slot() -> Path | None:
    """The oldest queued run, its slot reserved, or None when all slots are taken."""
    with _TRAINERS.lock:
        for folder, process in list(_TRAINERS.running.items()):
            if process is not None and not process.is_alive():
                del _TRAINERS.running[folder]
        if not _TRAINERS.queue or len(_TRAINERS.running) >= max_trainers():
            return None
        folder = _TRAINERS.queue.pop(0)
        _TRAINERS.running[folder] = None  # reserved while it is being launched
        return folder


def _launch(folder: Path) -> BaseProcess | Torchrun:
    """Fork a trainer for the run from the warm forkserver; it starts once its pid is recorded.
    A run on several devices is started by torchrun instead (one process per device)."""
    processes = _config_processes(folder)
    if processes > 1:
        return _launch_torchrun(folder, processes)
    from runtime.warm import trainer_process

    ready, give_word = CONTEXT.Pipe(duplex=False)
    process = CONTEXT.Process(
        target=trainer_process, args=(str(folder), ready), name=f"trainer {folder.name}"
    )
    process.daemon = False
    process.start()
    ready.close()
    store.update_status(folder, pid=process.pid, pid_started=process_start_time(process.pid))
    give_word.send(True)
    give_word.close()
    threading.Thread(target=_reap, args=(process,), daemon=True).start()
    _forget_at_exit(process)
    return process


def _config_processes(folder: Path) -> int:
    try:
        return TrainConfig.model_validate_json((folder / store.CONFIG_FILE).read_text()).processes
    except (OSError, ValueError):
        return 1  # the trainer reports the bad config itself


@dataclass
class Torchrun:
    """torchrun and the trainers it starts, one per device (DistributedDataParallel)."""

    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def join(self) -> None:
        self.process.wait()


def _launch_torchrun(folder: Path, processes: int) -> Torchrun:
    """`torchrun --standalone --nproc_per_node=N -m runtime worker FOLDER`: its workers inherit
    its stdin, so they too start once torchrun's pid is recorded."""
    command = [
        "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "runtime", "worker", str(folder.resolve()),
    ]  # fmt: skip
    launched = Torchrun(_start_logged(folder, command))
    threading.Thread(target=_reap, args=(launched,), daemon=True).start()
    return launched


def _reap(process: BaseProcess | Torchrun) -> None:
    """Wait for a trainer to end, then give its slot to the next queued run."""
    process.join()
    _fill_slots()


def _forget_at_exit(process: BaseProcess) -> None:
    """multiprocessing would join every child when the server exits; trainers outlive it."""
    multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]


def spawn_cold(folder: Path) -> subprocess.Popen[bytes]:
    """Start `python -m runtime worker FOLDER` in a fresh interpreter (no warm process).

    The old way, kept for comparison (benchmarks/first_point.py) and for running a folder by
    hand.
    """
    process = _start_logged(folder, ["-m", "runtime", "worker", str(folder.resolve())])
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends
    return process


def _start_logged(folder: Path, arguments: list[str]) -> subprocess.Popen[bytes]:
    """`python ARGUMENTS` in its own session, output to the run's log, its pid recorded; the
    worker (every worker torchrun starts, too) waits for its stdin to close, so the pid is
    recorded before it writes its own status."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    with (folder / store.LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    store.update_status(folder, pid=process.pid, pid_started=process_start_time(process.pid))
    assert process.stdin is not None
    process.stdin.close()
    return process


# ---------------------------------------------------------------------------------------------
# Processes: alive means the same process (pid and start time), running and not a zombie


def process_start_time(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "started": process_start_time(os.getpid())}


def _process(pid: Any, started: Any) -> psutil.Process | None:
    """The live process a status records, or None: gone, a zombie, or the pid now reused."""
    if not isinstance(pid, int):
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if isinstance(started, (int, float)):
            if abs(process.create_time() - started) > SAME_PROCESS_SECONDS:
                return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return process  # someone else's process, alive, with our pid: count it as ours
    return process


def _alive(pid: Any, started: Any = None) -> bool:
    return _process(pid, started) is not None


# ---------------------------------------------------------------------------------------------
# Reading runs


def _run_dir(runs_dir: Path, run_id: str) -> Path:
    if not RUN_ID.match(run_id):
        raise RunError(msg("{run} is not a run id", run=repr(run_id)))
    folder = Path(runs_dir) / run_id
    if not (folder / store.STATUS_FILE).exists():
        raise RunError(
            msg("there is no run {run} in {folder}", run=repr(run_id), folder=str(runs_dir))
        )
    return folder


def disk_usage(folder: Path) -> int:
    """Bytes the run's files take (a file removed while counting counts as nothing)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _info(folder: Path) -> RunInfo:
    try:
        status = store.read_status(folder)
    except (OSError, ValueError) as exc:
        status = {
            "status": "failed",
            "message_data": msg("status.json is unreadable ({reason})", reason=str(exc)).to_json(),
        }
    state, detail = _effective_status(folder, status)
    return RunInfo(
        id=folder.name,
        name=str(status.get("name", folder.name)),
        status=state,
        message=str(detail),
        created=float(status.get("created", folder.stat().st_mtime)),
        dataset=str(status.get("dataset", "")),
        epochs=int(status.get("epochs", 0)),
        epoch=int(status.get("epoch", 0)),
        step=int(status.get("step", 0)),
        device=str(status.get("device", "")),
        path=folder,
        detail=detail,
        disk_bytes=disk_usage(folder),
    )


def _effective_status(folder: Path, status: dict[str, Any]) -> tuple[Status, Message]:
    """The recorded status, corrected for a trainer that died or was asked to stop."""
    state, detail = status.get("status", "failed"), store.status_message(status)
    if state not in ACTIVE:
        return state, detail
    stop_requested = (folder / store.STOP_FILE).exists()
    if status.get("pid") is None:
        if _waiting_for_a_trainer(status):
            return "queued", detail
        if stop_requested:
            return "stopped", msg("stopped before it started")
        return "interrupted", msg("the server stopped before this run started; resume to start it")
    if not _alive(status.get("pid"), status.get("pid_started")):
        if stop_requested:  # the trainer was killed while stopping: its checkpoint stands
            return "stopped", _forced_stop_message(status)
        return "interrupted", msg(
            "the trainer process ended unexpectedly at step {step}; resume to continue from the"
            " last checkpoint",
            step=status.get("step", 0),
        )
    if stop_requested:
        return "stopping", msg("stopping: writing a final checkpoint")
    return state, detail


def _waiting_for_a_trainer(status: dict[str, Any]) -> bool:
    """A queued run without a pid waits while the server that queued it lives (or, created
    outside a server, for a short grace while its trainer starts)."""
    server = status.get("server")
    if isinstance(server, dict):
        return _alive(server.get("pid"), server.get("started"))
    return time.time() - status.get("updated", status.get("created", 0)) < QUEUED_GRACE_SECONDS


def _forced_stop_message(status: dict[str, Any]) -> Message:
    return msg(
        "stopped at step {step}: the trainer did not stop in time and was ended; its last"
        " checkpoint is kept, resume to continue from it",
        step=status.get("step", 0),
    )


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


def status_text(info: RunInfo, lang: str | None = None) -> str:
    """A run's message in the reader's language (default: the current one)."""
    return info.detail.render(lang)


def status_label(status: str, lang: str | None = None) -> str:
    """A status name ("running") in the reader's language."""
    from i18n import translate

    return translate(STATUS_LABELS.get(status, status), lang)


# ---------------------------------------------------------------------------------------------
# Stopping, resuming, deleting


def stop_run(
    runs_dir: Path,
    run_id: str,
    grace: float = STOP_GRACE_SECONDS,
    kill_grace: float = KILL_GRACE_SECONDS,
) -> RunInfo:
    """Ask the trainer to stop (it writes a final checkpoint within about a second); if it has
    not ended after `grace` seconds it gets SIGTERM, and `kill_grace` later SIGKILL. Returns
    at once; the run always ends "stopped"."""
    folder = _run_dir(runs_dir, run_id)
    info = _info(folder)
    if info.status not in ACTIVE:
        return info
    (folder / store.STOP_FILE).touch()
    if _dequeue(folder):
        store.update_status(folder, status="stopped", message=msg("stopped before it started"))
    else:
        threading.Thread(target=_escalate, args=(folder, grace, kill_grace), daemon=True).start()
    return _info(folder)


def _escalate(folder: Path, grace: float, kill_grace: float) -> None:
    """The stop flag is set; SIGTERM after grace, SIGKILL after kill_grace, then record it."""
    status = store.read_status(folder)
    process = _process(status.get("pid"), status.get("pid_started"))
    if process is None or process.pid == os.getpid():  # a trainer in this process: the flag
        return
    if _ended(process, grace):
        return
    for number, wait in ((signal.SIGTERM, kill_grace), (signal.SIGKILL, kill_grace)):
        try:
            # torchrun's trainers too: SIGTERM reaches them through torchrun, SIGKILL cannot
            children = process.children(recursive=True) if number == signal.SIGKILL else []
            process.send_signal(number)  # psutil checks it is still the same process
        except psutil.NoSuchProcess:
            return
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(number)
        if _ended(process, wait):
            break
    if store.read_status(folder).get("status") in ACTIVE:
        store.update_status(
            folder, status="stopped", message=_forced_stop_message(store.read_status(folder))
        )


def _ended(process: psutil.Process, seconds: float) -> bool:
    """Whether the process ends (or is a zombie) within seconds; polled, never a fixed sleep."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def resume_run(runs_dir: Path, run_id: str) -> RunInfo:
    """Continue a stopped or interrupted run from its last checkpoint, in a new trainer process."""
    folder = _run_dir(runs_dir, run_id)
    info = _info(folder)
    if info.status not in RESUMABLE:
        raise RunError(
            msg(
                "run {run} is {status}; only a stopped or interrupted run resumes",
                run=repr(run_id),
                status=info.status,
            )
        )
    (folder / store.STOP_FILE).unlink(missing_ok=True)
    store.update_status(folder, message=msg("resuming"))
    _enqueue(folder)
    return _info(folder)


def delete_run(runs_dir: Path, run_id: str, kill_grace: float = KILL_GRACE_SECONDS) -> None:
    """Delete a run and its folder; a running trainer is stopped (SIGTERM, then SIGKILL) first,
    so that nothing writes into the folder while it goes."""
    folder = _run_dir(runs_dir, run_id)
    _dequeue(folder)
    status = _info(folder).status
    if status in ("running", "stopping"):
        (folder / store.STOP_FILE).touch()
        _escalate(folder, 0.0, kill_grace)
    shutil.rmtree(folder)


def checkpoint_path(runs_dir: Path, run_id: str) -> Path | None:
    """The latest trained weights (a state_dict; torch.load(..., weights_only=True) reads it)."""
    path = _run_dir(runs_dir, run_id) / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    return path if path.exists() else None
