"""Import an existing PyTorch model as a NetBuilder graph, through torch.fx.

`import_model` traces a module with torch.fx, maps every module call and tensor operation onto a
catalog layer (residual adds, concats, flatten/reshape/permute, `[0]` of a recurrent layer's
output, `x[:, -1]`, `mean(dim=1)`, ...) and then proves the result: the graph must pass the
compiler, every shape must equal the one PyTorch computed, and the compiled module, given the same
weights, must return the same outputs. Whatever cannot be mapped is reported by name with where
it occurs; nothing is dropped silently.

`load_build_model` executes a Python file: only ever the user's own file on the user's own machine
(the CLI), never an upload in the web app.
"""

from __future__ import annotations

import builtins
import copy
import importlib.util
import math
import operator
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from builder.catalog import CATALOG, NotMappable, module_table
from builder.graph import FORMAT, Graph, GraphFormatError, parse_graph
from compiler.analysis import Analysis, analyse
from compiler.codegen import attribute_names, generate_source

EXAMPLE_BATCH = 3
TOLERANCE = 1e-4


class ModelImportError(Exception):
    """The file cannot be loaded, or its model cannot be traced at all."""


@dataclass(frozen=True)
class Unsupported:
    """Something in the model with no catalog counterpart: what, where, and why."""

    op: str
    where: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.op} at {self.where}" + (f": {self.why}" if self.why else "")


@dataclass
class ImportResult:
    """The graph (None when anything is unsupported), the problems, warnings about modules left
    out, and for each graph node the qualified name of the module whose weights it holds."""

    graph: Graph | None
    problems: list[Unsupported]
    warnings: list[str]
    module_paths: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Loading a user's file


def load_build_model(path: Path) -> types.ModuleType:
    """Execute the user's module file (their own code, on their own machine) and check that it
    defines build_model(). Every way this can fail becomes a ModelImportError."""
    if not path.is_file():
        raise ModelImportError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"netbuilder_import_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise ModelImportError(
            f"running {path} failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    if not callable(getattr(module, "build_model", None)):
        raise ModelImportError(f"{path} defines no build_model() function")
    return module


def import_file(
    path: Path,
    input_shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    name: str | None = None,
) -> ImportResult:
    """Load `path`, call its build_model() and import the model. The input shape and dtype come
    from the arguments or else from the file's INPUT_SHAPE / INPUT_DTYPE (as model.py has)."""
    module = load_build_model(path)
    shape = input_shape or getattr(module, "INPUT_SHAPE", None)
    if shape is None:
        raise ModelImportError(
            f"{path} has no INPUT_SHAPE; give the shape of one sample, e.g. --input-shape 1,28,28"
        )
    if dtype is None:
        dtype = (
            "int64" if getattr(module, "INPUT_DTYPE", torch.float32) == torch.int64 else "float32"
        )
    try:
        model = module.build_model()
    except (Exception, SystemExit) as exc:
        raise ModelImportError(
            f"build_model() failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelImportError(f"build_model() returned {type(model).__name__}, not an nn.Module")
    mask = getattr(module, "causal_mask", None)
    helpers = (mask,) if callable(mask) else ()
    return import_model(model, shape, dtype, name or path.stem, helpers)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


# ---------------------------------------------------------------------------------------------
# Values flowing through the traced graph


@dataclass(frozen=True)
class Size:
    """x.size(), x.shape or one entry of it (index None: the whole size)."""

    index: int | None = None


@dataclass(frozen=True)
class Device:
    """x.device: only useful as an argument to causal_mask."""


@dataclass(frozen=True)
class Several:
    """A module's tuple output (RNN, LSTM, GRU, attention): only item 0 maps onto the graph."""

    node_id: str
    what: str
    item_one: str


@dataclass(frozen=True)
class Failed:
    """The value of a node already reported as unsupported."""


@dataclass(frozen=True)
class CausalMask:
    """The result of the generated model.py's causal_mask(): MultiheadAttention(causal=True)."""


# What an fx node computes: a str is the graph node whose output tensor it is.
Value = str | Size | Device | Several | CausalMask | Failed


@dataclass(frozen=True)
class Layer:
    """A catalog layer for one fx node: its type, params and tensor inputs (values, in order)."""

    type: str
    params: dict[str, Any]
    inputs: tuple[Value, ...]
    several: str | None = None  # set for tuple outputs: what item 1 would have been
    path: str | None = None  # the module holding its weights, where one does


@dataclass(frozen=True)
class Stack:
    """One module call that becomes a chain of layers (nn.TransformerEncoder)."""

    input: str
    layers: tuple[Layer, ...]


@dataclass
class Walk:
    """The state of one pass over the fx graph."""

    gm: fx.GraphModule
    helpers: tuple[Callable[..., Any], ...]
    values: dict[fx.Node, Value] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Unsupported] = field(default_factory=list)
    module_paths: dict[str, str] = field(default_factory=dict)
    fx_nodes: dict[str, fx.Node] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The import


def import_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: str = "float32",
    name: str = "imported",
    helpers: tuple[Callable[..., Any], ...] = (),
) -> ImportResult:
    """Trace `model` (a copy, in eval mode) and map it onto the catalog; see the module docstring.
    `helpers` are functions to keep as single calls (the generated model.py's causal_mask)."""
    if not (
        isinstance(input_shape, (tuple, list))
        and 1 <= len(input_shape) <= 6
        and all(isinstance(size, int) and 0 < size <= 10_000_000 for size in input_shape)
        and math.prod(input_shape) <= 50_000_000
    ):
        raise ModelImportError(
            f"the input shape must be 1 to 6 positive sizes, got {input_shape!r}"
        )
    input_shape = tuple(input_shape)
    model = copy.deepcopy(model).eval()
    gm = _trace(model, helpers)
    example = _example_input(model, input_shape, dtype)
    try:
        with torch.no_grad():
            ShapeRecorder(gm).run(example)
    except Exception as exc:
        cause = exc.__cause__ or exc  # the interpreter wraps the model's own error
        raise ModelImportError(
            f"the model fails on an input of shape {[EXAMPLE_BATCH, *input_shape]} ({dtype}):"
            f" {type(cause).__name__}: {_first_line(cause)}"
        ) from None
    walk = Walk(gm, helpers)
    for node in gm.graph.nodes:
        _visit(walk, node, input_shape, dtype)
    warnings = _unused_modules(model, walk)
    graph = None
    if not walk.problems:
        graph = _as_graph(walk, name)
        walk.problems += _verify(graph, walk, model, example)
    return ImportResult(
        None if walk.problems else graph, walk.problems, warnings, dict(walk.module_paths)
    )


class ShapeRecorder(fx.Interpreter):
    """Runs the traced model once and notes each tensor's shape (batch included) on its node;
    for a tuple output (a recurrent layer's), the shape of item 0."""

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        first = result[0] if isinstance(result, (tuple, list)) and result else result
        if isinstance(first, torch.Tensor):
            node.meta["shape"] = tuple(first.shape)
        return result


def _trace(model: nn.Module, helpers: tuple[Callable[..., Any], ...]) -> fx.GraphModule:
    tracer = fx.Tracer(autowrap_functions=helpers)
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise ModelImportError(
            f"torch.fx cannot trace the model's forward: {type(exc).__name__}: {_first_line(exc)}"
            " (forward must not branch on tensor values or shapes)"
        ) from None
    gm = fx.GraphModule(model, graph)
    gm.graph.eliminate_dead_code()  # e.g. the unused (h, c) of `out, (h, c) = self.lstm(x)`
    return gm


def _example_input(model: nn.Module, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if dtype == "int64":
        vocab = min(
            (m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=2
        )
        return torch.randint(0, vocab, (EXAMPLE_BATCH, *shape), generator=generator)
    return torch.randn((EXAMPLE_BATCH, *shape), generator=generator)


def _visit(walk: Walk, node: fx.Node, input_shape: tuple[int, ...], dtype: str) -> None:
    """Map one fx node: record its value and add its graph node, or report it. A reported
    node's value becomes Failed, so what follows is still checked (and reported) on its own."""
    if node.op == "placeholder" and walk.nodes and not node.users:
        return  # an optional argument of forward that the model never uses
    try:
        if node.op == "placeholder":
            result: Layer | Stack | Value = _input(walk, node, input_shape, dtype)
        elif node.op == "output":
            result = Layer("Output", {}, (_tensor(walk, node.args[0], "forward must return"),))
        elif node.op == "get_attr":
            raise NotMappable("a tensor attribute used directly, outside a layer")
        else:
            result = _map(walk, node)
    except (NotMappable, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        why = str(exc) if isinstance(exc, NotMappable) else f"arguments it cannot read ({exc})"
        walk.problems.append(Unsupported(_op_name(walk, node), _where(node), why))
        walk.values[node] = Failed()
        return
    if isinstance(result, Layer):
        walk.values[node] = _add_node(walk, node, node.name, result)
    elif isinstance(result, Stack):
        walk.values[node] = result.input
        for index, layer in enumerate(result.layers):
            chained = replace(layer, inputs=(walk.values[node],))
            walk.values[node] = _add_node(walk, node, f"{node.name}_{index}", chained)
    else:
        walk.values[node] = result


def _input(walk: Walk, node: fx.Node, input_shape: tuple[int, ...], dtype: str) -> str:
    if walk.nodes:
        raise NotMappable("a second input: a NetBuilder graph has one")
    params = {"shape": list(input_shape), "dtype": dtype}
    walk.nodes.append({"id": node.name, "type": "Input", "params": params})
    return node.name


def _add_node(walk: Walk, node: fx.Node, node_id: str, layer: Layer) -> Value:
    """Add a graph node (and its edges) for `layer`, computed at fx node `node`; its value."""
    entry: dict[str, Any] = {
        "id": node_id,
        "type": layer.type,
        "params": _without_defaults(layer.type, layer.params),
    }
    if layer.path is not None:
        walk.module_paths[node_id] = layer.path
        if layer.path != node_id:
            entry["label"] = f"self.{layer.path}"
    walk.nodes.append(entry)
    for port, source in enumerate(layer.inputs):
        edge = {"source": source, "target": node_id}
        walk.edges.append(edge | {"port": port} if len(layer.inputs) > 1 else edge)
    walk.fx_nodes[node_id] = node
    return Several(node_id, layer.type, layer.several) if layer.several else node_id


def _map(walk: Walk, node: fx.Node) -> Layer | Stack | Value:
    if node.op == "call_module":
        return _map_module(walk, node)
    table = FUNCTIONS if node.op == "call_function" else METHODS
    handler = table.get(node.target)
    if handler is not None:
        return handler(walk, node)
    if node.op == "call_function" and node.target in walk.helpers:
        return CausalMask()
    raise NotMappable("no NetBuilder layer does this")


def _op_name(walk: Walk, node: fx.Node) -> str:
    """What a person would call it: nn.Conv3d (self.conv), torch.sort, Tensor.exp."""
    if node.op == "call_module":
        kind = type(walk.gm.get_submodule(str(node.target)))
        prefix = "nn." if kind.__module__.startswith("torch.nn") else f"{kind.__module__}."
        return f"{prefix}{kind.__name__} (self.{node.target})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "placeholder":
        return f"input {node.target!r}"
    if node.op == "output":
        return "the return value"
    if node.op == "get_attr":
        return f"self.{node.target}"
    module = getattr(node.target, "__module__", None) or "torch"
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    return f"{module}.{getattr(node.target, '__name__', node.target)}"


def _where(node: fx.Node) -> str:
    """'file.py:12 in forward: x = torch.sort(x)' from the trace, else the fx node's name."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.*)', node.stack_trace or "")
    for file, line, function, code in frames:
        if not re.search(r"torch[/\\](fx|nn)[/\\]", file):
            return f"{Path(file).name}:{line} in {function}: {code.strip()}"
    return f"node {node.name!r}"


# ---------------------------------------------------------------------------------------------
# Modules


# {nn class: (catalog type, params_from_module)}: each catalog entry says which torch modules it
# stands for and how to read their params back.
MODULES: dict[type[nn.Module], tuple[str, Callable[[Any], dict[str, Any]]]] = module_table()
_encoder_layer = CATALOG["TransformerEncoderLayer"].params_from_module
TUPLE_OUTPUTS = {
    "RNN": "the final hidden state h_n",
    "GRU": "the final hidden state h_n",
    "LSTM": "the final states (h_n, c_n)",
    "MultiheadAttention": "the attention weights",
}


def _map_module(walk: Walk, node: fx.Node) -> Layer | Stack:
    path = str(node.target)
    module = walk.gm.get_submodule(path)
    if any(p == path or p.startswith(path + ".") for p in walk.module_paths.values()):
        raise NotMappable(
            "called a second time: a graph node owns its weights, so shared weights cannot"
            " be imported"
        )
    if type(module) is nn.TransformerEncoder:
        return _encoder_stack(walk, node, module)
    entry = MODULES.get(type(module))
    if entry is None:
        raise NotMappable("no NetBuilder layer does this")
    layer_type, read_params = entry
    params = read_params(module)
    if layer_type == "MultiheadAttention":
        x = _self_attention_input(node, params)
    else:
        x = _only_input(node)
    several = TUPLE_OUTPUTS.get(layer_type)
    return Layer(layer_type, params, (_tensor(walk, x),), several, path)


def _only_input(node: fx.Node) -> Any:
    """The one tensor a layer is called with; keywords set to None or False (no mask) are fine."""
    extra = [key for key, value in node.kwargs.items() if value is not None and value is not False]
    if len(node.args) != 1 or extra:
        given = ", ".join(extra) or "a second argument, e.g. an initial hidden state"
        raise NotMappable(f"called with more than its input ({given})")
    return node.args[0]


def _encoder_stack(walk: Walk, node: fx.Node, module: nn.TransformerEncoder) -> Stack:
    """nn.TransformerEncoder as what it is: its encoder layers in a row, then its norm."""
    path = str(node.target)
    layers = [
        Layer("TransformerEncoderLayer", _encoder_layer(layer), (), path=f"{path}.layers.{index}")
        for index, layer in enumerate(module.layers)
    ]
    if module.norm is not None:
        if type(module.norm) is not nn.LayerNorm:
            raise NotMappable(f"a final norm of type {type(module.norm).__name__}")
        norm = CATALOG["LayerNorm"].params_from_module(module.norm)  # type: ignore[misc]
        layers.append(Layer("LayerNorm", norm, (), path=f"{path}.norm"))
    return Stack(_tensor(walk, _only_input(node)), tuple(layers))


def _self_attention_input(node: fx.Node, params: dict[str, Any]) -> Any:
    """The one input of self-attention attn(x, x, x); a causal_mask() mask sets causal."""
    given = [*node.args, *(node.kwargs[k] for k in ("query", "key", "value") if k in node.kwargs)]
    if len(given) != 3 or not given[0] is given[1] is given[2]:
        raise NotMappable("query, key and value differ: only self-attention attn(x, x, x) maps")
    mask = node.kwargs.get("attn_mask")
    if node.kwargs.get("key_padding_mask") is not None:
        raise NotMappable("key_padding_mask")
    if mask is not None:
        if not (
            isinstance(mask, fx.Node)
            and mask.op == "call_function"
            and getattr(mask.target, "__name__", "") == "causal_mask"
        ):
            raise NotMappable("an attn_mask other than model.py's causal_mask()")
        params["causal"] = True
    return given[0]


# ---------------------------------------------------------------------------------------------
# Functions and methods


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _tensor(walk: Walk, arg: Any, use: str = "works on") -> str:
    """The graph node of a tensor argument (a Failed one stands in as "?", already reported)."""
    value = walk.values.get(arg) if isinstance(arg, fx.Node) else None
    if isinstance(value, Failed):
        return "?"
    if isinstance(value, Several):
        raise NotMappable(
            f"uses the whole output tuple of {value.what} {value.node_id!r}; take [0]"
        )
    if not isinstance(value, str):
        raise NotMappable(f"{use} {arg!r}, which is not one tensor computed from the input")
    return value


def _rank(arg: fx.Node) -> int:
    """The number of dims, batch included, that PyTorch computed for a traced tensor."""
    return len(arg.meta["shape"])


def _merge(layer_type: str) -> Callable[[Walk, fx.Node], Layer]:
    def handler(walk: Walk, node: fx.Node) -> Layer:
        first, second = node.args[:2]
        if node.kwargs.get("alpha", 1) != 1 or not isinstance(second, fx.Node):
            raise NotMappable("with a constant: only two tensors of one shape merge")
        return Layer(layer_type, {}, (_tensor(walk, first), _tensor(walk, second)))

    return handler


def _concat(walk: Walk, node: fx.Node) -> Layer:
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    if dim % _rank(tensors[0]) == 0:
        raise NotMappable("joins along the batch dim 0")
    return Layer("Concat", {"dim": dim}, tuple(_tensor(walk, t) for t in tensors))


def _flatten(walk: Walk, node: fx.Node) -> Layer:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    if start % _rank(node.args[0]) == 0:
        raise NotMappable("flattens the batch dim; use start_dim=1 (as nn.Flatten does)")
    return Layer("Flatten", {"start_dim": start, "end_dim": end}, (_tensor(walk, node.args[0]),))


def _shape_args(node: fx.Node) -> list[Any]:
    """view(a, b, c), view((a, b, c)) and reshape(x, shape) all as [a, b, c]."""
    rest = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest


def _reshape(walk: Walk, node: fx.Node) -> Layer:
    sizes = _shape_args(node)
    batch = walk.values.get(sizes[0]) if isinstance(sizes[0], fx.Node) else sizes[0]
    if batch not in (-1, Size(0)):
        raise NotMappable("the first size must be the batch, x.size(0) (or -1)")
    actual = node.meta["shape"][1:]
    shape = [-1 if size == -1 else int(real) for size, real in zip(sizes[1:], actual, strict=True)]
    return Layer("Reshape", {"shape": shape}, (_tensor(walk, node.args[0]),))


def _permute(walk: Walk, node: fx.Node) -> Layer:
    rank = _rank(node.args[0])
    dims = [d % rank for d in _shape_args(node)]
    if dims[0] != 0:
        raise NotMappable("moves the batch dim")
    return Layer("Permute", {"dims": dims}, (_tensor(walk, node.args[0]),))


def _transpose(walk: Walk, node: fx.Node) -> Layer:
    rank = _rank(node.args[0])
    a, b = _arg(node, 1, "dim0") % rank, _arg(node, 2, "dim1") % rank
    if 0 in (a, b):
        raise NotMappable("moves the batch dim")
    dims = list(range(rank))
    dims[a], dims[b] = dims[b], dims[a]
    return Layer("Permute", {"dims": dims}, (_tensor(walk, node.args[0]),))


def _getitem(walk: Walk, node: fx.Node) -> Layer | Value:
    source, index = node.args
    value = walk.values.get(source)
    if isinstance(value, Failed):
        return value
    if isinstance(value, Several):
        if index != 0:
            raise NotMappable(
                f"item {index} of {value.what} {value.node_id!r} is {value.item_one};"
                " only item 0, the output, maps"
            )
        return value.node_id
    if isinstance(value, Size) and value.index is None and isinstance(index, int):
        return Size(index)
    items = list(index) if isinstance(index, tuple) else [index]
    while items and items[-1] in (slice(None), Ellipsis):
        items.pop()
    if isinstance(value, str) and items == [slice(None), -1]:
        return Layer("SequencePool", {"mode": "last"}, (value,))
    raise NotMappable(f"indexing with [{index!r}]; x[:, -1] (the last time step) maps")


def _reduce(mode: str, with_indices: bool = False) -> Callable[[Walk, fx.Node], Layer]:
    """mean/amax over dim 1 (the time steps) as a SequencePool; max(dim=1) also returns the
    indices, so only its item 0 (or .values) maps."""

    def handler(walk: Walk, node: fx.Node) -> Layer:
        dim = _arg(node, 1, "dim")
        if dim not in (1, [1], (1,)) or _arg(node, 2, "keepdim", False):
            raise NotMappable("only a reduction over dim 1, the time steps, maps (SequencePool)")
        several = "the indices" if with_indices else None
        return Layer("SequencePool", {"mode": mode}, (_tensor(walk, node.args[0]),), several)

    return handler


def _size(walk: Walk, node: fx.Node) -> Size:
    _tensor(walk, node.args[0])
    return Size(_arg(node, 1, "dim"))


def _getattr(walk: Walk, node: fx.Node) -> Value:
    source, name = node.args
    value = walk.values.get(source)
    if isinstance(value, Failed):
        return value
    if isinstance(value, Several) and name == "values":
        return value.node_id
    if isinstance(value, str) and name == "shape":
        return Size()
    if isinstance(value, str) and name == "device":
        return Device()
    raise NotMappable(f".{name}")


def _alias(walk: Walk, node: fx.Node) -> str:
    return _tensor(walk, node.args[0])


def _unary(layer_type: str, **params: tuple[int, str, Any]) -> Callable[[Walk, fx.Node], Layer]:
    """A function or method of one tensor with a catalog layer; params: name -> (position,
    keyword, default) of the call's arguments."""

    def handler(walk: Walk, node: fx.Node) -> Layer:
        values = {name: _arg(node, *where) for name, where in params.items()}
        if layer_type == "Softmax" and values["dim"] is None:
            raise NotMappable("softmax without dim")
        if layer_type == "Dropout":
            values["p"] = float(values["p"])
        return Layer(layer_type, values, (_tensor(walk, node.args[0]),))

    return handler


Handler = Callable[[Walk, fx.Node], Layer | Value]
_relu, _sigmoid, _tanh = _unary("ReLU"), _unary("Sigmoid"), _unary("Tanh")
_softmax = _unary("Softmax", dim=(1, "dim", None))
FUNCTIONS: dict[Any, Handler] = {
    operator.add: _merge("Add"),
    operator.iadd: _merge("Add"),
    torch.add: _merge("Add"),
    operator.mul: _merge("Multiply"),
    operator.imul: _merge("Multiply"),
    torch.mul: _merge("Multiply"),
    torch.cat: _concat,
    torch.concat: _concat,
    torch.concatenate: _concat,
    torch.flatten: _flatten,
    torch.reshape: _reshape,
    torch.permute: _permute,
    torch.transpose: _transpose,
    torch.mean: _reduce("mean"),
    torch.amax: _reduce("max"),
    torch.max: _reduce("max", with_indices=True),
    operator.getitem: _getitem,
    builtins.getattr: _getattr,
    torch.relu: _relu,
    F.relu: _relu,
    torch.sigmoid: _sigmoid,
    F.sigmoid: _sigmoid,
    torch.tanh: _tanh,
    F.tanh: _tanh,
    F.silu: _unary("SiLU"),
    F.gelu: _unary("GELU", approximate=(1, "approximate", "none")),
    F.leaky_relu: _unary("LeakyReLU", negative_slope=(1, "negative_slope", 0.01)),
    F.softmax: _softmax,
    torch.softmax: _softmax,
    F.dropout: _unary("Dropout", p=(1, "p", 0.5)),
}
METHODS: dict[str, Handler] = {
    "add": _merge("Add"),
    "mul": _merge("Multiply"),
    "flatten": _flatten,
    "view": _reshape,
    "reshape": _reshape,
    "permute": _permute,
    "transpose": _transpose,
    "mean": _reduce("mean"),
    "amax": _reduce("max"),
    "max": _reduce("max", with_indices=True),
    "size": _size,
    "contiguous": _alias,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
}


# ---------------------------------------------------------------------------------------------
# Building and proving the graph


def _without_defaults(layer_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """Leave out what equals the catalog's default, so the file shows only the choices."""
    fields = CATALOG[layer_type].params.model_fields
    return {k: v for k, v in params.items() if fields[k].is_required() or v != fields[k].default}


def _as_graph(walk: Walk, name: str) -> Graph | None:
    data = {"format": FORMAT, "name": name[:100], "nodes": walk.nodes, "edges": walk.edges}
    try:
        return parse_graph(data)
    except GraphFormatError as exc:
        walk.problems.append(Unsupported("the imported graph", "its parameters", str(exc)))
        return None


def _verify(
    graph: Graph | None, walk: Walk, model: nn.Module, example: torch.Tensor
) -> list[Unsupported]:
    """The graph compiles, its shapes and parameter counts are PyTorch's, and the compiled module
    with the model's weights computes the model's outputs; each step needs the one before."""
    if graph is None:
        return []
    analysis = analyse(graph)
    return (
        _compile_problems(analysis, walk)
        or _shape_and_count_problems(analysis, walk)
        or _output_problems(analysis, walk, model, example)
    )


def _problem(analysis: Analysis, walk: Walk, node_id: str | None, why: str) -> Unsupported:
    if node_id is None or node_id not in walk.fx_nodes:
        return Unsupported("the graph", "the whole model", why)
    what = f"{analysis.node_type(node_id)} {node_id!r}"
    return Unsupported(what, _where(walk.fx_nodes[node_id]), why)


def _compile_problems(analysis: Analysis, walk: Walk) -> list[Unsupported]:
    return [_problem(analysis, walk, error.node, error.message) for error in analysis.errors]


def _shape_and_count_problems(analysis: Analysis, walk: Walk) -> list[Unsupported]:
    problems = []
    for node_id, fx_node in walk.fx_nodes.items():
        real = fx_node.meta["shape"][1:] if "shape" in fx_node.meta else None
        inferred = analysis.infos[node_id].shape
        if analysis.node_type(node_id) != "Output" and inferred != real:
            why = f"NetBuilder infers {inferred} but PyTorch computes {real}"
            problems.append(_problem(analysis, walk, node_id, why))
        path = walk.module_paths.get(node_id)
        if path is None:
            continue
        count = sum(p.numel() for p in walk.gm.get_submodule(path).parameters())
        if count != analysis.infos[node_id].params:
            why = f"{count} parameters in PyTorch, {analysis.infos[node_id].params} in NetBuilder"
            problems.append(_problem(analysis, walk, node_id, why))
    return problems


def _output_problems(
    analysis: Analysis, walk: Walk, model: nn.Module, example: torch.Tensor
) -> list[Unsupported]:
    """Run the compiled graph with the model's weights; its outputs must be the model's."""
    namespace: dict[str, Any] = {"__name__": "netbuilder_imported"}
    exec(compile(generate_source(analysis), "model.py", "exec"), namespace)  # sanitised source
    compiled = namespace["build_model"]().eval()
    state = convert_state_dict(model.state_dict(), walk.module_paths, attribute_names(analysis))
    try:
        compiled.load_state_dict(state)
        with torch.no_grad():
            expected, got = model(example), compiled(example)
    except Exception as exc:
        return [_problem(analysis, walk, None, f"the compiled graph fails: {_first_line(exc)}")]
    if expected.shape != got.shape:
        why = f"the compiled graph returns {list(got.shape)}, the model {list(expected.shape)}"
        return [_problem(analysis, walk, None, why)]
    error = float((expected.float() - got.float()).abs().max()) if expected.numel() else 0.0
    if not math.isfinite(error) or error > TOLERANCE * (1 + float(expected.abs().max())):
        why = f"the compiled graph's outputs differ from the model's by up to {error:.3g}"
        return [_problem(analysis, walk, None, why)]
    return []


def _unused_modules(model: nn.Module, walk: Walk) -> list[str]:
    """Weights that forward never uses: left out of the graph, and said so (weights used
    directly, outside a layer, are already reported as unsupported)."""
    nodes = walk.gm.graph.nodes
    called = [str(n.target) for n in nodes if n.op == "call_module"]
    fetched = {str(n.target) for n in nodes if n.op == "get_attr"}
    modules = dict(model.named_modules())
    unused: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if name not in fetched and not any(name.startswith(c + ".") for c in called):
            owner = name.rpartition(".")[0] or name  # the model's own parameters: by name
            unused[owner] = unused.get(owner, 0) + parameter.numel()
    return [
        f"self.{path} ({type(modules[path]).__name__ if path in modules else 'Parameter'},"
        f" {count:,} parameters) is never used in forward; it is left out"
        for path, count in unused.items()
    ]


def convert_state_dict(
    state: dict[str, torch.Tensor], module_paths: dict[str, str], names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """The source model's state_dict renamed for the compiled graph: 'features.0.weight'
    becomes 'features_0.weight' (names: compiler.codegen.attribute_names)."""
    renamed: dict[str, torch.Tensor] = {}
    for node_id, path in module_paths.items():
        for key, value in state.items():
            if key.startswith(path + "."):
                renamed[f"{names[node_id]}.{key[len(path) + 1:]}"] = value
    return renamed
