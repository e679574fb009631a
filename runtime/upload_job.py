"""Reading an upload for the web app: the parse runs in a separate process with a memory limit.

An uploaded .csv or .npz is sized before it is parsed (runtime/datasets.py), but the parse and the
conversion to tensors still allocate what the file holds, and a file can be built to make pandas
or zlib work hard. So the web server never parses one itself: `read_upload` writes the bytes to a
temporary folder and starts `python -m runtime.upload_job` on it, limited in memory and CPU time
(resource.setrlimit in the child). The child writes the checked arrays back as a plain .npz
(float32 or int64, no pickles), which the server reads with the same sized reader, or it answers
with the sentence that refused the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from i18n import Message, msg
from runtime.datasets import (
    Dataset,
    DatasetError,
    DatasetTooLarge,
    data_budget,
    dataset_from_npz_file,
)

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 120
# The child's heap: its interpreter, numpy, pandas and torch, and a parse of a file inside the
# data budget (the text, pandas' float64 cells, the float32 copy) with room to spare.
BASE_MEMORY_BYTES = 2 * 1024**3
ARRAYS_FILE = "arrays.npz"


def memory_limit(budget: int) -> int:
    """The child's memory limit for a data budget of `budget` bytes."""
    return BASE_MEMORY_BYTES + 3 * budget


def read_upload(
    filename: str,
    data: bytes,
    label_column: str | None = None,
    time_limit_s: int = TIME_LIMIT_S,
    memory_limit_bytes: int | None = None,
) -> Dataset:
    """The dataset of an uploaded file, parsed and checked in a limited child process; any
    refusal is a DatasetError whose message says why (and, for a size, by how much)."""
    limit = memory_limit_bytes or memory_limit(data_budget())
    with tempfile.TemporaryDirectory(prefix="netbuilder-upload-") as folder:
        upload = Path(folder) / "upload"
        upload.write_bytes(data)
        request = {
            "filename": filename,
            "path": str(upload),
            "label_column": label_column,
            "out": str(Path(folder) / ARRAYS_FILE),
            "seconds": time_limit_s,
            "bytes": limit,
        }
        command = [sys.executable, "-m", "runtime.upload_job", json.dumps(request)]
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                timeout=time_limit_s + 30,  # the CPU limit ends a busy child first
                env=os.environ | {"OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired:
            raise DatasetError(_too_long(filename, time_limit_s)) from None
        reply = _reply(done, filename, time_limit_s, limit)
        if "error" in reply:
            error = _message(reply["error"])
            raise (DatasetTooLarge if reply.get("too_large") else DatasetError)(error)
        return _checked_arrays(filename, Path(request["out"]), reply)


def _checked_arrays(filename: str, arrays: Path, reply: dict[str, Any]) -> Dataset:
    """The child's arrays, read again through the sized .npz reader (so this process allocates
    nothing the budget did not allow), under the uploaded file's name and description."""
    dataset = dataset_from_npz_file(filename, arrays)
    dataset.name = filename
    dataset.description = str(reply.get("description", dataset.description))
    return dataset


def _reply(
    done: subprocess.CompletedProcess[bytes], filename: str, time_limit_s: int, limit: int
) -> dict[str, Any]:
    """The child's one JSON line, or the named reason why there is none."""
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        reply = None
    if isinstance(reply, dict):
        return reply
    if done.returncode in (-9, -24):  # SIGKILL / SIGXCPU: the CPU limit
        raise DatasetError(_too_long(filename, time_limit_s))
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    if done.returncode == -11 or any("MemoryError" in line for line in tail):
        raise DatasetTooLarge(_out_of_memory(filename, limit))
    raise DatasetError(
        msg(
            "reading {file} ended without a result (exit {code}): {detail}",
            file=filename,
            code=done.returncode,
            detail=(tail or [""])[0][:300],
        )
    )


def _too_long(filename: str, seconds: int) -> Message:
    return msg(
        "reading {file} took over {seconds} s and was stopped", file=filename, seconds=seconds
    )


def _out_of_memory(filename: str, limit: int) -> Message:
    return msg(
        "reading {file} needed over {gib} GiB of memory and was stopped; upload less data",
        file=filename,
        gib=round(limit / 1024**3, 1),
    )


def _message(data: Any) -> Message:
    """A Message from its JSON form (nested values too); plain text stays as it is."""
    if isinstance(data, dict) and "code" in data:
        values = {k: _message(v) if isinstance(v, dict) else v for k, v in data["values"].items()}
        return Message(str(data["code"]), values)
    return Message(str(data))


# ---------------------------------------------------------------------------------------------
# The child: python -m runtime.upload_job '{"filename": ..., "path": ..., "out": ..., ...}'


def _limit(time_limit_s: int, memory_limit_bytes: int) -> None:
    """Before the child imports anything large: CPU seconds, and the memory it may allocate
    (RLIMIT_DATA: heap and anonymous mappings, where arrays live; not the shared libraries a
    CUDA build of torch maps, which RLIMIT_AS would count)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (time_limit_s, time_limit_s + 1))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_limit_bytes, memory_limit_bytes))


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Parse and check the upload; write its arrays as a plain .npz, or say why not (as JSON,
    Messages as code + values)."""
    _limit(int(request["seconds"]), int(request["bytes"]))
    from runtime.datasets import dataset_from_upload

    filename = str(request["filename"])
    try:
        data = Path(request["path"]).read_bytes()
        dataset = dataset_from_upload(filename, data, request.get("label_column"))
        del data
        np.savez(request["out"], X=dataset.x.numpy(), y=dataset.y.numpy())
    except DatasetTooLarge as exc:
        return {"error": exc.detail.to_json(), "too_large": True}
    except DatasetError as exc:
        return {"error": exc.detail.to_json()}
    except MemoryError:
        return {
            "error": _out_of_memory(filename, int(request["bytes"])).to_json(),
            "too_large": True,
        }
    return {"description": dataset.description}


if __name__ == "__main__":
    reply = _child(json.loads(sys.argv[1]))
    sys.stdout.write(json.dumps(reply) + "\n")
