"""Runs on a Ray cluster: where NETBUILDER_RAY_ADDRESS is set ("auto", "ray://host:port"), each
run the pool admits is submitted to Ray instead of being forked from the local forkserver.

A run is one detached Ray actor, named after its run, that asks for what the run's sizing claims
(runtime/sizing.py through runtime/runs.py's _size): its CPUs, its memory, and a fraction of a GPU
for a small run (whole GPUs for a run on several). Ray places it on a node where those are free
and holds it pending until they are. The actor trains through the same entry as the forkserver's
trainers (runtime.worker.run_worker), so the run folder protocol stays: the trainer writes
status.json, metrics.jsonl and its checkpoints into the run folder, which must lie on storage
every node and every app server sees (a shared filesystem, mounted at the same path).

A run on the cluster is known by its actor's name in status.json ("ray"), not by a pid: it is
alive while Ray knows its actor (pending, or training on some node), and a worker or node that
was lost reads as "interrupted" with its last checkpoint (runtime/runs.py). Stop sets the stop
flag and, if the trainer has not ended after the grace, kills the actor. A run on several GPUs
is the same torchrun command as on one machine, placed by Ray on one node with that many GPUs.

ray is imported only here and only when used: without NETBUILDER_RAY_ADDRESS the app never
imports it, and with it set but ray missing every Start says so in a sentence.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from compiler.memory import format_bytes
from i18n import Message, msg
from runtime import sizing, store
from runtime.settings import operator_setting

ADDRESS_ENV = "NETBUILDER_RAY_ADDRESS"
CPUS_ENV = "NETBUILDER_RAY_CPUS_PER_RUN"  # CPUs each run asks for (each process of a torchrun)
DEFAULT_CPUS = 1
GPU_MEMORY_ENV = "NETBUILDER_RAY_GPU_MEMORY_MB"  # one GPU of the cluster, for the GPU fraction
DEFAULT_GPU_MEMORY_MB = 16_000  # the smallest common data-centre GPU: a fraction never too small
GPU_STEP = 0.01  # a GPU is asked for in hundredths
NAMESPACE = "netbuilder"
ROOT = Path(__file__).resolve().parents[1]
UNBOUNDED = 1 << 62  # what the pool sees free on a cluster: Ray, not the pool, places by memory
CANCEL_POLL_SECONDS = 0.1
PROBE_SECONDS = 3.0  # a host:port that does not answer a TCP connection by then is unreachable
RETRY_SECONDS = 30.0  # after a failed connection, calls fail at once for this long (no waiting)

log = logging.getLogger(__name__)
_CONNECTING = threading.Lock()
_failed: tuple[float, ClusterError] | None = None  # the last failed connection: when, and why


class ClusterError(RuntimeError):
    """The cluster cannot be used (ray missing, unreachable); `detail` says so as a Message."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


def enabled() -> bool:
    """Whether runs go to a Ray cluster (NETBUILDER_RAY_ADDRESS set, read on every call)."""
    return bool(os.environ.get(ADDRESS_ENV, "").strip())


def record(status: dict[str, Any]) -> dict[str, Any] | None:
    """The run's actor as status.json records it, or None for a run not on a cluster."""
    found = status.get("ray")
    return found if isinstance(found, dict) and isinstance(found.get("actor"), str) else None


# ---------------------------------------------------------------------------------------------
# Connecting


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            msg(
                "NETBUILDER_RAY_ADDRESS is set, but ray is not installed here: pip install"
                " ray==2.60.0, or unset NETBUILDER_RAY_ADDRESS to train on this machine"
            )
        ) from None
    return ray


def connect() -> ModuleType:
    """ray, connected to the cluster at NETBUILDER_RAY_ADDRESS (once per process; a process that
    already called ray.init, a test's local instance, keeps its connection)."""
    global _failed
    ray = _ray()
    with _CONNECTING:
        if ray.is_initialized():
            return ray
        if _failed is not None and time.monotonic() - _failed[0] < RETRY_SECONDS:
            raise _failed[1]  # a page or the pool asking again must not wait on it again
        address = os.environ.get(ADDRESS_ENV, "").strip() or "auto"
        try:
            _probe(address)  # ray.init retries an address that does not answer for minutes
            ray.init(
                address=address,
                namespace=NAMESPACE,
                runtime_env=job_runtime_env(),
                log_to_driver=False,
            )
        except Exception as exc:  # noqa: BLE001  (ray raises many kinds; each is one sentence)
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
            error = ClusterError(
                msg(
                    "cannot reach the Ray cluster at {address}: {reason}",
                    address=address,
                    reason=reason,
                )
            )
            _failed = (time.monotonic(), error)
            raise error from None
        _failed = None
    return ray


def _probe(address: str) -> None:
    """Raise OSError where the address's host:port does not accept a TCP connection within
    PROBE_SECONDS; "auto" (and anything without a port) is left to ray.init."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()


def job_runtime_env() -> dict[str, Any]:
    """What the workers of this app's Ray job need: NetBuilder's code on their Python path
    (the same checkout on every node; the actors import runtime.cluster and the trainer)."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"env_vars": {"PYTHONPATH": python_path}}


def _cluster_totals() -> dict[str, float]:
    """The cluster's resources in all ({} where it cannot be reached: the caller falls back)."""
    try:
        return dict(connect().cluster_resources())
    except Exception:  # noqa: BLE001  (ray missing, unreachable, or slow: the caller falls back)
        return {}


def cpu_count() -> int | None:
    """The cluster's CPUs, the default bound on trainers at once there; None if unreachable."""
    cpus = _cluster_totals().get("CPU")
    return int(cpus) if cpus else None


def resolve_device(requested: str) -> str:
    """The device a run would train on in the cluster: "auto" is cuda where the cluster has
    GPUs, else cpu; cuda asked of a cluster without GPUs waits (its line says what for)."""
    if requested != "auto":
        return requested
    return "cuda" if _cluster_totals().get("GPU", 0) > 0 else "cpu"


# ---------------------------------------------------------------------------------------------
# What a run asks for


def resources(memory: dict[str, Any]) -> dict[str, Any]:
    """Ray's options for a run sized as `memory` ({device, bytes per process, processes}): CPUs
    (NETBUILDER_RAY_CPUS_PER_RUN each process), its RAM, and on cuda a GPU fraction, its claim
    over one GPU's memory (NETBUILDER_RAY_GPU_MEMORY_MB) rounded up to a hundredth, so that
    small runs share a GPU (each in its own CUDA context); a run on several GPUs takes them
    whole."""
    processes = memory.get("processes") if isinstance(memory.get("processes"), int) else 1
    claim = memory.get("bytes") if isinstance(memory.get("bytes"), int) else 0
    cpus = operator_setting(CPUS_ENV, DEFAULT_CPUS) * processes
    if memory.get("device") != "cuda":
        return {"num_cpus": cpus, "num_gpus": 0, "memory": max(1, claim * processes)}
    if processes > 1:
        gpus: float = processes
    else:
        one_gpu = operator_setting(GPU_MEMORY_ENV, DEFAULT_GPU_MEMORY_MB) * 1e6
        gpus = min(1.0, max(GPU_STEP, math.ceil(claim / one_gpu / GPU_STEP) * GPU_STEP))
    process_ram = sizing.TRAINER_PROCESS_BYTES * processes
    return {"num_cpus": cpus, "num_gpus": round(gpus, 2), "memory": process_ram}


def never_fits(memory: dict[str, Any]) -> Message | None:
    """The refusal for a run that no node of the cluster could ever hold (it would wait
    forever); None when one could, or when the cluster cannot be asked now."""
    asks = resources(memory)
    try:
        nodes = [node["Resources"] for node in connect().nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001  (ray missing, unreachable, or slow: Ray holds it pending)
        return None
    wanted = {"CPU": asks["num_cpus"], "GPU": asks["num_gpus"], "memory": asks["memory"]}
    if any(all(node.get(name, 0) >= need for name, need in wanted.items()) for node in nodes):
        return None
    if asks["num_gpus"] and not any(node.get("GPU", 0) for node in nodes):
        return msg("the Ray cluster has no GPU; choose the device cpu or auto for this run")
    return msg(
        "no node of the Ray cluster has {cpus} CPU, {gpus} GPU and {memory} in all, so this run"
        " could never start; make the model or the batch smaller",
        cpus=format(asks["num_cpus"], "g"),
        gpus=format(asks["num_gpus"], "g"),
        memory=format_bytes(asks["memory"]),
    )


def unbounded_memory(gpus: int) -> dict[str, int]:
    """What the pool sees free while runs go to a cluster: everything, so that the pool only
    orders and counts them and Ray places each where its resources are free."""
    return {"ram": UNBOUNDED, **{f"cuda:{index}": UNBOUNDED for index in range(max(1, gpus))}}


# ---------------------------------------------------------------------------------------------
# Submitting, watching and cancelling a run


@dataclass
class ClusterTrainer:
    """A run submitted to the cluster, as the pool keeps it while this server waits for it."""

    actor: Any  # ray.actor.ActorHandle
    done: Any  # the ObjectRef of its training call
    record: dict[str, Any]

    def is_alive(self) -> bool:
        return alive(self.record)

    def wait(self) -> None:
        """Until its training call ends (however it ends: its status.json says how)."""
        with contextlib.suppress(Exception):  # an actor that died raises here: that is an end
            connect().get(self.done)
        while self.is_alive():  # the actor exits just after its call returns
            time.sleep(CANCEL_POLL_SECONDS)


def submit(folder: Path, memory: dict[str, Any]) -> ClusterTrainer:
    """Submit the run to the cluster: its actor is created (named, so that any server finds it),
    recorded in status.json, and only then told to train, so that the trainer's own status
    writes never race this one (as the forkserver's trainers wait for their pid's record)."""
    ray = connect()
    asks = resources(memory)
    name = f"netbuilder-{folder.name}-{secrets.token_hex(4)}"
    actor = (
        _actor_class()
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",  # outlives the app server, as a forked trainer does
            max_restarts=0,  # a lost run reads as interrupted and is resumed by a person
            **asks,
        )
        .remote()
    )
    entry = {"actor": name, "asks": asks}
    try:
        store.update_status(
            folder,
            ray=entry,
            pid=None,
            pid_started=None,
            message=msg(
                "on the Ray cluster: waiting for a node with {cpus} CPU, {gpus} GPU and {memory}",
                cpus=format(asks["num_cpus"], "g"),
                gpus=format(asks["num_gpus"], "g"),
                memory=format_bytes(asks["memory"]),
            ),
        )
    except BaseException:  # not recorded: it must not train unseen
        ray.kill(actor, no_restart=True)
        raise
    threads = max(1, int(asks["num_cpus"]) // max(1, _processes(memory)))
    done = actor.train.remote(str(folder.resolve()), threads, _processes(memory))
    return ClusterTrainer(actor, done, entry)


@functools.cache
def _actor_class() -> Any:
    """RunActor as a Ray actor class (made once per process; its code travels by reference)."""
    return connect().remote(RunActor)


def _processes(memory: dict[str, Any]) -> int:
    count = memory.get("processes")
    return count if isinstance(count, int) and count >= 1 else 1


def _actor(entry: dict[str, Any]) -> Any | None:
    """The run's actor as Ray knows it now, or None: ended, killed, or lost with its node (the
    name of a dead detached actor is free again at once; submit makes every run's detached)."""
    ray = connect()
    try:
        return ray.get_actor(entry["actor"], namespace=NAMESPACE)
    except ValueError:
        return None


def alive(entry: dict[str, Any]) -> bool:
    """Whether Ray still knows the run's actor (pending a node, or training). A server that
    cannot ask the cluster (not configured, or unreachable now) counts it alive: it shows the
    run as last recorded rather than invite a second trainer for it."""
    if not enabled():
        return True
    try:
        return _actor(entry) is not None
    except Exception as exc:  # noqa: BLE001  (unreachable, or a timeout under load: unknown)
        log.warning("cannot ask the Ray cluster about %s: %s", entry.get("actor"), exc)
        return True


def cancel(entry: dict[str, Any], grace: float) -> None:
    """After the stop flag: wait up to `grace` seconds for the trainer to end by itself (a final
    checkpoint), then kill its actor (the last checkpoint stands), and wait until Ray has it
    gone."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _actor(entry) is None:
            return
        time.sleep(CANCEL_POLL_SECONDS)
    actor = _actor(entry)
    if actor is None:
        return
    ray = connect()
    ray.kill(actor, no_restart=True)
    while _actor(entry) is not None:
        time.sleep(CANCEL_POLL_SECONDS)


def lost_message(step: Any) -> Message:
    return msg(
        "the trainer on the Ray cluster ended unexpectedly (its worker process or node was"
        " lost) at step {step}; resume to continue from the last checkpoint",
        step=step,
    )


# ---------------------------------------------------------------------------------------------
# On the worker node


class RunActor:
    """One run's trainer on a node of the cluster (made a Ray actor class by submit)."""

    def train(self, folder: str, threads: int, processes: int) -> None:
        """Train the run folder as a forked trainer would, then end this actor whatever happened
        (a detached actor left alive would hold its resources, and its run would read as
        training): a fault the trainer did not record leaves its traceback in trainer.log, and
        the run reads as interrupted."""
        import ray

        try:
            self._train(Path(folder), threads, processes)
        except Exception:  # noqa: BLE001  (what a forked trainer's crash would print)
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            ray.actor.exit_actor()  # which frees its name

    def _train(self, path: Path, threads: int, processes: int) -> None:
        """Output to the run's trainer.log, where it runs recorded, then the worker entry
        (torchrun's command for a run on several GPUs)."""
        import ray

        log_file = os.open(path / store.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_file, 1)
        os.dup2(log_file, 2)
        os.close(log_file)
        entry = record(store.read_status(path)) or {}
        store.update_status(path, ray=entry | {"node": ray.util.get_node_ip_address()})
        if processes > 1:
            subprocess.call(
                [
                    sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "runtime", "worker", str(path),
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            return
        import torch

        from runtime.worker import run_worker

        torch.set_num_threads(threads)
        run_worker(path)
