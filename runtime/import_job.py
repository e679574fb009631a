"""Importing a .py file from the web app: the user's code runs in a separate, limited process.

Importing executes the uploaded file (its module body, build_model() and forward), so the app
never does it in its own process: `import_python_file` starts `python -m runtime.import_job` on a
temporary copy with a CPU-time and memory limit (resource.setrlimit in the child) and a wall-clock
deadline, and reads back the graph JSON or a named error. Where the app may do this at all is
`import_allowed`: a server that listens only on localhost (the person's own machine), or one whose
operator set NETBUILDER_ALLOW_IMPORT=1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.graph import Graph, GraphFormatError, dump_graph, parse_graph
from i18n import Message, msg

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 60
MEMORY_LIMIT_BYTES = 4 * 1024**3
MAX_SOURCE_BYTES = 1_000_000
ALLOW_IMPORT_ENV = "NETBUILDER_ALLOW_IMPORT"


@dataclass(frozen=True)
class ImportOutcome:
    """The imported graph, or the error (and, for a refused model, every unsupported op)."""

    graph: Graph | None
    error: Message | None = None
    problems: tuple[Message, ...] = ()
    warnings: tuple[Message, ...] = ()


def import_allowed(server_address: str | None, setting: str | None) -> bool:
    """Whether the Build page may import .py files: the server listens on localhost only (so
    the uploader is the person whose machine runs it), or the operator turned it on
    (`setting` is the value of NETBUILDER_ALLOW_IMPORT: 1, true or yes)."""
    if (setting or "").strip().lower() in ("1", "true", "yes"):
        return True
    host = (server_address or "").strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # no address (every interface) or a host name: not only this machine


def import_refused() -> Message:
    """What the page says where importing is off, and how to import instead."""
    return msg(
        "This server does not import Python files, because importing runs the file's code."
        " On your own machine run: python -m compiler import model.py -o graph.json"
        " --input-shape 1,28,28, then open graph.json here (or set NETBUILDER_ALLOW_IMPORT=1"
        " where you run the server)."
    )


def import_python_file(
    source: bytes,
    input_shape: tuple[int, ...] | None,
    dtype: str,
    name: str = "imported",
    time_limit_s: int = TIME_LIMIT_S,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
) -> ImportOutcome:
    """Import a module file's build_model() in a child process with limits. The file gives the
    input shape (INPUT_SHAPE) where `input_shape` is None; dtype is "float32" or "int64"."""
    if len(source) > MAX_SOURCE_BYTES:
        return ImportOutcome(None, msg("the file is over 1 MB; a model file is far smaller"))
    if dtype not in ("float32", "int64"):
        return ImportOutcome(
            None, msg("the input dtype must be float32 or int64, got {dtype}", dtype=repr(dtype))
        )
    with tempfile.TemporaryDirectory(prefix="netbuilder-import-") as folder:
        path = Path(folder) / "model.py"
        path.write_bytes(source)
        request = {
            "path": str(path),
            "shape": input_shape,
            "dtype": dtype,
            "name": name,
            "seconds": time_limit_s,
            "bytes": memory_limit_bytes,
        }
        command = [sys.executable, "-m", "runtime.import_job", json.dumps(request)]
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                timeout=time_limit_s + 10,  # the CPU limit ends a busy child first
                env=os.environ | {"OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired:
            return ImportOutcome(None, _too_long(time_limit_s))
    return _outcome(done, time_limit_s)


def _limit(time_limit_s: int, memory_limit_bytes: int) -> None:
    """In the child, before it imports torch or runs the file: CPU seconds, and the memory it
    may allocate (RLIMIT_DATA: heap and anonymous mappings, which tensors live in; not the
    shared libraries a CUDA build of torch maps, which RLIMIT_AS would count)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (time_limit_s, time_limit_s + 1))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_limit_bytes, memory_limit_bytes))


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


def _outcome(done: subprocess.CompletedProcess[bytes], time_limit_s: int) -> ImportOutcome:
    """The child's one JSON line, or a named reason why there is none."""
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        reply = None
    if not isinstance(reply, dict):
        if done.returncode in (-9, -24):  # SIGKILL / SIGXCPU: the CPU limit
            return ImportOutcome(None, _too_long(time_limit_s))
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        if done.returncode == -11 or any("MemoryError" in line for line in tail):
            return ImportOutcome(None, _out_of_memory(MEMORY_LIMIT_BYTES))
        return ImportOutcome(
            None,
            msg(
                "the import process ended without a result (exit {code}): {detail}",
                code=done.returncode,
                detail=(tail or [""])[0][:300],
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
    """A Message from its JSON form (nested values too); plain text stays as it is."""
    if isinstance(data, dict) and "code" in data:
        values = {k: _value(v) for k, v in (data.get("values") or {}).items()}
        return Message(str(data["code"]), values)
    return Message(str(data))


def _value(value: Any) -> Any:
    return _message(value) if isinstance(value, dict) and "code" in value else value


# ---------------------------------------------------------------------------------------------
# The child: python -m runtime.import_job '{"path": ..., "shape": ..., "dtype": ..., "name": ...}'


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Import the file and say what came of it, as JSON (Messages as code + values)."""
    _limit(int(request["seconds"]), int(request["bytes"]))
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
