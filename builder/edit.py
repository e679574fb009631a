"""Pure graph edits for the Build page: every function takes a Graph and returns a new one.

Graphs are never changed in place, so the undo history can keep plain references to old graphs.
The page, the canvas adapter and the one-click fixes all edit through these functions.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, NamedTuple

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError

from builder.catalog import CATALOG, param_problem
from builder.graph import FORMAT, Edge, Graph, Node
from builder.layout import CANVAS_ORIGIN, COLUMN_WIDTH, ROW_HEIGHT
from i18n import Message, msg

HISTORY_LIMIT = 100
BLANK_INPUT_SHAPE = [1, 8, 8]  # the built-in digits: a blank canvas trains as soon as it has layers
# The built-in datasets' sample shapes and class counts (runtime/datasets.py; a test keeps them
# equal): a Linear that feeds the Output of a model with such an input gets one output per class.
KNOWN_INPUTS: dict[tuple[int, ...], tuple[str, int]] = {
    (1, 8, 8): ("digits", 10),
    (1, 28, 28): ("digits-28", 10),
    (8, 8): ("digits-rows", 10),
    (16,): ("tokens", 16),
}


class Unset(Enum):
    """A param value meaning "use the default": set_params removes the key."""

    UNSET = "unset"


UNSET = Unset.UNSET


class EditError(ValueError):
    """An edit that cannot apply to this graph (a fix naming a node that no longer exists...)."""


# ---------------------------------------------------------------------------------------------
# Undo / redo


@dataclass(frozen=True)
class History:
    """The present graph with the graphs before it (undo) and after it (redo), newest last."""

    present: Graph
    past: tuple[Graph, ...] = ()
    future: tuple[Graph, ...] = field(default=())

    @property
    def can_undo(self) -> bool:
        return bool(self.past)

    @property
    def can_redo(self) -> bool:
        return bool(self.future)


def record(history: History, graph: Graph) -> History:
    """Make `graph` the present, keep the old present for undo, and drop the redo branch."""
    past = (history.past + (history.present,))[-HISTORY_LIMIT:]
    return History(graph, past, ())


def replace(history: History, graph: Graph) -> History:
    """Change the present without an undo step (a node dragged to a new position)."""
    return History(graph, history.past, history.future)


def undo(history: History) -> History:
    if not history.past:
        return history
    return History(history.past[-1], history.past[:-1], (history.present,) + history.future)


def redo(history: History) -> History:
    if not history.future:
        return history
    return History(history.future[0], history.past + (history.present,), history.future[1:])


# ---------------------------------------------------------------------------------------------
# Nodes and edges


def new_node_id(graph: Graph, layer_type: str) -> str:
    """A readable id not yet in the graph: conv2d_1, conv2d_2, ..."""
    stem = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", layer_type).lower()
    taken = {node.id for node in graph.nodes}
    number = 1
    while f"{stem}_{number}" in taken:
        number += 1
    return f"{stem}_{number}"


def starter_params(layer_type: str, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Values for the required params of a freshly added layer, fitted to its input if known
    (its entry's `starter`, then its `fitted_starter` of the input shape).

    A new Linear or Conv2d is valid at once, so the canvas shows a shape instead of an error.
    """
    spec = CATALOG.get(layer_type)
    if spec is None:
        return {}
    starter = copy.deepcopy(dict(spec.starter))
    if input_shape and spec.fitted_starter is not None:
        starter.update(spec.fitted_starter(tuple(input_shape)))
    return starter


class Placement(NamedTuple):
    """Where a new layer goes: the node it follows, its position, the edge it is spliced into
    (an index into graph.edges) and the nodes moved down a row to make room. The canvas draws an
    added layer at once from this plan, before the page's answer arrives."""

    anchor: str | None
    position: tuple[float, float]
    splice: int | None
    shifted: frozenset[str]


def placement(graph: Graph, layer_type: str, after: str | None) -> Placement:
    """The plan add_node_after follows (see there)."""
    anchor = anchor_for(graph, after) if layer_type != "Input" else None
    position = _below(graph, anchor)
    if anchor is None:
        return Placement(None, position, None, frozenset())
    outgoing = [i for i, edge in enumerate(graph.edges) if edge.source == anchor]
    if len(outgoing) == 1 and CATALOG[layer_type].max_inputs != 0:
        below = _downstream(graph.edges, graph.edges[outgoing[0]].target)
        return Placement(anchor, position, outgoing[0], frozenset(below))
    return Placement(anchor, position, None, frozenset())


def add_node_after(
    graph: Graph,
    layer_type: str,
    after: str | None,
    shapes: Mapping[str, tuple[int, ...] | None] | None = None,
) -> tuple[Graph, str]:
    """Add a layer and wire it where a person building a chain expects it; returns the new id.

    After a node with one outgoing edge the layer is spliced into that edge; after a node with
    none it is appended; after a branch point it starts a new branch. With no selection (or the
    Output selected) it goes just before the Output. An Input is added unconnected. `shapes`
    (node id -> output shape) lets the starter params fit the input, e.g. heads dividing width.
    """
    if layer_type not in CATALOG:
        raise EditError(f"unknown layer type {layer_type!r}")
    node_id = new_node_id(graph, layer_type)
    plan = placement(graph, layer_type, after)
    input_shape = (shapes or {}).get(plan.anchor) if plan.anchor is not None else None
    node = Node(
        id=node_id,
        type=layer_type,
        params=starter_params(layer_type, input_shape),
        position=plan.position,
    )
    if plan.anchor is None:
        return graph.model_copy(update={"nodes": [*graph.nodes, node]}), node_id
    edges = list(graph.edges)
    nodes = list(graph.nodes)
    if plan.splice is not None:
        old = edges[plan.splice]
        edges[plan.splice] = Edge(source=plan.anchor, target=node_id)
        edges.append(Edge(source=node_id, target=old.target, port=old.port))
        nodes = _shift_down(nodes, set(plan.shifted), ROW_HEIGHT)
    else:
        edges.append(Edge(source=plan.anchor, target=node_id))
    return graph.model_copy(update={"nodes": [*nodes, node], "edges": edges}), node_id


def anchor_for(graph: Graph, after: str | None) -> str | None:
    """The node a new layer follows: the selection, or the Output's input when there is none."""
    ids = {node.id for node in graph.nodes}
    if after in ids and graph.node(after).type != "Output":
        return after
    outputs = [n.id for n in graph.nodes if n.type == "Output"]
    feeding = [edge.source for edge in graph.edges if outputs and edge.target == outputs[0]]
    return feeding[0] if feeding else None


def _below(graph: Graph, anchor: str | None) -> tuple[float, float]:
    placed = [node.position for node in graph.nodes if node.position is not None]
    if anchor is not None and graph.node(anchor).position is not None:
        x, y = graph.node(anchor).position  # type: ignore[misc]
        return (x, y + ROW_HEIGHT)
    if not placed:
        return CANVAS_ORIGIN
    return (max(x for x, _ in placed) + COLUMN_WIDTH, min(y for _, y in placed))


def _downstream(edges: list[Edge], start: str) -> set[str]:
    """`start` and every node reachable from it."""
    found, todo = {start}, [start]
    while todo:
        current = todo.pop()
        for edge in edges:
            if edge.source == current and edge.target not in found:
                found.add(edge.target)
                todo.append(edge.target)
    return found


def _shift_down(nodes: list[Node], which: set[str], dy: float) -> list[Node]:
    return [
        (
            node.model_copy(update={"position": (node.position[0], node.position[1] + dy)})
            if node.id in which and node.position is not None
            else node
        )
        for node in nodes
    ]


def delete_nodes(graph: Graph, node_ids: set[str]) -> Graph:
    """Remove nodes and their edges; a node that had one input and one output is bridged over.

    Deleting a ReLU out of conv -> relu -> pool leaves conv -> pool, as a person expects, and
    pool and what follows it move up into the gap, so the chain stays where it was on screen.
    """
    edges = list(graph.edges)
    nodes = list(graph.nodes)
    for node_id in node_ids:
        into = [e for e in edges if e.target == node_id and e.source not in node_ids]
        out_of = [e for e in edges if e.source == node_id and e.target not in node_ids]
        edges = [e for e in edges if node_id not in (e.source, e.target)]
        if len(into) == 1 and len(out_of) == 1:
            edges.append(Edge(source=into[0].source, target=out_of[0].target, port=out_of[0].port))
            nodes = _close_gap(nodes, edges, node_id, out_of[0].target)
    kept = [node for node in nodes if node.id not in node_ids]
    return graph.model_copy(update={"nodes": kept, "edges": edges})


def _close_gap(nodes: list[Node], edges: list[Edge], deleted: str, follower: str) -> list[Node]:
    """Move `follower` and everything below it up to where the deleted node sat (a chain only)."""
    where = {node.id: node.position for node in nodes}
    gone, below = where.get(deleted), where.get(follower)
    single_input = sum(1 for e in edges if e.target == follower) == 1
    if gone is None or below is None or below[1] <= gone[1] or not single_input:
        return nodes
    return _shift_down(nodes, _downstream(edges, follower) - {deleted}, gone[1] - below[1])


def connect(graph: Graph, source: str, target: str) -> Graph:
    """Add an edge; its port follows the target's existing inputs (Concat joins in that order)."""
    ids = {node.id for node in graph.nodes}
    for end in (source, target):
        if end not in ids:
            raise EditError(f"no node {end!r} to connect")
    if source == target:
        raise EditError(f"cannot connect {source!r} to itself")
    ports = [edge.port for edge in graph.edges if edge.target == target]
    edge = Edge(source=source, target=target, port=max(ports) + 1 if ports else 0)
    return graph.model_copy(update={"edges": [*graph.edges, edge]})


def set_params(graph: Graph, node_id: str, params: dict[str, Any]) -> Graph:
    """Merge `params` into a node's params (UNSET removes the key, so the default applies)."""
    if node_id not in {node.id for node in graph.nodes}:
        raise EditError(f"no node {node_id!r}")
    nodes = []
    for node in graph.nodes:
        if node.id == node_id:
            merged = {**node.params, **params}
            merged = {key: value for key, value in merged.items() if value is not UNSET}
            node = node.model_copy(update={"params": merged})
        nodes.append(node)
    return graph.model_copy(update={"nodes": nodes})


def insert_between(
    graph: Graph, layer_type: str, params: dict[str, Any], source: str, target: str
) -> tuple[Graph, str]:
    """Put a new layer on the edge source -> target, keeping that edge's port."""
    edge = next((e for e in graph.edges if e.source == source and e.target == target), None)
    if edge is None:
        raise EditError(f"no edge {source!r} -> {target!r} to insert into")
    if layer_type not in CATALOG:
        raise EditError(f"unknown layer type {layer_type!r}")
    node_id = new_node_id(graph, layer_type)
    nodes = list(graph.nodes)
    position = None
    if graph.node(source).position is not None:
        # a row below the source, and the target and all after it a row further down, as a
        # palette click does: the new layer never lands on top of another
        position = _below(graph, source)
        nodes = _shift_down(nodes, _downstream(graph.edges, target), ROW_HEIGHT)
    node = Node(id=node_id, type=layer_type, params=dict(params), position=position)
    edges = [e for e in graph.edges if e is not edge] + [
        Edge(source=source, target=node_id),
        Edge(source=node_id, target=target, port=edge.port),
    ]
    return graph.model_copy(update={"nodes": [*nodes, node], "edges": edges}), node_id


def apply_fix(graph: Graph, fix: dict[str, Any]) -> Graph:
    """Apply a compiler fix (GRAPH_FORMAT.md): {"insert": ..., "between": [a, b]}, {"set": ...}
    or {"remove": {"node": id}} (the node is bridged over, as delete_nodes does)."""
    if "remove" in fix:
        return delete_nodes(graph, {fix["remove"]["node"]})
    if "set" in fix:
        return set_params(graph, fix["set"]["node"], dict(fix["set"]["params"]))
    if "insert" in fix:
        source, target = fix["between"]
        inserted = fix["insert"]
        return insert_between(graph, inserted["type"], inserted.get("params", {}), source, target)[
            0
        ]
    raise EditError(f"unknown fix {sorted(fix)}")


def rename_graph(graph: Graph, name: str) -> Graph:
    return graph.model_copy(update={"name": name})


def blank_graph(name: str = "model") -> Graph:
    """A new canvas: an Input wired to the Output, so each palette click lands between them."""
    x, y = CANVAS_ORIGIN
    nodes = [
        Node(id="input", type="Input", params={"shape": list(BLANK_INPUT_SHAPE)}, position=(x, y)),
        Node(id="output", type="Output", params={}, position=(x, y + ROW_HEIGHT)),
    ]
    return Graph(
        format=FORMAT, name=name, nodes=nodes, edges=[Edge(source="input", target="output")]
    )


def fit_to_output(graph: Graph, node_id: str) -> tuple[Graph, Message | None]:
    """A Linear just added in front of the Output gets one output per class of the dataset its
    Input matches (10 for the digits), and says so; any other node is left as it is."""
    node = graph.node(node_id)
    targets = [graph.node(e.target).type for e in graph.edges if e.source == node_id]
    inputs = [n for n in graph.nodes if n.type == "Input"]
    if node.type != "Linear" or targets != ["Output"] or len(inputs) != 1:
        return graph, None
    known = KNOWN_INPUTS.get(tuple(inputs[0].params.get("shape") or ()))
    if known is None:
        return graph, None
    dataset, classes = known
    reason = msg(
        "{node} gets {classes} outputs: it feeds the Output, and the {dataset} data has"
        " {classes} classes.",
        node=node_id,
        classes=classes,
        dataset=dataset,
    )
    return set_params(graph, node_id, {"out_features": classes}), reason


# ---------------------------------------------------------------------------------------------
# Parameter forms: what widget each param gets, and how typed text becomes a value


FieldKind = Literal["bool", "choice", "int", "float", "text"]


@dataclass(frozen=True)
class ParamField:
    """One parameter as the form shows it; "text" takes JSON-like input: 3, [3, 5], same, none."""

    name: str
    kind: FieldKind
    required: bool
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


def param_fields(layer_type: str) -> list[ParamField]:
    """The form for a layer type, read from its catalog params model (types, ranges, choices)."""
    fields = []
    for name, info in CATALOG[layer_type].params.model_fields.items():
        kind, choices = _kind(info.annotation)
        minimum, maximum = _bounds(info.metadata)
        fields.append(
            ParamField(
                name=name,
                kind=kind,
                required=info.is_required(),
                default=None if info.is_required() else info.default,
                help=info.description or "",
                choices=choices,
                minimum=minimum,
                maximum=maximum,
            )
        )
    return fields


def _kind(annotation: Any) -> tuple[FieldKind, tuple[Any, ...]]:
    if annotation is bool:
        return "bool", ()
    if typing.get_origin(annotation) is Literal:
        return "choice", typing.get_args(annotation)
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    return "text", ()


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    minimum = next((m.ge for m in metadata if isinstance(m, Ge)), None)
    if minimum is None:
        minimum = next((m.gt for m in metadata if isinstance(m, Gt)), None)
    maximum = next((m.le for m in metadata if isinstance(m, Le)), None)
    if maximum is None:
        maximum = next((m.lt for m in metadata if isinstance(m, Lt)), None)
    return minimum, maximum


MAX_TEXT_VALUE = 200  # characters: the longest parameter value a layer takes is a short list


class ParamTextError(ValueError):
    """Typed text that is no parameter value at all (too long, nested too deep, a number too
    long to read); carries the sentence to show beside the field."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


def parse_text_value(text: str) -> Any:
    """Typed text to a value: '' -> UNSET (the default), none or null -> None, '3' -> 3,
    '3, 5' or '[3, 5]' -> [3, 5], same -> 'same'. Raises ParamTextError for text no parameter
    could take, before parsing it (a page must not spend its recursion or CPU on it)."""
    stripped = text.strip()
    if len(stripped) > MAX_TEXT_VALUE:
        raise ParamTextError(
            msg(
                "a parameter value is at most {limit} characters; this one has {count}",
                limit=MAX_TEXT_VALUE,
                count=len(stripped),
            )
        )
    if not stripped:
        return UNSET
    if stripped.lower() in ("none", "null"):
        return None
    if "," in stripped and not stripped.startswith("["):
        stripped = f"[{stripped.rstrip(', ')}]"  # '3, 5' and '784,' are lists
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return stripped.strip("'\"")
    except (RecursionError, ValueError):  # '[[[[...' or a number of thousands of digits
        raise ParamTextError(
            msg("{typed} is not a value a parameter can take", typed=stripped[:40])
        )


def value_text(value: Any) -> str:
    """The text a "text" field shows for a value (the inverse of parse_text_value)."""
    if value is UNSET:
        return ""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def typed_value(layer_type: str, params: Mapping[str, Any], name: str, value: Any) -> Any:
    """A lone number typed where the field takes only a list (an Input's shape: `784`) is the
    list of that one number; everything else is as typed. So `784`, `[784]` and `784,` agree."""
    if isinstance(value, int) and not isinstance(value, bool):
        if check_param(layer_type, params, name, value) and not check_param(
            layer_type, params, name, [value]
        ):
            return [value]
    return value


def check_param(
    layer_type: str, params: Mapping[str, Any], name: str, value: Any
) -> Message | None:
    """None when params with name=value validate, else the reason, to render in the reader's
    language (nothing is changed)."""
    model = CATALOG[layer_type].params
    candidate = {**params, name: value}
    if value is UNSET:
        candidate.pop(name)
    try:
        model.model_validate(candidate)
    except ValidationError as exc:
        return param_problem(model, exc, candidate)
    return None
