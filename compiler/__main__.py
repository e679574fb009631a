"""Command line: `python -m compiler check|export|schema` (see ../shared/GRAPH_FORMAT.md).

Exit codes: 0 valid, 1 a well-formed graph with errors, 2 a file that cannot be read as a graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from builder.graph import MAX_FILE_BYTES, Graph, GraphFormatError, graph_schema, load_graph
from compiler.analysis import analyse
from compiler.codegen import generate_source


def read_graph(path: str) -> Graph:
    """Load a graph file, turning every way it can fail into a GraphFormatError."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise GraphFormatError(
                f"file is too large: {file.stat().st_size:,} bytes (the limit is {MAX_FILE_BYTES:,})"
            )
        return load_graph(file.read_bytes())
    except OSError as exc:
        raise GraphFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def check(args: argparse.Namespace) -> int:
    analysis = analyse(read_graph(args.graph))
    print(json.dumps(analysis.report()))
    return 0 if analysis.ok else 1


def export(args: argparse.Namespace) -> int:
    graph = read_graph(args.graph)
    analysis = analyse(graph)
    if not analysis.ok:
        for error in analysis.errors:
            print(f"error: {error.message}", file=sys.stderr)
        return 1
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.py").write_text(generate_source(analysis))
    print(out / "model.py")
    return 0


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(graph_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="validate a graph; print shapes and errors as JSON")
    check_cmd.add_argument("graph")
    check_cmd.set_defaults(run=check)
    export_cmd = commands.add_parser("export", help="write DIR/model.py for a valid graph")
    export_cmd.add_argument("graph")
    export_cmd.add_argument("-o", "--output", required=True, metavar="DIR")
    export_cmd.set_defaults(run=export)
    schema_cmd = commands.add_parser("schema", help="print the graph file's JSON Schema")
    schema_cmd.set_defaults(run=schema)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GraphFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
