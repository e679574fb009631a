"""Import an existing PyTorch model as a NetBuilder graph, through torch.fx.

`import_model` traces a module with torch.fx while running it on an example input (a concrete
trace: Python control flow such as `if x.is_cuda and self.ngpu > 1:`, `assert t <= block_size`,
`len(x)` or `b, c, h, w = x.size()` takes the branch the example takes), maps every module call
and tensor operation onto a catalog layer (modules by their `torch_modules`, functions and tensor
methods by their `functional` names; this file holds only how each call's arguments become
params) and then proves the result: the graph must pass the compiler, every shape must equal the
one PyTorch computed, and the compiled module, given the same weights, must return the same
outputs. Whatever cannot be mapped is reported by name with the line of the op itself; nothing is
dropped silently. Every sentence is an i18n Message.

`load_build_model` executes a Python file: only ever the user's own file, or (runtime.import_job)
an upload in a separate, limited process.
"""

from __future__ import annotations

import builtins
import copy
import importlib
import importlib.util
import inspect
import math
import operator
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from builder.catalog import (
    CATALOG,
    LayerSpec,
    NotMappable,
    functional_handling,
    functional_table,
    module_table,
)
from builder.graph import FORMAT, Graph, GraphFormatError, parse_graph
from builder.layers.transformer import POSITIONAL_ENCODING
from compiler.analysis import Analysis, analyse
from compiler.codegen import attribute_names, generate_source, load_model_source
from i18n import N_, Message, msg

EXAMPLE_BATCH = 3
TOLERANCE = 1e-4


class ModelImportError(Exception):
    """The file cannot be loaded, or its model cannot be traced at all; `message` says why."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


@dataclass(frozen=True)
class Unsupported:
    """Something in the model with no catalog counterpart: what, where, and why."""

    op: str
    where: str
    why: Message | None = None

    def render(self, lang: str | None = None) -> str:
        if self.why is None:
            return msg("{op} at {where}", op=self.op, where=self.where).render(lang)
        return msg("{op} at {where}: {why}", op=self.op, where=self.where, why=self.why).render(
            lang
        )

    def __str__(self) -> str:
        return self.render("en")


@dataclass
class ImportResult:
    """The graph (None when anything is unsupported), the problems, warnings about what was left
    out, and for each graph node the qualified name of the module whose weights it holds."""

    graph: Graph | None
    problems: list[Unsupported]
    warnings: list[Message]
    module_paths: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Loading a user's file


def load_build_model(path: Path) -> types.ModuleType:
    """Execute the user's module file and check that it defines build_model(). Every way this
    can fail becomes a ModelImportError."""
    if not path.is_file():
        raise ModelImportError(msg("no such file: {path}", path=str(path)))
    spec = importlib.util.spec_from_file_location(f"netbuilder_import_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelImportError(msg("{path} is not a Python file", path=str(path)))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise ModelImportError(
            msg(
                "running {path} failed: {error}: {detail}",
                path=str(path),
                error=type(exc).__name__,
                detail=_first_line(exc),
            )
        ) from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    if not callable(getattr(module, "build_model", None)):
        raise ModelImportError(msg("{path} defines no build_model() function", path=str(path)))
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
            msg(
                "{path} has no INPUT_SHAPE; give the shape of one sample,"
                " e.g. --input-shape 1,28,28",
                path=str(path),
            )
        )
    if dtype is None:
        dtype = (
            "int64" if getattr(module, "INPUT_DTYPE", torch.float32) == torch.int64 else "float32"
        )
    try:
        model = module.build_model()
    except (Exception, SystemExit) as exc:
        raise ModelImportError(
            msg(
                "build_model() failed: {error}: {detail}",
                error=type(exc).__name__,
                detail=_first_line(exc),
            )
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelImportError(
            msg("build_model() returned {kind}, not an nn.Module", kind=type(model).__name__)
        )
    mask = getattr(module, "causal_mask", None)
    helpers = (mask,) if callable(mask) else ()
    return import_model(model, tuple(shape), dtype, name or path.stem, helpers)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


# ---------------------------------------------------------------------------------------------
# Values flowing through the traced graph


@dataclass(frozen=True)
class Size:
    """x.size(), x.shape or one entry of it (index None: the whole size)."""

    index: int | None = None


FIXED = -2  # Size(FIXED): a number computed from sizes, fixed for the input shape


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
class Chunks:
    """torch.chunk's tuple of pieces: each item taken becomes a Chunk node."""

    source: str
    chunks: int
    dim: int
    made: int  # how many pieces there are (fewer than `chunks` where they run out)


@dataclass(frozen=True)
class FinalStates:
    """Item 1 of a recurrent layer's output: h_n, or (h_n, c_n) for an LSTM (`pair`). The last
    layer's h_n, h_n[-1], is the output at the last step where the layer runs one way."""

    node_id: str
    pair: bool
    one_way: bool
    layers: int


@dataclass(frozen=True)
class Failed:
    """The value of a node already reported as unsupported."""


@dataclass(frozen=True)
class CausalMask:
    """The result of the generated model.py's causal_mask(): MultiheadAttention(causal=True)."""


@dataclass(frozen=True)
class Constant:
    """A tensor that does not depend on the input: a buffer, a parameter used outside a layer,
    or what is computed from them and from sizes (a mask, a slice of a table, an Embedding of
    arange(t)). `root` is the get_attr node it comes from, where there is one; `weights` the
    parameter whose rows it holds, and `owner` the module that holds that parameter (where an
    Embedding looked the rows up)."""

    node: fx.Node
    root: fx.Node | None
    weights: str | None = None
    owner: str | None = None


# What an fx node computes: a str is the graph node whose output tensor it is.
@dataclass(frozen=True)
class SequenceFirst:
    """Graph node `node_id`'s tensor with the batch and time swapped ([T, B, ...]): after
    x.t() or x.transpose(0, 1), the input of a module without batch_first."""

    node_id: str


Value = (
    str | Size | Device | Several | Chunks | FinalStates | CausalMask | Constant | Failed
    | SequenceFirst
)  # fmt: skip


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
    """One call that becomes a chain of layers (nn.TransformerEncoder, x.mean((2, 3)))."""

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
    warnings: list[Message] = field(default_factory=list)
    module_paths: dict[str, str] = field(default_factory=dict)
    fx_nodes: dict[str, fx.Node] = field(default_factory=dict)
    owners: dict[int, tuple[str, fx.Node]] = field(default_factory=dict)  # id(param) -> owner
    inside_stacks: set[str] = field(default_factory=set)  # nodes whose fx shape is the stack's
    encodings: dict[str, str] = field(default_factory=dict)  # PositionalEncoding node -> module
    time_first_calls: set[fx.Node] = field(default_factory=set)  # calls on [T, B, ...] tensors
    reading_time_first: bool = False  # mapping a module without batch_first fed [T, B, ...]
    sequence_first: set[str] = field(default_factory=set)  # nodes whose torch output is [T, B]


# ---------------------------------------------------------------------------------------------
# The import


def import_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: str = "float32",
    name: str = "imported",
    helpers: tuple[Callable[..., Any], ...] = (),
) -> ImportResult:
    """Trace a copy of `model` in eval mode and map it onto the catalog (see the module
    docstring); `model` itself runs only for the comparison, in eval mode, and keeps its modes.
    `helpers` are functions to keep as single calls (the generated model.py's causal_mask)."""
    if not (
        isinstance(input_shape, (tuple, list))
        and 1 <= len(input_shape) <= 6
        and all(isinstance(size, int) and 0 < size <= 10_000_000 for size in input_shape)
        and math.prod(input_shape) <= 50_000_000
    ):
        raise ModelImportError(
            msg(
                "the input shape must be 1 to 6 positive sizes, got {shape}",
                shape=repr(input_shape),
            )
        )
    input_shape = tuple(input_shape)
    example = _example_input(model, input_shape, dtype)
    # A copy to trace: forward may keep traced values on self (self.src_mask = mask).
    gm = _trace(copy.deepcopy(model).eval(), helpers, example, input_shape, dtype)
    walk = Walk(gm, helpers)
    for node in gm.graph.nodes:
        _visit(walk, node, input_shape, dtype)
    for node in gm.graph.nodes:
        node.meta.pop("value", None)  # the example's activations: not needed any more
    warnings = walk.warnings + _unused_modules(model, walk)
    graph = None
    if not walk.problems:
        graph = _as_graph(walk, name)
        modes = {module: module.training for module in model.modules()}
        try:
            walk.problems += _verify(graph, walk, model.eval(), example)
        finally:
            for module, training in modes.items():
                module.training = training
    return ImportResult(
        None if walk.problems else graph, walk.problems, warnings, dict(walk.module_paths)
    )


class ModelFailed(Exception):
    """The model itself raised while running on the example input (during the trace)."""


class ValueBranch(Exception):
    """forward branches on what a tensor holds, which differs from input to input."""


# What is fixed for a given input shape: a tensor's size, device, dtype, and arithmetic on those.
STATIC_ATTRIBUTES = frozenset(
    {"shape", "is_cuda", "is_xpu", "is_mps", "is_cpu", "device", "dtype", "ndim", "is_sparse"}
)
STATIC_METHODS = frozenset({"size", "dim", "numel", "get_device"})


def _static(node: fx.Node) -> bool:
    """Whether a traced value depends only on shapes and devices, never on tensor contents."""
    if node.op == "call_method":
        return str(node.target) in STATIC_METHODS
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] in STATIC_ATTRIBUTES
    if node.op == "call_function" and getattr(node.target, "__module__", "") in (
        "_operator",
        "operator",
    ):
        return all(_static(arg) for arg in node.all_input_nodes)
    return False


def _uses_batch_size(node: fx.Node) -> bool:
    """Whether a size computation reads dim 0, the batch: x.size(0), x.shape[0], len(x)."""
    if node.op == "call_method" and node.target == "size":
        return len(node.args) < 2 or node.args[1] == 0
    if node.op == "call_function" and node.target is operator.getitem:
        source, index = node.args
        if isinstance(source, fx.Node) and (
            (source.op == "call_method" and source.target == "size" and len(source.args) < 2)
            or (source.target is builtins.getattr and source.args[1] == "shape")
        ):
            return index == 0
    # only through sizes: a tensor's ancestry, a DAG, would take exponential time (EfficientNet)
    return any(_uses_batch_size(arg) for arg in node.all_input_nodes if _static(arg))


class ConcreteProxy(fx.Proxy):
    """A traced value that also knows its value for the example input, so `len(x)` works."""

    def __len__(self) -> int:
        return len(self.node.meta["value"])

    def __index__(self) -> int:
        """A size used as a plain int (torch.ones(t, t)): fixed for the input shape, so its
        value for the example, except the batch size, which a graph must never bake in."""
        if not _static(self.node) or _uses_batch_size(self.node):
            raise TypeError(f"{self.node.name} is not an int fixed by the input's shape")
        return int(self.node.meta["value"])


class ConcreteTracer(fx.Tracer):
    """torch.fx's tracer, running every op on the example as it records it: control flow on
    values fixed for this input (x.is_cuda, x.size(), a flag) takes the example's branch, and
    each node keeps the shape PyTorch computed (batch included; item 0's for a tuple)."""

    def __init__(self, helpers: tuple[Callable[..., Any], ...], example: torch.Tensor) -> None:
        super().__init__(autowrap_functions=helpers)
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # self.pe stays a named table, not a copied slice
        self.example = example
        self.inputs = 0
        self.running = 0  # > 0 while an op runs on the example

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: Any = None,
                    type_expr: Any = None) -> fx.Node:  # fmt: skip
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        value = self._run(node)
        node.meta["value"] = value
        first = value[0] if isinstance(value, (tuple, list)) and value else value
        if isinstance(first, torch.Tensor):
            node.meta["shape"] = tuple(first.shape)
        return node

    def _run(self, node: fx.Node) -> Any:
        """What the node computes for the example input (the model's own error: ModelFailed)."""
        args = fx.node.map_arg(node.args, lambda n: n.meta.get("value"))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: n.meta.get("value"))
        if node.op == "placeholder":
            self.inputs += 1
            return self.example if self.inputs == 1 else (args[0] if args else None)
        self.running += 1
        try:
            with torch.no_grad():
                if node.op == "get_attr":
                    return operator.attrgetter(str(node.target))(self.root)
                if node.op == "call_module":
                    return self.root.get_submodule(str(node.target))(*args, **kwargs)
                if node.op == "call_function":
                    return node.target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        except Exception as exc:
            raise ModelFailed(exc) from exc
        finally:
            self.running -= 1
        return args[0] if args else None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """torch.nn's modules, timm's Attention (one call, read as a MultiheadAttention),
        torchvision's Swin attention (one call, a WindowAttention) and MaxViT's (one call, a
        RelativeAttention)."""
        return (
            super().is_leaf_module(m, module_qualified_name)
            or qkv_attention(m) is not None
            or window_attention(m) is not None
            or relative_attention(m) is not None
        )

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self.running:  # running a leaf module on the example: its insides are not recorded
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: Any = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> Any:  # fmt: skip
        """A size other than the batch's, a device or a dtype is fixed for the input shape: it
        is returned as its value (torch.ones(t, t) then just works); the rest stays traced."""
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        value = proxy.node.meta.get("value")
        fixed = isinstance(value, (int, bool, torch.device, torch.dtype)) or (
            isinstance(value, torch.Size) and not value  # never a size with the batch in it
        )
        attribute = kind == "call_function" and target is builtins.getattr  # fx's own, lazily
        if fixed and not attribute and kind != "placeholder" and _static(proxy.node):
            if not _uses_batch_size(proxy.node):
                return value
        return proxy

    def to_bool(self, obj: fx.Proxy) -> bool:
        if not _static(obj.node):
            raise ValueBranch(obj.node)
        return bool(obj.node.meta["value"])

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter([obj[index] for index in range(len(obj.node.meta["value"]))])


def _trace(
    model: nn.Module,
    helpers: tuple[Callable[..., Any], ...],
    example: torch.Tensor,
    input_shape: tuple[int, ...],
    dtype: str,
) -> fx.GraphModule:
    """The concrete trace, with forward's optional arguments fixed at their defaults."""
    tracer = ConcreteTracer(helpers, example.clone())
    defaults = _defaults(model)
    try:
        graph = tracer.trace(model, concrete_args=defaults)
    except ModelFailed as failed:
        cause = failed.args[0]
        raise ModelImportError(
            msg(
                "the model fails on an input of shape {shape} ({dtype}): {error}: {detail}",
                shape=str([EXAMPLE_BATCH, *input_shape]),
                dtype=dtype,
                error=type(cause).__name__,
                detail=_first_line(cause),
            )
        ) from None
    except ValueBranch as branch:
        raise ModelImportError(
            msg(
                "forward branches on the values of a tensor at {where}: the branch taken would"
                " differ from input to input, so no graph can stand for it",
                where=_where(branch.args[0]),
            )
        ) from None
    except Exception as exc:
        raise ModelImportError(
            msg(
                "torch.fx cannot trace the model's forward: {error}: {detail}"
                " (forward must not branch on tensor values)",
                error=type(exc).__name__,
                detail=_first_line(exc),
            )
        ) from None
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in CHECKS:
            graph.erase_node(node)  # a check that held for the example, not a computation
    _fold_reparameterisations(graph)
    gm = fx.GraphModule(model, graph)
    _keep_first_output(gm.graph)
    gm.graph.eliminate_dead_code()  # e.g. the unused (h, c) of `out, (h, c) = self.lstm(x)`
    return gm


def _keep_first_output(graph: fx.Graph) -> None:
    """forward returning (output, hidden): the graph keeps the output, and what only fed the
    rest goes with it; the number of values is kept for the warning."""
    output = next(node for node in graph.nodes if node.op == "output")
    value = output.args[0]
    if isinstance(value, (tuple, list)) and value:
        output.meta["returned"] = len(value)
        output.args = (value[0],)


# Calls that only check (fx's own for the fixed arguments, and torch._assert in user code).
CHECKS = frozenset({torch._assert, fx._symbolic_trace._assert_is_none})


def _defaults(model: nn.Module) -> dict[str, Any]:
    """forward's arguments after the first, at their defaults (hidden=None, has_mask=True);
    a second argument without a default is a second input, which a graph cannot have."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    if not parameters:
        raise ModelImportError(msg("forward takes no input"))
    defaults: dict[str, Any] = {}
    for parameter in parameters[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise ModelImportError(
                msg(
                    "forward takes a second required input '{name}': a NetBuilder graph has"
                    " exactly one input (give {name} a default, e.g. {name}=None, if the"
                    " model works without it)",
                    name=parameter.name,
                )
            )
        defaults[parameter.name] = parameter.default
    return defaults


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
    if node.op == "placeholder" and walk.nodes:
        return  # an optional argument of forward, fixed at its default
    try:
        if node.op == "placeholder":
            result: Layer | Stack | Value = _input(walk, node, input_shape, dtype)
        elif node.op == "output":
            result = Layer("Output", {}, (_tensor(walk, _returned(walk, node), returned=True),))
        elif node.op == "get_attr":
            result = _attribute(walk, node)
        elif _sequence_first_inputs(walk, node):
            result = _map_sequence_first(walk, node, _sequence_first_inputs(walk, node))
        else:
            result = _map(walk, node)
    except NotMappable as exc:
        walk.problems.append(Unsupported(_op_name(walk, node), _where(node), _reason(exc)))
        walk.values[node] = Failed()
        return
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        why = msg("arguments it cannot read ({detail})", detail=_first_line(exc))
        walk.problems.append(Unsupported(_op_name(walk, node), _where(node), why))
        walk.values[node] = Failed()
        return
    if isinstance(result, Layer):
        walk.values[node] = _add_node(walk, node, node.name, result)
    elif isinstance(result, Stack):
        walk.values[node] = result.input
        for index, layer in enumerate(result.layers):
            chained = replace(layer, inputs=(walk.values[node],))
            if index < len(result.layers) - 1:
                walk.inside_stacks.add(f"{node.name}_{index}")
            walk.values[node] = _add_node(walk, node, f"{node.name}_{index}", chained)
    else:
        walk.values[node] = result


def _reason(exc: NotMappable) -> Message:
    """Why a call cannot be mapped: the Message it was raised with (a catalog entry's reader
    may raise plain text, which is its own English template)."""
    reason = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return reason if isinstance(reason, Message) else Message(str(reason))


def _returned(walk: Walk, node: fx.Node) -> Any:
    """What forward returns (of a tuple (output, hidden), the first item, said in a warning)."""
    if "returned" in node.meta:
        walk.warnings.append(
            msg(
                "forward returns {count} values; the graph keeps the first, the output",
                count=node.meta["returned"],
            )
        )
    return node.args[0]


def _input(walk: Walk, node: fx.Node, input_shape: tuple[int, ...], dtype: str) -> str:
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
    module = _module_path(node)
    if module:
        entry["module"] = module
    walk.nodes.append(entry)
    for port, source in enumerate(layer.inputs):
        source = source.node_id if isinstance(source, SequenceFirst) else source
        edge = {"source": source, "target": node_id}
        walk.edges.append(edge | {"port": port} if len(layer.inputs) > 1 else edge)
    walk.fx_nodes[node_id] = node
    if node in walk.time_first_calls:
        walk.sequence_first.add(node_id)
        if not layer.several:
            return SequenceFirst(node_id)
    return Several(node_id, layer.type, layer.several) if layer.several else node_id


def _module_path(node: fx.Node) -> str | None:
    """The module the call came from ("layer1.0.conv1" for a module's own call, "layer1.0" for
    the `out += identity` in its forward): the innermost entry of the stack fx recorded. The
    canvas groups nodes by it; the top-level forward's own calls have none."""
    stack = node.meta.get("nn_module_stack") or {}
    entries = list(stack.values())
    return str(entries[-1][0]) if entries else None


def _attribute(walk: Walk, node: fx.Node) -> Constant:
    """self.table or self.weight read in forward: a constant (a parameter: a trainable one)."""
    value = node.meta.get("value")
    if not isinstance(value, torch.Tensor):
        raise NotMappable(msg("an attribute that is not a tensor"))
    return Constant(node, node, str(node.target) if isinstance(value, nn.Parameter) else None)


def _derived_constant(walk: Walk, node: fx.Node) -> Constant | None:
    """A call on constants and sizes only (torch.ones(t, t).triu(1), self.pe[:, :t]) is a
    constant too; it becomes a layer only where a layer can hold it (a positional encoding,
    a causal mask)."""
    if not isinstance(node.meta.get("value"), torch.Tensor):
        return None
    values = [walk.values.get(n) for n in node.all_input_nodes]
    if not all(isinstance(v, (Constant, Size, Device)) for v in values):
        return None
    roots = [v for v in values if isinstance(v, Constant)]
    return replace(roots[0], node=node) if roots else Constant(node, None)


def _map(walk: Walk, node: fx.Node) -> Layer | Stack | Value:
    if node.op == "call_module":
        return _map_module(walk, node)
    constant = _derived_constant(walk, node)
    if constant is not None:
        return constant
    if node.op == "call_function" and node.target in walk.helpers:
        return CausalMask()
    handler = _handler(node)
    if handler is not None:
        return handler(walk, node)
    if _passes_input_through(node):
        return _tensor(walk, node.args[0])
    if node.op == "call_function" and _static(node):
        return Size(FIXED)  # arithmetic on sizes (num_channels // groups): a number, no layer
    raise NotMappable(msg("no NetBuilder layer does this"))


def _handler(node: fx.Node) -> Handler | None:
    """The argument mapping for a call: by the catalog type its function or method stands for,
    else one of the plumbing calls (indexing, x.size(), .contiguous())."""
    if node.op == "call_function":
        layer_type = FUNCTION_TYPES.get(node.target)
        plumbing = PLUMBING_FUNCTIONS.get(node.target) or LIBRARY_FUNCTIONS.get(
            (getattr(node.target, "__module__", ""), getattr(node.target, "__name__", ""))
        )
    else:
        layer_type = METHOD_TYPES.get(str(node.target))
        plumbing = PLUMBING_METHODS.get(str(node.target))
    if layer_type is not None:
        return ARGUMENT_READERS[layer_type]
    return plumbing


def _passes_input_through(node: fx.Node) -> bool:
    """A library function outside torch that returned its tensor argument itself for the
    example (torchvision's stochastic_depth in eval mode): no layer, the same tensor."""
    module = getattr(node.target, "__module__", "") or ""
    first = node.args[0] if node.args else None
    return (
        node.op == "call_function"
        and module.partition(".")[0] not in ("torch", "_operator", "operator", "builtins")
        and isinstance(first, fx.Node)
        and node.meta.get("value") is first.meta.get("value") is not None
    )


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
    """'file.py:12 in forward: x = torch.sort(x)', the innermost frame outside torch (the op's
    own line, not the `return self._forward_impl(x)` that led there); else the node's name."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.*)', node.stack_trace or "")
    outside = [frame for frame in frames if not _inside_torch(frame[0])]
    if outside:
        file, line, function, code = outside[-1]
        return f"{Path(file).name}:{line} in {function}: {code.strip()}"
    return f"node {node.name!r}"


def _inside_torch(file: str) -> bool:
    return (
        bool(re.search(r"[/\\]torch[/\\]", file))
        or Path(file).resolve() == Path(__file__).resolve()
    )


# ---------------------------------------------------------------------------------------------
# Modules


def _compact(value: Any) -> Any:
    """PyTorch's tuples as the file format writes them: (5, 5) -> 5, (3, 5) -> [3, 5]."""
    if isinstance(value, (tuple, list)):
        values = [int(v) for v in value]
        return values[0] if len(set(values)) == 1 else values
    return value


# {nn class: (catalog type, params_from_module)}: each catalog entry names the torch modules it
# stands for and reads their params back (builder/layers/).
MODULES: dict[type[nn.Module], tuple[str, Callable[[Any], dict[str, Any]]]] = module_table()


def _read_params(layer_type: str, module: nn.Module) -> dict[str, Any]:
    """A module's params as its catalog entry reads them."""
    reader = CATALOG[layer_type].params_from_module
    assert reader is not None, layer_type
    return reader(module)


def _map_module(walk: Walk, node: fx.Node) -> Layer | Stack:
    path = str(node.target)
    module = walk.gm.get_submodule(path)
    _claim_weights(walk, node, module)
    if type(module) is nn.TransformerEncoder:
        return _encoder_stack(walk, node, module)
    entry = MODULES.get(type(module))
    attention = qkv_attention(module) if entry is None else None
    if attention is not None:
        return Layer(
            "MultiheadAttention", attention, (_tensor(walk, _only_input(node)),), None, path
        )
    windows = window_attention(module) if entry is None else None
    if windows is not None:
        return Layer("WindowAttention", windows, (_tensor(walk, _only_input(node)),), None, path)
    relative = relative_attention(module) if entry is None else None
    if relative is not None:
        return Layer("RelativeAttention", relative, (_tensor(walk, _only_input(node)),), None, path)
    if entry is None:
        raise NotMappable(msg("no NetBuilder layer does this"))
    layer_type, read_params = entry
    params = read_params(as_batch_first(module) if walk.reading_time_first else module)
    positions = _positions(walk, node, module)
    if positions is not None:
        return positions
    if layer_type == "Dropout" and _folds_into_encoding(walk, node, params):
        return walk.values[node.args[0]]
    if layer_type == "MultiheadAttention":
        x = _self_attention_input(walk, node, params)
    elif layer_type == "TransformerEncoderLayer":
        x, params["causal"] = _encoder_input(walk, node)
    else:
        x = _only_input(node)
    several = CATALOG[layer_type].second_output  # what item 1 of its tuple output holds
    return Layer(layer_type, params, (_tensor(walk, x),), several, path)


def _folds_into_encoding(walk: Walk, node: fx.Node, params: dict[str, Any]) -> bool:
    """A PositionalEncoding module's own dropout (self.dropout(x + self.pe[:t])) is the
    encoding's dropout param, not a node of its own."""
    source = walk.values.get(node.args[0]) if node.args else None
    owner = walk.encodings.pop(source, None) if isinstance(source, str) else None
    if owner is None or str(node.target).rpartition(".")[0] != owner:
        return False
    entry = next(n for n in walk.nodes if n["id"] == source)
    if params["p"]:
        entry["params"]["dropout"] = params["p"]
    return True


def _positions(walk: Walk, node: fx.Node, module: nn.Module) -> Constant | None:
    """nanoGPT's self.wpe(torch.arange(t)): an Embedding of the positions 0..t-1 is the first
    t rows of its table, a learned position table (a PositionalEncoding once added to x)."""
    value = walk.values.get(node.args[0]) if node.args else None
    if not (isinstance(module, nn.Embedding) and isinstance(value, Constant)):
        return None
    positions = value.node.meta.get("value")
    steps = positions.shape[-1] if isinstance(positions, torch.Tensor) and positions.dim() else 0
    if not steps or not torch.equal(positions.reshape(-1), torch.arange(steps)):
        return None
    path = str(node.target)
    return Constant(node, None, weights=f"{path}.weight", owner=path)


def _claim_weights(
    walk: Walk, node: fx.Node, module: nn.Module | nn.Parameter, path: str | None = None
) -> None:
    """A graph node owns its weights: a module without any (self.relu) may be called twice and
    becomes two nodes, but weights used at two call sites (one module called twice, or tied
    weights shared by two modules) cannot be imported; the message names both sites."""
    parameters = [module] if isinstance(module, nn.Parameter) else list(module.parameters())
    for parameter in parameters:
        owner = walk.owners.get(id(parameter))
        if owner is not None:
            first_path, first_node = owner
            raise NotMappable(
                msg(
                    "uses the weights of self.{first} a second time (first at {where}): a graph"
                    " node owns its weights, so shared or tied weights cannot be imported",
                    first=first_path,
                    where=_where(first_node),
                )
            )
    for parameter in parameters:
        walk.owners[id(parameter)] = (path or str(node.target), node)


def _only_input(node: fx.Node) -> Any:
    """The one tensor a layer is called with; arguments set to None or False (no initial hidden
    state, no mask) are fine."""
    args = list(node.args)
    while len(args) > 1 and (args[-1] is None or args[-1] is False):
        args.pop()
    extra = [key for key, value in node.kwargs.items() if value is not None and value is not False]
    if len(args) != 1 or extra:
        raise NotMappable(
            msg(
                "called with more than its input ({given})",
                given=", ".join(extra) or "a second argument, e.g. an initial hidden state",
            )
        )
    return args[0]


def _encoder_stack(walk: Walk, node: fx.Node, module: nn.TransformerEncoder) -> Stack:
    """nn.TransformerEncoder as what it is: its encoder layers in a row, then its norm."""
    path = str(node.target)
    x, causal = _encoder_input(walk, node)
    batch_first = as_batch_first if walk.reading_time_first else (lambda layer: layer)
    layers = [
        Layer(
            "TransformerEncoderLayer",
            _read_params("TransformerEncoderLayer", batch_first(layer)) | {"causal": causal},
            (),
            path=f"{path}.layers.{index}",
        )
        for index, layer in enumerate(module.layers)
    ]
    if module.norm is not None:
        if type(module.norm) is not nn.LayerNorm:
            raise NotMappable(msg("a final norm of type {kind}", kind=type(module.norm).__name__))
        norm = _read_params("LayerNorm", module.norm)
        layers.append(Layer("LayerNorm", norm, (), path=f"{path}.norm"))
    return Stack(_tensor(walk, x), tuple(layers))


def _encoder_input(walk: Walk, node: fx.Node) -> tuple[Any, bool]:
    """The input of encoder(x, mask) / layer(x, src_mask), and whether the mask is causal (a
    constant that hides exactly the later positions, or is_causal=True with no mask)."""
    mask = node.args[1] if len(node.args) > 1 else None
    mask = node.kwargs.get("mask", node.kwargs.get("src_mask", mask))
    rest = {k: v for k, v in node.kwargs.items() if k not in ("mask", "src_mask", "is_causal")}
    if len(node.args) > 2 or any(v is not None and v is not False for v in rest.values()):
        raise NotMappable(
            msg(
                "called with more than its input and a causal mask ({given})", given=", ".join(rest)
            )
        )
    if mask is not None and not _is_causal(walk, mask):
        raise NotMappable(msg("an attention mask other than a causal one"))
    return node.args[0], mask is not None or node.kwargs.get("is_causal") is True


def _self_attention_input(walk: Walk, node: fx.Node, params: dict[str, Any]) -> Any:
    """The one input of self-attention attn(x, x, x); a causal_mask() mask sets causal."""
    given = [*node.args, *(node.kwargs[k] for k in ("query", "key", "value") if k in node.kwargs)]
    if len(given) != 3 or not given[0] is given[1] is given[2]:
        raise NotMappable(
            msg("query, key and value differ: only self-attention attn(x, x, x) maps")
        )
    mask = node.kwargs.get("attn_mask")
    if node.kwargs.get("key_padding_mask") is not None:
        raise NotMappable(msg("key_padding_mask"))
    if mask is not None:
        if not _is_causal(walk, mask):
            raise NotMappable(msg("an attn_mask other than a causal mask"))
        params["causal"] = True
    return given[0]


def _is_causal(walk: Walk, mask: Any) -> bool:
    """model.py's causal_mask(), or a constant [T, T] mask that hides exactly the later
    positions: True (bool) or -inf (float) above the diagonal, nothing elsewhere."""
    if isinstance(mask, fx.Node) and isinstance(walk.values.get(mask), CausalMask):
        return True
    value = mask.meta.get("value") if isinstance(mask, fx.Node) else None
    if not isinstance(walk.values.get(mask), Constant) or not isinstance(value, torch.Tensor):
        return False
    if value.dim() != 2 or value.shape[0] != value.shape[1]:
        return False
    above = torch.ones_like(value, dtype=torch.bool).triu(1)
    if value.dtype == torch.bool:
        return bool(torch.equal(value, above))
    hidden = torch.isneginf(value)
    return bool(torch.equal(hidden, above) and (value[~above] == 0).all())


# ---------------------------------------------------------------------------------------------
# Functions and methods: which catalog type each stands for comes from the catalog's
# `functional` names; here is only how each call's arguments become that type's params.


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _tensor(walk: Walk, arg: Any, returned: bool = False) -> str:
    """The graph node of a tensor argument (a Failed one stands in as "?", already reported)."""
    value = walk.values.get(arg) if isinstance(arg, fx.Node) else None
    if isinstance(value, Failed):
        return "?"
    if isinstance(value, Several):
        raise NotMappable(
            msg(
                "uses the whole output tuple of {what} '{node}'; take [0]",
                what=value.what,
                node=value.node_id,
            )
        )
    if isinstance(value, Chunks):
        raise NotMappable(msg("uses the whole tuple of torch.chunk; take its pieces one by one"))
    if isinstance(value, SequenceFirst):
        raise NotMappable(
            msg("forward returns a sequence-first [T, B, ...] tensor; transpose it back to"
                " batch-first (x.transpose(0, 1)) before returning it")
            if returned
            else msg("works on a sequence-first [T, B, ...] tensor; transpose it back to"
                     " batch-first (x.transpose(0, 1)) first")
        )  # fmt: skip
    if isinstance(value, Constant):
        source = "self." + str(value.root.target) if value.root is not None else value.node.name
        if returned:
            raise NotMappable(msg("forward returns a constant tensor ({source})", source=source))
        raise NotMappable(
            msg(
                "works on a constant tensor ({source}): only tensors computed from the input"
                " flow through a graph",
                source=source,
            )
        )
    if not isinstance(value, str):
        if returned:
            raise NotMappable(
                msg("forward returns {arg}, which is not one tensor computed from the input",
                    arg=repr(arg))
            )  # fmt: skip
        raise NotMappable(
            msg("works on {arg}, which is not one tensor computed from the input", arg=repr(arg))
        )
    return value


def _rank(arg: fx.Node) -> int:
    """The number of dims, batch included, that PyTorch computed for a traced tensor."""
    return len(arg.meta["shape"])


def _merge(walk: Walk, node: fx.Node) -> Layer:
    """x + y, x * y, torch.add(x, y), x += y: Add or Multiply of two tensors; x * c (or c * x)
    with a number c is a Scale."""
    first, second = node.args[:2]
    layer_type = FUNCTION_TYPES.get(node.target) or METHOD_TYPES[str(node.target)]
    if layer_type == "Multiply" and _is_number(first) != _is_number(second):
        x, factor = (second, first) if _is_number(first) else (first, second)
        return Layer("Scale", {"factor": float(factor)}, (_tensor(walk, x),))
    if node.kwargs.get("alpha", 1) != 1 or not isinstance(second, fx.Node):
        raise NotMappable(msg("with a constant: only tensors merge"))
    table = [walk.values.get(arg) for arg in (first, second)]
    if all(isinstance(v, Constant) for v in table):
        raise NotMappable(msg("joins two constant tensors"))
    if any(isinstance(v, Constant) for v in table):
        x, constant = (second, table[0]) if isinstance(table[0], Constant) else (first, table[1])
        if layer_type == "Add":
            try:
                layer = _positional_encoding(walk, node, x, constant)
            except NotMappable:
                if constant.weights is None or constant.owner is not None:
                    raise
            else:
                walk.encodings[node.name] = _encoding_owner(constant)  # its dropout may follow
                return layer
        joined = _learned_constant(walk, node, constant, x)
        inputs = (joined, _tensor(walk, x)) if x is second else (_tensor(walk, x), joined)
        return Layer(layer_type, {}, inputs)
    return Layer(layer_type, {}, (_tensor(walk, first), _tensor(walk, second)))


def _is_number(arg: Any) -> bool:
    return isinstance(arg, int | float) and not isinstance(arg, bool) and math.isfinite(arg)


def _learned_constant(walk: Walk, node: fx.Node, constant: Constant, like: fx.Node) -> str:
    """A learned parameter joined to the activations (a ViT's `torch.cat([cls, x], dim=1)`,
    `x + self.pos_embed`, ConvNeXt's `self.layer_scale * x`): a LearnedConstant node, fed by
    x for its batch size, holding the parameter. Only the parameter itself, broadcast or
    repeated for each sample (`self.cls_token.expand(B, -1, -1)`), maps."""
    if constant.weights is None or constant.owner is not None:
        raise NotMappable(
            msg(
                "joins a constant that is not a learned parameter (a buffer or a table computed"
                " from one) to the activations"
            )
        )
    parameter = walk.gm.get_parameter(constant.weights)
    value, rank = constant.node.meta["value"], _rank(like)
    if constant.node is constant.root and value.dim() <= rank:  # broadcast as it stands
        value = value.reshape((1,) * (rank - value.dim()) + tuple(value.shape))
    batch = like.meta["shape"][0]
    if (
        value.dim() != rank
        or value.shape[0] not in (1, batch)
        or value[0].numel() != parameter.numel()
        or not torch.equal(value[0].reshape(-1), parameter.detach().reshape(-1))
        or not all(torch.equal(row, value[0]) for row in value[1:])
    ):
        raise NotMappable(
            msg(
                "uses self.{name} other than as itself, repeated for each sample: only the"
                " parameter as it is (or expanded over the batch) maps",
                name=constant.weights,
            )
        )
    _claim_weights(walk, node, parameter, constant.weights)
    node_id = constant.root.name
    layer = Layer(
        "LearnedConstant",
        {"shape": [int(size) for size in value.shape[1:]]},
        (_tensor(walk, like),),
        path=constant.weights,
    )
    walk.inside_stacks.add(node_id)  # its fx node is the join's: no shape of its own to check
    return str(_add_node(walk, node, node_id, layer))


def _scale(walk: Walk, node: fx.Node) -> Layer:
    """x / c, torch.div(x, c): a Scale by 1 / c (a tensor divisor has no layer)."""
    x, divisor = node.args[0], _arg(node, 1, "other")
    if node.kwargs.get("rounding_mode") is not None:
        raise NotMappable(msg("division with a rounding mode"))
    if not isinstance(x, fx.Node) or not _is_number(divisor) or divisor == 0:
        raise NotMappable(msg("division by a tensor or by 0; only x / a number maps (a Scale)"))
    return Layer("Scale", {"factor": 1.0 / float(divisor)}, (_tensor(walk, x),))


def _chunk(walk: Walk, node: fx.Node) -> Chunks:
    """x.chunk(n, dim), torch.chunk(x, n, dim): the pieces, each taken one becomes a node."""
    chunks, dim = int(_arg(node, 1, "chunks")), int(_arg(node, 2, "dim", 0))
    shape = node.args[0].meta["shape"]
    if dim % len(shape) == 0:
        raise NotMappable(msg("cuts along the batch dim"))
    made = len(torch.empty(shape, device="meta").chunk(chunks, dim))
    return Chunks(_tensor(walk, node.args[0]), chunks, dim % len(shape), made)


def _positional_encoding(walk: Walk, node: fx.Node, x: Any, table: Constant) -> Layer:
    """x + self.pe[:, :t] (the PyTorch tutorials' PositionalEncoding): a sinusoidal table
    buffer, or a learned [max_len, E] parameter, added to [B, T, E]."""
    rank = len(node.meta["shape"])
    root = table.root.meta["value"] if table.root is not None else None
    if table.weights is not None:
        root = walk.gm.get_parameter(table.weights)
    if rank != 3 or root is None or root.numel() % node.meta["shape"][-1]:
        raise NotMappable(
            msg("adds a constant tensor; only a positional encoding table added to [B, T, E] maps")
        )
    embed = node.meta["shape"][-1]
    rows = root.detach().reshape(-1, embed)
    steps = node.meta["shape"][1]
    if not torch.equal(table.node.meta["value"].reshape(-1, embed), rows[:steps]):
        raise NotMappable(msg("adds a table other than its first rows, positions 0..T-1"))
    params = {"max_len": rows.shape[0]}
    if table.weights is not None:
        params["kind"] = "learned"
        if table.owner is None:  # a bare parameter: this node owns it
            _claim_weights(walk, node, walk.gm.get_parameter(table.weights))
        path = table.owner or table.weights
        return Layer("PositionalEncoding", params, (_tensor(walk, x),), path=path)
    if not torch.allclose(rows, sinusoidal_table(rows.shape[0], embed), atol=1e-5):
        raise NotMappable(msg("adds a fixed table that is not the sinusoidal positional encoding"))
    params["kind"] = "sinusoidal"
    return Layer("PositionalEncoding", params, (_tensor(walk, x),))


def _encoding_owner(table: Constant) -> str:
    """The module a position table belongs to ('pos' for self.pos.weight or self.pos.pe)."""
    name = table.owner or table.weights or (str(table.root.target) if table.root else "")
    return name.rpartition(".")[0]


def sinusoidal_table(max_len: int, embed: int) -> torch.Tensor:
    """The fixed sines and cosines, computed by the very PositionalEncoding class that model.py
    holds (the catalog's helper source), so the two can never disagree."""
    namespace: dict[str, Any] = {"torch": torch, "nn": nn}
    exec(compile(POSITIONAL_ENCODING, "model.py", "exec"), namespace)  # our own source
    return namespace["PositionalEncoding"](embed, max_len, kind="sinusoidal").weight


def _concat(walk: Walk, node: fx.Node) -> Layer | str:
    tensors = list(_arg(node, 0, "tensors"))
    dim = _arg(node, 1, "dim", 0)
    if dim % _rank(tensors[0]) == 0:
        raise NotMappable(msg("joins along the batch dim 0"))
    if len(tensors) == 1:
        return _tensor(walk, tensors[0])  # torch.cat([x]) is x (DenseNet's first layer)
    constants = [isinstance(walk.values.get(t), Constant) for t in tensors]
    if all(constants):
        raise NotMappable(msg("joins constant tensors only"))
    like = tensors[constants.index(False)]
    inputs = tuple(
        _learned_constant(walk, node, walk.values[t], like) if is_constant else _tensor(walk, t)
        for t, is_constant in zip(tensors, constants, strict=True)
    )
    return Layer("Concat", {"dim": dim}, inputs)


def _flatten(walk: Walk, node: fx.Node) -> Layer:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    if start % _rank(node.args[0]) == 0:
        raise NotMappable(msg("flattens the batch dim; use start_dim=1 (as nn.Flatten does)"))
    return Layer("Flatten", {"start_dim": start, "end_dim": end}, (_tensor(walk, node.args[0]),))


def _shape_args(node: fx.Node) -> list[Any]:
    """view(a, b, c), view((a, b, c)) and reshape(x, shape) all as [a, b, c]."""
    rest = list(node.args[1:]) or [node.kwargs.get("shape", node.kwargs.get("size"))]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest


def _reshape(walk: Walk, node: fx.Node) -> Layer:
    sizes = _shape_args(node)
    batch = walk.values.get(sizes[0]) if isinstance(sizes[0], fx.Node) else sizes[0]
    if batch not in (-1, Size(0)):
        raise NotMappable(msg("the first size must be the batch, x.size(0) (or -1)"))
    actual = node.meta["shape"][1:]
    shape = [-1 if size == -1 else int(real) for size, real in zip(sizes[1:], actual, strict=True)]
    return Layer("Reshape", {"shape": shape}, (_tensor(walk, node.args[0]),))


def _permute(walk: Walk, node: fx.Node) -> Layer | Value:
    """x.permute(...), and x.transpose(a, b) or torch.swapaxes(x, a, b) (the same swap, as
    permuted dims)."""
    rank = _rank(node.args[0])
    name = getattr(node.target, "__name__", node.target)
    if name in ("transpose", "swapaxes"):
        first, second = ("dim0", "dim1") if name == "transpose" else ("axis0", "axis1")
        a, b = _arg(node, 1, first) % rank, _arg(node, 2, second) % rank
        dims = list(range(rank))
        dims[a], dims[b] = dims[b], dims[a]
    else:
        dims = [d % rank for d in _shape_args(node)]
    if dims[0] != 0:
        return _swap_batch_and_time(walk, node, dims)
    return Layer("Permute", {"dims": dims}, (_tensor(walk, node.args[0]),))


def _getitem(walk: Walk, node: fx.Node) -> Layer | Stack | Value:
    source, index = node.args
    value = walk.values.get(source)
    if isinstance(value, Failed):
        return value
    if isinstance(value, Several) and index == 1 and value.what in ("RNN", "GRU", "LSTM"):
        params = next(n["params"] for n in walk.nodes if n["id"] == value.node_id)
        one_way = not params.get("bidirectional", False)
        return FinalStates(
            value.node_id, value.what == "LSTM", one_way, params.get("num_layers", 1)
        )
    if isinstance(value, FinalStates):
        return _final_state(value, index)
    if isinstance(value, Chunks) and isinstance(index, int) and -value.made <= index < value.made:
        params = {"chunks": value.chunks, "dim": value.dim, "index": index % value.made}
        return Layer("Chunk", params, (value.source,))
    if isinstance(value, Several):
        if index != 0:
            raise NotMappable(
                msg(
                    "item {index} of {what} '{node}' is {item}; only item 0, the output, maps",
                    index=index,
                    what=value.what,
                    node=value.node_id,
                    item=Message(value.item_one),
                )
            )
        if value.node_id in walk.sequence_first:
            return SequenceFirst(value.node_id)
        return value.node_id
    if isinstance(value, Size) and value.index is None and isinstance(index, int):
        return Size(index)
    items = list(index) if isinstance(index, tuple) else [index]
    while items and items[-1] in (slice(None), Ellipsis):
        items.pop()
    if isinstance(value, str) and items == [slice(None), -1]:
        return Layer("SequencePool", {"mode": "last"}, (value,))
    if isinstance(value, str) and len(items) == 2 and items[0] == slice(None):
        if not isinstance(items[1], slice):
            return _one_position(node, value, items[1])
    if (
        isinstance(value, str)
        and items
        and all(isinstance(i, slice) or i is Ellipsis for i in items)
    ):
        return _slices(node, value, items)
    raise NotMappable(
        msg("indexing with [{index}]; x[:, -1] (the last time step) maps", index=repr(index))
    )


def _slices(node: fx.Node, value: str, items: list[Any]) -> Stack:
    """x[:, a:b:s, ...] (Python's slices, an Ellipsis standing for the dims it skips): a Slice
    for each dim cut, in order; the batch dim is never cut."""
    rank = len(node.args[0].meta["shape"])
    if items.count(Ellipsis) > 1 or len(items) - items.count(Ellipsis) > rank:
        raise NotMappable(msg("indexing with [{index}]", index=repr(tuple(items))))
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (rank - len(items) + 1) + items[at + 1 :]
    cuts = [(dim, cut) for dim, cut in enumerate(items) if cut != slice(None)]
    bounds = [v for _, cut in cuts for v in (cut.start, cut.stop, cut.step) if v is not None]
    bounds_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in bounds)
    if not cuts or cuts[0][0] == 0 or not bounds_ok or any((c.step or 1) < 1 for _, c in cuts):
        raise NotMappable(
            msg(
                "indexing with [{index}]; slices with whole-number bounds and a positive step"
                " of the dims after the batch map (x[:, 1:], x[..., ::2])",
                index=repr(tuple(items)),
            )
        )
    layers = tuple(
        Layer(
            "Slice",
            {"dim": dim, "start": cut.start or 0, "stop": cut.stop, "step": cut.step or 1},
            (),
        )
        for dim, cut in cuts
    )
    return Stack(value, layers)


def _one_position(node: fx.Node, value: str, index: Any) -> Stack:
    """x[:, i] (a ViT's class token, x[:, 0]): piece i of dim 1 cut in pieces of one, then
    that dim dropped (a Chunk and a Reshape)."""
    steps = node.args[0].meta["shape"][1]
    if not isinstance(index, int) or isinstance(index, bool) or not -steps <= index < steps:
        raise NotMappable(
            msg("indexing with [{index}]; x[:, i] with a number i maps", index=repr(index))
        )
    piece = Layer("Chunk", {"chunks": steps, "dim": 1, "index": index % steps}, ())
    rest = Layer("Reshape", {"shape": [int(s) for s in node.meta["shape"][1:]]}, ())
    return Stack(value, (piece, rest))


def _final_state(value: FinalStates, index: Any) -> FinalStates | Layer:
    """(h_n, c_n)[0] is h_n; h_n[-1] (h_n[0] of one layer) of a one-way layer is the output's
    last step, a SequencePool; c_n and the other layers' states have no graph node."""
    if value.pair:
        if index != 0:
            raise NotMappable(msg("the LSTM's final cell state c_n: only h_n maps"))
        return replace(value, pair=False)
    if index not in (-1, value.layers - 1) or not value.one_way:
        raise NotMappable(
            msg(
                "h_n[{index}]: only the last layer's final state of a one-way layer, h_n[-1],"
                " maps (as the output's last step)",
                index=repr(index),
            )
        )
    return Layer("SequencePool", {"mode": "last"}, (value.node_id,))


def _reduce(walk: Walk, node: fx.Node) -> Layer | Stack:
    """mean/amax/max over dim 1 (the time steps) as a SequencePool (max(dim=1) also returns
    the indices, so only its item 0 or .values maps); a mean over all spatial dims, as in
    x.mean((2, 3)), is a global average pool (then a Flatten unless keepdim)."""
    name = getattr(node.target, "__name__", node.target)
    mode = "mean" if name == "mean" else "max"
    dim = _arg(node, 1, "dim")
    dims = sorted(
        d % _rank(node.args[0])
        for d in (dim if isinstance(dim, (list, tuple)) else [dim] if isinstance(dim, int) else [])
    )
    keepdim = bool(_arg(node, 2, "keepdim", False))
    x = _tensor(walk, node.args[0])
    rank = _rank(node.args[0])
    if dims == [1] and not keepdim:
        several = N_("the indices") if name == "max" else None
        return Layer("SequencePool", {"mode": mode}, (x,), several)
    if mode == "mean" and rank in (3, 4) and dims == list(range(2, rank)):
        pool = Layer(f"AdaptiveAvgPool{rank - 2}d", {"output_size": 1}, ())
        flat = Layer("Flatten", {"start_dim": 1, "end_dim": -1}, ())
        return Stack(x, (pool,) if keepdim else (pool, flat))
    raise NotMappable(
        msg(
            "a reduction over dims {dims}: over dim 1 (the time steps, SequencePool) or over"
            " every spatial dim (a global average pool) maps",
            dims=str(dims),
        )
    )


def _squeeze(walk: Walk, node: fx.Node) -> Layer:
    """x.squeeze(1), x.unsqueeze(-1) (the DCGAN example's `output.view(-1, 1).squeeze(1)`): a
    Reshape to the shape PyTorch computed. A squeeze without a dim is refused: with a batch of
    one it would drop the batch dim too."""
    dim = _arg(node, 1, "dim")
    rank = _rank(node.args[0]) + (str(node.target) == "unsqueeze")
    if not isinstance(dim, int) or dim % rank == 0:
        raise NotMappable(
            msg(
                "a squeeze or unsqueeze without a dim, or of the batch dim: give a dim of 1 or more"
            )
        )
    shape = [int(size) for size in node.meta["shape"][1:]]
    if not shape:
        raise NotMappable(
            msg(
                "leaves one number per sample ([B]): a graph's tensors keep at least one dim"
                " besides the batch, so return the [B, 1] before the squeeze"
            )
        )
    return Layer("Reshape", {"shape": shape}, (_tensor(walk, node.args[0]),))


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
    if isinstance(value, Constant) and name == "shape":
        return Size(FIXED)  # self.weight.shape (nanoGPT's F.layer_norm): fixed numbers
    if isinstance(value, str) and name == "device":
        return Device()
    raise NotMappable(msg(".{name}", name=name))


def _alias(walk: Walk, node: fx.Node) -> str:
    return _tensor(walk, node.args[0])


def _by_position(walk: Walk, node: fx.Node) -> Layer:
    """A call of one tensor whose params are its arguments, as its entry's functional_args
    say (none: a type without params); F.leaky_relu(x, 0.2) -> LeakyReLU {negative_slope: 0.2}."""
    layer_type = FUNCTION_TYPES.get(node.target) or METHOD_TYPES[str(node.target)]
    arguments = CATALOG[layer_type].functional_args
    values = {a.param: _arg(node, a.position, a.param, a.default) for a in arguments}
    return Layer(layer_type, values, (_tensor(walk, node.args[0]),))


def _softmax(walk: Walk, node: fx.Node) -> Layer:
    dim = _arg(node, 1, "dim")
    if dim is None:
        raise NotMappable(msg("softmax without dim"))
    layer_type = FUNCTION_TYPES.get(node.target) or METHOD_TYPES[str(node.target)]
    return Layer(layer_type, {"dim": dim}, (_tensor(walk, node.args[0]),))


def _dropout(walk: Walk, node: fx.Node) -> Layer:
    layer_type = FUNCTION_TYPES.get(node.target) or METHOD_TYPES[str(node.target)]
    p = float(_arg(node, 1, "p", 0.5))
    return Layer(layer_type, {"p": p}, (_tensor(walk, node.args[0]),))


def _pool(walk: Walk, node: fx.Node) -> Layer:
    """F.max_pool2d / F.avg_pool2d with PyTorch's positional order."""
    layer_type = FUNCTION_TYPES[node.target]
    kernel = _compact(_arg(node, 1, "kernel_size"))
    stride = _arg(node, 2, "stride")
    stride = None if not stride or _compact(stride) == kernel else _compact(stride)
    params: dict[str, Any] = {
        "kernel_size": kernel,
        "stride": stride,
        "padding": _compact(_arg(node, 3, "padding", 0)),
    }
    if layer_type.startswith("Max"):
        params["dilation"] = _compact(_arg(node, 4, "dilation", 1))
        params["ceil_mode"] = bool(_arg(node, 5, "ceil_mode", False))
        if _arg(node, 6, "return_indices", False):
            raise NotMappable(msg("return_indices=True"))
    else:
        params["ceil_mode"] = bool(_arg(node, 4, "ceil_mode", False))
        params["count_include_pad"] = bool(_arg(node, 5, "count_include_pad", True))
        if _arg(node, 6, "divisor_override") is not None:
            raise NotMappable(msg("divisor_override"))
    return Layer(layer_type, params, (_tensor(walk, node.args[0]),))


def _adaptive_pool(walk: Walk, node: fx.Node) -> Layer:
    size = _arg(node, 1, "output_size")
    sizes = size if isinstance(size, (tuple, list)) else [size]
    if any(s is None for s in sizes):
        raise NotMappable(msg("an output_size of None (keep the input size)"))
    return Layer(
        FUNCTION_TYPES[node.target], {"output_size": _compact(size)}, (_tensor(walk, node.args[0]),)
    )


def _interpolate(walk: Walk, node: fx.Node) -> Layer:
    """F.interpolate(x, size, scale_factor, mode, align_corners) as an Upsample."""
    mode = _arg(node, 3, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise NotMappable(
            msg("mode={mode}: only nearest, linear and bilinear map", mode=repr(mode))
        )
    if _arg(node, 5, "recompute_scale_factor") or _arg(node, 6, "antialias", False):
        raise NotMappable(msg("recompute_scale_factor or antialias"))
    factor = _arg(node, 2, "scale_factor")
    if isinstance(factor, (tuple, list)):
        factor = float(factor[0]) if len(set(factor)) == 1 else [float(f) for f in factor]
    params = {
        "size": _compact(_arg(node, 1, "size")),
        "scale_factor": float(factor) if isinstance(factor, (int, float)) else factor,
        "mode": mode,
        "align_corners": _arg(node, 4, "align_corners"),
    }
    return Layer("Upsample", params, (_tensor(walk, node.args[0]),))


def _pad(walk: Walk, node: fx.Node) -> Layer:
    """F.pad(x, pad, mode="constant", value=0) as a Pad; the other modes have no layer."""
    mode, value = _arg(node, 2, "mode", "constant"), _arg(node, 3, "value")
    if mode != "constant":
        raise NotMappable(msg("mode={mode}: only constant padding maps", mode=repr(mode)))
    pad = [int(size) for size in _arg(node, 1, "pad")]
    if any(size < 0 for size in pad) or len(pad) // 2 >= _rank(node.args[0]):
        raise NotMappable(msg("negative padding (a crop) or padding of the batch dim"))
    params = {"pad": pad, "value": float(value or 0.0)}
    return Layer("Pad", params, (_tensor(walk, node.args[0]),))


def _instance_norm(walk: Walk, node: fx.Node) -> Layer:
    """F.instance_norm(x) without running statistics or weights: InstanceNorm1d/2d."""
    names = ("running_mean", "running_var", "weight", "bias")
    if any(_arg(node, index, name) is not None for index, name in enumerate(names, start=1)):
        raise NotMappable(
            msg("with running statistics or weights: only the plain F.instance_norm(x) maps")
        )
    rank = _rank(node.args[0])
    eps = float(_arg(node, 7, "eps", 1e-5))
    return Layer(f"InstanceNorm{rank - 2}d", {"eps": eps}, (_tensor(walk, node.args[0]),))


# ---------------------------------------------------------------------------------------------
# timm's Attention (its ViTs' self-attention: self.qkv, heads by reshape and permute,
# F.scaled_dot_product_attention, self.proj): kept as one call and read as a MultiheadAttention.

QKV_ATTENTION_CHILDREN = frozenset({"qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj",
                                    "proj_drop"})  # fmt: skip
# Its weights under the names nn.MultiheadAttention gives them (convert_state_dict).
RENAMED_WEIGHTS = {
    "qkv.weight": "in_proj_weight",
    "qkv.bias": "in_proj_bias",
    "proj.weight": "out_proj.weight",
    "proj.bias": "out_proj.bias",
}


def qkv_attention(module: nn.Module) -> dict[str, Any] | None:
    """MultiheadAttention params for a module built as timm's Attention is (one qkv Linear of
    E -> 3E, heads of head_dim, the softmax scale head_dim ** -0.5, a proj Linear E -> E, no
    norms, no gate), or None for any other module."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if not (
        "Attention" in type(module).__name__
        and isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and isinstance(heads, int)
        and isinstance(head_dim, int)
    ):
        return None
    width = qkv.in_features
    shaped = qkv.out_features == 3 * width == 3 * heads * head_dim
    shaped = shaped and proj.in_features == proj.out_features == width
    children = dict(module.named_children())
    plain = set(children) <= QKV_ATTENTION_CHILDREN and all(
        isinstance(children.get(name, nn.Identity()), nn.Identity)
        for name in ("q_norm", "k_norm", "norm")
    )
    scale = getattr(module, "scale", head_dim**-0.5)
    drops = [children.get(name, nn.Dropout(0.0)) for name in ("attn_drop", "proj_drop")]
    if not (
        shaped
        and plain
        and getattr(module, "gate", None) is None
        and (qkv.bias is None) == (proj.bias is None)
        and math.isclose(scale, head_dim**-0.5)
        and all(isinstance(drop, nn.Dropout) for drop in drops)
        and drops[1].p == 0.0
    ):
        return None
    return {"num_heads": heads, "dropout": float(drops[0].p), "bias": qkv.bias is not None}


# ---------------------------------------------------------------------------------------------
# torchvision's Swin Transformers: ShiftedWindowAttention(V2) is kept as one call, read as a
# WindowAttention (model.py's class holds its weights under the same names); PatchMerging's
# _patch_merging_pad (pad H and W to even, the four interleaved quarters joined along C) is a
# Pad, Slices of every other row and column, and a Concat.

SWIN_ATTENTION = frozenset({"ShiftedWindowAttention", "ShiftedWindowAttentionV2"})


def window_attention(module: nn.Module) -> dict[str, Any] | None:
    """WindowAttention params for torchvision's ShiftedWindowAttention or its V2 (cosine
    attention, position bias from cpb_mlp), or None for any other module."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if not (
        type(module).__name__ in SWIN_ATTENTION
        and type(module).__module__.startswith("torchvision.")
        and isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
    ):
        return None
    return {
        "num_heads": int(module.num_heads),
        "window_size": _compact(module.window_size),
        "shift_size": _compact(module.shift_size),
        "qkv_bias": qkv.bias is not None,
        "proj_bias": proj.bias is not None,
        "attention_dropout": float(module.attention_dropout),
        "dropout": float(module.dropout),
        "v2": isinstance(getattr(module, "logit_scale", None), nn.Parameter),
    }


def _patch_merging(walk: Walk, node: fx.Node) -> Layer:
    """torchvision's _patch_merging_pad(x) on [B, H, W, C]: H and W padded to even (a Pad, where
    either is odd), x[..., i::2, j::2, :] for (i, j) = (0, 0), (1, 0), (0, 1), (1, 1) (Slices of
    the rows, then of the columns), joined along C (a Concat)."""
    x = _tensor(walk, node.args[0])
    shape = node.args[0].meta["shape"]
    if len(shape) != 4:
        raise NotMappable(msg("patch merging of a tensor that is not [B, H, W, C]"))
    height, width = shape[1:3]

    def add(suffix: str, layer_type: str, params: dict[str, Any], source: str) -> str:
        node_id = f"{node.name}_{suffix}"
        walk.inside_stacks.add(node_id)  # its fx node is the whole call's: no shape to check
        return str(_add_node(walk, node, node_id, Layer(layer_type, params, (source,))))

    if height % 2 or width % 2:
        x = add("pad", "Pad", {"pad": [0, 0, 0, width % 2, 0, height % 2]}, x)
    rows = [add(f"rows{i}", "Slice", {"dim": 1, "start": i, "step": 2}, x) for i in (0, 1)]
    quarters = [
        add(f"x{2 * j + i}", "Slice", {"dim": 2, "start": j, "step": 2}, rows[i])
        for j in (0, 1)
        for i in (0, 1)
    ]
    return Layer("Concat", {"dim": -1}, tuple(quarters))


# ---------------------------------------------------------------------------------------------
# torchvision's MaxViT: RelativePositionalMultiHeadAttention is kept as one call, read as a
# RelativeAttention (model.py's class holds its weights under the same names); its SwapAxes is
# torch.swapaxes, a Permute; WindowPartition and WindowDepartition are Reshapes and Permutes.


def relative_attention(module: nn.Module) -> dict[str, Any] | None:
    """RelativeAttention params for torchvision's RelativePositionalMultiHeadAttention, or None
    for any other module (or one whose projections were swapped for ones without a bias)."""
    qkv, merge = getattr(module, "to_qkv", None), getattr(module, "merge", None)
    if not (
        type(module).__name__ == "RelativePositionalMultiHeadAttention"
        and type(module).__module__.startswith("torchvision.")
        and isinstance(qkv, nn.Linear)
        and isinstance(merge, nn.Linear)
        and qkv.bias is not None
        and merge.bias is not None
    ):
        return None
    return {"head_dim": int(module.head_dim)}


# ---------------------------------------------------------------------------------------------
# Sequence-first code (the word language model example): `x.t()` or `x.transpose(0, 1)` into
# an nn.LSTM / nn.GRU / nn.TransformerEncoder without batch_first, and back. A graph is always
# batch-first, so the pair is the batch-first layer itself, and what lies between acts on each
# position alone (an Embedding, a Linear, a Dropout) or is such a layer.

# Modules that read [T, B, F] where batch_first is False.
TIME_FIRST_MODULES = (nn.RNN, nn.LSTM, nn.GRU, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                      nn.TransformerEncoder)  # fmt: skip
# Layers that act on each position alone, whichever dim is the batch.
PER_POSITION = frozenset({"Linear", "Dropout", "LayerNorm", "RMSNorm", "Embedding", "Identity",
                          "Scale", "Add", "Multiply"})  # fmt: skip
LAST_DIM_ONLY = frozenset({"Softmax", "LogSoftmax", "GLU"})


def _swap_batch_and_time(walk: Walk, node: fx.Node, dims: list[int]) -> Value:
    """x.transpose(0, 1), x.t(), x.permute(1, 0, 2): from batch-first to sequence-first (a
    SequenceFirst value, no node) or back (the batch-first node itself)."""
    if dims[:2] != [1, 0] or dims[2:] != list(range(2, len(dims))):
        raise NotMappable(msg("moves the batch dim"))
    value = walk.values.get(node.args[0])
    if isinstance(value, SequenceFirst):
        return value.node_id
    if isinstance(value, (Failed, str)):
        return value if isinstance(value, Failed) else SequenceFirst(value)
    return _tensor(walk, node.args[0])  # says what it is instead


def _t(walk: Walk, node: fx.Node) -> Value:
    """x.t() of a 2-d tensor (token ids [B, T] -> [T, B]): a swap of the batch and time."""
    if _rank(node.args[0]) != 2:
        raise NotMappable(msg("x.t() of a tensor that is not 2-d"))
    return _swap_batch_and_time(walk, node, [1, 0])


def _time_first(module: nn.Module) -> bool:
    """Whether a module reads its input sequence-first (batch_first=False)."""
    if isinstance(module, nn.TransformerEncoder):
        module = module.layers[0]
    if isinstance(module, nn.TransformerEncoderLayer):
        module = module.self_attn
    return isinstance(module, TIME_FIRST_MODULES) and not module.batch_first


def as_batch_first(module: nn.Module) -> nn.Module:
    """A shallow copy reading batch-first (the same weights), for a module fed sequence-first:
    its params are the batch-first layer's."""
    if isinstance(module, nn.TransformerEncoderLayer):
        twin = copy.copy(module)
        twin._modules = dict(module._modules)  # its own, or the original's attention changes
        twin.self_attn = as_batch_first(module.self_attn)
        return twin
    twin = copy.copy(module)
    twin.batch_first = True
    return twin


def _sequence_first_inputs(walk: Walk, node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if isinstance(walk.values.get(n), SequenceFirst)]


def _map_sequence_first(walk: Walk, node: fx.Node, inputs: list[fx.Node]) -> Layer | Stack | Value:
    """A call on sequence-first tensors: a batch-swapping transpose, a module reading
    sequence-first, or a layer acting on each position; its result is sequence-first too."""
    handler = _handler(node) if node.op != "call_module" else None
    if handler in (_permute, _t):
        return _map(walk, node)
    if handler is _getitem and node.args[1] == -1:  # output[-1]: the last step, batch-first
        return Layer("SequencePool", {"mode": "last"}, (walk.values[node.args[0]].node_id,))
    module = walk.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    reads_time_first = module is not None and _time_first(module)
    saved = {n: walk.values[n] for n in inputs}
    walk.values.update({n: saved[n].node_id for n in inputs})  # type: ignore[union-attr]
    walk.reading_time_first = reads_time_first
    try:
        result = _map(walk, node)
    finally:
        walk.values.update(saved)
        walk.reading_time_first = False
    layers = result.layers if isinstance(result, Stack) else (result,)
    if not all(isinstance(layer, Layer) for layer in layers) or not (
        reads_time_first or all(_per_position(layer) for layer in layers)
    ):
        raise NotMappable(
            msg(
                "works on a sequence-first [T, B, ...] tensor (after x.t() or transpose(0, 1)):"
                " only layers that act on each position, and recurrent or transformer layers"
                " without batch_first, map there; transpose back to batch-first before it"
            )
        )
    if len(inputs) != len(node.all_input_nodes) and not reads_time_first:
        raise NotMappable(msg("joins a sequence-first tensor to a batch-first one"))
    walk.time_first_calls.add(node)
    return result


def _per_position(layer: Layer) -> bool:
    if layer.type in LAST_DIM_ONLY:
        return layer.params.get("dim", -1) == -1
    spec = CATALOG[layer.type]
    return layer.type in PER_POSITION or (spec.category == "Activation" and layer.type != "PReLU")


# ---------------------------------------------------------------------------------------------
# A VAE's reparameterisation (the PyTorch example's `std = torch.exp(0.5 * logvar);
# eps = torch.randn_like(std); return mu + eps * std`): one Reparameterize layer.


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """What the folded calls compute (the fx graph's stand-in for them; never run)."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


MULTIPLY = (operator.mul, torch.mul, "mul")
ADD = (operator.add, torch.add, "add", operator.iadd, "add_")


def _calls(node: Any, kinds: tuple[Any, ...]) -> bool:
    """Whether an fx node is a call of one of `kinds` (functions, or tensor method names)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method":
        return str(node.target) in kinds
    return node.op == "call_function" and node.target in kinds


def _other(node: fx.Node, one: Any) -> Any:
    """The other argument of a two-argument call (mu of mu + eps * std)."""
    first, second = (list(node.args) + [node.kwargs.get("other")])[:2]

    def same(arg: Any) -> bool:
        return arg is one or (not isinstance(one, fx.Node) and _is_number(arg) and arg == one)

    return second if same(first) else first if same(second) else None


def _half_of(std: fx.Node) -> Any:
    """logvar of exp(0.5 * logvar), exp(logvar * 0.5), exp(logvar / 2), logvar.mul(0.5).exp_()."""
    if not _calls(std, (torch.exp, "exp", "exp_")) or len(std.args) != 1:
        return None
    half = std.args[0]
    if _calls(half, MULTIPLY):
        logvar = _other(half, 0.5)
    elif _calls(half, (operator.truediv, torch.div, "div")) and half.args[1:] == (2,):
        logvar = half.args[0]
    else:
        return None
    return logvar if isinstance(logvar, fx.Node) and len(half.users) == 1 else None


def _fold_reparameterisations(graph: fx.Graph) -> None:
    """Each `mu + randn_like(std) * std` with std = exp(0.5 * logvar), whose steps are used
    nowhere else, becomes one call of `reparameterize(mu, logvar)`."""
    for noise in [n for n in graph.nodes if _calls(n, (torch.randn_like,))]:
        std = noise.args[0] if noise.args else None
        logvar = _half_of(std) if isinstance(std, fx.Node) else None
        product = next(iter(noise.users), None) if len(noise.users) == 1 else None
        if logvar is None or not _calls(product, MULTIPLY) or _other(product, noise) is not std:
            continue
        total = next(iter(product.users), None) if len(product.users) == 1 else None
        mu = _other(total, product) if _calls(total, ADD) else None
        if not isinstance(mu, fx.Node) or set(std.users) != {noise, product}:
            continue
        with graph.inserting_before(total):
            folded = graph.call_function(reparameterize, (mu, logvar))
        folded.meta = dict(total.meta)
        total.replace_all_uses_with(folded)
        for step in (total, product, noise, std, std.args[0]):
            graph.erase_node(step)


def _reparameterize_call(walk: Walk, node: fx.Node) -> Layer:
    """The folded reparameterisation: a Reparameterize that samples in eval mode too, as the
    source does (the comparison draws the same noise for both)."""
    mu, logvar = node.args
    params = {"eval_output": "sample"}
    return Layer("Reparameterize", params, (_tensor(walk, mu), _tensor(walk, logvar)))


# ---------------------------------------------------------------------------------------------
# Norms (and a Linear) called as functions with a module's own weights (nanoGPT's LayerNorm
# with an optional bias, timm's LayerNorm2d, BatchNormAct2d and Linear): the catalog's layer,
# holding that module's weights.


def _own_tensors(walk: Walk, node: fx.Node, named: dict[str, Any]) -> tuple[str | None, set[str]]:
    """The module whose own attributes the tensor arguments are (self.weight, self.bias,
    self.running_mean: an attribute read directly, under the name the argument has) and which
    of them are given; anything else is refused."""
    owners, given = set(), set()
    for name, arg in named.items():
        if arg is None:
            continue
        value = walk.values.get(arg) if isinstance(arg, fx.Node) else None
        root = value.root if isinstance(value, Constant) else None
        if root is None or value.node is not root or str(root.target).rpartition(".")[2] != name:
            raise NotMappable(
                msg(
                    "{name} is not the calling module's own self.{name}: only a module's own"
                    " weights and statistics map",
                    name=name,
                )
            )
        owners.add(str(root.target).rpartition(".")[0])
        given.add(name)
    if len(owners) > 1:
        raise NotMappable(msg("takes its weights from more than one module"))
    return (owners.pop() if owners else None), given


def _norm_layer(walk: Walk, node: fx.Node, layer_type: str, params: dict[str, Any],
                owner: str | None) -> Layer:  # fmt: skip
    """The layer holding its owner module's weights (claimed, as a module call's are)."""
    if owner is not None:
        _claim_weights(walk, node, walk.gm.get_submodule(owner), owner)
    return Layer(layer_type, params, (_tensor(walk, node.args[0]),), path=owner)


def _layer_norm_call(walk: Walk, node: fx.Node) -> Layer:
    """F.layer_norm(x, shape, self.weight, self.bias, eps) over the last dim: a LayerNorm."""
    shape = _arg(node, 1, "normalized_shape")
    shape = shape.meta.get("value") if isinstance(shape, fx.Node) else shape
    sizes = [int(s) for s in shape] if isinstance(shape, (tuple, list, torch.Size)) else [shape]
    if sizes != [node.args[0].meta["shape"][-1]]:
        raise NotMappable(
            msg("normalized_shape {shape}: only the last dim maps", shape=str(list(sizes)))
        )
    tensors = {"weight": _arg(node, 2, "weight"), "bias": _arg(node, 3, "bias")}
    owner, given = _own_tensors(walk, node, tensors)
    if given == {"bias"}:
        raise NotMappable(msg("a bias without a weight"))
    params = {
        "eps": float(_arg(node, 4, "eps", 1e-5)),
        "elementwise_affine": "weight" in given,
        "bias": "bias" in given or "weight" not in given,
    }
    return _norm_layer(walk, node, "LayerNorm", params, owner)


def _linear_call(walk: Walk, node: fx.Node) -> Layer:
    """F.linear(x, self.weight, self.bias) of a module's own weights (timm's Linear): a Linear."""
    tensors = {"weight": _arg(node, 1, "weight"), "bias": _arg(node, 2, "bias")}
    owner, given = _own_tensors(walk, node, tensors)
    if "weight" not in given:
        raise NotMappable(msg("F.linear without a weight"))
    out_features = int(walk.gm.get_parameter(f"{owner}.weight").shape[0])
    params = {"out_features": out_features, "bias": "bias" in given}
    return _norm_layer(walk, node, "Linear", params, owner)


def _batch_norm_call(walk: Walk, node: fx.Node) -> Layer:
    """F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training,
    momentum, eps) of a BatchNorm module's own state: a BatchNorm1d/2d."""
    names = ("running_mean", "running_var", "weight", "bias")
    tensors = {name: _arg(node, index, name) for index, name in enumerate(names, start=1)}
    owner, given = _own_tensors(walk, node, tensors)
    tracked = {"running_mean", "running_var"} & given
    affine = {"weight", "bias"} & given
    training = bool(_arg(node, 5, "training", False))
    if len(tracked) == 1 or len(affine) == 1 or training == bool(tracked):
        raise NotMappable(
            msg(
                "a batch norm that is not nn.BatchNorm's own call (both running statistics,"
                " used in eval, or neither; both weight and bias, or neither)"
            )
        )
    rank = _rank(node.args[0])
    if rank not in (2, 3, 4):
        raise NotMappable(msg("a batch norm of a tensor with {rank} dims", rank=rank))
    momentum = getattr(walk.gm.get_submodule(owner), "momentum", 0.1) if owner else 0.1
    params = {
        "eps": float(_arg(node, 7, "eps", 1e-5)),
        "momentum": momentum,
        "affine": bool(affine),
        "track_running_stats": bool(tracked),
    }
    return _norm_layer(walk, node, "BatchNorm2d" if rank == 4 else "BatchNorm1d", params, owner)


Handler = Callable[[Walk, fx.Node], Layer | Stack | Value]

# The readers a catalog entry's `functional_reader` names: calls whose arguments take more than
# positions and keywords to become params.
READERS: dict[str, Handler] = {
    "merge": _merge,
    "concat": _concat,
    "chunk": _chunk,
    "scale": _scale,
    "flatten": _flatten,
    "reshape": _reshape,
    "permute": _permute,
    "reduce": _reduce,
    "softmax": _softmax,
    "dropout": _dropout,
    "pool": _pool,
    "adaptive_pool": _adaptive_pool,
    "interpolate": _interpolate,
    "instance_norm": _instance_norm,
    "pad": _pad,
}


def argument_reader(spec: LayerSpec) -> Handler:
    """How a call of this entry's functional forms becomes params: the reader it names, else
    its functional_args by position. An entry with params that says neither is refused here,
    when this module loads, rather than imported with default params."""
    how = functional_handling(spec)
    if how == "missing":
        raise ValueError(
            f"{spec.name} has params but neither functional_args nor functional_reader"
        )
    return READERS[spec.functional_reader] if how == "reader" else _by_position  # type: ignore


# Calls that move values around without being a layer.
PLUMBING_FUNCTIONS: dict[Any, Handler] = {
    operator.getitem: _getitem,
    builtins.getattr: _getattr,
    torch.nn.functional.layer_norm: _layer_norm_call,
    torch.nn.functional.batch_norm: _batch_norm_call,
    torch.nn.functional.linear: _linear_call,
    reparameterize: _reparameterize_call,
}
PLUMBING_METHODS: dict[str, Handler] = {
    "size": _size,
    "contiguous": _alias,
    "t": _t,
    "squeeze": _squeeze,
    "unsqueeze": _squeeze,
}
# Functions of other libraries, by (module, name), that a tracer keeps as one call (fx.wrap).
LIBRARY_FUNCTIONS: dict[tuple[str, str], Handler] = {
    ("torchvision.models.swin_transformer", "_patch_merging_pad"): _patch_merging,
}


def _resolve(name: str) -> Any:
    """'torch.nn.functional.relu' -> the function itself (what fx records as the target)."""
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def functional_tables(functional: dict[str, str]) -> tuple[dict[Any, str], dict[str, str]]:
    """The catalog's functional names ({qualified name: type}) as two lookups: function object
    -> type, and tensor method name -> type ('Tensor.relu' -> 'relu')."""
    functions: dict[Any, str] = {}
    methods: dict[str, str] = {}
    for name, layer_type in functional.items():
        if name.startswith("Tensor."):
            methods[name.removeprefix("Tensor.")] = layer_type
        else:
            functions[_resolve(name)] = layer_type
    return functions, methods


FUNCTION_TYPES, METHOD_TYPES = functional_tables(functional_table())
# {catalog type: how its functional forms' arguments become params}, from each entry.
ARGUMENT_READERS: dict[str, Handler] = {
    spec.name: argument_reader(spec) for spec in CATALOG.values() if spec.functional
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
        why = msg("its parameters are not valid: {detail}", detail=str(exc))
        walk.problems.append(Unsupported("the imported graph", "the whole model", why))
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


def _problem(
    analysis: Analysis, walk: Walk, node_id: str | None, why: Message | str
) -> Unsupported:
    """A problem of the built graph, placed at the line of the op it came from."""
    why = why if isinstance(why, Message) else Message(why)  # the compiler's own sentence
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
        if node_id in walk.sequence_first and real is not None:  # torch's is [T, B, ...]
            real = (fx_node.meta["shape"][0], *fx_node.meta["shape"][2:])
        inferred = analysis.infos[node_id].shape
        checked = analysis.node_type(node_id) != "Output" and node_id not in walk.inside_stacks
        if checked and inferred != real:
            why = msg(
                "NetBuilder infers {inferred} but PyTorch computes {real}",
                inferred=str(inferred),
                real=str(real),
            )
            problems.append(_problem(analysis, walk, node_id, why))
        path = walk.module_paths.get(node_id)
        if path is None:
            continue
        count = _parameter_count(walk.gm, path)
        if count != analysis.infos[node_id].params:
            why = msg(
                "{count} parameters in PyTorch, {ours} in NetBuilder",
                count=count,
                ours=analysis.infos[node_id].params,
            )
            problems.append(_problem(analysis, walk, node_id, why))
    return problems


def _parameter_count(gm: fx.GraphModule, path: str) -> int:
    """The weights a node holds: its module's, or one parameter (a learned position table)."""
    try:
        return sum(p.numel() for p in gm.get_submodule(path).parameters())
    except AttributeError:
        return gm.get_parameter(path).numel()


def _output_problems(
    analysis: Analysis, walk: Walk, model: nn.Module, example: torch.Tensor
) -> list[Unsupported]:
    """Run the compiled graph with the model's weights; its outputs must be the model's."""
    compiled = load_model_source(generate_source(analysis)).eval()
    state = convert_state_dict(model.state_dict(), walk.module_paths, attribute_names(analysis))
    try:
        compiled.load_state_dict(state)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a layer that samples (a VAE's) draws the same noise in both
            expected = model(example)
            torch.manual_seed(0)
            got = compiled(example)
        if isinstance(expected, (tuple, list)):
            expected = expected[0]  # (output, hidden): the graph keeps the output
    except Exception as exc:
        why = msg("the compiled graph fails: {detail}", detail=_first_line(exc))
        return [_problem(analysis, walk, None, why)]
    if expected.shape != got.shape:
        why = msg(
            "the compiled graph returns {got}, the model {expected}",
            got=str(list(got.shape)),
            expected=str(list(expected.shape)),
        )
        return [_problem(analysis, walk, None, why)]
    error = float((expected.float() - got.float()).abs().max()) if expected.numel() else 0.0
    if not math.isfinite(error) or error > TOLERANCE * (1 + float(expected.abs().max())):
        why = msg(
            "the compiled graph's outputs differ from the model's by up to {error}",
            error=format(error, ".3g"),
        )
        return [_problem(analysis, walk, None, why)]
    return []


def _unused_modules(model: nn.Module, walk: Walk) -> list[Message]:
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
        msg(
            "self.{path} ({kind}, {count} parameters) is never used in forward; it is left out",
            path=path,
            kind=type(modules[path]).__name__ if path in modules else "Parameter",
            count=format(count, ","),
        )
        for path, count in unused.items()
    ]


def convert_state_dict(
    state: dict[str, torch.Tensor], module_paths: dict[str, str], names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """The source model's state_dict renamed for the compiled graph: 'features.0.weight'
    becomes 'features_0.weight' (names: compiler.codegen.attribute_names). A module whose
    weights are only a qkv and a proj Linear (timm's Attention) gives them the names of
    nn.MultiheadAttention's; one with more (torchvision's Swin attention) keeps its own."""
    renamed: dict[str, torch.Tensor] = {}
    for node_id, path in module_paths.items():
        own = {key[len(path) + 1 :] for key in state if key.startswith(path + ".")}
        renames = RENAMED_WEIGHTS if own <= RENAMED_WEIGHTS.keys() else {}
        for key, value in state.items():
            if key.startswith(path + "."):
                rest = key[len(path) + 1 :]
                renamed[f"{names[node_id]}.{renames.get(rest, rest)}"] = value
            elif key == path:  # a parameter used as a layer's one weight (a position table)
                renamed[f"{names[node_id]}.weight"] = value.reshape(-1, value.shape[-1])
    return renamed
