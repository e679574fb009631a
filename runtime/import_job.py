"""Importing a .py file from the web app: the user's code runs in a sandboxed child process.

Importing executes the uploaded file (its module body, build_model() and forward), so the app
never does it in its own process, and does it only where the operator allowed it
(NETBUILDER_ALLOW_IMPORT=1; how the server is reached says nothing about who reaches it: a
server behind a proxy or a tunnel listens on localhost too). `import_python_file` runs
`python -m runtime.import_job` on a copy of the file in runtime.sandbox's limited child and reads
back the graph JSON or a named error.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.graph import Graph, GraphFormatError, dump_graph, parse_graph
from i18n import Message, msg
from runtime.store import message_from_json
from runtime.sandbox import Finished, Limits, confines_code, run_limited

TIME_LIMIT_S = 60
MEMORY_LIMIT_BYTES = 4 * 1024**3
MAX_SOURCE_BYTES = 1_000_000
ALLOW_IMPORT_ENV = "NETBUILDER_ALLOW_IMPORT"
MODEL_FILE = "model.py"
# What the child imports before the file runs (see runtime.sandbox.supervise).
PRELOAD = ("compiler.importer", "torch.fx")


@dataclass(frozen=True)
class ImportOutcome:
    """The imported graph, or the error (and, for a refused model, every unsupported op)."""

    graph: Graph | None
    error: Message | None = None
    problems: tuple[Message, ...] = ()
    warnings: tuple[Message, ...] = ()


def import_allowed(setting: str | None) -> bool:
    """Whether the web page may import .py files: only where the operator turned it on
    (`setting` is the value of NETBUILDER_ALLOW_IMPORT: 1, true or yes)."""
    return (setting or "").strip().lower() in ("1", "true", "yes")


def import_refused() -> Message:
    """What the page says where importing is off, and how to import instead."""
    return msg(
        "This server does not import Python files, because importing runs the file's code."
        " On your own machine run: python -m compiler import model.py -o graph.json"
        " --input-shape 1,28,28, then open graph.json here. (Whoever runs this server can allow"
        " it with NETBUILDER_ALLOW_IMPORT=1.)"
    )


def cannot_confine() -> Message:
    """Why a server that may import cannot, here: it could not confine the file's code."""
    return msg(
        "This server cannot run an imported file in a sandbox: it runs as root without"
        " bubblewrap. Install bubblewrap (apt-get install bubblewrap) or run the server as"
        " another user, or import on your own machine: python -m compiler import model.py"
    )


def import_python_file(
    source: bytes,
    input_shape: tuple[int, ...] | None,
    dtype: str,
    name: str = "imported",
    time_limit_s: int = TIME_LIMIT_S,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
) -> ImportOutcome:
    """Import a module file's build_model() in a sandboxed child process. The file gives the
    input shape (INPUT_SHAPE) where `input_shape` is None; dtype is "float32" or "int64"."""
    if len(source) > MAX_SOURCE_BYTES:
        return ImportOutcome(None, msg("the file is over 1 MB; a model file is far smaller"))
    if not confines_code():
        return ImportOutcome(None, cannot_confine())
    if dtype not in ("float32", "int64"):
        return ImportOutcome(
            None, msg("the input dtype must be float32 or int64, got {dtype}", dtype=repr(dtype))
        )
    request = {
        "path": MODEL_FILE,  # in the child's own working folder
        "shape": input_shape,
        "dtype": dtype,
        "name": name,
        "bytes": memory_limit_bytes,
    }
    limits = Limits(cpu_seconds=time_limit_s, memory_bytes=memory_limit_bytes)
    done = run_limited(
        "runtime.import_job",
        json.dumps(request),
        {MODEL_FILE: source},
        limits,
        time_limit_s,
        preload=PRELOAD,
    )
    return _outcome(done, time_limit_s, memory_limit_bytes)


def _too_long(time_limit_s: int) -> Message:
    return msg(
        "importing took over {seconds} s and was stopped (does the file loop forever?)",
        seconds=time_limit_s,
    )


def _out_of_memory(limit_bytes: int) -> Message:
    return msg(
        "importing needed over {gib} GiB of memory and was stopped",
        gib=round(limit_bytes / 1024**3, 1),
    )


def _outcome(done: Finished, time_limit_s: int, memory_limit_bytes: int) -> ImportOutcome:
    """The child's one JSON line, or a named reason why there is none."""
    reply = None if done.timed_out else done.reply()
    if reply is None:
        stopped = done.stopped_by()
        if stopped == "time":
            return ImportOutcome(None, _too_long(time_limit_s))
        if stopped == "memory":
            return ImportOutcome(None, _out_of_memory(memory_limit_bytes))
        return ImportOutcome(
            None,
            msg(
                "the import process ended without a result (exit {code}): {detail}",
                code=done.returncode,
                detail=done.last_error_line(),
            ),
        )
    warnings = tuple(_message(w) for w in reply.get("warnings", []))
    if reply.get("graph") is not None:
        try:
            return ImportOutcome(parse_graph(reply["graph"]), warnings=warnings)
        except GraphFormatError as exc:
            return ImportOutcome(
                None, msg("the imported graph is not valid: {detail}", detail=str(exc))
            )
    problems = tuple(_message(p) for p in reply.get("problems", []))
    return ImportOutcome(None, _message(reply.get("error")), problems, warnings)


def _message(data: Any) -> Message:
    """A Message from the child's JSON (nested values too); plain text stays as it is."""
    return message_from_json(data) or Message(str(data))


# ---------------------------------------------------------------------------------------------
# The child: python -m runtime.import_job '{"path": ..., "shape": ..., "dtype": ..., "name": ...}',
# run by runtime.sandbox in the folder that holds the file


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Import the file and say what came of it, as JSON (Messages as code + values). The
    sandbox set the limits before this ran."""
    from compiler.importer import ModelImportError, import_file

    shape = tuple(request["shape"]) if request.get("shape") else None
    try:
        result = import_file(Path(request["path"]), shape, request["dtype"], request["name"])
    except ModelImportError as exc:
        values = exc.message.values
        if values.get("error") == "MemoryError" or "allocate memory" in str(values.get("detail")):
            return {"error": _out_of_memory(int(request["bytes"])).to_json()}
        return {"error": exc.message.to_json()}
    except MemoryError:
        return {"error": _out_of_memory(int(request["bytes"])).to_json()}
    warnings = [w.to_json() for w in result.warnings]
    if result.graph is None:
        error = msg(
            "the model uses {count} operations that NetBuilder cannot represent",
            count=len(result.problems),
        )
        problems = [_problem_json(p) for p in result.problems]
        return {"error": error.to_json(), "problems": problems, "warnings": warnings}
    return {"graph": json.loads(dump_graph(result.graph)), "warnings": warnings}


def _problem_json(problem: Any) -> dict[str, Any]:
    if problem.why is None:
        return msg("{op} at {where}", op=problem.op, where=problem.where).to_json()
    return msg(
        "{op} at {where}: {why}", op=problem.op, where=problem.where, why=problem.why
    ).to_json()


if __name__ == "__main__":
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # whatever the user's code prints goes to stderr, not into the reply
    reply = _child(json.loads(sys.argv[1]))
    os.write(real_stdout, (json.dumps(reply) + "\n").encode())
