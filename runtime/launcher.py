"""The trainers' forkserver: a multiprocessing context whose server imports runtime.preload.

Kept free of torch, so that the app can start the forkserver from any page at no cost to it;
the forkserver then imports torch, the trainer and the datasets in its own process while the
person is still building, and every Start forks a trainer from it (runtime/runs.py).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["runtime.preload"])


def warm_up() -> None:
    """Start the forkserver now (it loads in the background); cheap when it already runs."""
    forkserver.ensure_running()
