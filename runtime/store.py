"""A run folder on disk: its file names, atomic writes, status.json and the metrics log.

Both the trainer process and the app's readers use these, so a record written by one is read the
same way by the other. Whole-file writes (status, checkpoints) go to a temp file and are renamed
into place, so a reader or a crash never sees half a file; metrics are appended line by line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from i18n import Message, msg

GRAPH_FILE = "graph.json"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.py"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
STOP_FILE = "stop-requested"
LOG_FILE = "trainer.log"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
WEIGHTS_FILE = "weights.pt"
WARM_START_WEIGHTS = "warm-start-weights.pt"
WARM_START_GRAPH = "warm-start-graph.json"
WARM_START_REPORT = "warm-start.json"
DATA_PREFIX = "data"
MAX_READ_BYTES = 4_000_000  # what one read_records call reads at most
READ_CHUNK_BYTES = 1 << 20

log = logging.getLogger(__name__)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write a whole file so that readers see the old or the new version, never a mix.

    durable also forces it to disk before the rename (checkpoints); a status file that is
    rewritten every half second skips that.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp, 0o644)  # mkstemp makes it private; a run's files are ordinary files
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, durable: bool = True) -> None:
    text = json.dumps(value, indent=2) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()), durable)


# The fields of status.json that readers and the launcher rely on, with the JSON types each may
# hold (a field may be absent). A file that breaks one of these fails its own run, named, and
# never a listing of every run.
STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "message": (str,),
    "name": (str,),
    "dataset": (str,),
    "device": (str,),
    "created": (int, float),
    "updated": (int, float),
    "epochs": (int,),
    "epoch": (int,),
    "step": (int,),
    "pid": (int, type(None)),
    "pid_started": (int, float, type(None)),
    "server": (dict, type(None)),
    # the trainer pool's (runtime/runs.py): the run's sized claim, when it was queued, which
    # server admitted it and when, the GPU it was placed on, the CPU runs it shares the cores
    # with, and the torch threads the trainer took
    "memory": (dict, type(None)),
    "queued_at": (int, float, type(None)),
    "admitted": (dict, type(None)),
    "admitted_at": (int, float, type(None)),
    "gpu": (int, type(None)),
    "cpu_runs": (int, type(None)),
    "threads": (int, type(None)),
    # a run on a Ray cluster (runtime/cluster.py): its actor's name, what it asked for, its node
    "ray": (dict, type(None)),
}


class StatusError(ValueError):
    """status.json cannot be used: not JSON, not an object, or a field of the wrong type.
    `detail` says which, as a Message; str() is its English."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict whose known fields have the types STATUS_FIELDS names; anything else
    is a StatusError (a ValueError) that names the problem. OSError passes through."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_bytes())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise StatusError(msg("status.json is unreadable ({reason})", reason=str(exc))) from None
    if not isinstance(status, dict):
        raise StatusError(msg("status.json does not hold a JSON object"))
    for name, kinds in STATUS_FIELDS.items():
        if name in status and not _is_one_of(status[name], kinds):
            shown = json.dumps(status[name])
            raise StatusError(
                msg(
                    "status.json has an invalid {field}: {value}",
                    field=name,
                    value=shown if len(shown) <= 60 else f"{shown[:57]}...",
                )
            )
    return status


def _is_one_of(value: Any, kinds: tuple[type, ...]) -> bool:
    """JSON's true and false are not numbers here, nor is a NaN or an infinity."""
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds)


def update_status(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Merge changes into status.json (only one process writes a run's status at a time).

    A Message value is stored as its English text, with the message as data beside it under
    message_data ({"code", "values"}), so that a page can render it in the reader's language.
    """
    stored: dict[str, Any] = {}
    for key, value in changes.items():
        stored[key] = str(value) if isinstance(value, Message) else value
        if key == "message":
            stored[f"{key}_data"] = value.to_json() if isinstance(value, Message) else None
    status = read_status(run_dir) | stored | {"updated": time.time()}
    write_json(run_dir / STATUS_FILE, status, durable=False)
    return status


def status_message(status: dict[str, Any]) -> Message:
    """status.json's message as data: recorded as a Message, or plain (older) English text."""
    return message_from_json(status.get("message_data")) or Message(str(status.get("message", "")))


def message_from_json(data: Any) -> Message | None:
    """The inverse of Message.to_json (nested messages included); None for anything else."""
    if not isinstance(data, dict) or not isinstance(data.get("code"), str):
        return None
    values = data.get("values") if isinstance(data.get("values"), dict) else {}
    return Message(data["code"], {k: message_from_json(v) or v for k, v in values.items()})


def _json_default(value: Any) -> Any:
    """A Message inside a record is written as its English text."""
    if isinstance(value, Message):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is written as null."""
    return value if value is not None and math.isfinite(value) else None


class MetricsLog:
    """The append-only metrics.jsonl of one run, written by the trainer."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("ab")
        if self.file.tell() and not _ends_with_newline(path):
            self.file.write(b"\n")  # a killed writer left half a line; keep it apart

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(
            json.dumps(record, allow_nan=False, default=_json_default) + "\n" for record in records
        )
        if text:
            self.file.write(text.encode())
            self.file.flush()

    def close(self) -> None:
        self.file.close()


class NoLog(MetricsLog):
    """What the processes other than the first write under torchrun: nothing."""

    def __init__(self) -> None:
        pass

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def read_records(
    path: Path, offset: int = 0, max_bytes: int = MAX_READ_BYTES
) -> tuple[list[dict[str, Any]], int]:
    """Complete lines from byte offset on, reading at most `max_bytes`, and the offset after the
    last complete line read: a caller keeps polling from it until it stops moving.

    A line longer than `max_bytes` is skipped with a logged warning (scanned for its end in
    chunks, never held whole); one whose end is not written yet is left for the next call."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            chunk = file.read(max_bytes)
            end = chunk.rfind(b"\n") + 1
            if end == 0 and len(chunk) == max_bytes:
                return [], _past_long_line(file, path, offset, max_bytes)
    except FileNotFoundError:
        return [], offset
    records = []
    for line in chunk[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the torn last line of a killed trainer
    return records, offset + end


def _past_long_line(file: IO[bytes], path: Path, offset: int, max_bytes: int) -> int:
    """The offset after the line at `offset` (longer than max_bytes), found in bounded chunks;
    `offset` itself while that line has no end yet."""
    position = offset + max_bytes
    while chunk := file.read(READ_CHUNK_BYTES):
        newline = chunk.find(b"\n")
        if newline >= 0:
            end = position + newline + 1
            log.warning(
                "%s: skipped a record of %d bytes at offset %d (records are read up to %d bytes)",
                path,
                end - offset,
                offset,
                max_bytes,
            )
            return end
        position += len(chunk)
    return offset
