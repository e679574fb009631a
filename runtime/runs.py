"""Runs: one folder per training run, so that nothing is lost across page reloads and restarts.

A run folder holds graph.json, config.json, model.py (the exact source trained), an append-only
metrics.jsonl, status.json, checkpoints/, trainer.log (the trainer's output, tracebacks included)
and, for an upload, the uploaded data. Each trainer runs in its own process, forked from a warm
forkserver (runtime/warm.py) so that it starts without importing torch, and records its pid and
the process's start time: a reader that finds that process gone, a zombie, or the pid reused by
another process reports the run as "interrupted", with every metric written until then readable.

Runs share the machine by memory. Every run is sized when it is queued (runtime/sizing.py: its
training step, plus its process or CUDA context) and starts when that fits what is free on its
device, less a headroom; a run that could never fit is refused at Start. max_trainers() bounds
the count and each workspace (runs/<workspace>/<run>) gets its workspace_share(). Who goes next
is _decide's rule: workspaces take turns, oldest run first, and a smaller run may pass a waiting
big one only while memory held by running runs will come back, at most MAX_OVERTAKES times. CPU
trainers split the cores (runtime/warm.py).

The queue is the status files, so several servers (processes) may share one runs root: a look at
the queue holds a flock on the root's POOL_LOCK_FILE, counts the trainers alive by pid and start
time (a forkserver that died leaves none uncounted), marks what it admits before launching it,
and writes each waiting run's place and reason into POOL_FILE. Start, Resume, Stop and Delete of
one run are serialised by a lock file in its folder: a second click finds the first under way.
Stop escalates: the stop flag, then SIGTERM, then SIGKILL, and a run always ends "stopped" with
its last checkpoint kept.

With NETBUILDER_RAY_ADDRESS set, runs go to a Ray cluster instead (runtime/cluster.py): the pool
still orders and counts them, Ray places each where what its sizing asks for is free, and a run's
trainer is alive while Ray knows its actor; the hooks are marked `cluster.` below.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from builder.graph import Graph, dump_graph, load_graph
from compiler.analysis import Analysis, analyse
from compiler.codegen import generate_source, identifier
from i18n import N_, Message, msg
from runtime import store
from runtime.datasets import MAX_UPLOAD_BYTES
from compiler.memory import format_bytes
from runtime import cluster, sizing
from runtime.launcher import CONTEXT, restart_if_dead
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
POOL_LOCK_FILE = ".pool.lock"  # in the runs root: flock'd by one server's look at the queue
POOL_FILE = ".pool.json"  # in the runs root: each waiting run's place in line and reason
POOL_POLL_SECONDS = 1.0  # how often a server with runs waiting looks at the queue again
MAX_OVERTAKES = 3  # later runs that may start before the oldest waiting run while it waits
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


def graph_errors(analysis: Analysis) -> Message:
    """Why a graph that does not check cannot be trained: how many errors, and the first."""
    return msg(
        "the graph has {count} error(s), first: {first}",
        count=len(analysis.errors),
        first=analysis.errors[0].message,
    )


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
        raise RunError(graph_errors(analysis))
    too_big = sizing.check_could_ever_fit(
        graph, analysis, config.batch_size, config.optimizer, config.device
    )
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
    """Create a run and queue it for a trainer (it starts at once where it fits)."""
    folder = create_run(Path(runs_dir), graph, config, dataset_file, warm_start_from)
    with _locked(folder.parent, folder.name):
        _enqueue(folder)
    return folder.name


def max_trainers() -> int:
    """The most trainers that run at once over one runs root: NETBUILDER_MAX_TRAINERS, else the
    number of CPU cores (at least 2). Memory decides first; this bounds the count because every
    trainer needs a core (a GPU's runs too, to feed it), and trainers beyond the cores only take
    turns on them, each slower, while each holds its memory."""
    if cluster.enabled():  # a cluster's CPUs, not this machine's
        return _positive_setting(MAX_TRAINERS_ENV) or cluster.cpu_count() or 2
    return _positive_setting(MAX_TRAINERS_ENV) or max(2, os.cpu_count() or 1)


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
# The pool: the queue is the runs' status files, shared by every server over one runs root


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
    """What this server process knows besides the files: the trainers it started (to reap
    them) and the runs roots it queued runs in (to look at them again while runs wait)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[Path, _Trainer | cluster.ClusterTrainer] = field(default_factory=dict)
    roots: set[Path] = field(default_factory=set)
    watching: bool = False


_TRAINERS = _Trainers()


@dataclass
class _PoolRun:
    """A run as the pool sees it in its status.json: holding memory and a slot (its trainer
    lives, or a live server is launching it), waiting (queued by a live server, no trainer
    yet, no stop asked), or neither."""

    folder: Path
    status: dict[str, Any]
    holding: bool
    waiting: bool

    @property
    def workspace(self) -> Path:
        return self.folder.parent

    @property
    def kind(self) -> str:
        """cpu, mps or cuda, as sized when it was queued."""
        device = self._memory.get("device")
        return device if device in ("cpu", "mps", "cuda") else "cpu"

    @property
    def each(self) -> int:
        """Bytes each of its processes claims."""
        claimed = self._memory.get("bytes")
        return claimed if isinstance(claimed, int) and claimed >= 0 else 0

    @property
    def processes(self) -> int:
        count = self._memory.get("processes")
        return count if isinstance(count, int) and count >= 1 else 1

    @property
    def _memory(self) -> dict[str, Any]:
        memory = self.status.get("memory")
        return memory if isinstance(memory, dict) else {}

    @property
    def queued_at(self) -> float:
        return float(self.status.get("queued_at") or self.status.get("created") or 0.0)

    def claims(self, gpu: int | None = None) -> dict[str, int]:
        """Bytes it holds (or would hold, on `gpu`) per memory: "ram" for cpu and mps (whose
        memory is the RAM), "cuda:N" per GPU; a run on several GPUs holds each of them."""
        if self.kind != "cuda":
            return {RAM: self.each * self.processes}
        if self.processes > 1:
            return {f"cuda:{index}": self.each for index in range(self.processes)}
        gpu = self.status.get("gpu") if gpu is None else gpu
        return {f"cuda:{gpu}": self.each} if isinstance(gpu, int) else {}


RAM = "ram"


def _scan(root: Path) -> list[_PoolRun]:
    """Every run under the runs root (root/<run> and root/<workspace>/<run>), classified."""
    folders = {
        path.parent.resolve()  # once each, however many links lead to it
        for path in [*root.glob(f"*/{store.STATUS_FILE}"), *root.glob(f"*/*/{store.STATUS_FILE}")]
    }
    found = []
    for folder in sorted(folders):
        try:
            status = store.read_status(folder)
        except (OSError, store.StatusError):
            continue  # a broken status fails its own run where it is read
        found.append(_classify(folder, status))
    return found


def _classify(folder: Path, status: dict[str, Any]) -> _PoolRun:
    recorded = status.get("status")
    holding = waiting = False
    if recorded in ACTIVE and _has_trainer(status):
        holding = _trainer_alive(status)
    elif recorded == "queued":
        admitted, server = status.get("admitted"), status.get("server")
        if isinstance(admitted, dict) and _alive(admitted.get("pid"), admitted.get("started")):
            holding = True  # a live server is launching it
        elif isinstance(server, dict) and _alive(server.get("pid"), server.get("started")):
            waiting = not (folder / store.STOP_FILE).exists()
    return _PoolRun(folder.resolve(), status, holding, waiting)


def _resident_bytes(run: _PoolRun) -> int:
    """The RAM its trainer holds now (with torchrun's workers); 0 before it has a process."""
    process = _process(run.status.get("pid"), run.status.get("pid_started"))
    if process is None:
        return 0
    total = 0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += each.memory_info().rss
    return total


def _free_memory(holding: list[_PoolRun], gpus: bool) -> dict[str, int]:
    """What a run may still claim per memory, the headroom kept. The RAM: available now less
    what running runs were sized at and have not allocated yet (each counted at its sized
    figure, or its resident memory if larger). A GPU: its free memory, or its total less what
    the runs on it claim, whichever is less (no per-process figure without NVML)."""
    if cluster.enabled():  # Ray places each run where what it asks for is free
        return cluster.unbounded_memory(sizing.gpu_count() if gpus else 0)
    ram = sizing.device_memory("cpu")
    unallocated = sum(max(0, run.claims().get(RAM, 0) - _resident_bytes(run)) for run in holding)
    free = {RAM: ram.free - sizing.headroom("cpu", ram.total) - unallocated}
    for index in range(sizing.gpu_count() if gpus else 0):
        device = f"cuda:{index}"
        memory = sizing.device_memory(device)
        claimed = sum(run.claims().get(device, 0) for run in holding)
        kept = sizing.headroom(device, memory.total)
        free[device] = min(memory.free, memory.total - claimed) - kept
    return free


def _placement(run: _PoolRun, free: dict[str, int]) -> int | None:
    """Where the run fits now: -1 for the RAM or for every GPU it spans, else the GPU with the
    most room; None when it does not fit."""
    if run.kind != "cuda" or run.processes > 1:
        claims = run.claims()
        fits = bool(claims) and all(need <= free.get(name, -1) for name, need in claims.items())
        return -1 if fits else None
    gpus = [name for name in free if name.startswith("cuda:")]
    roomiest = max(gpus, key=lambda name: free[name], default=None)
    if roomiest is None or run.each > free[roomiest]:
        return None
    return int(roomiest.removeprefix("cuda:"))


def _shortfall(run: _PoolRun, free: dict[str, int]) -> Message:
    """'needs 3.1 GB, 1.2 GB free' for the memory it would take (the roomiest GPU's)."""
    claims = run.claims(gpu=0 if run.kind == "cuda" else None)
    if run.kind == "cuda" and run.processes == 1:
        room = max((free[name] for name in free if name != RAM), default=0)
    else:
        room = min((free.get(name, 0) for name in claims), default=0)
    need = sum(claims.values()) if run.kind != "cuda" else run.each
    return msg(
        "needs {need}, {free} free", need=format_bytes(need), free=format_bytes(max(0, room))
    )


@dataclass
class _Decision:
    """One look at the queue: the run to start now (where), or none, and why each other waits."""

    chosen: _PoolRun | None
    gpu: int | None
    reasons: dict[Path, Message]
    order: list[_PoolRun]
    overtook: Path | None  # the oldest run, which the chosen one went before


def _decide(
    waiting: list[_PoolRun],
    holding: list[_PoolRun],
    free: dict[str, int],
    served: dict[Path, float],
    overtaken: dict[Path, int],
) -> _Decision:
    """Who starts next. Workspaces take turns (the one served longest ago first, each under its
    workspace_share()), and within that the oldest queued run goes first (FIFO). When that run
    does not fit, a later run that fits may go before it only while the runs that hold the
    same memory will give theirs back (so it could not start now anyway), and at most
    MAX_OVERTAKES times: after that nothing starts before it, so a big run is never starved."""
    order = sorted(waiting, key=lambda run: (served.get(run.workspace, -1.0), run.queued_at))
    slots = max_trainers()
    if len(holding) >= slots:
        busy = msg("{busy} of {slots} trainers busy", busy=len(holding), slots=slots)
        return _Decision(None, None, {run.folder: busy for run in order}, order, None)
    per_workspace = Counter(run.workspace for run in holding)
    share = workspace_share(len({*per_workspace, *(run.workspace for run in order)}))
    reasons: dict[Path, Message] = {}
    head: _PoolRun | None = None
    may_overtake = False
    for run in order:
        if per_workspace[run.workspace] >= share:
            reasons[run.folder] = msg("this workspace has its share ({share})", share=share)
            continue
        place = _placement(run, free)
        if place is not None and (head is None or may_overtake):
            gpu = place if run.kind == "cuda" and run.processes == 1 else None
            return _Decision(run, gpu, reasons, order, head.folder if head else None)
        if place is None:
            reasons[run.folder] = _shortfall(run, free)
        else:
            reasons[run.folder] = msg("an earlier run that needs more memory goes first")
        if head is None:
            head = run
            gives_back = any(run.kind == other.kind for other in holding)
            may_overtake = gives_back and overtaken.get(run.folder, 0) < MAX_OVERTAKES
    return _Decision(None, None, reasons, order, None)


def _admit(root: Path) -> tuple[list[Path], int]:
    """One look at the runs root under its pool lock (so that no two servers admit against the
    same free memory): admit each run that may start, marked in its status.json as being
    launched by this server, and write each waiting run's place and reason into the pool file.
    Returns the runs this server must launch and how many still wait."""
    with _pool_locked(root):
        runs = _scan(root)
        holding = [run for run in runs if run.holding]
        waiting = [run for run in runs if run.waiting]
        previous = _read_pool_file(root)
        overtaken = {root / name: count for name, count in previous.get("overtaken", {}).items()}
        served: dict[Path, float] = {}
        for run in runs:
            admitted_at = run.status.get("admitted_at")
            if isinstance(admitted_at, (int, float)):
                served[run.workspace] = max(served.get(run.workspace, -1.0), admitted_at)
        free = _free_memory(holding, gpus=any(r.kind == "cuda" for r in [*holding, *waiting]))
        launch: list[Path] = []
        busy: list[_PoolRun] = []  # held by a start, stop or delete now: the next look decides
        while True:
            decision = _decide(waiting, holding, free, served, overtaken)
            if decision.chosen is None:
                break
            run = decision.chosen
            waiting.remove(run)
            if not _mark_admitted(run, decision.gpu, holding):
                busy.append(run)
                continue
            holding.append(run)
            for name, need in run.claims().items():
                free[name] -= need
            served[run.workspace] = run.status["admitted_at"]
            if decision.overtook is not None:
                overtaken[decision.overtook] = overtaken.get(decision.overtook, 0) + 1
            launch.append(run.folder)
        _write_pool_file(root, decision, overtaken)
        return launch, len(decision.order) + len(busy)


def _mark_admitted(run: _PoolRun, gpu: int | None, holding: list[_PoolRun]) -> bool:
    """Record that this server launches the run (on `gpu`, with the CPU runs it shares the
    cores with), unless a start, stop or delete of it holds it now or it was stopped."""
    try:
        with _locked(run.folder.parent, run.folder.name):
            if (run.folder / store.STOP_FILE).exists():
                return False
            cpu_runs = 1 + sum(other.kind == "cpu" for other in holding)
            run.status = store.update_status(
                run.folder,
                admitted=_this_process(),
                admitted_at=time.time(),
                gpu=gpu,
                cpu_runs=cpu_runs if run.kind == "cpu" else None,
            )
            return True
    except (RunError, OSError, store.StatusError):
        return False


def _read_pool_file(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / POOL_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_pool_file(root: Path, decision: _Decision, overtaken: dict[Path, int]) -> None:
    """Each waiting run's place in line and why it waits ("waiting, number 2 in line: needs
    3.1 GB, 1.2 GB free"), read by the runs tables of every server; and how often each run was
    overtaken, so that the bound holds across looks and servers."""
    waiting = {}
    for place, run in enumerate(decision.order, start=1):
        reason = decision.reasons.get(run.folder, msg("starting"))
        line = msg("waiting, number {place} in line: {reason}", place=place, reason=reason)
        waiting[run.folder.relative_to(root).as_posix()] = line.to_json()
    still = {run.folder for run in decision.order}
    counts = {
        folder.relative_to(root).as_posix(): count
        for folder, count in overtaken.items()
        if folder in still
    }
    store.write_json(root / POOL_FILE, {"waiting": waiting, "overtaken": counts}, durable=False)


def _waiting_line(folder: Path) -> Message | None:
    """The pool's sentence for a waiting run, from the pool file of its runs root."""
    root = _pool_root(folder)
    entry = _read_pool_file(root).get("waiting", {})
    key = folder.resolve().relative_to(root).as_posix() if isinstance(entry, dict) else None
    return store.message_from_json(entry.get(key)) if key else None


@contextlib.contextmanager
def _pool_locked(root: Path) -> Iterator[None]:
    """The runs root, held by one server's look at the queue at a time (flock on a file in it:
    threads and processes alike wait their turn; a look takes milliseconds)."""
    root.mkdir(parents=True, exist_ok=True)
    with _waited_flock(root / POOL_LOCK_FILE):
        yield


@contextlib.contextmanager
def _waited_flock(path: Path) -> Iterator[None]:
    """An exclusive flock on the file at path (made if missing), waited for: threads and
    processes alike take their turn; closing the file lets it go."""
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _pool_root(folder: Path) -> Path:
    """The runs root whose runs share the machine: the folder of workspaces that holds the run's
    workspace (the app keeps runs/<workspace>/<run>; runs/ is the root)."""
    return folder.resolve().parent.parent


def _in_background(action: Callable[..., None], *args: Any) -> None:
    """Run action on a daemon thread; an exception is logged, never lost with the thread."""

    def guarded() -> None:
        try:
            action(*args)
        except Exception:  # noqa: BLE001  (a thread's last guard: log it whole)
            log.exception("%s failed", action.__name__)

    threading.Thread(target=guarded, daemon=True).start()


def _enqueue(folder: Path, message: Message | str = "") -> None:
    """Queue a run (sized now, so that no look at the queue has to read its graph); a trainer
    is started in the background (the first fork may wait for the forkserver to finish
    importing), so Start returns at once. A run that could never fit is refused here."""
    folder = folder.resolve()
    status = store.read_status(folder)
    if _classify(folder, status).waiting:
        raise RunError(msg("run {run} is already queued", run=repr(folder.name)))
    memory, refusal = _size(folder)
    if refusal is not None:
        raise RunError(refusal)
    store.update_status(
        folder,
        status="queued",
        pid=None,
        server=_this_process(),
        queued_at=time.time(),
        admitted=None,
        memory=memory,
        message=message,
        ray=None,
    )
    _watch(_pool_root(folder))


def _size(folder: Path) -> tuple[dict[str, Any], Message | None]:
    """The run's claim as the pool keeps it ({device, bytes per process, processes}) and the
    refusal for a run that could never fit. A graph or config that cannot be read is sized at
    its process alone: the trainer names what is wrong with it."""
    try:
        config = TrainConfig.model_validate_json((folder / store.CONFIG_FILE).read_text())
        graph = load_graph((folder / store.GRAPH_FILE).read_text())
    except (OSError, ValueError):
        return {"device": "cpu", "bytes": sizing.TRAINER_PROCESS_BYTES, "processes": 1}, None
    on_cluster = cluster.enabled()  # then sized for the cluster's devices, not this machine's
    if on_cluster:
        device = cluster.resolve_device(config.device)
    else:
        device = sizing.resolve_device(config.device) or "cpu"
    analysis = analyse(graph)
    estimate = sizing.training_estimate(graph, analysis, config.batch_size, config.optimizer)
    memory = {
        "device": device,
        "bytes": sizing.claim_bytes(estimate.training_bytes, device),
        "processes": config.processes,
    }
    refusal = cluster.never_fits(memory) if on_cluster else sizing.never_fits(estimate, device)
    return memory, refusal


def _watch(root: Path) -> None:
    """Look at the runs root now, and again every POOL_POLL_SECONDS while runs wait there:
    memory comes back as trainers end (here or in another server) or as other programs free it."""
    with _TRAINERS.lock:
        _TRAINERS.roots.add(root)
        start = not _TRAINERS.watching
        _TRAINERS.watching = True
    _in_background(_fill_slots, root)
    if start:
        _in_background(_keep_watching)


def _keep_watching() -> None:
    try:
        while True:
            time.sleep(POOL_POLL_SECONDS)
            with _TRAINERS.lock:
                roots = list(_TRAINERS.roots)
            still = [root for root in roots if _fill_slots(root)]
            with _TRAINERS.lock:
                _TRAINERS.roots.difference_update(set(roots) - set(still))
                if not _TRAINERS.roots:
                    _TRAINERS.watching = False
                    return
    except BaseException:
        with _TRAINERS.lock:
            _TRAINERS.watching = False
        raise


def _fill_slots(root: Path | None = None) -> int:
    """Start the runs the pool admits under `root` (every root this server queued runs in, by
    default); returns how many still wait. Whatever goes wrong with one run (the forkserver
    gone, its folder deleted, its status.json unreadable) is logged and recorded on that run,
    which gives its memory and slot back: the next run still starts."""
    with _TRAINERS.lock:
        roots = [root] if root is not None else list(_TRAINERS.roots)
    still_waiting = 0
    for each in roots:
        launch, waiting = _admit(each)
        still_waiting += waiting
        for folder in launch:
            _start_admitted(folder, each)
    return still_waiting


def _start_admitted(folder: Path, root: Path) -> None:
    trainer: _Trainer | cluster.ClusterTrainer | None = None
    try:
        trainer = _start_queued(folder)
    except Exception as exc:  # noqa: BLE001  (one run's failure must not stall the queue)
        log.exception("could not start a trainer for %s", folder)
        _record_failed_start(folder, exc)
    if trainer is not None:
        with _TRAINERS.lock:
            _TRAINERS.running[folder] = trainer
        _in_background(_reap, trainer, folder, root)
    else:
        _in_background(_fill_slots, root)  # what it was given goes to the next run


def _start_queued(folder: Path) -> _Trainer | cluster.ClusterTrainer | None:
    """A trainer for a run just admitted; None for a run deleted or stopped since."""
    if not (folder / store.STATUS_FILE).exists():
        return None
    if (folder / store.STOP_FILE).exists():
        store.update_status(
            folder, status="stopped", admitted=None, message=msg("stopped before it started")
        )
        return None
    return _launch(folder)


def _record_failed_start(folder: Path, exc: Exception) -> None:
    """The run reads as interrupted, with the reason, so that Resume tries again."""
    known = (RunError, store.StatusError, cluster.ClusterError)
    reason = exc.detail if isinstance(exc, known) else repr(exc)
    try:
        store.update_status(
            folder,
            status="interrupted",
            pid=None,
            admitted=None,
            message=msg(
                "the trainer could not be started ({reason}); resume to try again", reason=reason
            ),
        )
    except Exception:  # noqa: BLE001  (its status.json may be the very problem)
        log.warning("could not record the failed start in %s", folder, exc_info=True)


def _launch(folder: Path) -> _Trainer | cluster.ClusterTrainer:
    """Fork a trainer for the run from the warm forkserver; it starts once its pid is recorded.
    A run on several devices is started by torchrun instead (one process per device), and
    with a Ray cluster configured every run goes to the cluster (runtime/cluster.py)."""
    if cluster.enabled():
        return cluster.submit(folder, store.read_status(folder).get("memory") or {})
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


def _reap(trainer: _Trainer | cluster.ClusterTrainer, folder: Path, root: Path) -> None:
    """Wait for a trainer to end, then give its memory and slot to the next queued run."""
    trainer.wait()
    with _TRAINERS.lock:
        if _TRAINERS.running.get(folder) is trainer:
            del _TRAINERS.running[folder]
    _fill_slots(root)


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


def _has_trainer(status: dict[str, Any]) -> bool:
    """Whether a trainer was started for the run: a process (its pid) or a Ray actor."""
    return status.get("pid") is not None or cluster.record(status) is not None


def _trainer_alive(status: dict[str, Any]) -> bool:
    """Whether the run's trainer lives: a run on a Ray cluster by Ray's view of its actor (its
    recorded pid is a process on some node), any other by its pid and start time."""
    entry = cluster.record(status)
    if entry is not None:
        return cluster.alive(entry)
    return _alive(status.get("pid"), status.get("pid_started"))


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
        device=_where(status),
        path=folder,
        detail=detail,
        disk_bytes=disk_usage(folder),
    )


def _where(status: dict[str, Any]) -> str:
    """The run's device, and for a run on a Ray cluster the node it trains on ("cpu @ 10.0.0.7")."""
    device, entry = str(status.get("device", "")), cluster.record(status)
    node = entry.get("node") if entry is not None else None
    return f"{device} @ {node}" if isinstance(node, str) and node else device


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
    if not _has_trainer(status):
        if _waiting_for_a_trainer(status):
            waiting = _classify(folder, status).waiting and _waiting_line(folder)
            return "queued", waiting or detail
        if stop_requested:
            return "stopped", msg("stopped before it started")
        return "interrupted", msg("the server stopped before this run started; resume to start it")
    if not _trainer_alive(status):
        if stop_requested:  # the trainer was killed while stopping: its checkpoint stands
            return "stopped", _forced_stop_message(status)
        if cluster.record(status) is not None:
            return "interrupted", cluster.lost_message(status.get("step", 0))
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
        waiting = _classify(folder.resolve(), store.read_status(folder)).waiting
        (folder / store.STOP_FILE).touch()  # a pool that admits it meanwhile stops it unstarted
        if waiting:  # no server launches it while we hold it
            store.update_status(folder, status="stopped", message=msg("stopped before it started"))
            _in_background(_fill_slots, _pool_root(folder))  # a bigger share for others
        else:
            _in_background(_escalate, folder, grace, kill_grace)
        return _info(folder)


def _escalate(folder: Path, grace: float, kill_grace: float, record: bool = True) -> None:
    """The stop flag is set; SIGTERM after grace, SIGKILL after kill_grace, then record it
    (`record` False: the caller holds the run's lock and deletes the folder). A run on a Ray
    cluster has its actor killed after grace instead, at once while Ray still holds it for a
    node (its trainer has not started: there is nothing to save)."""
    status = store.read_status(folder)
    trainer = _trainer_of(status)
    entry = cluster.record(status)
    if entry is not None:
        unstarted = status.get("status") == "queued"
        cluster.cancel(entry, 0.0 if unstarted else grace)
        if record:
            said = msg("stopped before it started") if unstarted else None
            _record_forced_stop(folder, trainer, said)
        return
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
    if record:
        _record_forced_stop(folder, trainer)


def _trainer_of(status: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Which trainer a status.json speaks of: its pid and start time, or its Ray actor."""
    return status.get("pid"), status.get("pid_started"), (cluster.record(status) or {}).get("actor")


def _record_forced_stop(
    folder: Path, trainer: tuple[Any, Any, Any], message: Message | None = None
) -> None:
    """A trainer ended without recording its end: the run is stopped, its checkpoint kept. Not
    if the run was resumed meanwhile (its status then names another trainer, or none yet):
    a Stop's late escalation must not stop the next trainer, as it did to a quick Resume on a
    loaded machine. Checked and written under the run's lock, which Resume holds too (not taken
    where the trainer recorded its own end, the usual case: a Resume then is never told "busy")."""
    if store.read_status(folder).get("status") not in ACTIVE:
        return
    with _waited_flock(folder / LOCK_FILE):  # the run's lock, as _locked takes it, waited for
        status = store.read_status(folder)
        if status.get("status") in ACTIVE and _trainer_of(status) == trainer:
            store.update_status(
                folder, status="stopped", message=message or _forced_stop_message(status)
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
        _enqueue(folder, msg("resuming"))
        return _info(folder)


def delete_run(runs_dir: Path, run_id: str, kill_grace: float = KILL_GRACE_SECONDS) -> None:
    """Delete a run and its folder; a running trainer is stopped (SIGTERM, then SIGKILL) first,
    so that nothing writes into the folder while it goes."""
    with _locked(runs_dir, run_id) as folder:
        root = _pool_root(folder)
        status = _info(folder).status
        if status in ("running", "stopping"):
            (folder / store.STOP_FILE).touch()
            _escalate(folder, 0.0, kill_grace, record=False)
        shutil.rmtree(folder)
    _in_background(_fill_slots, root)  # its memory, slot or place in line goes to the others


def checkpoint_path(runs_dir: Path, run_id: str) -> Path | None:
    """The latest trained weights (a state_dict; torch.load(..., weights_only=True) reads it)."""
    path = _run_dir(runs_dir, run_id) / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    return path if path.exists() else None
