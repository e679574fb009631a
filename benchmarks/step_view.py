"""Step view speed: from a click to the view's data being ready, for LeNet-5 (the template) on
digits-28, one sample.

Measured three ways, medians of REPEATS:
- the step: samples, the generated model built, forward, loss, backward, the optimizer's step
  and the loss after it (runtime/step.py's take_step);
- the view's data: that step plus every node's statistics for the canvas, the picked layer's
  map figure, and the written-out forward, loss, chain rule and update (what the four stages
  show);
- a click as the page sees it: Next pressed on the Train page under Streamlit's AppTest (the
  whole page script reruns, the step is taken and the view is laid out).
The baseline, in the same run, is a bare torch forward + backward + Adam step of the same model
on the same sample, on one thread as the step view takes it: the floor any step view has to pay.

Target (issue 18): a step on LeNet-5 is shown within 1 s of the click.
Run: .venv/bin/python benchmarks/step_view.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import dump_graph, load_graph  # noqa: E402
from compiler.analysis import analyse  # noqa: E402
from pages.parts import step_view  # noqa: E402
from runtime.datasets import load_dataset  # noqa: E402
from runtime.settings import TrainConfig  # noqa: E402
from runtime.step import (  # noqa: E402
    batch_from,
    build_model,
    explain_gradient,
    explain_loss,
    explain_output,
    explain_update,
    one_thread,
    take_step,
)

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 15
CLICKS = 7
TARGET_S = 1.0
WORKSPACE = "bench-step-view-000000001"


def median_seconds(action: Callable[[], object], repeats: int = REPEATS) -> float:
    action()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    graph = load_graph((ROOT / "builder" / "templates" / "lenet5.json").read_text())
    analysis = analyse(graph)
    dataset = load_dataset("digits-28")
    settings = TrainConfig(optimizer="adam", lr=1e-3, seed=0)
    x, y = batch_from(dataset, analysis, 0, 1)

    def step() -> object:
        return take_step(analysis, *batch_from(dataset, analysis, 0, 1), settings)

    def view_data() -> object:
        record = take_step(analysis, *batch_from(dataset, analysis, 0, 1), settings)
        for stage in step_view.STAGES:
            step_view.node_faces(analysis, record, stage)
        trace = record.nodes["c1"]
        step_view.map_figure(trace.output[0], "c1")
        step_view.map_figure(trace.grad[0], "c1", diverging=True)
        explain_output(record, "c1", step_view.default_element(trace.shape, trace.output[0]))
        explain_loss(record)
        explain_gradient(record, "c1.weight", (0, 0, 2, 2))
        return explain_update(record, "c1.weight", (0, 0, 2, 2))

    model = build_model(record_source(analysis), 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def bare() -> None:
        with one_thread():  # as the step view runs
            optimizer.zero_grad()
            F.cross_entropy(model.train()(x), y).backward()
            optimizer.step()

    baseline = median_seconds(bare)
    stepped = median_seconds(step)
    ready = median_seconds(view_data)
    click = click_seconds(graph)
    load = os.getloadavg()
    print(f"machine load (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f" on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"baseline (bare torch step):      median {baseline * 1000:8.1f} ms")
    print(f"the step (take_step):            median {stepped * 1000:8.1f} ms"
          f"  ({stepped / baseline:.1f}x the baseline)")  # fmt: skip
    print(f"the view's data (four stages):   median {ready * 1000:8.1f} ms"
          f"  ({ready / baseline:.1f}x the baseline)")  # fmt: skip
    print(f"a click on Next (AppTest rerun): median {click * 1000:8.1f} ms"
          f"  target < {TARGET_S * 1000:.0f} ms: {'met' if click < TARGET_S else 'MISSED'}")  # fmt: skip


def record_source(analysis: object) -> str:
    from compiler.codegen import generate_source

    return generate_source(analysis)


def click_seconds(graph: object) -> float:
    """Next pressed on the Train page: the page script reruns, the step is taken, laid out."""
    from streamlit.testing.v1 import AppTest

    home = Path(tempfile.mkdtemp(prefix="bench-step-"))
    os.environ["NETBUILDER_HOME"] = str(home)
    autosave = home / "autosave" / f"{WORKSPACE}.json"
    autosave.parent.mkdir(parents=True)
    autosave.write_text(dump_graph(graph))
    app = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    app.query_params["w"] = WORKSPACE
    app.run()
    app.selectbox(key="train-dataset").set_value("digits-28").run()
    app.toggle(key="step-open").set_value(True).run()
    times = []
    for _ in range(CLICKS):
        started = time.perf_counter()
        app.button(key="step-next").click().run()
        times.append(time.perf_counter() - started)
        assert not app.exception, [e.stack_trace[-4:] for e in app.exception]
    return statistics.median(times)


if __name__ == "__main__":
    main()
