"""Reading an upload for the web app: the parse runs in a separate process with a memory limit.

An uploaded .csv or .npz is sized before it is parsed (runtime/datasets.py), but the parse and the
conversion to tensors still allocate what the file holds, and a file can be built to make pandas
or zlib work hard. So the web server never parses one itself: `read_upload` writes the bytes to a
temporary folder and starts `python -m runtime.upload_job` on it, limited in memory and CPU time
(runtime.sandbox's child, as an imported .py file runs: no environment, its own folder, no
network). The child writes the checked arrays back as a plain .npz
(float32 or int64, no pickles), which the server reads with the same sized reader, or it answers
with the sentence that refused the file.

A .zip of class folders and a .txt are not arrays: the child checks them (every picture decoded
once under Pillow's pixel cap; the text decoded and cut), and the server then builds the dataset
itself from what passed: a listing read lazily from the zip's bytes, or the text's windows.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from i18n import Message, msg
from runtime.store import message_from_json
from runtime.sandbox import Finished, Limits, run_limited
from runtime.datasets import (
    MAX_UPLOAD_BYTES,
    Dataset,
    DatasetError,
    DatasetTooLarge,
    data_budget,
    dataset_from_npz_file,
    dataset_from_upload,
)
from runtime.image_folder import ImageFolderError, check_pictures, list_images

TIME_LIMIT_S = 120
# The child's heap: its interpreter, numpy, pandas and torch, and a parse of a file inside the
# data budget (the text, pandas' float64 cells, the float32 copy) with room to spare.
BASE_MEMORY_BYTES = 2 * 1024**3
ARRAYS_FILE = "arrays.npz"
UPLOAD_FILE = "upload"
# What the child imports before it reads the file (see runtime.sandbox.supervise).
PRELOAD = ("runtime.datasets", "runtime.image_folder", "pandas", "numpy", "PIL.Image")


def memory_limit(budget: int) -> int:
    """The child's memory limit for a data budget of `budget` bytes."""
    return BASE_MEMORY_BYTES + 3 * budget


def read_upload(
    filename: str,
    data: bytes,
    label_column: str | None = None,
    time_limit_s: int = TIME_LIMIT_S,
    memory_limit_bytes: int | None = None,
    input_shape: tuple[int, ...] = (),
    settings: Any = None,
) -> Dataset:
    """The dataset of an uploaded file, parsed and checked in a limited child process; any
    refusal is a DatasetError whose message says why (and, for a size, by how much). Pictures
    and text take their sample shape from `input_shape` (the model's Input); pictures come back
    unnormalised (the trainer measures the training split's statistics)."""
    limit = memory_limit_bytes or memory_limit(data_budget())
    request = {
        "filename": filename,
        "path": UPLOAD_FILE,  # in the child's own working folder
        "label_column": label_column,
        "out": ARRAYS_FILE,
        "bytes": limit,
        "input_shape": list(input_shape),
    }
    limits = Limits(
        cpu_seconds=time_limit_s,
        memory_bytes=limit,
        file_bytes=data_budget() + 1024**2,  # the arrays it writes back, within the budget
    )
    with tempfile.TemporaryDirectory(prefix="netbuilder-upload-") as folder:
        done = run_limited(
            "runtime.upload_job",
            json.dumps(request),
            {UPLOAD_FILE: data},
            limits,
            time_limit_s,
            preload=PRELOAD,
            folder=Path(folder),
        )
        reply = _reply(done, filename, time_limit_s, limit)
        if "error" in reply:
            error = _message(reply["error"])
            raise (DatasetTooLarge if reply.get("too_large") else DatasetError)(error)
        if reply.get("checked"):  # pictures or text: built here from what the child passed
            return dataset_from_upload(
                filename, data, label_column, input_shape, settings, normalise=False
            )
        return _checked_arrays(filename, Path(folder) / ARRAYS_FILE, reply)


def _checked_arrays(filename: str, arrays: Path, reply: dict[str, Any]) -> Dataset:
    """The child's arrays, read again through the sized .npz reader (so this process allocates
    nothing the budget did not allow), under the uploaded file's name and description."""
    dataset = dataset_from_npz_file(filename, arrays)
    dataset.name = filename
    if "description" in reply:
        dataset.description = _message(reply["description"])
    names = reply.get("class_names")
    if isinstance(names, list) and all(isinstance(name, str) for name in names):
        dataset.class_names = tuple(names)  # a CSV's word labels: the arrays hold their ids
    return dataset


def _reply(done: Finished, filename: str, time_limit_s: int, limit: int) -> dict[str, Any]:
    """The child's one JSON line, or the named reason why there is none."""
    reply = None if done.timed_out else done.reply()
    if reply is not None:
        return reply
    stopped = done.stopped_by()
    if stopped == "time":
        raise DatasetError(_too_long(filename, time_limit_s))
    if stopped == "memory":
        raise DatasetTooLarge(_out_of_memory(filename, limit))
    raise DatasetError(
        msg(
            "reading {file} ended without a result (exit {code}): {detail}",
            file=filename,
            code=done.returncode,
            detail=done.last_error_line(),
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
    """A Message from the child's JSON (nested values too); plain text stays as it is."""
    return message_from_json(data) or Message(str(data))


# ---------------------------------------------------------------------------------------------
# The child: python -m runtime.upload_job '{"filename": ..., "path": ..., "out": ..., ...}'


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Parse and check the upload; write its arrays as a plain .npz, or say why not (as JSON,
    Messages as code + values). runtime.sandbox set the limits before this ran."""
    filename = str(request["filename"])
    suffix = Path(filename).suffix.lower()
    try:
        data = Path(request["path"]).read_bytes()
        if suffix in (".zip", ".txt"):
            _check_unpacked(filename, data, suffix, tuple(request.get("input_shape") or ()))
            return {"checked": True}
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
    description = dataset.description
    return {
        "description": description.to_json() if isinstance(description, Message) else description,
        "class_names": list(dataset.class_names or ()),
    }


def _check_unpacked(filename: str, data: bytes, suffix: str, shape: tuple[int, ...]) -> None:
    """A zip: its listing within the caps, then every picture decoded once under the pixel cap.
    A text: decoded and cut for the Input's [T] (the server does it again, knowing it passes)."""
    if suffix == ".txt":
        dataset_from_upload(filename, data, input_shape=shape)
        return
    if len(data) > MAX_UPLOAD_BYTES:
        dataset_from_upload(filename, data)  # refused for its size, in a sentence
    try:
        check_pictures(list_images(data, filename))
    except ImageFolderError as exc:
        raise DatasetError(msg(exc.template, **exc.values)) from None


if __name__ == "__main__":
    reply = _child(json.loads(sys.argv[1]))
    sys.stdout.write(json.dumps(reply) + "\n")
