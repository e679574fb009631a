"""Start -> first step record: a fresh interpreter (cold) against the warm forkserver, one run.

Drives the real runtime as the Train page does: `start_run` (create the folder, queue it, fork a
trainer from the warm forkserver) and then `read_metrics` polled every POLL_S until the first
"step" record arrives, which is the record the page draws as the first point. "cold" starts the
same run with `python -m runtime worker` in a new interpreter (what every Start cost before:
importing torch, the trainer and scikit-learn's digits). Cold and warm runs alternate; the
medians and the ratio are printed. Target (issue 13 section 5): warm median under 1.5 s.
Run: .venv/bin/python benchmarks/first_point.py [--repeats 7] [--template lenet5 --dataset digits-28]
Also prints how soon a reader sees each step record after the trainer wrote it (median, max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import Graph, load_graph  # noqa: E402
from runtime import runs  # noqa: E402
from runtime.launcher import warm_up  # noqa: E402
from runtime.trainer import TrainConfig  # noqa: E402

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"
POLL_S = 0.02
TIMEOUT_S = 120.0
TARGET_S = 1.5


def first_step(runs_dir: Path, run_id: str, began: float) -> tuple[float, list[float]]:
    """Seconds from `began` until the first step record is readable, and each record's delay."""
    offset, deadline = 0, time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        records, offset = runs.read_metrics(runs_dir, run_id, offset)
        steps = [r for r in records if r.get("kind") == "step"]
        if steps:
            now = time.time()
            return time.perf_counter() - began, [now - r["time"] for r in steps]
        if runs.read_run(runs_dir, run_id).status not in runs.ACTIVE:
            raise SystemExit(f"run {run_id} ended without a step: {runs.read_run(runs_dir, run_id).message}")
        time.sleep(POLL_S)
    raise SystemExit(f"no step record within {TIMEOUT_S} s")


def stop(runs_dir: Path, run_id: str) -> None:
    runs.stop_run(runs_dir, run_id, grace=5.0, kill_grace=2.0)
    deadline = time.monotonic() + 30
    while runs.read_run(runs_dir, run_id).status not in ("stopped", "completed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not stop")
        time.sleep(POLL_S)


def warm(runs_dir: Path, graph: Graph, config: TrainConfig) -> tuple[float, list[float]]:
    began = time.perf_counter()
    run_id = runs.start_run(runs_dir, graph, config)
    seconds = first_step(runs_dir, run_id, began)
    stop(runs_dir, run_id)
    return seconds


def cold(runs_dir: Path, graph: Graph, config: TrainConfig) -> tuple[float, list[float]]:
    began = time.perf_counter()
    folder = runs.create_run(runs_dir, graph, config)
    runs.spawn_cold(folder)
    seconds = first_step(runs_dir, folder.name, began)
    stop(runs_dir, folder.name)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--template", default="lenet5")
    parser.add_argument("--dataset", default="digits-28")
    args = parser.parse_args()
    os.environ.setdefault(runs.MAX_TRAINERS_ENV, "1")
    graph = load_graph((TEMPLATES / f"{args.template}.json").read_text())
    config = TrainConfig(dataset=args.dataset, epochs=1000)
    with tempfile.TemporaryDirectory() as home:
        runs_dir = Path(home)
        warm_up()
        warm(runs_dir, graph, config)  # the forkserver's own start is not what a Start costs
        results: dict[str, list[float]] = {"cold": [], "warm": []}
        delays: list[float] = []
        for _ in range(args.repeats):
            for name, start in (("cold", cold), ("warm", warm)):
                seconds, seen = start(runs_dir, graph, config)
                results[name].append(seconds)
                delays += seen
    cold_s, warm_s = (statistics.median(results[k]) for k in ("cold", "warm"))
    print(f"{args.template} on {args.dataset}, {args.repeats} runs each, Start -> first step record")
    for name in ("cold", "warm"):
        values = ", ".join(f"{v:.2f}" for v in results[name])
        print(f"  {name:<5} median {statistics.median(results[name]):.2f} s   ({values})")
    print(f"  warm / cold = {warm_s / cold_s:.2f}; target warm < {TARGET_S} s:"
          f" {'met' if warm_s < TARGET_S else 'NOT met'}")
    print(f"  a record reaches a reader {statistics.median(delays):.3f} s after it is written"
          f" (median; max {max(delays):.3f} s)")


if __name__ == "__main__":
    main()
