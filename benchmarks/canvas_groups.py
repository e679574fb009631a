"""What groups cost on the canvas: the canvas state (and its JSON, what Streamlit sends) of an
imported DenseNet-121 (429 nodes) and ResNet-50 (177), drawn as groups (closed at the top, and
with one group open) against the same graph without module paths (flat, the baseline, measured
in the same run). Also Tidy (auto_layout) with and without groups. Medians of repeated runs.

    .venv/bin/python benchmarks/canvas_groups.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402,F401  (torchvision's operators, where its wheel lacks them)
from benchmarks.compile_speed import median_ms  # noqa: E402
from builder.graph import Graph  # noqa: E402
from builder.layout import auto_layout, with_layout  # noqa: E402
from compiler.analysis import analyse  # noqa: E402
from compiler.importer import import_model  # noqa: E402
from pages.parts import canvas  # noqa: E402

REPEAT = 15


def flat(graph: Graph) -> Graph:
    nodes = [node.model_copy(update={"module": None}) for node in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})


def drawn(graph: Graph, opened: frozenset[str] | None) -> str:
    analysis = analyse(graph)
    view = canvas.group_view(graph, opened, None)
    return json.dumps(canvas.canvas_state(graph, analysis, None, None, view))


def main() -> None:
    from torchvision import models

    for name, opened in (("densenet121", "features"), ("resnet50", "layer2")):
        result = import_model(models.get_model(name, num_classes=10).eval(), (3, 32, 32))
        assert result.graph is not None, result.problems
        grouped = with_layout(result.graph)
        plain = with_layout(flat(result.graph))
        base = median_ms(lambda: drawn(plain, None), REPEAT)
        closed = median_ms(lambda: drawn(grouped, None), REPEAT)
        one_open = median_ms(lambda: drawn(grouped, frozenset({opened})), REPEAT)
        sizes = [len(drawn(g, o)) for g, o in ((plain, None), (grouped, None))]
        print(
            f"{name} ({len(grouped.nodes)} nodes): canvas state flat {base:.1f} ms"
            f" ({sizes[0] / 1000:.0f} kB), groups closed {closed:.1f} ms ({sizes[1] / 1000:.0f} kB,"
            f" x{closed / base:.2f}), {opened} open {one_open:.1f} ms (x{one_open / base:.2f})"
        )
        tidy_flat = median_ms(lambda: auto_layout(plain), REPEAT)
        tidy_groups = median_ms(lambda: auto_layout(grouped), REPEAT)
        print(
            f"  Tidy: flat {tidy_flat:.1f} ms, by groups {tidy_groups:.1f} ms"
            f" (x{tidy_groups / tidy_flat:.2f})"
        )
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
