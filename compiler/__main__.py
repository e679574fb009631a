"""Command line: `python -m compiler check|export|schema|import` (see ../shared/GRAPH_FORMAT.md).

Exit codes: 0 valid, 1 a well-formed graph with errors, 2 a file that cannot be read as a graph.
`import`: 0 written, 1 the model uses something NetBuilder cannot represent (each listed),
2 the file cannot be loaded or traced.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from builder.graph import (
    Graph,
    GraphFormatError,
    dump_graph,
    graph_schema,
    os_reason,
    read_file_bounded,
    read_graph_file,
)
import i18n
from compiler.analysis import Diagnostic, analyse
from compiler.gan import pair_problems
from compiler.codegen import generate_source
from compiler.memory import budget_diagnostic, estimate_memory
from i18n import Message, msg

MAX_CONFIG_BYTES = 100_000


def read_graph(path: str) -> Graph:
    """Load a graph file, turning every way it can fail into a GraphFormatError."""
    try:
        return read_graph_file(path)
    except OSError as exc:
        raise GraphFormatError(cannot_read(path, exc)) from None


def cannot_read(path: str, exc: OSError) -> Message:
    return msg("cannot read {path}: {reason}", path=path, reason=os_reason(exc))


def check(args: argparse.Namespace) -> int:
    graph = read_graph(args.graph)
    analysis = analyse(graph)
    report = analysis.report(args.lang) | {"memory": estimate_memory(graph, analysis).to_json()}
    too_big = budget_diagnostic(graph, analysis)
    more = [] if too_big is None else [too_big]
    more += [Diagnostic(None, problem) for problem in pair_problems(graph, analysis)]
    if more:
        errors = [*report["errors"], *(d.to_json(args.lang) for d in more)]
        report |= {"ok": False, "errors": errors}
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def export(args: argparse.Namespace) -> int:
    graph = read_graph(args.graph)
    analysis = analyse(graph)
    problems = [error.text for error in analysis.errors] or pair_problems(graph, analysis)
    if problems:  # a pair's discriminator is part of the file: never dropped unchecked
        for problem in problems:
            print(f"error: {problem.render(args.lang)}", file=sys.stderr)
        return 1
    if args.config and not args.train:
        raise GraphFormatError(msg("--config sets train.py's defaults; add --train"))
    files = {"model.py": generate_source(analysis)}
    if args.train:
        from export.bundle import bundle_files  # black and train.py's template: only here

        try:
            files = bundle_files(graph, analysis, read_config(args.config), args.lang)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise GraphFormatError(
                msg(
                    "{path}: {where}: {problem}",
                    path=args.config,
                    where=where,
                    problem=first["msg"],
                )
            ) from None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)
    return 0


def read_config(path: str | None) -> dict | None:
    """Training settings as TrainConfig's JSON (a run's config.json), or None for defaults."""
    if path is None:
        return None
    try:
        text = read_file_bounded(path, MAX_CONFIG_BYTES)
        if len(text) > MAX_CONFIG_BYTES:
            raise GraphFormatError(msg("{path} is too large for a training config", path=path))
        config = json.loads(text)
    except OSError as exc:
        raise GraphFormatError(cannot_read(path, exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphFormatError(
            msg("{path} is not valid JSON: {problem}", path=path, problem=str(exc))
        ) from None
    if not isinstance(config, dict):
        raise GraphFormatError(
            msg("{path} must hold a JSON object of training settings", path=path)
        )
    return config


def import_command(args: argparse.Namespace) -> int:
    from compiler.importer import ModelImportError, import_file  # torch: only when importing

    try:
        shape = [int(size) for size in args.input_shape.split(",")] if args.input_shape else None
    except ValueError:
        return fail(f"--input-shape must be sizes like 1,28,28, got {args.input_shape!r}")
    try:
        result = import_file(Path(args.file), shape and tuple(shape), args.dtype, args.name)
    except ModelImportError as exc:
        return fail(str(exc))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.graph is None:
        for problem in result.problems:
            print(f"unsupported: {problem}", file=sys.stderr)
        print(f"error: {len(result.problems)} unsupported; nothing written", file=sys.stderr)
        return 1
    Path(args.output).write_text(dump_graph(result.graph))
    print(args.output)
    return 0


def fail(message: str) -> int:
    """One line on stderr, and the exit code of a file that cannot be used."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(graph_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler", description=__doc__)
    language = i18n.language_arguments()
    parser.set_defaults(lang="en")
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser(
        "check", help="validate a graph; print shapes and errors as JSON", parents=[language]
    )
    check_cmd.add_argument("graph")
    check_cmd.set_defaults(run=check)
    export_cmd = commands.add_parser(
        "export",
        help="write DIR/model.py for a valid graph (with --train: the whole bundle)",
        parents=[language],
    )
    export_cmd.add_argument("graph")
    export_cmd.add_argument("-o", "--output", required=True, metavar="DIR")
    export_cmd.add_argument(
        "--train",
        action="store_true",
        help="also write train.py, graph.json and README.md",
    )
    export_cmd.add_argument(
        "--config",
        metavar="CONFIG.json",
        help="with --train: training settings as a run's config.json (train.py's defaults)",
    )
    export_cmd.set_defaults(run=export)
    schema_cmd = commands.add_parser("schema", help="print the graph file's JSON Schema")
    schema_cmd.set_defaults(run=schema)
    import_cmd = commands.add_parser(
        "import",
        help="turn a PyTorch model file into a graph; this RUNS the file's code",
        description="Import FILE.py, which defines build_model(), as a NetBuilder graph:"
        " trace it with torch.fx and map every layer and operation onto the catalog. This"
        " executes FILE.py: use it only on your own code, on your own machine.",
        parents=[language],
    )
    import_cmd.add_argument("file", metavar="FILE.py")
    import_cmd.add_argument("-o", "--output", required=True, metavar="GRAPH.json")
    import_cmd.add_argument(
        "--input-shape",
        metavar="SIZES",
        help="one sample's shape, e.g. 1,28,28 (default: the file's INPUT_SHAPE)",
    )
    import_cmd.add_argument(
        "--dtype", choices=("float32", "int64"), help="input dtype (default: INPUT_DTYPE)"
    )
    import_cmd.add_argument("--name", help="the graph's name (default: the file's name)")
    import_cmd.set_defaults(run=import_command)
    args = parser.parse_args(argv)
    i18n.set_language(args.lang)
    # One short command over at most 2 MB: the cyclic garbage collector would only rescan the
    # parsed graph's objects again and again (about half of a big check's time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return args.run(args)
    except GraphFormatError as exc:
        print(f"error: {exc.text.render(args.lang)}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing the output
        problem = msg("cannot write {path}: {reason}", path=exc.filename, reason=os_reason(exc))
        print(f"error: {problem.render(args.lang)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of ours: still one line, never a traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 2
    finally:
        if collecting:
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())
