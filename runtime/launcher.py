"""The trainers' forkserver: a multiprocessing context whose server imports runtime.preload.

Kept free of torch, so that the app can start the forkserver from any page at no cost to it;
the forkserver then imports torch, the trainer and the datasets in its own process while the
person is still building, and every Start forks a trainer from it (runtime/runs.py). A forkserver
that died (killed, out of memory) is started again before the next fork; the trainers it had
forked live on in their own sessions, and runtime/runs.py keeps counting them by pid.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing import forkserver

# The forkserver and every trainer forked from it run this much below the web server's priority
# (runtime/preload.py sets it): while a trainer, or the preload that loads torch and the data for
# seconds, wants the CPU, the pages still answer at once. Alone, they run at full speed.
TRAINER_NICENESS = 10

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(["runtime.preload"])

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Start the forkserver now (it loads in the background); cheap when it already runs."""
    restart_if_dead()


def restart_if_dead() -> bool:
    """Make sure the forkserver runs; True when the one started before had died (and a new one
    was started in its place), which is logged."""
    server = forkserver._forkserver  # the one ForkServer of this process, as multiprocessing has it
    before = server._forkserver_pid
    forkserver.ensure_running()  # reaps a dead forkserver and starts a new one
    restarted = before is not None and server._forkserver_pid != before
    if restarted:
        log.warning("the trainers' forkserver (pid %s) had died; started a new one", before)
    return restarted
