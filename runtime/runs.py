"""Runs: one folder per training run, so that nothing is lost across page reloads and restarts.

A run folder holds graph.json, config.json, model.py (the exact source trained), an append-only
metrics.jsonl, status.json, checkpoints/, trainer.log (the trainer's output, tracebacks included)
and, for an upload, the uploaded data. Each trainer runs in its own process, forked from a warm
forkserver (runtime/warm.py) so that it starts without importing torch, and records its pid and
the process's start time: a reader that finds that process gone, a zombie, or the pid reused by
another process reports the run as "interrupted", with every metric written until then readable.

At most max_trainers() trainers run at once per server, and a workspace (a folder of runs:
runs/<workspace>/<run>) at most its workspace_share() of them; further runs wait as "queued" and
start as slots free. A trainer holds its slot until its process ends, counted by pid and start
time, so a forkserver that dies (it is started again) leaves no trainer uncounted; a run that
cannot be started is recorded as such and gives its slot back. Start, Resume, Stop and Delete of
one run are serialised by a lock file in its folder: a second click finds the first under way.
Stop escalates: the stop flag, then SIGTERM, then SIGKILL, and a run always ends "stopped" with
its last checkpoint kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
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
from collections import Counter
from collections.abc import Callable, Iterator
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
from runtime.launcher import CONTEXT, restart_if_dead
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
MAX_PER_WORKSPACE_ENV = "NETBUILDER_MAX_TRAINERS_PER_WORKSPACE"
ORPHAN_POLL_SECONDS = 0.5  # how often a trainer whose forkserver died is looked at
FORK_ATTEMPTS = 3  # a fork that fails (the forkserver died meanwhile) is tried again
FORK_RETRY_SECONDS = 0.2  # times the attempt number, before the next try
LOCK_FILE = ".run.lock"  # flock'd while a run is started, resumed, stopped or deleted
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)

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
    with _locked(folder.parent, folder.name):
        _enqueue(folder)
    return folder.name


def max_trainers() -> int:
    """Trainers one server runs at once: NETBUILDER_MAX_TRAINERS, else one per GPU (1 on CPU)."""
    return _positive_setting(MAX_TRAINERS_ENV) or max(1, torch.cuda.device_count())


def workspace_share(active_workspaces: int) -> int:
    """Trainers one workspace may run at once, so that one person cannot take every slot.

    NETBUILDER_MAX_TRAINERS_PER_WORKSPACE where set (a fixed cap, even for a workspace alone);
    else an equal share of max_trainers() among the workspaces with a run running or queued,
    rounded up: a workspace alone may use every slot, and where there are more workspaces than
    slots they take turns (the workspace served longest ago goes first). A workspace over its
    share keeps the trainers it runs; its queued runs wait while other workspaces' runs start.
    """
    fixed = _positive_setting(MAX_PER_WORKSPACE_ENV)
    if fixed:
        return fixed
    return max(1, math.ceil(max_trainers() / max(1, active_workspaces)))


def _positive_setting(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


# ---------------------------------------------------------------------------------------------
# The server's trainers: a queue, the processes it started, and the warm forkserver


@dataclass
class _Trainer:
    """A trainer process this server started, known by its pid and start time: it holds its slot
    until that very process ends, even after the forkserver that forked it died (the
    multiprocessing handle then reads it as ended while it still trains)."""

    pid: int
    started: float | None
    handle: BaseProcess | subprocess.Popen[bytes]

    def is_alive(self) -> bool:
        return _alive(self.pid, self.started)

    def wait(self) -> None:
        """Until the process ends: its handle first (which reaps a child), then by polling, for
        a trainer orphaned by a dead forkserver (no handle can wait for it)."""
        if isinstance(self.handle, BaseProcess):
            self.handle.join()
        else:
            self.handle.wait()
        while self.is_alive():
            time.sleep(ORPHAN_POLL_SECONDS)


@dataclass
class _Trainers:
    """This server's trainer processes and the runs waiting for one (guarded by lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[Path, _Trainer | None] = field(default_factory=dict)  # None: launching
    queue: list[Path] = field(default_factory=list)
    served: dict[Path, int] = field(default_factory=dict)  # workspace -> its last admission
    admissions: itertools.count = field(default_factory=itertools.count)


_TRAINERS = _Trainers()


def _in_background(action: Callable[..., None], *args: Any) -> None:
    """Run action on a daemon thread; an exception is logged, never lost with the thread."""

    def guarded() -> None:
        try:
            action(*args)
        except Exception:  # noqa: BLE001  (a thread's last guard: log it whole)
            log.exception("%s failed", action.__name__)

    threading.Thread(target=guarded, daemon=True).start()


def _enqueue(folder: Path) -> None:
    """Queue a run; a slot is filled in the background (the first fork may wait for the
    forkserver to finish importing), so Start returns at once."""
    folder = folder.resolve()
    store.update_status(folder, status="queued", pid=None, server=_this_process())
    with _TRAINERS.lock:  # checked and added at once: a run waits in the queue once
        if folder in _TRAINERS.queue:
            raise RunError(msg("run {run} is already queued", run=repr(folder.name)))
        _TRAINERS.queue.append(folder)
    _in_background(_fill_slots)


def _dequeue(folder: Path) -> bool:
    """Take a run off the queue; True when it was waiting there."""
    with _TRAINERS.lock:
        waiting = folder.resolve() in _TRAINERS.queue
        if waiting:
            _TRAINERS.queue.remove(folder.resolve())
    return waiting


def _fill_slots() -> None:
    """Start queued runs while slots are free. Whatever goes wrong with one run (the forkserver
    gone, its folder deleted, its status.json unreadable) is logged and recorded on that run,
    and its slot is given back: the next run still starts."""
    while (folder := _next_for_a_slot()) is not None:
        trainer: _Trainer | None = None
        try:
            trainer = _start_queued(folder)
        except Exception as exc:  # noqa: BLE001  (one run's failure must not stall the queue)
            log.exception("could not start a trainer for %s", folder)
            _record_failed_start(folder, exc)
        finally:
            with _TRAINERS.lock:
                if trainer is None:
                    _TRAINERS.running.pop(folder, None)
                else:
                    _TRAINERS.running[folder] = trainer
        if trainer is not None:
            _in_background(_reap, trainer)


def _start_queued(folder: Path) -> _Trainer | None:
    """A trainer for a run just taken off the queue; None for a run deleted or stopped since."""
    if not (folder / store.STATUS_FILE).exists():
        return None
    if (folder / store.STOP_FILE).exists():
        store.update_status(folder, status="stopped", message=msg("stopped before it started"))
        return None
    return _launch(folder)


def _record_failed_start(folder: Path, exc: Exception) -> None:
    """The run reads as interrupted, with the reason, so that Resume tries again."""
    reason = exc.detail if isinstance(exc, (RunError, store.StatusError)) else repr(exc)
    try:
        store.update_status(
            folder,
            status="interrupted",
            pid=None,
            message=msg(
                "the trainer could not be started ({reason}); resume to try again", reason=reason
            ),
        )
    except Exception:  # noqa: BLE001  (its status.json may be the very problem)
        log.warning("could not record the failed start in %s", folder, exc_info=True)


def _next_for_a_slot() -> Path | None:
    """The next queued run, its slot reserved, or None when none may start now.

    A slot is free while fewer than max_trainers() trainers live (by pid and start time, so a
    trainer whose forkserver died still counts). The run chosen is the oldest of the workspace
    served longest ago among the workspaces under their workspace_share(); a run whose previous
    trainer is still ending waits for it (a folder never has two trainers).
    """
    with _TRAINERS.lock:
        for folder, trainer in list(_TRAINERS.running.items()):
            if trainer is not None and not trainer.is_alive():
                del _TRAINERS.running[folder]
        if not _TRAINERS.queue or len(_TRAINERS.running) >= max_trainers():
            return None
        per_workspace = Counter(folder.parent for folder in _TRAINERS.running)
        workspaces = set(per_workspace) | {folder.parent for folder in _TRAINERS.queue}
        share = workspace_share(len(workspaces))
        candidates = [
            folder
            for folder in _TRAINERS.queue
            if per_workspace[folder.parent] < share and folder not in _TRAINERS.running
        ]
        if not candidates:
            return None
        folder = min(candidates, key=lambda f: _TRAINERS.served.get(f.parent, -1))
        _TRAINERS.queue.remove(folder)
        _TRAINERS.running[folder] = None  # reserved while it is being launched
        _TRAINERS.served[folder.parent] = next(_TRAINERS.admissions)
        return folder


def _launch(folder: Path) -> _Trainer:
    """Fork a trainer for the run from the warm forkserver; it starts once its pid is recorded.
    A run on several devices is started by torchrun instead (one process per device)."""
    processes = _config_processes(folder)
    if processes > 1:
        return _launch_torchrun(folder, processes)
    from runtime.warm import trainer_process

    ready, give_word = CONTEXT.Pipe(duplex=False)
    with give_word:  # closed on every path: without the word the trainer exits unstarted
        try:
            process = _fork(trainer_process, (str(folder), ready), f"trainer {folder.name}")
        finally:
            ready.close()  # the trainer has its own copy
        _forget_at_exit(process)
        assert process.pid is not None
        started = process_start_time(process.pid)
        store.update_status(folder, pid=process.pid, pid_started=started)
        give_word.send(True)
    return _Trainer(process.pid, started, process)


def _fork(target: Callable[..., None], args: tuple[Any, ...], name: str) -> BaseProcess:
    """Start a process from the forkserver. A forkserver that died is started again (it loads
    for a few seconds) and the fork retried; its trainers live on, counted by pid."""
    for attempt in range(1, FORK_ATTEMPTS + 1):
        try:
            restart_if_dead()
            process = CONTEXT.Process(target=target, args=args, name=name)
            process.daemon = False
            process.start()
            return process
        except (EOFError, OSError):
            if attempt == FORK_ATTEMPTS:
                raise
            log.warning("forking %s failed (attempt %d); trying again", name, attempt)
            time.sleep(FORK_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")


def _config_processes(folder: Path) -> int:
    try:
        return TrainConfig.model_validate_json((folder / store.CONFIG_FILE).read_text()).processes
    except (OSError, ValueError):
        return 1  # the trainer reports the bad config itself


def _launch_torchrun(folder: Path, processes: int) -> _Trainer:
    """`torchrun --standalone --nproc_per_node=N -m runtime worker FOLDER`: its workers inherit
    its stdin, so they too start once torchrun's pid is recorded."""
    command = [
        "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "runtime", "worker", str(folder.resolve()),
    ]  # fmt: skip
    process = _start_logged(folder, command)
    return _Trainer(process.pid, process_start_time(process.pid), process)


def _reap(trainer: _Trainer) -> None:
    """Wait for a trainer to end, then give its slot to the next queued run."""
    trainer.wait()
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
    with (folder / store.LOG_FILE).open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        store.update_status(folder, pid=process.pid, pid_started=process_start_time(process.pid))
    except BaseException:  # its pid is not recorded: it must not train unseen
        process.kill()
        process.wait()
        raise
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


@contextlib.contextmanager
def _locked(runs_dir: Path, run_id: str) -> Iterator[Path]:
    """The run's folder, held for one Start, Resume, Stop or Delete at a time, across threads and
    processes (flock on LOCK_FILE in the folder). A second one while the first is under way is
    refused with a sentence, not queued: a double click must not start a second trainer."""
    folder = _run_dir(runs_dir, run_id)
    try:
        handle = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # deleted since
        raise RunError(
            msg("there is no run {run} in {folder}", run=repr(run_id), folder=str(runs_dir))
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                msg(
                    "run {run} is busy: another start, resume, stop or delete of it is under way",
                    run=repr(run_id),
                )
            ) from None
        yield _run_dir(runs_dir, run_id)  # it may have been deleted while we opened the lock
    finally:
        os.close(handle)  # releases the lock


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
    """A run as it stands; a status.json that cannot be used makes this run failed, named."""
    status = _usable_status(folder)
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


def _usable_status(folder: Path) -> dict[str, Any]:
    """status.json, or in its place a failed status whose message says what is wrong with it."""
    try:
        status = store.read_status(folder)
        if status.get("status", "failed") not in STATUS_LABELS:
            raise store.StatusError(
                msg(
                    "status.json has an invalid {field}: {value}",
                    field="status",
                    value=json.dumps(status["status"])[:60],
                )
            )
        return status
    except store.StatusError as exc:
        problem = exc.detail
    except OSError as exc:
        problem = msg("status.json is unreadable ({reason})", reason=exc.strerror or str(exc))
    return {"status": "failed", "message": str(problem), "message_data": problem.to_json()}


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
    """Every run under runs_dir, newest first (a run deleted while listed is left out)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for folder in runs_dir.iterdir():
        if (folder / store.STATUS_FILE).is_file():
            with contextlib.suppress(FileNotFoundError):
                found.append(_info(folder))
    return sorted(found, key=lambda run: run.created, reverse=True)


def workspaces(runs_root: Path) -> list[Path]:
    """The folders of runs under the runs root (the app keeps runs/<workspace>/<run>)."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        return []
    return sorted(
        folder
        for folder in runs_root.iterdir()
        if folder.is_dir()
        and not (folder / store.STATUS_FILE).exists()
        and any((run / store.STATUS_FILE).is_file() for run in folder.iterdir())
    )


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
    with _locked(runs_dir, run_id) as folder:
        info = _info(folder)
        if info.status not in ACTIVE:
            return info
        (folder / store.STOP_FILE).touch()
        if _dequeue(folder):
            store.update_status(folder, status="stopped", message=msg("stopped before it started"))
            _in_background(_fill_slots)  # one workspace fewer may mean a bigger share for others
        else:
            _in_background(_escalate, folder, grace, kill_grace)
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
    """Continue a stopped or interrupted run from its last checkpoint, in a new trainer process.
    A second Resume, at once or later, is refused with a sentence: one run, one trainer."""
    with _locked(runs_dir, run_id) as folder:
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
    with _locked(runs_dir, run_id) as folder:
        if _dequeue(folder):
            _in_background(_fill_slots)  # one workspace fewer may mean a bigger share for others
        status = _info(folder).status
        if status in ("running", "stopping"):
            (folder / store.STOP_FILE).touch()
            _escalate(folder, 0.0, kill_grace)
        shutil.rmtree(folder)


def checkpoint_path(runs_dir: Path, run_id: str) -> Path | None:
    """The latest trained weights (a state_dict; torch.load(..., weights_only=True) reads it)."""
    path = _run_dir(runs_dir, run_id) / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    return path if path.exists() else None
