"""Import coverage: every torchvision classification builder of the families in issue 10 (resnet,
resnext, wide_resnet, vgg, alexnet, squeezenet, mobilenet v2/v3, shufflenet, googlenet, densenet,
efficientnet, mnasnet, regnet), imported and round-tripped: the imported graph, exported again
with the original's weights, must give the original's outputs (eval mode, max |diff| < 1e-4) and
its parameter count. Prints one row per model (nodes, params, max diff, seconds, ok or refused
with the unsupported ops) and the share that round-trips (target: at least 90%).

Run: .venv/bin/python benchmarks/import_coverage.py [--jobs N] [--size 64] [NAME ...]
(each model is imported in its own process; the large ones need several GiB of memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.conftest import TORCHVISION_OPS  # noqa: E402,F401 - torchvision's ops, declared

FAMILIES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "vgg",
    "alexnet",
    "squeezenet",
    "mobilenet_v2",
    "mobilenet_v3",
    "shufflenet",
    "googlenet",
    "densenet",
    "efficientnet",
    "mnasnet",
    "regnet",
)
TOLERANCE = 1e-4
FIRST = (  # one small builder per family
    "resnet18",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11",
    "alexnet",
    "squeezenet1_0",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "googlenet",
    "densenet121",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_y_400mf",
)


@dataclass(frozen=True)
class Row:
    model: str
    nodes: int
    params: int
    max_diff: float | None
    seconds: float
    ok: bool
    ops: str  # the unsupported ops (with counts) or the error


def builders() -> list[str]:
    """Every builder of the families: a small one of each family first (so a partial run still
    covers them all), the largest last."""
    from torchvision import models

    names = sorted(n for n in models.list_models(module=models) if n.startswith(FAMILIES))
    largest = [n for n in names if n.endswith(("128gf", "32gf", "16gf", "_l", "101_2", "64x4d"))]
    first = [n for n in FIRST if n in names]
    rest = [n for n in names if n not in first and n not in largest]
    return [*first, *rest, *largest]


def measure(name: str, size: int) -> Row:
    """Build, import, export again with the original's weights, and compare on a fresh input."""
    torch.set_num_threads(1)
    from torchvision import models

    from compiler import analyse
    from compiler.importer import ModelImportError, import_model
    from tests.test_import_classics import exported_twin

    torch.manual_seed(0)
    options: dict[str, Any] = {"num_classes": 10}
    if name == "googlenet":
        options |= {"aux_logits": False, "init_weights": False}
    model = models.get_model(name, **options).eval()
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    try:
        result = import_model(model, (3, size, size))
    except ModelImportError as exc:
        return Row(name, 0, params, None, time.perf_counter() - start, False, str(exc))
    seconds = time.perf_counter() - start
    if result.graph is None:
        counts = Counter(problem.op.split(" (")[0] for problem in result.problems)
        ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items())
        return Row(name, 0, params, None, seconds, False, ops)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        diff = float((exported_twin(model, result)(x) - model(x)).abs().max())
    same_count = analyse(result.graph).total_params == params
    ok = diff < TOLERANCE and same_count
    why = "" if same_count else "parameter counts differ"
    return Row(name, len(result.graph.nodes), params, diff, seconds, ok, why)


def table_row(row: Row) -> str:
    diff = "-" if row.max_diff is None else f"{row.max_diff:.1e}"
    result = "ok" if row.ok else f"refused: {row.ops}"
    return f"| {row.model} | {row.nodes} | {row.params:,} | {diff} | {row.seconds:.1f} | {result} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="builders (default: every one of the families)")
    parser.add_argument("--jobs", type=int, default=1, help="models imported at once")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    args = parser.parse_args()
    names = args.names or builders()
    print("| model | nodes | params | max diff | s | result |")
    print("| --- | ---: | ---: | ---: | ---: | --- |", flush=True)
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:
        for row in pool.map(measure, names, [args.size] * len(names)):
            rows.append(row)
            print(table_row(row), flush=True)  # as each one is done
    ok = sum(row.ok for row in rows)
    print(
        f"\n{ok} of {len(rows)} builders import and round-trip ({100 * ok / len(rows):.0f}%;"
        f" target 90%); median import {sorted(r.seconds for r in rows)[len(rows) // 2]:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
