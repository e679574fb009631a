"""Code generation: Analysis -> the standalone `model.py` source. Pure.

The emitted module imports only torch, reads like hand-written code (named attributes, one forward
statement per node in topological order, shapes in comments) and is already black-formatted (line length 100).
User text (node ids, the graph name) reaches it only as sanitised identifiers.
"""

from __future__ import annotations

import keyword
import re
import types
from pathlib import PurePath
from typing import Any

from builder.catalog import CATALOG, Tensor, shape_text
from compiler.analysis import Analysis

LINE_LENGTH = 100
# Functions and classes model.py may define beside the model (a class name must not clash).
HELPER_NAMES = frozenset(spec.helper[0] for spec in CATALOG.values() if spec.helper)
MAX_IDENTIFIER = 32

# Names the generated code itself uses, and every attribute of nn.Module (an attribute called
# `training` or `to` would break the module). tests/test_codegen.py checks this against torch.
RESERVED = frozenset(
    """self x torch nn super causal_mask build_model INPUT_SHAPE INPUT_DTYPE OUTPUT_SHAPE
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
    set_extra_state set_submodule share_memory state_dict to to_empty train training type
    xpu zero_grad""".split()
)


def identifier(text: str) -> str:
    """A safe Python identifier for user text: ASCII word characters only, never a keyword."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()[:MAX_IDENTIFIER].strip("_")
    if not name:
        name = "layer"
    if name[0].isdigit():
        name = f"layer_{name}"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in RESERVED:
        name = f"{name}_"
    return name


def class_name(text: str) -> str:
    """CamelCase class name from the graph's name ('tiny-resnet' -> 'TinyResnet')."""
    words = re.findall(r"[0-9a-zA-Z]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words)[:40] or "Model"
    if name[0].isdigit():
        name = f"Net{name}"
    if keyword.iskeyword(name) or name in {"Tensor", "Module", *HELPER_NAMES}:
        name = f"{name}Model"
    return name


def safe_text(text: str) -> str:
    """User text for a docstring: letters, digits and plain punctuation only."""
    return re.sub(r"[^0-9A-Za-z _.,:+()-]", "_", text)[:80]


def attribute_names(analysis: Analysis) -> dict[str, str]:
    """A unique identifier for every node of the model, Input and Output excluded."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for node_id in analysis.order:
        if node_id not in analysis.live or analysis.node_type(node_id) in ("Input", "Output"):
            continue
        base = identifier(node_id)
        name, suffix = base, 2
        while name in used:
            name, suffix = f"{base}_{suffix}", suffix + 1
        used.add(name)
        names[node_id] = name
    return names


def generate_source(analysis: Analysis) -> str:
    """The model.py text. Requires a valid analysis (analysis.ok)."""
    if not analysis.ok:
        raise ValueError("cannot generate code for a graph with errors")
    graph = analysis.graph
    names = attribute_names(analysis)
    input_node = next(n for n in graph.nodes if n.type == "Input")
    output_node = next(n for n in graph.nodes if n.type == "Output")
    variables = {input_node.id: "x", **names}
    input_info = analysis.infos[input_node.id]
    output_info = analysis.infos[output_node.id]
    cls = class_name(graph.name)

    init: list[str] = []
    forward: list[str] = []
    helpers: dict[str, str] = {}  # name -> source of what the code calls beyond torch
    for node_id in analysis.order:
        if node_id not in names:
            continue
        node = analysis.nodes[node_id]
        spec = CATALOG[node.type]
        params = analysis.typed[node_id]
        info = analysis.infos[node_id]
        tensors = [
            Tensor(analysis.infos[s].shape or (), analysis.infos[s].dtype or "float32")
            for s in analysis.inputs[node_id]
        ]
        attr = names[node_id]
        args = [variables[s] for s in analysis.inputs[node_id]]
        expression = spec.call(params, attr, args)
        constructor = spec.module(params, tensors) if spec.module is not None else ""
        if spec.helper is not None and _calls(spec.helper[0], constructor + expression):
            helpers[spec.helper[0]] = spec.helper[1]
        shape = shape_text(info.shape or ())
        if spec.module is not None:
            init += _fit(8, f"self.{attr} = {constructor}", shape)
            forward.append(f"{attr} = {expression}")
        else:
            forward.append(f"{attr} = {expression}  # {node.type}: {shape}")

    result = variables[analysis.inputs[output_node.id][0]]
    if forward and forward[-1].startswith(f"{result} = "):
        statement, _, comment = forward.pop().partition("  # ")
        returned = f"return {statement.removeprefix(f'{result} = ')}"
        forward.append(f"{returned}  # {comment}" if comment else returned)
    else:
        forward.append(f"return {result}")
    forward_lines = [line for statement in forward for line in _fit(8, *_split_comment(statement))]

    dtype = "torch.int64" if input_info.dtype == "int64" else "torch.float32"
    input_shape = _tuple_source(input_info.shape or ())
    header = [
        f'"""Generated by NetBuilder from graph {safe_text(graph.name)!r}.'
        f' Input: [B, {", ".join(map(str, input_info.shape or ()))}]."""',
        "",
        "import torch",
        "from torch import nn",
        "",
        f"INPUT_SHAPE = {input_shape}",
        f"INPUT_DTYPE = {dtype}",
        f"OUTPUT_SHAPE = {_tuple_source(output_info.shape or ())}",
    ]
    helper_lines = [line for name in sorted(helpers) for line in ("", "", helpers[name])]
    body = [
        "",
        "",
        f"class {cls}(nn.Module):",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *init,
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        *forward_lines,
        "",
        "",
        "def build_model() -> nn.Module:",
        f"    return {cls}()",
    ]
    return "\n".join(header + helper_lines + body) + "\n"


def _calls(name: str, code: str) -> bool:
    """Whether generated code calls `name` (a helper function or class of model.py)."""
    return re.search(rf"\b{name}\(", code) is not None


def _tuple_source(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _split_comment(statement: str) -> tuple[str, str | None]:
    code, _, comment = statement.partition("  # ")
    return code, comment or None


def _fit(indent: int, code: str, comment: str | None = None) -> list[str]:
    """Lines for one statement, black-style: a trailing comment moves above a long line, and a
    statement still too long is wrapped by black itself (rare: long constructor calls)."""
    pad = " " * indent
    if comment is not None and len(pad) + len(code) + len(comment) + 4 <= LINE_LENGTH:
        return [f"{pad}{code}  # {comment}"]
    lines = [f"{pad}# {comment}"] if comment is not None else []
    if len(pad) + len(code) <= LINE_LENGTH:
        return lines + [pad + code]
    import black

    wrapped = black.format_str(code, mode=black.Mode(line_length=LINE_LENGTH - indent))
    return lines + [pad + line if line else line for line in wrapped.rstrip("\n").split("\n")]


def generated_module(source: str, filename: str = "model.py") -> types.ModuleType:
    """Execute generated source (model.py, discriminator.py) as a fresh module: the one place
    NetBuilder turns the code it generated into Python objects. Only ever this module's own
    output, whose user text is sanitised; a person's own file goes through the importer's
    sandboxed loader instead."""
    module = types.ModuleType(f"netbuilder_{PurePath(filename).stem}")
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def load_model_source(source: str, filename: str = "model.py") -> Any:
    """The model that generated source builds (its build_model())."""
    return generated_module(source, filename).build_model()
