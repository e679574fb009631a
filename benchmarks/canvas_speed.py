"""Edit-to-canvas latency on the Python side for a 50-node graph (target: < 300 ms).

An edit on the canvas costs: apply the browser's event to the graph (apply_event), analyse the
new graph, build the canvas state (canvas_state) and serialise it as Streamlit sends it to the
browser. A parameter edit costs the same minus the merge. The whole Build page run is measured
too, through Streamlit's AppTest (its harness adds overhead, so that figure is an upper bound).
The baseline, measured in the same run, is `analyse` alone: the work no editor can skip.

    .venv/bin/python benchmarks/canvas_speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from benchmarks.compile_speed import median_ms, residual_graph  # noqa: E402
from builder import edit  # noqa: E402
from pages.parts.canvas import apply_event, canvas_state  # noqa: E402
from builder.graph import Graph, dump_graph  # noqa: E402
from builder.layout import with_layout  # noqa: E402
from compiler.analysis import analyse  # noqa: E402

NODES = 50
TARGET_MS = 300.0


CONNECT = {"kind": "connect", "source": "in", "target": "head"}  # a person draws one more edge


def canvas_edit(graph: Graph, event: dict) -> str:
    edited = apply_event(graph, event).graph
    return json.dumps(canvas_state(edited, analyse(edited), None))


def param_edit(graph: Graph, node_id: str) -> str:
    edited = edit.set_params(graph, node_id, {"out_channels": 24})
    return json.dumps(canvas_state(edited, analyse(edited), node_id))


def page_run_ms(graph: Graph, event: dict, repeat: int = 10) -> float:
    """One Build page run that takes in a canvas edit, through AppTest, on a 50-node workspace."""
    with tempfile.TemporaryDirectory() as home:
        os.environ["NETBUILDER_HOME"] = home
        (Path(home) / "autosave").mkdir()
        (Path(home) / "autosave" / "bench-workspace.json").write_text(dump_graph(graph))
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        app.query_params["w"] = "bench-workspace-00000001"
        app.run()
        times = []
        for seq in range(repeat):
            app.session_state["nb_canvas"] = {"events": [{**event, "seq": 100 + seq}]}
            start = time.perf_counter()
            app.run()
            times.append((time.perf_counter() - start) * 1000)
            app.session_state["nb_history"] = edit.History(graph)  # back to the 50 nodes
        if app.exception:
            raise RuntimeError(app.exception[0].value)
        return statistics.median(times)


def main() -> None:
    graph = with_layout(residual_graph(NODES))
    conv = next(n.id for n in graph.nodes if n.type == "Conv2d")
    baseline = median_ms(lambda: analyse(graph), repeat=30)
    rows = [
        (
            "canvas edit: event + analyse + canvas state + JSON",
            median_ms(lambda: canvas_edit(graph, CONNECT), repeat=30),
        ),
        (
            "param edit: set + analyse + canvas state + JSON",
            median_ms(lambda: param_edit(graph, conv), repeat=30),
        ),
        ("whole Build page run via AppTest (upper bound)", page_run_ms(graph, CONNECT)),
    ]
    print(f"graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges")
    print(f"baseline  analyse alone: {baseline:8.2f} ms")
    for label, ms in rows:
        verdict = "ok" if ms < TARGET_MS else "OVER TARGET"
        print(
            f"{label:<52} {ms:8.2f} ms  {ms / baseline:6.1f}x baseline  [{verdict}, < {TARGET_MS:.0f} ms]"
        )


if __name__ == "__main__":
    main()
