"""The graph file format (../shared/GRAPH_FORMAT.md, version 1) as pydantic models.

Everything that reads or writes a graph goes through `load_graph` / `dump_graph`, so a malformed
file is rejected in one place, with one message that names the node and the field.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from builder.catalog import CATALOG, param_problem
from i18n import N_, Message, msg

FORMAT = "netbuilder.graph/1"
MAX_FILE_BYTES = 2_000_000
MAX_NODES = 2_000
MAX_EDGES = 8_000
MAX_TEXT = 200


class GraphFormatError(ValueError):
    """The file cannot be read as a graph (the compiler's exit code 2). `text` is the sentence
    as a Message, to render in the reader's language; str() is its English."""

    def __init__(self, text: Message | str) -> None:
        self.text = text if isinstance(text, Message) else msg("{problem}", problem=text)
        super().__init__(str(self.text))


class Node(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=MAX_TEXT)
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    position: tuple[float, float] | None = None
    label: str | None = Field(default=None, max_length=MAX_TEXT)
    # The dotted path of the module it came from in imported source ("layer1.0.conv1"): the
    # canvas groups nodes by it. Optional, left out of the file when absent.
    module: str | None = Field(default=None, max_length=MAX_TEXT)


class Edge(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str = Field(max_length=MAX_TEXT)
    target: str = Field(max_length=MAX_TEXT)
    port: int = Field(default=0, ge=0, le=1000)


class Graph(BaseModel):
    """A whole graph file. `params` stay plain dicts here; `typed_params` validates them."""

    model_config = ConfigDict(extra="allow")

    format: str
    name: str = Field(default="model", max_length=MAX_TEXT)
    nodes: list[Node] = Field(max_length=MAX_NODES)
    edges: list[Edge] = Field(default_factory=list, max_length=MAX_EDGES)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(f"format must be '{FORMAT}', got {value!r}")
        return value

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)


def typed_params(node: Node) -> BaseModel:
    """Validate a node's params against its catalog entry; raises GraphFormatError."""
    spec = CATALOG[node.type]
    try:
        return spec.params.model_validate(node.params)
    except ValidationError as exc:
        raise GraphFormatError(
            msg(
                "node {node!r} ({layer}): {problem}",
                node=node.id,
                layer=node.type,
                problem=param_problem(spec.params, exc, node.params),
            )
        ) from None


def parse_graph(data: Any) -> Graph:
    """Turn decoded JSON into a checked Graph: known types, valid params, unique ids."""
    if not isinstance(data, dict):
        raise GraphFormatError(msg("a graph file must hold a JSON object"))
    nodes = data.get("nodes")
    if isinstance(nodes, list) and len(nodes) > MAX_NODES:
        raise GraphFormatError(
            msg("too many nodes: {count} (the limit is {limit})", count=len(nodes), limit=MAX_NODES)
        )
    try:
        graph = Graph.model_validate(data)
    except ValidationError as exc:
        raise GraphFormatError(_describe_graph_error(exc)) from None
    seen: set[str] = set()
    for node in graph.nodes:
        if node.type not in CATALOG:
            raise GraphFormatError(
                msg(
                    "node {node!r}: unknown layer type {layer!r} (known: {known})",
                    node=node.id,
                    layer=node.type,
                    known=", ".join(sorted(CATALOG)),
                )
            )
        if node.id in seen:
            raise GraphFormatError(
                msg("node id {node!r} appears more than once; ids must be unique", node=node.id)
            )
        seen.add(node.id)
        typed_params(node)
    return graph


def load_graph(text: str | bytes) -> Graph:
    """Parse a graph file's text, capped at MAX_FILE_BYTES."""
    if len(text) > MAX_FILE_BYTES:
        raise GraphFormatError(too_large(len(text)))
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphFormatError(msg("not valid JSON: {problem}", problem=str(exc))) from None
    except RecursionError:
        raise GraphFormatError(msg("not valid JSON: nested too deeply")) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise GraphFormatError(msg("not valid JSON: {problem}", problem=str(exc))) from None
    return parse_graph(data)


def too_large(size: int) -> Message:
    return msg(
        "file is too large: {size:,} bytes (the limit is {limit:,})",
        size=size,
        limit=MAX_FILE_BYTES,
    )


class NotARegularFile(OSError):
    """A pipe, a device or a socket where a file was expected; `message` says so."""

    def __init__(self) -> None:
        self.message = msg("not a regular file (a pipe or a device cannot be read as one)")
        super().__init__(errno.EINVAL, str(self.message))


def read_file_bounded(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, read no further than `limit` (+1, to tell that it is over):
    a FIFO, /dev/zero or a socket is refused at once, and a file that grows while read stops
    at the cap. OSError (with a sentence for the refusals) where it cannot be read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO does not block open
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile()
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_graph_file(path: str | os.PathLike[str]) -> Graph:
    """A graph file from disk: bounded (see read_file_bounded), then load_graph. OSError where
    it cannot be read, GraphFormatError where it is no graph."""
    return load_graph(read_file_bounded(path))


def dump_graph(graph: Graph) -> str:
    """The file text for a graph: stable key order, indented, unset optional fields left out."""
    return graph.model_dump_json(exclude_none=True, indent=2) + "\n"  # 20x json.dumps(indent)


# pydantic's error types a graph file meets, in the reader's language (its own words are English)
_PYDANTIC_PROBLEMS = {
    "missing": N_("this field is required"),
    "extra_forbidden": N_("this field is not part of the format"),
    "string_type": N_("must be text"),
    "list_type": N_("must be a list"),
    "dict_type": N_("must be an object"),
    "model_type": N_("must be an object"),
    "model_attributes_type": N_("must be an object"),
    "int_type": N_("must be a whole number"),
    "int_parsing": N_("must be a whole number"),
    "int_from_float": N_("must be a whole number"),
    "float_type": N_("must be a number"),
    "float_parsing": N_("must be a number"),
    "bool_type": N_("must be true or false"),
    "bool_parsing": N_("must be true or false"),
}


def _pydantic_problem(error: Any) -> Message:
    """One pydantic error as a Message: a known type in words of ours, a validator's own
    sentence (N_-marked where it is raised) translated where known."""
    known = _PYDANTIC_PROBLEMS.get(error["type"])
    if known is not None:
        return msg(known)
    return msg(error["msg"].removeprefix("Value error, "))


def os_reason(exc: OSError) -> Message:
    """Why a file could not be read, in the reader's language (strerror is English)."""
    if isinstance(getattr(exc, "message", None), Message):
        return exc.message  # type: ignore[attr-defined]
    reasons = {
        errno.ENOENT: N_("no such file or folder"),
        errno.EACCES: N_("permission denied"),
        errno.EISDIR: N_("it is a folder, not a file"),
        errno.ENOTDIR: N_("a part of the path is not a folder"),
    }
    known = reasons.get(exc.errno or 0)
    return msg(known) if known else msg("{problem}", problem=exc.strerror or str(exc))


def _describe_graph_error(exc: ValidationError) -> Message:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "file"
    problem = _pydantic_problem(first)
    if exc.error_count() > 1:
        return msg(
            "{where}: {problem} ({count} problems)",
            where=where,
            problem=problem,
            count=exc.error_count(),
        )
    return msg("{where}: {problem}", where=where, problem=problem)


def graph_schema() -> dict[str, Any]:
    """JSON Schema of the file format, with each layer type's params schema attached."""
    schema = Graph.model_json_schema()
    layer_schemas = []
    for name, spec in CATALOG.items():
        params = spec.params.model_json_schema()
        schema["$defs"][f"{name}Params"] = params
        layer_schemas.append(
            {
                "properties": {
                    "type": {"const": name},
                    "params": {"$ref": f"#/$defs/{name}Params"},
                },
            }
        )
    schema["$defs"]["Node"]["properties"]["type"] = {"enum": list(CATALOG)}
    schema["$defs"]["Node"]["allOf"] = [
        {"if": {"properties": {"type": {"const": s["properties"]["type"]["const"]}}}, "then": s}
        for s in layer_schemas
    ]
    schema["properties"]["format"] = {"const": FORMAT}
    schema["title"] = "NetBuilder graph, version 1"
    return schema
