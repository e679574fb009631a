"""Imported once by the trainers' forkserver (see runtime/launcher.py and runtime/warm.py).

It lowers the forkserver's priority first (TRAINER_NICENESS), then loads torch and the data.

multiprocessing re-runs the launching process's __main__ in every child before its target. In
the app that is whichever Streamlit page script was running (Streamlit puts each script in
sys.modules["__main__"]), so each trainer would render a page first. A trainer needs nothing
from __main__ (its target is runtime.warm.trainer_process), so in this forkserver, and thereby
in every trainer forked from it, that step does nothing.
"""

import multiprocessing.spawn
import os

from runtime.launcher import TRAINER_NICENESS

os.nice(TRAINER_NICENESS)  # before torch: the pages first, then the trainers

from runtime.warm import preload_datasets, preload_training  # noqa: E402  (torch: after nice)


def _leave_main_alone(_main: str) -> None:
    """Stands in for multiprocessing's main-module fixup in the trainers."""


multiprocessing.spawn._fixup_main_from_path = _leave_main_alone  # type: ignore[attr-defined]
multiprocessing.spawn._fixup_main_from_name = _leave_main_alone  # type: ignore[attr-defined]

preload_training()
preload_datasets()
