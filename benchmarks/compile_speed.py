"""Compile speed: validate + infer + emit for 50- and 500-node graphs, and our shape inference
against a `device="meta"` forward of the very module we export (the baseline, same run).

Then `python -m compiler check` on hostile files the format accepts (2,000 nodes, up to 2 MB):
every node failing with huge sizes (the fix suggestions must not search up to the size), a chain
that grows sizes until they overflow, and a 2 MB file of long ids and labels; the baseline is the
same check on the 500-node residual graph, in the same run.

Targets (issue 2): full compile < 50 ms for 500 nodes; inference >= 10x faster than meta forward.
Target (issue 8): check of any accepted file < 2 s.
Run: .venv/bin/python benchmarks/compile_speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import Graph, dump_graph, load_graph, parse_graph  # noqa: E402
from compiler import analyse, generate_source  # noqa: E402


def residual_graph(target_nodes: int) -> Graph:
    """A ResNet-like stack: blocks of Conv2d, BatchNorm2d, ReLU and a residual Add."""
    nodes = [{"id": "in", "type": "Input", "params": {"shape": [3, 32, 32]}},
             {"id": "stem", "type": "Conv2d", "params": {"out_channels": 16, "kernel_size": 3, "padding": 1}}]
    edges = [{"source": "in", "target": "stem"}]
    last, block = "stem", 0
    while len(nodes) < target_nodes - 4:
        ids = [f"b{block}_{part}" for part in ("conv", "bn", "relu", "add")]
        nodes += [
            {"id": ids[0], "type": "Conv2d", "params": {"out_channels": 16, "kernel_size": 3, "padding": "same"}},
            {"id": ids[1], "type": "BatchNorm2d"},
            {"id": ids[2], "type": "ReLU"},
            {"id": ids[3], "type": "Add"},
        ]
        edges += [{"source": a, "target": b} for a, b in zip([last, *ids[:3]], ids)]
        edges.append({"source": last, "target": ids[3], "port": 1})
        last, block = ids[3], block + 1
    nodes += [{"id": "pool", "type": "AdaptiveAvgPool2d", "params": {"output_size": 1}},
              {"id": "flat", "type": "Flatten"},
              {"id": "head", "type": "Linear", "params": {"out_features": 10}},
              {"id": "out", "type": "Output"}]
    edges += [{"source": a, "target": b} for a, b in zip([last, "pool", "flat", "head"], ["pool", "flat", "head", "out"])]
    return parse_graph({"format": "netbuilder.graph/1", "name": "bench", "nodes": nodes, "edges": edges})


def hostile_graphs() -> dict[str, str]:
    """File texts of 2,000 nodes that the format accepts, built to make the analysis work hard."""
    big = 9_999_991  # a prime: no divisor but 1 and itself
    fan = [{"id": "in", "type": "Input", "params": {"shape": [big, 1]}}]
    fan += [{"id": f"g{i}", "type": "GroupNorm", "params": {"num_groups": big - 1 - i}} for i in range(1996)]
    fan += [{"id": "att", "type": "MultiheadAttention", "params": {"num_heads": 9_999_989}},
            {"id": "out", "type": "Output"}]
    fan_edges = [{"source": "in", "target": n["id"]} for n in fan[1:-1]] + [{"source": "g0", "target": "out"}]
    grow = [{"id": "in", "type": "Input", "params": {"shape": [1, 2]}}]
    grow += [{"id": f"t{i}", "type": "ConvTranspose1d",
              "params": {"out_channels": 1, "kernel_size": 10_000_000, "stride": 10_000_000}} for i in range(1998)]
    grow.append({"id": "out", "type": "Output"})
    grow_edges = [{"source": a["id"], "target": b["id"]} for a, b in zip(grow, grow[1:])]
    padded = residual_graph(1996)
    long = [{**n.model_dump(exclude_none=True), "id": n.id + "_" * (190 - len(n.id)), "label": "L" * 170,
             "position": [123456.789, 987654.321]} for n in padded.nodes]
    rename = {n.id: n.id + "_" * (190 - len(n.id)) for n in padded.nodes}
    long_edges = [{"source": rename[e.source], "target": rename[e.target], "port": e.port} for e in padded.edges]
    files = {}
    for name, nodes, edges in (("fan of failing GroupNorms", fan, fan_edges),
                               ("overflowing ConvTranspose chain", grow, grow_edges),
                               ("2 MB of long ids and labels", long, long_edges)):
        files[name] = json.dumps({"format": "netbuilder.graph/1", "name": name, "nodes": nodes, "edges": edges})
    return files


def check_ms(path: Path, repeat: int = 5) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system, what the machine's load does not
    inflate) of the whole command line, `python -m compiler check PATH`, in milliseconds."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "compiler", "check", str(path)]
    walls, cpus = [], []
    for _ in range(repeat):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(command, cwd=root, capture_output=True, check=False)
        walls.append((time.perf_counter() - start) * 1000)
        after = os.times()
        cpus.append((after.children_user + after.children_system
                     - before.children_user - before.children_system) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def hostile_checks() -> dict[str, dict[str, float]]:
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        baseline = Path(folder) / "residual500.json"
        baseline.write_text(dump_graph(residual_graph(500)))
        base_ms, base_cpu = check_ms(baseline)
        print(f"{'python -m compiler check':<34} {'bytes':>9} {'nodes':>6} {'wall ms':>8} {'cpu ms':>7} {'vs 500-node':>12}")
        print(f"{'baseline: residual, 500 nodes':<34} {baseline.stat().st_size:>9} {500:>6} {base_ms:>8.0f} {base_cpu:>7.0f} {1:>11.1f}x")
        for name, text in hostile_graphs().items():
            path = Path(folder) / "hostile.json"
            path.write_text(text)
            nodes = len(json.loads(text)["nodes"])
            ms, cpu = check_ms(path)
            results[name] = {"bytes": len(text), "nodes": nodes, "check_ms": ms, "cpu_ms": cpu,
                             "over_baseline": ms / base_ms}
            print(f"{name:<34} {len(text):>9} {nodes:>6} {ms:>8.0f} {cpu:>7.0f} {ms / base_ms:>11.1f}x")
    worst = max(r["check_ms"] for r in results.values())
    worst_cpu = max(r["cpu_ms"] for r in results.values())
    print(f"target: check of any accepted file < 2 s: {'PASS' if worst < 2000 else 'FAIL'}"
          f" ({worst:.0f} ms wall; {worst_cpu:.0f} ms of CPU, which a loaded machine does not inflate)")
    return results


def median_ms(work: Callable[[], object], repeat: int = 15) -> float:
    """Median wall time of `repeat` calls, in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'nodes':>6} {'compile ms':>11} {'infer ms':>9} {'meta fwd ms':>12} {'meta build+fwd ms':>18} {'fwd/infer':>10}")
    results = {}
    for size in (50, 500):
        graph = residual_graph(size)
        text = dump_graph(graph)
        compile_ms = median_ms(lambda: generate_source(analyse(load_graph(text))))
        infer_ms = median_ms(lambda: analyse(graph))
        module = types.ModuleType("bench_model")
        exec(compile(generate_source(analyse(graph)), "model.py", "exec"), module.__dict__)
        with torch.device("meta"):
            model = module.build_model()
        x = torch.empty(1, *module.INPUT_SHAPE, device="meta")
        forward_ms = median_ms(lambda: model(x))

        def build_and_forward() -> object:
            with torch.device("meta"):
                return module.build_model()(x)

        build_forward_ms = median_ms(build_and_forward, repeat=5)
        ratio = forward_ms / infer_ms
        results[size] = {"nodes": len(graph.nodes), "compile_ms": compile_ms, "infer_ms": infer_ms,
                         "meta_forward_ms": forward_ms, "meta_build_forward_ms": build_forward_ms,
                         "meta_forward_over_infer": ratio}
        print(f"{len(graph.nodes):>6} {compile_ms:>11.1f} {infer_ms:>9.1f} {forward_ms:>12.1f} {build_forward_ms:>18.1f} {ratio:>9.1f}x")
    big = results[500]
    print(f"target: compile 500 nodes < 50 ms: {'PASS' if big['compile_ms'] < 50 else 'FAIL'}"
          f" ({big['compile_ms']:.1f} ms)")
    print(f"target: inference >= 10x faster than meta forward: "
          f"{'PASS' if big['meta_forward_over_infer'] >= 10 else 'FAIL'} ({big['meta_forward_over_infer']:.1f}x)")
    print(json.dumps({**results, "hostile": hostile_checks()}))


if __name__ == "__main__":
    main()
