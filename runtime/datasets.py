"""Datasets a run can train on, all usable offline: bundled digits, generated tasks, uploads.

Every dataset is small enough to sit in memory as two tensors, so the trainer can move it to the
device once and slice batches there. Anything a person supplies (an uploaded file, a name, an
Input shape) is checked here and rejected with a `DatasetError` whose message says what to change.

Nothing a person chooses is allocated before it is sized: a built-in dataset is sized from its
declared shape before it is generated, an upload from its .npy headers or its CSV header and line
count before it is parsed, each against the operator's budget (NETBUILDER_DATA_BUDGET_MB). An
.npz is read member by member through a reader that counts the bytes really unpacked, never
trusting the zip directory's sizes. The web server does even the sized parse in a child process
(runtime/upload_job.py).

Two kinds of upload are not arrays: a .zip of class folders of pictures (or a folder, from the
command line) is read lazily by runtime/image_folder.py, so only its listing and labels sit in
memory, and the budget counts those and the batches its workers decode ahead; a .txt file is cut
into windows of characters for a next-character model, with its own vocabulary.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from compiler.analysis import Analysis, Diagnostic, loss_of
from compiler.memory import format_bytes
from i18n import Message, N_, msg
from runtime import builtin_data, image_folder, store
from runtime.image_folder import ImageFolder, ImageFolderError, LazyImages
from runtime.loop import split
from runtime.settings import operator_setting
from runtime.csv_table import CsvError, Table, read_csv_table

Task = Literal["classification", "regression"]

MAX_UPLOAD_BYTES = 100_000_000
MAX_CLASSES = 1_000
# What one dataset may take in memory, in MB (10^6 bytes), set by the operator.
DATA_BUDGET_ENV = "NETBUILDER_DATA_BUDGET_MB"
DEFAULT_DATA_BUDGET_MB = 1024
TEXT_MAX_LENGTH = 2048  # the longest text sequence (the Input's T) generated here
MAX_CSV_COLUMNS = 10_000
MAX_CSV_ROWS = 1_000_000
MAX_CSV_HEADER_BYTES = 1_000_000  # the header row of MAX_CSV_COLUMNS columns fits in this
MAX_NPY_HEADER_BYTES = 65_536  # a real .npy header is a few hundred bytes
READ_CHUNK_BYTES = 1 << 20

TORCHVISION_DATASETS: dict[str, tuple[str, str]] = {
    # name: (torchvision class, its folder under the data root)
    "mnist": ("MNIST", "MNIST"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
}
BUILTIN_DATASETS: dict[str, str] = builtin_data.DESCRIPTIONS | {
    "mnist": N_(
        "MNIST handwritten digits [1, 28, 28], 10 classes (needs torchvision and the files)"
    ),
    "fashion-mnist": N_(
        "Fashion-MNIST clothing images [1, 28, 28], 10 classes (needs torchvision and the files)"
    ),
    "cifar10": N_(
        "CIFAR-10 colour images [3, 32, 32], 10 classes (needs torchvision and the files)"
    ),
}
# What each generated or bundled dataset is: task, classes (None for regression), input dtype.
KINDS: dict[str, tuple[Task, int | None]] = {
    "digits": ("classification", 10),
    "digits-28": ("classification", 10),
    "digits-rows": ("classification", 10),
    "tokens": ("classification", builtin_data.TOKEN_VOCAB),
    "sine": ("regression", None),
    "text": ("classification", len(builtin_data.TEXT_ALPHABET)),
}


class DatasetError(ValueError):
    """A dataset cannot be loaded or used; the message says why and what to do. `detail` is the
    sentence as a Message, rendered in the reader's language; str() is its English."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


class DatasetTooLarge(DatasetError):
    """A dataset refused for its size, before it was built or read."""


def data_budget() -> int:
    """Bytes one dataset may take in memory: NETBUILDER_DATA_BUDGET_MB (read on every call, so
    an operator's change needs no restart of anything that imported this), else 1024 MB."""
    return int(operator_setting(DATA_BUDGET_ENV, DEFAULT_DATA_BUDGET_MB) * 1e6)


def _over_budget(what: Message, need: int) -> DatasetTooLarge | None:
    """The refusal of a dataset that would take `need` bytes, or None when it fits."""
    budget = data_budget()
    if need <= budget:
        return None
    return DatasetTooLarge(
        msg(
            "{what} needs {need} of memory; this server allows {budget} for a dataset"
            " (NETBUILDER_DATA_BUDGET_MB)",
            what=what,
            need=format_bytes(need),
            budget=format_bytes(budget),
        )
    )


@dataclass
class Dataset:
    name: str
    description: str | Message  # a built-in one's N_-marked text, or an upload's Message
    task: Task
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int | None
    sample_shape: tuple[int, ...]
    dtype: Literal["float32", "int64"]
    class_names: tuple[str, ...] | None = None  # a CSV's word labels, in class id order
    alphabet: str | None = None  # an uploaded text's characters, in id order (id 0: unknown)

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Per-sample shape of y: () for class labels, (T,) for one class per position, (k,)
        for regression targets."""
        return tuple(self.y.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


def data_root() -> Path:
    return Path(os.environ.get("NETBUILDER_DATA", Path.home() / ".cache" / "netbuilder"))


def torchvision_ready(name: str) -> bool:
    """torchvision is installed and the dataset's files are already on disk (nothing downloads)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    folder = data_root() / TORCHVISION_DATASETS[name][1]
    return folder.is_dir() and any(folder.iterdir())


def available_datasets() -> list[str]:
    """The built-in datasets this machine can offer: every generated one, and the torchvision
    ones only where torchvision and their files are present."""
    return [
        name
        for name in BUILTIN_DATASETS
        if name not in TORCHVISION_DATASETS or torchvision_ready(name)
    ]


# Each built-in dataset's declared size: samples, elements per sample of x, bytes per element of x,
# and elements per sample of y (int64 labels, float32 targets: 8 bytes at most). The text task's
# samples are [T], from the model's Input.
BUILTIN_SIZES: dict[str, tuple[int, int, int, int]] = {
    "digits": (1_797, 1 * 8 * 8, 4, 1),
    "digits-28": (1_797, 1 * 28 * 28, 4, 1),
    "digits-rows": (1_797, 8 * 8, 4, 1),
    "tokens": (4_096, builtin_data.TOKEN_LENGTH, 8, 1),
    "sine": (2_048, builtin_data.SINE_LENGTH, 4, 1),
    "mnist": (60_000, 1 * 28 * 28, 4, 1),
    "fashion-mnist": (60_000, 1 * 28 * 28, 4, 1),
    "cifar10": (50_000, 3 * 32 * 32, 4, 1),
}


def builtin_bytes(name: str, length: int | None = None) -> int:
    """The memory a built-in dataset takes once built (x and y), from its declared shape; the
    text task's windows of T + 1 characters are counted too, since x and y are cut from them."""
    if name == "text":
        elements = builtin_data.TEXT_SAMPLES * ((length or builtin_data.TEXT_LENGTH) + 1)
        return 3 * elements * 8
    count, x_elements, x_itemsize, y_elements = BUILTIN_SIZES[name]
    return count * (x_elements * x_itemsize + y_elements * 8)


def check_builtin_size(name: str, input_shape: tuple[int, ...] = ()) -> None:
    """Refuse, before anything is generated or read, a built-in dataset over this server's
    budget, and a text sequence longer than TEXT_MAX_LENGTH."""
    length = text_length(name, input_shape)
    if length is not None and length > TEXT_MAX_LENGTH:
        raise DatasetTooLarge(
            msg(
                "the Input's shape [{length}] asks the text task for sequences of {length}"
                " characters; this server generates at most {cap}; set the Input's shape to"
                " [{cap}] or less",
                length=length,
                cap=TEXT_MAX_LENGTH,
            )
        )
    refusal = _over_budget(msg("the dataset {name}", name=name), builtin_bytes(name, length))
    if refusal is not None:
        raise refusal


def text_length(name: str, input_shape: tuple[int, ...]) -> int | None:
    """The text task's sequence length: the Input's T (None: the default, or not text)."""
    return int(input_shape[0]) if name == "text" and len(input_shape) == 1 else None


def load_dataset(name: str, seed: int = 0, input_shape: tuple[int, ...] = ()) -> Dataset:
    """A built-in dataset by name, sized first; generated ones are the same for the same seed.
    The `text` task takes its sequence length from the model's Input shape [T]."""
    if name not in KINDS and name not in TORCHVISION_DATASETS:
        known = ", ".join(available_datasets())
        raise DatasetError(
            msg(
                "unknown dataset {name}; choose one of: {known}, or upload a file",
                name=repr(name),
                known=known,
            )
        )
    check_builtin_size(name, input_shape)
    if name in TORCHVISION_DATASETS:
        return _torchvision(name)
    x, y = builtin_data.load(name, seed, text_length(name, input_shape))
    task, classes = KINDS[name]
    dtype: Literal["float32", "int64"] = "int64" if x.dtype == torch.int64 else "float32"
    return Dataset(name, BUILTIN_DATASETS[name], task, x, y, classes, tuple(x.shape[1:]), dtype)


def _torchvision(name: str) -> Dataset:
    """MNIST-like datasets read from NETBUILDER_DATA (default ~/.cache/netbuilder); never
    downloaded."""
    class_name, _ = TORCHVISION_DATASETS[name]
    if importlib.util.find_spec("torchvision") is None:
        raise DatasetError(
            msg(
                "{name} needs torchvision, which is not installed; install it"
                " (pip install torchvision) or choose digits",
                name=name,
            )
        )
    try:
        import torchvision.datasets
    except Exception as exc:  # an install that does not match torch fails in many ways
        raise DatasetError(
            msg(
                "{name} needs torchvision, which cannot be imported here ({error});"
                " reinstall it to match torch, or choose digits",
                name=name,
                error=type(exc).__name__,
            )
        ) from None
    root = data_root()
    try:
        data = getattr(torchvision.datasets, class_name)(root=str(root), train=True, download=False)
    except Exception as exc:  # missing or unreadable files mean "not available here"
        raise DatasetError(
            msg(
                "{name} is not available: its files are not in {root} ({error});"
                " nothing is downloaded: put the files there or choose digits",
                name=name,
                root=str(root),
                error=type(exc).__name__,
            )
        ) from None
    images = torch.as_tensor(np.asarray(data.data))
    x = (images.permute(0, 3, 1, 2) if images.ndim == 4 else images.unsqueeze(1)) / 255.0
    y = torch.as_tensor(np.asarray(data.targets), dtype=torch.int64)
    x = x.float().contiguous()
    return Dataset(
        name, BUILTIN_DATASETS[name], "classification", x, y, 10, tuple(x.shape[1:]), "float32"
    )


# ---------------------------------------------------------------------------------------------
# Uploads


def dataset_from_upload(
    filename: str,
    data: bytes,
    label_column: str | None = None,
    input_shape: tuple[int, ...] = (),
    settings: Any = None,
    normalise: bool = True,
) -> Dataset:
    """A dataset from a user's .csv (numeric columns, one of them the label), .npz (X, y), .zip
    of class folders of pictures or .txt (characters for a next-character model).

    Integer labels make a classification task; fractional ones a regression task. The file is
    sized before it is parsed; the web server calls this in a child process (upload_job).
    Pictures and text take their sample shape from the model's Input (`input_shape`) and the
    split, seed and augmentation from `settings` (TrainConfig's fields; its defaults if None).
    `normalise` False leaves pictures unnormalised (a preview measures no statistics).
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise DatasetError(
            msg(
                "{file} is {size} MB; uploads are capped at {cap} MB",
                file=filename,
                size=f"{len(data) / 1e6:.1f}",
                cap=f"{MAX_UPLOAD_BYTES / 1e6:.0f}",
            )
        )
    suffix = Path(filename).suffix.lower()
    if suffix == ".zip":
        return image_dataset(filename, data, input_shape, settings, normalise)
    if suffix == ".txt":
        return text_dataset(filename, data, input_shape, settings)
    if suffix == ".csv":
        table = _read_csv(filename, data, label_column)
        return _from_arrays(filename, table.features, table.labels, table.class_names)
    if suffix == ".npz":
        x, y = _read_npz(filename, data)
    else:
        raise DatasetError(
            msg(
                "{file}: upload a .csv, .npz, .zip (class folders of pictures) or .txt file (got"
                " the suffix {suffix})",
                file=filename,
                suffix=repr(suffix),
            )
        )
    return _from_arrays(filename, x, y)


def dataset_from_path(
    path: Path,
    label_column: str | None = None,
    input_shape: tuple[int, ...] = (),
    settings: Any = None,
    name: str | None = None,
) -> Dataset:
    """A dataset from a file or folder on disk: a folder or .zip of class folders is read
    lazily from where it lies (never held whole); any other file as an upload of its bytes."""
    name = name or path.name
    if path.is_dir() or path.suffix.lower() == ".zip":
        return image_dataset(name, path, input_shape, settings)
    if path.is_file() and path.stat().st_size > MAX_UPLOAD_BYTES:
        raise DatasetError(
            msg(
                "{file} is {size} MB; uploads are capped at {cap} MB",
                file=name,
                size=f"{path.stat().st_size / 1e6:.1f}",
                cap=f"{MAX_UPLOAD_BYTES / 1e6:.0f}",
            )
        )
    return dataset_from_upload(name, path.read_bytes(), label_column, input_shape, settings)


def _settings(settings: Any) -> Any:
    from runtime.settings import TrainConfig

    return settings if settings is not None else TrainConfig()


def training_rows(count: int, settings: Any) -> torch.Tensor:
    """The samples the loop's seeded split trains on, asked of the loop itself."""
    rows = torch.arange(count)
    return split(rows, rows, _settings(settings)).y_train


def validation_rows(count: int, settings: Any) -> torch.Tensor:
    rows = torch.arange(count)
    return split(rows, rows, _settings(settings)).y_val


def image_folder_bytes(count: int, shape: tuple[int, ...], batch_size: int) -> int:
    """What an image folder holds in memory while it trains: its listing (a path and a label a
    picture, about 200 bytes) and the batches its workers decode ahead (two each, and one in
    use), not the pictures themselves."""
    batches = 2 * max(1, image_folder.worker_count()) + 1
    return count * 200 + batches * batch_size * math.prod(shape) * 4


def image_dataset(
    filename: str,
    source: bytes | Path,
    input_shape: tuple[int, ...],
    settings: Any = None,
    normalise: bool = True,
) -> Dataset:
    """Class folders of pictures (a .zip's bytes or path, or a folder), read lazily as the
    Input's [C, H, W]; sized by the listing and the batches read ahead; normalised with the
    training split's statistics."""
    settings = _settings(settings)
    try:
        listing = image_folder.list_images(source, filename)
        shape = tuple(int(n) for n in input_shape)
        need = image_folder_bytes(len(listing.paths), shape, settings.batch_size)
        refusal = _over_budget(msg("reading {file}", file=filename), need)
        if refusal is not None:
            raise refusal
        how = image_folder.augmentation_of(settings)
        folder = ImageFolder(listing, shape, how, settings.seed)  # type: ignore[arg-type]
        if normalise:
            folder.fit_statistics(training_rows(len(listing.paths), settings))
    except ImageFolderError as exc:
        raise DatasetError(msg(exc.template, **exc.values)) from None
    described = msg(
        "uploaded {file}: {count} pictures in {classes} class folders",
        file=filename,
        count=format(len(listing.paths), ","),
        classes=len(listing.classes),
    )
    return Dataset(
        filename,
        described,
        "classification",
        LazyImages(folder),  # type: ignore[arg-type]
        torch.tensor(listing.labels, dtype=torch.int64),
        len(listing.classes),
        shape,
        "float32",
        listing.classes,
    )


def decode_text(filename: str, data: bytes) -> str:
    """An uploaded text as str: UTF-8 (a byte-order mark is dropped); any other encoding is
    named in a sentence, with where the first byte that is not UTF-8 sits."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(
            msg("{file} is UTF-16 text; save it as UTF-8 and upload it again", file=filename)
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            msg(
                "{file} is not UTF-8 text: byte {byte} at position {position} is not UTF-8 (a"
                " Latin-1, Windows or GBK file?); save it as UTF-8 and upload it again",
                file=filename,
                byte=f"0x{data[exc.start]:02X}",
                position=format(exc.start, ","),
            )
        ) from None


def text_dataset(
    filename: str, data: bytes, input_shape: tuple[int, ...], settings: Any = None
) -> Dataset:
    """A .txt for a next-character model: its vocabulary (capped; other characters are id 0),
    windows of the Input's T characters, the validation ones from the text's last part."""
    settings = _settings(settings)
    if len(input_shape) != 1:
        raise DatasetError(
            msg(
                "a text trains a next-character model whose Input is [T] (int64 character ids),"
                " but this one is {shape}; start from the GPT-mini template",
                shape=list(input_shape),
            )
        )
    length = int(input_shape[0])
    if length > TEXT_MAX_LENGTH:
        raise DatasetTooLarge(
            msg(
                "the Input's shape [{length}] asks for windows of {length} characters; this"
                " server reads at most {cap}",
                length=length,
                cap=TEXT_MAX_LENGTH,
            )
        )
    count = builtin_data.TEXT_SAMPLES
    refusal = _over_budget(
        msg("reading {file}", file=filename), len(data) * 13 + 3 * count * (length + 1) * 8
    )
    if refusal is not None:
        raise refusal
    text = decode_text(filename, data)
    held_out = validation_rows(count, settings)
    cut = builtin_data.text_split_point(len(text), len(held_out) / count)
    if cut < length + 2 or (len(held_out) and len(text) - cut < length + 1):
        share = len(held_out) / count
        need = (
            math.ceil((length + 2) / (1 - share))
            if not len(held_out)
            else math.ceil(max((length + 2) / (1 - share), (length + 1) / share))
        )
        raise DatasetError(
            msg(
                "{file} holds {count} characters; windows of {length} characters with"
                " {share} of the text kept for validation need at least {need}",
                file=filename,
                count=format(len(text), ","),
                length=length,
                share=f"{share:.0%}",
                need=format(need, ","),
            )
        )
    alphabet = builtin_data.vocabulary(text)
    ids = builtin_data.encode_text(text, alphabet)
    x, y = builtin_data.windows_by_position(ids, length, held_out, count, settings.seed)
    return Dataset(
        filename,
        msg(
            "uploaded {file}: {characters} characters, vocabulary {vocab} (id 0: any other"
            " character), windows [{length}]",
            file=filename,
            characters=format(len(text), ","),
            vocab=len(alphabet),
            length=length,
        ),
        "classification",
        x,
        y,
        len(alphabet),
        (length,),
        "int64",
        alphabet=alphabet,
    )


def run_alphabet(run_dir: Path) -> str | None:
    """The vocabulary of the text a run trains on (its data.txt), or None for any other data:
    what its generated text is written in."""
    text = run_dir / f"{store.DATA_PREFIX}.txt"
    if not text.is_file():
        return None
    try:
        return builtin_data.vocabulary(decode_text(text.name, text.read_bytes()))
    except (DatasetError, OSError):
        return None


def _read_csv(filename: str, data: bytes, label_column: str | None) -> Table:
    """Parsed (by csv_table, which the exported train.py carries too) only once its header and
    line count say it fits: every cell is held as a float64 and the features are copied to
    float32, beside the text itself."""
    columns = _csv_column_count(filename, data)
    rows = data.count(b"\n") + 1  # at least the rows (a quoted cell may hold a line break)
    if rows > MAX_CSV_ROWS + 1:
        raise DatasetTooLarge(
            msg(
                "{file} has over {cap} rows; this server reads at most {cap} rows of a CSV",
                file=filename,
                cap=format(MAX_CSV_ROWS, ","),
            )
        )
    need = len(data) + rows * columns * (8 + 4)
    refusal = _over_budget(msg("reading {file}", file=filename), need)
    if refusal is not None:
        raise refusal
    try:
        return read_csv_table(filename, data, label_column, MAX_CSV_ROWS)
    except CsvError as exc:
        raise DatasetError(msg(exc.template, **exc.values)) from None


def _csv_column_count(filename: str, data: bytes) -> int:
    """The number of columns in the header row, refused past MAX_CSV_COLUMNS; only the header's
    bytes are looked at."""
    end = data.find(b"\n", 0, MAX_CSV_HEADER_BYTES)
    if end < 0 and len(data) > MAX_CSV_HEADER_BYTES:
        raise DatasetTooLarge(
            msg(
                "{file}: its header row is longer than {size}; this server reads at most {cap}"
                " columns of a CSV",
                file=filename,
                size=format_bytes(MAX_CSV_HEADER_BYTES),
                cap=format(MAX_CSV_COLUMNS, ","),
            )
        )
    header = data[: end if end >= 0 else len(data)].decode("utf-8", errors="replace")
    try:
        count = len(next(csv.reader([header])))
    except (csv.Error, StopIteration):
        count = 0
    if count > MAX_CSV_COLUMNS:
        raise DatasetTooLarge(
            msg(
                "{file} has {columns} columns; this server reads at most {cap} columns of a CSV",
                file=filename,
                columns=format(count, ","),
                cap=format(MAX_CSV_COLUMNS, ","),
            )
        )
    return count


class _PastLimit(Exception):
    """A zip member unpacked to more bytes than it was allowed."""


class CountingReader:
    """One zip member, read through a count of the bytes it really unpacks: a read that would
    pass `limit` stops one byte past it and raises, so a member whose zip directory entry or .npy
    header lies is never unpacked further than it was allowed."""

    def __init__(self, member: IO[bytes], limit: int) -> None:
        self.member = member
        self.limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.count + 1  # one byte more tells that the limit was passed
        data = self.member.read(room if size is None or size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limit:
            raise _PastLimit
        return data


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def dataset_from_npz_file(filename: str, path: Path) -> Dataset:
    """A dataset from an .npz on disk, read through the same sized reader as an upload, without
    first holding the file's bytes."""
    return _from_arrays(filename, *_read_npz(filename, path))


def _read_npz(filename: str, source: bytes | Path) -> tuple[np.ndarray, np.ndarray]:
    """X and y of an .npz (a zip of .npy files, as np.savez writes it): both headers are read and
    sized first (the arrays as stored and as the tensors they become), then each array's bytes
    are unpacked into an array of exactly that size. Object arrays (pickles) are refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except zipfile.BadZipFile:
        raise DatasetError(
            msg("{file} is not an .npz archive (np.savez writes one)", file=filename)
        ) from None
    with archive:
        names = {Path(name).stem: name for name in archive.namelist() if name.endswith(".npy")}
        if "X" not in names or "y" not in names:
            raise DatasetError(
                msg(
                    "{file} holds arrays {arrays}; it needs one named 'X' (samples) and one"
                    " named 'y' (labels), e.g. np.savez(f, X=X, y=y)",
                    file=filename,
                    arrays=str(sorted(names)[:20]),
                )
            )
        headers = {key: _npy_header(filename, archive, names[key], key) for key in ("X", "y")}
        x_header, y_header = headers["X"], headers["y"]
        _check_numeric(filename, x_header.dtype, y_header.dtype)
        need = sum(h.nbytes + h.count * 8 for h in headers.values())  # as read, then as tensors
        sizes = msg(
            "{file} (X {x_shape} {x_dtype}, y {y_shape} {y_dtype})",
            x_shape=list(x_header.shape),
            x_dtype=str(x_header.dtype),
            y_shape=list(y_header.shape),
            y_dtype=str(y_header.dtype),
            file=filename,
        )
        refusal = _over_budget(sizes, need)
        if refusal is not None:
            raise refusal
        return (
            _npy_data(filename, archive, names["X"], x_header),
            _npy_data(filename, archive, names["y"], y_header),
        )


def _npy_header(filename: str, archive: zipfile.ZipFile, member: str, key: str) -> _NpyHeader:
    """An .npy member's declared shape and dtype, unpacking at most MAX_NPY_HEADER_BYTES."""
    try:
        with archive.open(member) as raw:
            shape, fortran_order, dtype = _header_of(CountingReader(raw, MAX_NPY_HEADER_BYTES))
    except _PastLimit:
        raise DatasetTooLarge(
            msg(
                "{file}: the header of {array} unpacks to more than {size}; a real .npy header"
                " is a few hundred bytes",
                file=filename,
                array=key,
                size=format_bytes(MAX_NPY_HEADER_BYTES),
            )
        ) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise DatasetError(
            msg("{file}: cannot read its arrays ({detail})", file=filename, detail=str(exc)[:200])
        ) from None
    if dtype.hasobject:
        raise DatasetError(
            msg(
                "{file}: {array} holds Python objects, which are never unpickled here; save"
                " numeric arrays (np.savez(f, X=X.astype(np.float32), y=y))",
                file=filename,
                array=key,
            )
        )
    return _NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran_order))


def _header_of(reader: CountingReader) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's own parse of an .npy header (versions 1 and 2), through the counting reader."""
    version = np.lib.format.read_magic(reader)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy version {version}")
    return read_header(reader, max_header_size=MAX_NPY_HEADER_BYTES)


def _npy_data(
    filename: str, archive: zipfile.ZipFile, member: str, header: _NpyHeader
) -> np.ndarray:
    """The array's bytes, unpacked in chunks into an array of the declared size, and no more."""
    array = np.empty(header.count, dtype=header.dtype)
    target = array.view(np.uint8)
    try:
        with archive.open(member) as raw:
            reader = CountingReader(raw, MAX_NPY_HEADER_BYTES)
            _header_of(reader)
            reader.limit = reader.count + header.nbytes
            filled = 0
            while filled < header.nbytes:
                chunk = reader.read(min(READ_CHUNK_BYTES, header.nbytes - filled))
                if not chunk:
                    raise EOFError(f"{member} ends after {filled} of {header.nbytes} bytes")
                target[filled : filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
                filled += len(chunk)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, _PastLimit) as exc:
        raise DatasetError(
            msg("{file}: cannot read its arrays ({detail})", file=filename, detail=str(exc)[:200])
        ) from None
    if header.fortran_order:
        return array.reshape(header.shape[::-1]).transpose()
    return array.reshape(header.shape)


def _check_numeric(filename: str, x: np.dtype, y: np.dtype) -> None:
    """X and y hold numbers (bool, int, unsigned or float), as their headers or arrays say."""
    if x.kind not in "biuf" or y.kind not in "biuf":
        raise DatasetError(
            msg(
                "{file}: X and y must be numeric arrays, got {x} and {y}",
                file=filename,
                x=str(x),
                y=str(y),
            )
        )


def _from_arrays(
    filename: str, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...] | None = None
) -> Dataset:
    _check_numeric(filename, x.dtype, y.dtype)
    if x.ndim < 2:
        raise DatasetError(
            msg(
                "{file}: X has shape {shape}; it needs one row per sample, e.g. [N, features] or"
                " [N, C, H, W]",
                file=filename,
                shape=str(list(x.shape)),
            )
        )
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise DatasetError(
            msg(
                "{file}: y has shape {shape} but X has {n} samples; y must be [{n}] (labels) or"
                " [{n}, k] (regression targets)",
                file=filename,
                shape=str(list(y.shape)),
                n=len(x),
            )
        )
    if len(x) < 2:
        raise DatasetError(
            msg("{file}: it holds {n} sample; training needs at least 2", file=filename, n=len(x))
        )
    for label, array in (("X", x), ("y", y)):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
            raise DatasetError(
                msg(
                    "{file}: {bad} sample(s) of {array} hold NaN or infinite values; fix or"
                    " remove them",
                    file=filename,
                    bad=bad,
                    array=label,
                )
            )
    integral_x = x.dtype.kind in "biu"
    xs = _tensor(x, np.int64 if integral_x else np.float32)
    dtype: Literal["float32", "int64"] = "int64" if integral_x else "float32"
    description = msg(
        "uploaded {file}: {count} samples of {shape}",
        file=filename,
        count=len(x),
        shape=list(x.shape[1:]),
    )
    if y.ndim == 1 and _integral(y):
        labels = _tensor(y, np.int64)
        classes = int(labels.max()) + 1
        if labels.min() < 0 or classes > MAX_CLASSES:
            raise DatasetError(
                msg(
                    "{file}: class labels must run from 0 to at most {top}, got {low}..{high};"
                    " renumber them from 0",
                    file=filename,
                    top=MAX_CLASSES - 1,
                    low=int(labels.min()),
                    high=int(labels.max()),
                )
            )
        classified = msg("{described}, {classes} classes", described=description, classes=classes)
        if class_names:
            classified = msg(
                "{described} ({names})", described=classified, names=", ".join(class_names)
            )
        return Dataset(
            filename,
            classified,
            "classification",
            xs,
            labels,
            classes,
            tuple(x.shape[1:]),
            dtype,
            class_names,
        )
    targets = _tensor(y, np.float32).reshape(len(y), -1)
    return Dataset(
        filename,
        msg(
            "{described}, regression targets {shape}",
            described=description,
            shape=list(targets.shape[1:]),
        ),
        "regression",
        xs,
        targets,
        None,
        tuple(x.shape[1:]),
        dtype,
    )


def _tensor(array: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
    """The array as a tensor of `dtype`, sharing its memory where it already is one (an upload
    in float32 or int64 is not copied again); a read-only array (pandas') is copied."""
    converted = np.ascontiguousarray(array, dtype=dtype)
    return torch.from_numpy(converted if converted.flags.writeable else converted.copy())


def _integral(values: np.ndarray) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(np.mod(values, 1) == 0))


# ---------------------------------------------------------------------------------------------
# Compatibility


def check_compatibility(
    analysis: Analysis, dataset: Dataset, target: str = "label"
) -> list[Message]:
    """Why this graph cannot train on this dataset, each reason saying what to change."""
    if not analysis.ok:
        return [msg("the graph has errors; fix them before training")]
    graph = analysis.graph
    input_node = next(n for n in graph.nodes if n.type == "Input")
    output_node = next(n for n in graph.nodes if n.type == "Output")
    given = analysis.infos[input_node.id]
    out_shape = tuple(analysis.infos[output_node.id].shape or ())
    last = analysis.inputs[output_node.id][0]
    problems: list[Message] = []
    if given.shape != dataset.sample_shape:
        problems.append(
            msg(
                "{dataset} samples are {samples} but Input {node!r} is {shape}; set the Input's"
                " shape to {samples}",
                dataset=dataset.name,
                samples=list(dataset.sample_shape),
                node=input_node.id,
                shape=list(given.shape or ()),
            )
        )
    if given.dtype == "int64" and dataset.dtype == "float32":
        problems.append(
            msg(
                "Input {node!r} expects int64 token ids but {dataset} holds float32 values; set"
                " the Input's dtype to float32 (and remove the Embedding)",
                node=input_node.id,
                dataset=dataset.name,
            )
        )
    if given.dtype == "int64" and dataset.dtype == "int64" and len(dataset):
        problems += _token_ids_fit(analysis, input_node.id, int(dataset.x.max()))
    loss = loss_of(analysis).loss
    if target == "input" or loss == "vae":  # a VAE rebuilds its input, whatever the target
        problems += _reproduces_input(analysis, dataset, out_shape, loss, last)
    else:
        problems += _targets_fit(analysis, dataset, out_shape, loss, last)
    return problems


def _token_ids_fit(analysis: Analysis, input_id: str, largest: int) -> list[Message]:
    """Every Embedding that reads the token ids has a row for the largest id."""
    problems = []
    for node_id, sources in analysis.inputs.items():
        if analysis.node_type(node_id) != "Embedding" or input_id not in sources:
            continue
        rows = int(analysis.typed[node_id].num_embeddings)
        if largest >= rows:
            problems.append(
                msg(
                    "the data holds token ids up to {largest} but Embedding {node!r} has"
                    " num_embeddings={rows}; set num_embeddings to at least {needed}",
                    largest=largest,
                    node=node_id,
                    rows=rows,
                    needed=largest + 1,
                )
            )
    return problems


def _targets_fit(
    analysis: Analysis, dataset: Dataset, out_shape: tuple[int, ...], loss: str, last: str
) -> list[Message]:
    """Class targets need one score per class (per position); regression targets the same
    shape as the output; and the loss must suit the targets."""
    classes = dataset.task == "classification"
    if classes and loss in ("mse", "l1", "huber"):
        return [
            msg(
                "{dataset} has class labels, but the Output's loss {loss} needs numeric targets;"
                " set the Output's loss to cross_entropy (or auto)",
                dataset=dataset.name,
                loss=loss,
            )
        ]
    if not classes and loss in ("cross_entropy", "nll"):
        return [
            msg(
                "{dataset} has numeric targets, but the Output's loss {loss} needs class labels;"
                " set the Output's loss to mse (or auto)",
                dataset=dataset.name,
                loss=loss,
            )
        ]
    if classes and loss == "bce_with_logits":
        if dataset.num_classes == 2 and out_shape == (1,):
            return []
        return [
            msg(
                "bce_with_logits with class labels needs two classes and an output of [1], but"
                " {dataset} has {classes} classes and the model outputs {shape}; use"
                " cross_entropy",
                dataset=dataset.name,
                classes=dataset.num_classes,
                shape=list(out_shape),
            )
        ]
    if classes:
        wanted = (*dataset.target_shape, dataset.num_classes)
        if out_shape != wanted:
            return [
                msg(
                    "{dataset} has {classes} classes, so the model must output {wanted} scores"
                    " per sample, but it outputs {shape}; {fix}",
                    dataset=dataset.name,
                    classes=dataset.num_classes,
                    wanted=list(wanted),
                    shape=list(out_shape),
                    fix=_remedy(analysis, last, out_shape, wanted),
                )
            ]
        return []
    if out_shape != dataset.target_shape:
        return [
            msg(
                "{dataset} is a regression task with targets {targets}, but the model outputs"
                " {shape}; {fix}",
                dataset=dataset.name,
                targets=list(dataset.target_shape),
                shape=list(out_shape),
                fix=_remedy(analysis, last, out_shape, dataset.target_shape),
            )
        ]
    return []


def _reproduces_input(
    analysis: Analysis, dataset: Dataset, out_shape: tuple[int, ...], loss: str, last: str
) -> list[Message]:
    """To reproduce its input, a model takes float samples and outputs their very shape; the
    loss vae (binary cross-entropy against the input) also needs every input value in [0, 1]."""
    if isinstance(dataset.x, LazyImages):
        return [
            msg(
                "{dataset} is read picture by picture, and a model learns to reproduce arrays"
                " held in memory; train on its labels, or upload the pictures as an NPZ",
                dataset=dataset.name,
            )
        ]
    if dataset.dtype != "float32":
        return [
            msg(
                "reproducing the input needs float samples, but {dataset} holds token ids;"
                " choose an image dataset or train on the labels",
                dataset=dataset.name,
            )
        ]
    if loss in ("cross_entropy", "nll"):
        return [
            msg(
                "reproducing the input compares numbers, but the Output's loss is {loss}; set"
                " it to mse (or auto)",
                loss=loss,
            )
        ]
    if loss == "vae" and len(dataset):
        low, high = float(dataset.x.min()), float(dataset.x.max())
        if low < 0 or high > 1:
            return [
                msg(
                    "the loss vae rebuilds the input by binary cross-entropy, which needs values"
                    " in [0, 1], but {dataset} holds values from {low} to {high}; scale the data"
                    " to [0, 1] (or set the Output's loss to mse)",
                    dataset=dataset.name,
                    low=f"{low:.4g}",
                    high=f"{high:.4g}",
                )
            ]
    if out_shape != dataset.sample_shape:
        return [
            msg(
                "to reproduce its input the model must output {samples}, the shape of a sample,"
                " but it outputs {shape}",
                samples=list(dataset.sample_shape),
                shape=list(out_shape),
            )
        ]
    return []


def flatten_fix(analysis: Analysis) -> Diagnostic | None:
    """The compiler's advice to insert a Flatten before a Linear that acts on the last dim of a
    multi-dim tensor, nearest the Input: inserting it there gives every later layer one vector
    per sample, which also mends the Linears after it."""
    return next(
        (
            warning
            for warning in analysis.warnings
            if warning.fix and warning.fix.get("insert", {}).get("type") == "Flatten"
        ),
        None,
    )


def compatibility_fix(
    analysis: Analysis, dataset: Dataset, target: str = "label"
) -> Diagnostic | None:
    """The one-click edit that makes the graph fit the data, where there is one: the Flatten a
    classifier head lacks, when that is why the output has more dims than the targets."""
    if not analysis.ok or target == "input" or not check_compatibility(analysis, dataset, target):
        return None
    output = next(n for n in analysis.graph.nodes if n.type == "Output")
    out_shape = tuple(analysis.infos[output.id].shape or ())
    wanted = dataset.target_shape
    if dataset.task == "classification":
        wanted = (*wanted, dataset.num_classes or 0)
    return flatten_fix(analysis) if len(out_shape) > len(wanted) else None


def _remedy(
    analysis: Analysis, last: str, out_shape: tuple[int, ...], wanted: tuple[int, ...]
) -> Message:
    """What to change so the output has the targets' shape: insert the missing Flatten when the
    output has extra dims because a Linear acted on the last dim only, else set the width."""
    advice = flatten_fix(analysis) if len(out_shape) > len(wanted) else None
    if advice is not None and advice.fix is not None:
        source, linear = advice.fix["between"]
        return msg(
            "insert a Flatten between {source!r} and {node!r}: Linear {node!r} acts on the last"
            " dim only, so the layers after it keep the extra dims",
            source=source,
            node=linear,
        )
    return _set_width(analysis, last, math.prod(wanted[-1:]) if wanted else 1)


def _set_width(analysis: Analysis, last: str, width: int | None) -> Message:
    if analysis.node_type(last) == "Linear":
        return msg("set out_features of Linear {node!r} to {width}", node=last, width=width)
    return msg(
        "end the model with a Linear of out_features={width} (after a Flatten if needed)",
        width=width,
    )


# -- which built-in dataset fits a graph (the Train page, the exported train.py, the CLI) ------

# The built-in datasets that need nothing on disk, in the order they are tried for a graph.
OFFLINE_BUILTINS = ("digits", "digits-28", "digits-rows", "tokens", "sine", "text")


def dataset_problems(analysis: Analysis, dataset: Dataset, target: str = "label") -> list[Message]:
    """Why this graph cannot train on this dataset: a GAN pair's generator must draw samples
    of the dataset's shape (compiler/gan.py), any other graph must take and predict them."""
    from compiler.analysis import analyse
    from compiler.gan import check_pair, discriminator_graph

    judge = discriminator_graph(analysis.graph)
    if judge is not None:
        return check_pair(analysis, analyse(judge), dataset.sample_shape)
    return check_compatibility(analysis, dataset, target)


def fitting_builtin(
    analysis: Analysis,
    target: str = "label",
    first: str | None = None,
    load: Any = None,
) -> str | None:
    """The offline built-in dataset this graph trains on as it is: `first` where it is one and
    fits, else the first of OFFLINE_BUILTINS that fits; None when none does. Each is sized before
    it is made, so one over the data budget is passed over, never generated. `load(name,
    input_shape)` may serve them from a cache."""
    load = load or _offline_builtin
    node = next((n for n in analysis.graph.nodes if n.type == "Input"), None)
    shape = tuple(analysis.infos[node.id].shape or ()) if node is not None else ()
    for name in dict.fromkeys([first, *OFFLINE_BUILTINS]):
        if name not in OFFLINE_BUILTINS:
            continue
        try:
            check_builtin_size(name, shape if name == "text" else ())
            dataset = load(name, shape if name == "text" else ())
        except DatasetError:
            continue
        if not dataset_problems(analysis, dataset, target):
            return name
    return None


@functools.lru_cache(maxsize=len(OFFLINE_BUILTINS))
def _offline_builtin(name: str, input_shape: tuple[int, ...]) -> Dataset:
    """A built-in dataset for fitting_builtin, kept: an export asks for the same ones again."""
    return load_dataset(name, input_shape=input_shape)
