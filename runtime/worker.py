"""A run's trainer, whoever started its process: the forkserver's fork (runtime/warm.py), a fresh
`python -m runtime worker` (torchrun's workers too), or a Ray actor (runtime/cluster.py).

Its own module, below the command line and the pool, so that the process that trains imports
neither: runs -> warm -> worker, and __main__ -> worker, with no way back up.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from i18n import msg
from runtime import store
from runtime.trainer import train_run


def stop_on_signals() -> threading.Event:
    """Ctrl-C or SIGTERM asks for a graceful stop (final checkpoint) instead of killing."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    return stop


def run_worker(folder: Path) -> int:
    """Train a run folder in this process, a signal asking for a graceful stop. Under torchrun
    (WORLD_SIZE > 1) the process joins the group first: NCCL for GPUs, gloo for CPUs."""
    stop = stop_on_signals()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        result = train_run(folder, stop=stop)
    else:
        rank = int(os.environ.get("RANK", "0"))
        if not _join_processes(folder, rank, world):
            return 1
        try:
            result = train_run(folder, stop=stop, rank=rank, world=world)
        finally:
            dist.destroy_process_group()
    return 0 if result.status in ("completed", "stopped") else 1


def _join_processes(folder: Path, rank: int, world: int) -> bool:
    """Join torchrun's process group: NCCL for GPU tensors where torch has it, gloo for CPU
    ones. A failure is the run's status (process 0 records it), not a traceback."""
    gpus = torch.cuda.is_available() and dist.is_nccl_available()
    try:
        dist.init_process_group("cuda:nccl,cpu:gloo" if gpus else "gloo")
    except (RuntimeError, ValueError, OSError) as exc:
        if rank == 0:
            reason = (
                str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            )
            store.update_status(
                folder,
                status="failed",
                message=msg(
                    "the {world} training processes could not start together: {reason}",
                    world=world,
                    reason=reason,
                ),
            )
        return False
    return True
