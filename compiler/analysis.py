"""Validation and shape inference: Graph -> Analysis (shapes, counts, diagnostics). Pure.

Every independent problem is reported at once, each on the node it belongs to; a node downstream
of an error gets shape None instead of a second, confusing error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
from pydantic import ValidationError

from builder.catalog import (
    CATALOG,
    MAX_SIZE,
    Fix,
    LayerError,
    SEQUENCE_TYPES,
    OutputParams,
    Params,
    Tensor,
    param_problem,
    shape_text,
)
from builder.graph import Graph, Node
from i18n import Message, msg

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    """One problem, on one node where there is one, with an optional suggested edit as data.

    `text` is a Message (template + values) that the page renders in the reader's language;
    `message` is its English. `fix` is the contract's data (its "why" in English) and `why` the
    same reason as a Message."""

    node: str | None
    text: Message
    severity: Severity = "error"
    fix: dict[str, Any] | None = None
    why: Message | None = None

    @property
    def message(self) -> str:
        return str(self.text)

    def to_json(self, lang: str | None = None) -> dict[str, Any]:
        """The check report's entry: message (in lang, English by default), code and values."""
        out: dict[str, Any] = {
            "node": self.node,
            "message": self.text.render(lang or "en"),
            **_problem(self.text).to_json(),
        }
        if self.fix is not None:
            out["fix"] = (
                {**self.fix, "why": self.why.render(lang or "en")} if self.why else self.fix
            )
        return out


@dataclass(frozen=True)
class NodeInfo:
    shape: tuple[int, ...] | None
    dtype: str | None = None
    params: int | None = None
    macs: int | None = None
    explained: Message | None = None

    @property
    def explanation(self) -> str | None:
        """The formula with this node's numbers plugged in, in English (`explained` renders)."""
        return str(self.explained) if self.explained is not None else None


@dataclass
class Analysis:
    graph: Graph
    nodes: dict[str, Node]
    order: list[str]
    inputs: dict[str, list[str]]
    infos: dict[str, NodeInfo]
    typed: dict[str, Params]
    live: set[str]
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def total_params(self) -> int:
        return sum(self.infos[n].params or 0 for n in self.order if n in self.live)

    @property
    def total_macs(self) -> int:
        return sum(self.infos[n].macs or 0 for n in self.order if n in self.live)

    def node_type(self, node_id: str) -> str:
        return self.nodes[node_id].type

    def report(self, lang: str | None = None) -> dict[str, Any]:
        """The `python -m compiler check` object of GRAPH_FORMAT.md (messages in lang)."""
        return {
            "ok": self.ok,
            "nodes": {
                node.id: {
                    "shape": list(info.shape) if info.shape is not None else None,
                    "params": info.params,
                    "macs": info.macs,
                    "dtype": info.dtype,
                }
                for node in self.graph.nodes
                for info in [self.infos.get(node.id, NodeInfo(None))]
            },
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "errors": [d.to_json(lang) for d in self.errors],
            "warnings": [d.to_json(lang) for d in self.warnings],
        }


def analyse(graph: Graph) -> Analysis:
    """Validate the graph and infer every shape, parameter count and MAC count."""
    diagnostics: list[Diagnostic] = []
    index = {node.id: position for position, node in enumerate(graph.nodes)}
    nodes = {node.id: node for node in graph.nodes}
    dag = nx.DiGraph()  # structure only: repeated edges (x + x) live in `inputs`
    dag.add_nodes_from(index)
    incoming: dict[str, list[tuple[int, int, str]]] = {node_id: [] for node_id in index}
    for order, edge in enumerate(graph.edges):
        missing = [end for end in (edge.source, edge.target) if end not in nodes]
        if missing:
            known = edge.target if edge.source in missing else edge.source
            diagnostics.append(
                Diagnostic(
                    known if known in nodes else None,
                    msg(
                        "edge {source!r} -> {target!r} refers to no node {missing!r}; remove the"
                        " edge or add the node",
                        source=edge.source,
                        target=edge.target,
                        missing=missing[0],
                    ),
                )
            )
            continue
        dag.add_edge(edge.source, edge.target)
        incoming[edge.target].append((edge.port, order, edge.source))
    inputs = {n: [source for _, _, source in sorted(edges)] for n, edges in incoming.items()}

    diagnostics += _check_ends(graph, dag)
    blocked = set()
    for cycle_nodes, component in _cycles(dag, index):
        blocked |= component
        path = " -> ".join(repr(n) for n in cycle_nodes + [cycle_nodes[0]])
        diagnostics.append(
            Diagnostic(cycle_nodes[0], msg("cycle {path}; remove one of these edges", path=path))
        )

    acyclic = dag.subgraph(n for n in index if n not in blocked) if blocked else dag
    order = list(nx.lexicographical_topological_sort(acyclic, key=index.__getitem__))
    typed, unreadable = _typed_params(graph.nodes)
    diagnostics += unreadable
    infos: dict[str, NodeInfo] = {node_id: NodeInfo(None) for node_id in blocked}
    for node_id in order:
        if node_id not in typed:
            infos[node_id] = NodeInfo(None)
            continue
        info, found = _infer_node(nodes[node_id], typed[node_id], inputs[node_id], infos, nodes)
        infos[node_id] = info
        diagnostics += found

    live = _live_nodes(graph, dag)
    for node_id in order:
        node_type = nodes[node_id].type
        if node_id in live or infos[node_id].shape is None or node_type in ("Input", "Output"):
            continue
        diagnostics.append(
            Diagnostic(
                node_id,
                msg(
                    "{layer} {node!r} does not lead to the Output, so it is left out of the"
                    " model; connect it or delete it",
                    layer=node_type,
                    node=node_id,
                ),
                "warning",
            )
        )
    return Analysis(graph, nodes, order, inputs, infos, typed, live, diagnostics)


def output_loss(graph: Graph) -> OutputParams:
    """The loss the graph's Output asks for (the defaults where it has none or it is unreadable)."""
    output = next((node for node in graph.nodes if node.type == "Output"), None)
    if output is None:
        return OutputParams()
    try:
        return OutputParams.model_validate(output.params)
    except ValidationError:
        return OutputParams()


def loss_of(analysis: Analysis) -> OutputParams:
    """The Output's loss and label_smoothing, as analysed."""
    return output_loss(analysis.graph)


def resolved_loss(loss: str, integer_targets: bool) -> str:
    """'auto' made concrete: cross_entropy for integer class targets, mse for float targets."""
    if loss != "auto":
        return loss
    return "cross_entropy" if integer_targets else "mse"


def _typed_params(nodes: list[Node]) -> tuple[dict[str, Params], list[Diagnostic]]:
    """Each node's params as its catalog model; an in-memory graph may hold bad ones."""
    typed: dict[str, Params] = {}
    found: list[Diagnostic] = []
    for node in nodes:
        spec = CATALOG.get(node.type)
        if spec is None:
            found.append(
                Diagnostic(
                    node.id,
                    msg("{node!r}: unknown layer type {layer!r}", node=node.id, layer=node.type),
                )
            )
            continue
        try:
            typed[node.id] = spec.params.model_validate(node.params)
        except ValidationError as exc:
            problem = param_problem(spec.params, exc, node.params)
            found.append(Diagnostic(node.id, _labelled(node, problem)))
    return typed, found


LABELLED = "{layer} {node!r}: {problem}"


def _labelled(node: Node, problem: Message | str) -> Message:
    """'Conv2d 'c1': <problem>': every node's message starts with its layer and id."""
    return msg(LABELLED, layer=node.type, node=node.id, problem=problem)


def _problem(text: Message) -> Message:
    """The problem inside a labelled message: its template is the diagnostic's code."""
    inner = text.values.get("problem") if text.text == LABELLED else None
    return inner if isinstance(inner, Message) else text


def _check_ends(graph: Graph, dag: nx.DiGraph) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for kind in ("Input", "Output"):
        ends = [node.id for node in graph.nodes if node.type == kind]
        if not ends:
            found.append(Diagnostic(None, msg("the graph has no {kind} node; add one", kind=kind)))
        for extra in ends[1:]:
            found.append(
                Diagnostic(
                    extra,
                    msg(
                        "{kind} {node!r}: a model has exactly one {kind}; delete this one",
                        kind=kind,
                        node=extra,
                    ),
                )
            )
    for node in graph.nodes:
        if node.type == "Output" and dag.out_degree(node.id):
            targets = ", ".join(repr(t) for t in dag.successors(node.id))
            found.append(
                Diagnostic(
                    node.id,
                    msg(
                        "Output {node!r} must be last; remove its edge to {targets}",
                        node=node.id,
                        targets=targets,
                    ),
                )
            )
    return found


def _cycles(dag: nx.DiGraph, index: dict[str, int]) -> list[tuple[list[str], set[str]]]:
    """One cycle per strongly connected component that has one (as an ordered list of ids),
    with the whole component: every node in it is blocked, however many cycles it holds."""
    cycles = []
    for component in nx.strongly_connected_components(dag):
        start = min(component, key=index.__getitem__)
        if len(component) == 1 and not dag.has_edge(start, start):
            continue
        edges = nx.find_cycle(dag.subgraph(component), source=start)
        cycles.append(([edge[0] for edge in edges], set(component)))
    return sorted(cycles, key=lambda c: index[c[0][0]])


def _live_nodes(graph: Graph, dag: nx.DiGraph) -> set[str]:
    """The nodes that lie on a path from the Input to the Output: these make up the model."""
    starts = [n.id for n in graph.nodes if n.type == "Input"][:1]
    ends = [n.id for n in graph.nodes if n.type == "Output"][:1]
    if not starts or not ends:
        return set()
    reach = nx.descendants(dag, starts[0]) | {starts[0]}
    back = nx.ancestors(dag, ends[0]) | {ends[0]}
    return reach & back


def _infer_node(
    node: Node,
    params: Params,
    sources: list[str],
    infos: dict[str, NodeInfo],
    nodes: dict[str, Node],
) -> tuple[NodeInfo, list[Diagnostic]]:
    spec = CATALOG[node.type]
    arity = _arity_problem(node, len(sources), spec.min_inputs, spec.max_inputs)
    if arity:
        return NodeInfo(None), [Diagnostic(node.id, _labelled(node, arity))]
    upstream = [infos[s] for s in sources]
    if any(info.shape is None for info in upstream):
        return NodeInfo(None), []
    tensors = [
        Tensor(info.shape, info.dtype or "float32", nodes[s].type, nodes[s].type in SEQUENCE_TYPES)
        for info, s in zip(upstream, sources, strict=True)
        if info.shape is not None
    ]
    if not spec.takes_token_ids and any(t.dtype == "int64" for t in tensors):
        return NodeInfo(None), [
            Diagnostic(
                node.id,
                _labelled(
                    node,
                    msg(
                        "gets int64 token ids, which only an Embedding can take; insert an"
                        " Embedding before it"
                    ),
                ),
            )
        ]
    try:
        out = spec.infer(params, tensors)
    except LayerError as exc:
        return NodeInfo(None), [_diagnostic(node, exc.text, "error", exc.fix, sources)]
    if any(size > MAX_SIZE for size in out.shape):
        problem = msg(
            "gives {shape}: a size above {limit:,}, which no model can hold",
            shape=shape_text(out.shape) if max(out.shape).bit_length() < 128 else "[...]",
            limit=MAX_SIZE,
        )
        return NodeInfo(None), [Diagnostic(node.id, _labelled(node, problem))]
    advice = [
        _diagnostic(node, a.text, "warning", a.fix, sources) for a in spec.advise(params, tensors)
    ]
    info = NodeInfo(
        shape=out.shape,
        dtype=out.dtype,
        params=spec.count_params(params, tensors),
        macs=spec.macs(params, tensors, out),
        explained=spec.explain(params, tensors, out) if spec.explain else None,
    )
    return info, advice


def _diagnostic(
    node: Node, text: Message, severity: Severity, fix: Fix | None, sources: list[str]
) -> Diagnostic:
    return Diagnostic(
        node.id,
        _labelled(node, text),
        severity,
        _fix_json(fix, node, sources),
        fix.why if fix is not None else None,
    )


def _arity_problem(node: Node, count: int, least: int, most: int | None) -> Message | None:
    if node.type == "Input":
        return msg("an Input takes no inputs; remove the edges into it") if count else None
    if count == 0:
        return msg("has no input; connect a layer into it")
    if count < least:
        return msg(
            "needs at least {least} inputs, has {count}; connect another layer into it",
            least=least,
            count=count,
        )
    if most is not None and count > most:
        return msg(
            "takes exactly {most} input, has {count}; merge them first with Add or Concat",
            most=most,
            count=count,
        )
    return None


def _fix_json(fix: Fix | None, node: Node, sources: list[str]) -> dict[str, Any] | None:
    """A catalog Fix (relative to the node) as the contract's data: insert ... between, set, or
    remove the layer feeding the node."""
    if fix is None:
        return None
    why = str(fix.why)
    if fix.remove_input:
        return {"remove": {"node": sources[fix.on_input]}, "why": why}
    if fix.set_params is not None:
        return {"set": {"node": node.id, "params": fix.set_params}, "why": why}
    return {
        "insert": {"type": fix.insert_type, "params": fix.insert_params},
        "between": [sources[fix.on_input], node.id],
        "why": why,
    }


__all__ = [
    "Analysis",
    "Diagnostic",
    "NodeInfo",
    "analyse",
    "loss_of",
    "output_loss",
    "resolved_loss",
]
