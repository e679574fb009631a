"""Test helpers: build graphs tersely, run generated source, observe every node's real shape."""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import torch

from builder.graph import Graph, parse_graph
from compiler import Analysis, generate_source
from compiler.codegen import attribute_names, generated_module
from runtime.builtin_data import TEXT_ALPHABET


def chain_graph(
    input_shape: list[int], *layers: tuple[str, dict[str, Any]], dtype: str = "float32"
) -> Graph:
    """Input -> layers... -> Output, with ids n1, n2, ..."""
    nodes = [{"id": "in", "type": "Input", "params": {"shape": input_shape, "dtype": dtype}}]
    nodes += [{"id": f"n{i}", "type": t, "params": p} for i, (t, p) in enumerate(layers, start=1)]
    nodes.append({"id": "out", "type": "Output"})
    ids = [n["id"] for n in nodes]
    edges = [{"source": a, "target": b} for a, b in zip(ids, ids[1:])]
    return parse_graph(
        {"format": "netbuilder.graph/1", "name": "t", "nodes": nodes, "edges": edges}
    )


def load_module(source: str) -> types.ModuleType:
    """Generated source as a fresh module, by the one helper the runtime uses."""
    return generated_module(source)


def random_input(analysis: Analysis, batch: int = 2) -> torch.Tensor:
    node = next(n for n in analysis.graph.nodes if n.type == "Input")
    shape = (batch, *analysis.infos[node.id].shape)
    if analysis.infos[node.id].dtype == "int64":
        return torch.randint(0, 4, shape)
    return torch.randn(shape)


def observed_shapes(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[dict[str, tuple[int, ...]], torch.Tensor]:
    """Run forward and read every local variable's shape as forward returns (one per node)."""
    seen: dict[str, tuple[int, ...]] = {}
    code = type(model).forward.__code__

    def tracer(frame: types.FrameType, event: str, arg: Any):
        if frame.f_code is code:

            def local(frame: types.FrameType, event: str, arg: Any):
                if event == "return":
                    for name, value in frame.f_locals.items():
                        if isinstance(value, torch.Tensor) and name != "x":
                            seen[name] = tuple(value.shape[1:])
                return local

            return local
        return None

    sys.settrace(tracer)
    try:
        out = model(x)
    finally:
        sys.settrace(None)
    return seen, out


def assert_matches_torch(analysis: Analysis) -> None:
    """The compiled module's real shapes and parameter count equal the analysis's predictions."""
    assert analysis.ok, analysis.errors
    module = load_module(generate_source(analysis))
    model = module.build_model().eval()
    x = random_input(analysis)
    with torch.no_grad():
        seen, out = observed_shapes(model, x)
    names = attribute_names(analysis)
    output = next(n for n in analysis.graph.nodes if n.type == "Output")
    unseen = [name for name in names.values() if name not in seen]
    assert len(unseen) <= 1, f"forward locals not observed: {unseen}"  # only an inlined return
    for node_id, name in names.items():
        if name in seen:
            assert seen[name] == analysis.infos[node_id].shape, (node_id, seen[name])
    assert tuple(out.shape[1:]) == analysis.infos[output.id].shape
    assert tuple(out.shape[1:]) == module.OUTPUT_SHAPE
    assert sum(p.numel() for p in model.parameters()) == analysis.total_params


def layer_runs_in_torch(
    layer: str, params: dict[str, Any], inputs: list[tuple[tuple[int, ...], str]]
) -> bool:
    """Whether the layer's own emitted constructor and forward expression run in torch on a
    batch of 2 with these per-sample input shapes and dtypes (the 'equivalent torch code')."""
    from torch import nn

    from builder.catalog import CATALOG, Tensor

    spec = CATALOG[layer]
    typed = spec.params.model_validate(params)
    tensors = [Tensor(shape, dtype) for shape, dtype in inputs]
    args = [
        torch.randint(0, 2, (2, *shape)) if dtype == "int64" else torch.randn(2, *shape)
        for shape, dtype in inputs
    ]
    namespace: dict[str, Any] = {"torch": torch, "nn": nn, "args": args}
    for helper in CATALOG.values():
        if helper.helper is not None:
            exec(compile(helper.helper[1], "model.py", "exec"), namespace)
    holder = nn.Module()
    try:
        if spec.module is not None:
            holder.layer = eval(spec.module(typed, tensors), namespace)
        names = [f"args[{i}]" for i in range(len(args))]
        with torch.no_grad():
            eval(spec.call(typed, "layer", names), {**namespace, "self": holder.eval()})
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError, NotImplementedError):
        return False
    return True


def token_model(length: int) -> dict:
    """Token ids [length] -> Embedding -> Linear: a next-character model of the text task."""
    vocab = len(TEXT_ALPHABET)
    return {
        "format": "netbuilder.graph/1",
        "name": "long",
        "nodes": [
            {"id": "ids", "type": "Input", "params": {"shape": [length], "dtype": "int64"}},
            {
                "id": "emb",
                "type": "Embedding",
                "params": {"num_embeddings": vocab, "embedding_dim": 8},
            },
            {"id": "head", "type": "Linear", "params": {"out_features": vocab}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [
            {"source": "ids", "target": "emb"},
            {"source": "emb", "target": "head"},
            {"source": "head", "target": "out"},
        ],
    }


def vae_graph(shape: list[int]) -> dict:
    """Input -> mu, logvar (Linear 2 each) -> Reparameterize -> Linear -> Sigmoid -> Reshape ->
    Output with the loss vae: it rebuilds samples of `shape`."""
    nodes = [
        {"id": "x", "type": "Input", "params": {"shape": shape}},
        {"id": "flat", "type": "Flatten"},
        {"id": "mu", "type": "Linear", "params": {"out_features": 2}},
        {"id": "logvar", "type": "Linear", "params": {"out_features": 2}},
        {"id": "z", "type": "Reparameterize"},
        {"id": "dec", "type": "Linear", "params": {"out_features": math.prod(shape)}},
        {"id": "p", "type": "Sigmoid"},
        {"id": "back", "type": "Reshape", "params": {"shape": shape}},
        {"id": "out", "type": "Output", "params": {"loss": "vae"}},
    ]
    links = [("x", "flat"), ("flat", "mu"), ("flat", "logvar"), ("mu", "z"), ("logvar", "z")]
    links += [("z", "dec"), ("dec", "p"), ("p", "back"), ("back", "out")]
    edges = [{"source": a, "target": b} for a, b in links]
    return {"format": "netbuilder.graph/1", "name": "vae", "nodes": nodes, "edges": edges}


def huge_graph() -> dict:
    """[10^7] -> Linear(10^7): 10^14 parameters, 400 TB of float32."""
    return {
        "format": "netbuilder.graph/1",
        "name": "huge",
        "nodes": [
            {"id": "in", "type": "Input", "params": {"shape": [10_000_000]}},
            {"id": "fc", "type": "Linear", "params": {"out_features": 10_000_000}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [{"source": "in", "target": "fc"}, {"source": "fc", "target": "out"}],
    }
