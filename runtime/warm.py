"""The warm trainer: what a forkserver imports once, and the function each run's process runs.

A fresh Python pays about two seconds to import torch (and more for the training code and
scikit-learn's digits) before a run's first step. The forkserver that runtime/runs.py starts
imports this module once; every run is then a fork of it, with all that already in memory, yet
still its own process: a crash or an out-of-memory kill ends that run only.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime import store
from runtime.datasets import load_dataset
from runtime.loop import make_optimizer
from runtime.settings import TrainConfig
from runtime.worker import run_worker  # the trainer and its entry (`python -m runtime worker`)

# Loaded once in the forkserver, so that their files and imports are warm for every run.
PRELOADED_DATASETS = ("digits", "digits-28")
# The threads torch would use here. The forkserver itself runs on one: OpenMP's worker threads do
# not survive a fork, and a trainer forked from a server that had started them hangs in its first
# parallel op. Each trainer sets its share of these before it trains (trainer_threads).
TRAINER_THREADS = torch.get_num_threads()
torch.set_num_threads(1)


def trainer_threads(cpu_runs: int) -> int:
    """A CPU trainer's torch threads: the cores split among the CPU runs training when it
    started, itself included (the pool records how many in status.json as cpu_runs), at least
    one. More threads than cores would only make the runs take turns on them."""
    return max(1, TRAINER_THREADS // max(1, cpu_runs))


def preload_training() -> None:
    """One tiny training step with each optimizer: torch imports much of itself lazily (the
    first optimizer pulls in torch._dynamo, about two seconds), so pay for it here, once."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    for name in TrainConfig.model_fields["optimizer"].annotation.__args__:
        optimizer = make_optimizer(TrainConfig(optimizer=name), list(model.parameters()))
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def preload_datasets() -> None:
    """Import and read the built-in datasets once; a failure only means a slower first run."""
    for name in PRELOADED_DATASETS:
        try:
            load_dataset(name)
        except Exception:  # noqa: BLE001  (a missing optional dependency must not stop the server)
            continue


def trainer_process(folder: str, ready: Connection) -> None:
    """A run's process: its own session, output to the run's log, then train once told to start.

    The launcher records the pid (and its start time) in status.json before it sends the word,
    so the trainer's own status writes never race the launcher's.
    """
    os.setsid()  # Ctrl-C in the server's terminal is not meant for the trainers
    log = os.open(Path(folder) / store.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        ready.recv()
    except EOFError:  # the launcher went away before the pid was recorded: do not start
        sys.exit(1)
    ready.close()
    status = store.read_status(Path(folder))
    cpu_runs = status.get("cpu_runs")
    torch.set_num_threads(trainer_threads(cpu_runs if isinstance(cpu_runs, int) else 1))
    if isinstance(status.get("gpu"), int):  # the GPU the pool placed it on, before CUDA starts
        os.environ["CUDA_VISIBLE_DEVICES"] = str(status["gpu"])
    sys.exit(run_worker(Path(folder)))
