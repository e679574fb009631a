"""Datasets a run can train on, all usable offline: bundled digits, generated tasks, uploads.

Every dataset is small enough to sit in memory as two tensors, so the trainer can move it to the
device once and slice batches there. Anything a person supplies (an uploaded file, a name) is
checked here and rejected with a `DatasetError` whose message says what to change.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from compiler.analysis import Analysis

Task = Literal["classification", "regression"]

MAX_UPLOAD_BYTES = 100_000_000
MAX_UNPACKED_BYTES = 1_000_000_000
MAX_CLASSES = 1_000
TOKEN_LENGTH = 16
TOKEN_VOCAB = 16
MARKER = 1
SINE_LENGTH = 32

BUILTIN_DATASETS: dict[str, str] = {
    "digits": "scikit-learn's 8x8 handwritten digits as images [1, 8, 8], 10 classes (1,797)",
    "digits-28": "the same digits resized to [1, 28, 28], so LeNet-5 sized models train on them",
    "digits-rows": "the same digits as sequences [8, 8]: each image row is one time step",
    "tokens": "generated int64 token sequences [16], vocabulary 16, 16 classes: the label is the"
    " token that follows the marker token 1 (needs attention)",
    "sine": "generated noisy sine waves [32, 1]; predict the next value [1] (regression, MSE)",
    "mnist": "MNIST handwritten digits [1, 28, 28], 10 classes (needs torchvision)",
    "fashion-mnist": "Fashion-MNIST clothing images [1, 28, 28], 10 classes (needs torchvision)",
    "cifar10": "CIFAR-10 colour images [3, 32, 32], 10 classes (needs torchvision)",
}


class DatasetError(ValueError):
    """A dataset cannot be loaded or used; the message says why and what to do."""


@dataclass
class Dataset:
    name: str
    description: str
    task: Task
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int | None
    sample_shape: tuple[int, ...]
    dtype: Literal["float32", "int64"]

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Per-sample shape of y: () for class labels, (k,) for regression targets."""
        return tuple(self.y.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A built-in dataset by name; generated ones are the same for the same seed."""
    loader = _LOADERS.get(name)
    if loader is None:
        known = ", ".join(BUILTIN_DATASETS)
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {known}, or upload a file")
    return loader(seed)


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 8, 8) / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.int64)


def _digits(seed: int) -> Dataset:
    x, y = _digits_arrays()
    return _classification("digits", x.unsqueeze(1), y, 10)


def _digits_28(seed: int) -> Dataset:
    x, y = _digits_arrays()
    big = F.interpolate(x.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False)
    return _classification("digits-28", big, y, 10)


def _digits_rows(seed: int) -> Dataset:
    x, y = _digits_arrays()
    return _classification("digits-rows", x, y, 10)


def _tokens(seed: int, count: int = 4096) -> Dataset:
    """Random tokens (never the marker) with one marker; the label is the token right after it."""
    generator = torch.Generator().manual_seed(seed)
    plain = torch.tensor([t for t in range(TOKEN_VOCAB) if t != MARKER])
    x = plain[torch.randint(len(plain), (count, TOKEN_LENGTH), generator=generator)]
    where = torch.randint(TOKEN_LENGTH - 1, (count,), generator=generator)
    rows = torch.arange(count)
    x[rows, where] = MARKER
    return _classification("tokens", x, x[rows, where + 1].clone(), TOKEN_VOCAB)


def _sine(seed: int, count: int = 2048) -> Dataset:
    """Sine waves of random frequency and phase with noise; the target is the next clean value."""
    generator = torch.Generator().manual_seed(seed)
    frequency = 0.1 + 0.4 * torch.rand(count, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(count, 1, generator=generator)
    t = torch.arange(SINE_LENGTH + 1, dtype=torch.float32)
    clean = torch.sin(frequency * t + phase)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=generator)
    x = noisy[:, :SINE_LENGTH].unsqueeze(-1)
    y = clean[:, SINE_LENGTH:]
    return Dataset(
        "sine", BUILTIN_DATASETS["sine"], "regression", x, y, None, (SINE_LENGTH, 1), "float32"
    )


def _classification(name: str, x: torch.Tensor, y: torch.Tensor, classes: int) -> Dataset:
    dtype = "int64" if x.dtype == torch.int64 else "float32"
    return Dataset(
        name, BUILTIN_DATASETS[name], "classification", x, y, classes, tuple(x.shape[1:]), dtype
    )


def _torchvision(name: str, class_name: str) -> Callable[[int], Dataset]:
    """MNIST-like datasets, from NETBUILDER_DATA (default ~/.cache/netbuilder) or downloaded."""

    def load(seed: int) -> Dataset:
        try:
            import torchvision.datasets
        except ImportError:
            raise DatasetError(
                f"{name} needs torchvision, which is not installed; install it"
                " (pip install torchvision) or choose digits"
            ) from None
        root = Path(os.environ.get("NETBUILDER_DATA", Path.home() / ".cache" / "netbuilder"))
        source = getattr(torchvision.datasets, class_name)
        try:
            data = source(root=str(root), train=True, download=True)
        except Exception as exc:  # any download or parse failure means "not available here"
            raise DatasetError(
                f"{name} is not available: it is not in {root} and could not be downloaded"
                f" ({type(exc).__name__}: {exc}); put the files there or choose digits"
            ) from None
        images = torch.as_tensor(np.asarray(data.data))
        x = (images.permute(0, 3, 1, 2) if images.ndim == 4 else images.unsqueeze(1)) / 255.0
        y = torch.as_tensor(np.asarray(data.targets), dtype=torch.int64)
        return _classification(name, x.float().contiguous(), y, 10)

    return load


_LOADERS: dict[str, Callable[[int], Dataset]] = {
    "digits": _digits,
    "digits-28": _digits_28,
    "digits-rows": _digits_rows,
    "tokens": _tokens,
    "sine": _sine,
    "mnist": _torchvision("mnist", "MNIST"),
    "fashion-mnist": _torchvision("fashion-mnist", "FashionMNIST"),
    "cifar10": _torchvision("cifar10", "CIFAR10"),
}


# ---------------------------------------------------------------------------------------------
# Uploads


def dataset_from_upload(filename: str, data: bytes, label_column: str | None = None) -> Dataset:
    """A dataset from a user's .csv (numeric columns, one of them the label) or .npz (X, y).

    Integer labels make a classification task; fractional ones a regression task.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise DatasetError(
            f"{filename} is {len(data) / 1e6:.1f} MB; uploads are capped at"
            f" {MAX_UPLOAD_BYTES / 1e6:.0f} MB"
        )
    suffix = Path(filename).suffix.lower()
    if suffix == ".csv":
        x, y = _read_csv(filename, data, label_column)
    elif suffix == ".npz":
        x, y = _read_npz(filename, data)
    else:
        raise DatasetError(
            f"{filename}: upload a .csv or an .npz file (got {suffix or 'no'} suffix)"
        )
    return _from_arrays(filename, x, y)


def _read_csv(
    filename: str, data: bytes, label_column: str | None
) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{filename} is not a readable CSV file: {exc}") from None
    if frame.shape[1] < 2 or len(frame) < 2:
        raise DatasetError(
            f"{filename} has {len(frame)} rows and {frame.shape[1]} columns; it needs a header row,"
            " at least 2 rows, and at least one feature column beside the label column"
        )
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    label = columns[-1] if label_column is None else label_column
    if label not in columns:
        raise DatasetError(
            f"{filename} has no column {label!r};"
            f" choose the label column among: {', '.join(columns)}"
        )
    text = [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise DatasetError(
            f"{filename}: column(s) {', '.join(map(repr, text[:5]))} are not numeric; every column"
            " must hold numbers (encode categories as integers, or drop the column)"
        )
    missing = [c for c in columns if frame[c].isna().any()]
    if missing:
        rows = int(frame[missing].isna().any(axis=1).sum())
        raise DatasetError(
            f"{filename}: {rows} row(s) have empty or NaN values in column(s)"
            f" {', '.join(map(repr, missing[:5]))}; fill them in or remove those rows"
        )
    features = frame.drop(columns=[label]).to_numpy(dtype=np.float32)
    return features, frame[label].to_numpy()


def _read_npz(filename: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise DatasetError(f"{filename} is not an .npz archive (np.savez writes one)") from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise DatasetError(
            f"{filename} unpacks to {unpacked / 1e9:.1f} GB; the limit is"
            f" {MAX_UNPACKED_BYTES / 1e9:.0f} GB"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            if "X" not in arrays or "y" not in arrays:
                raise DatasetError(
                    f"{filename} holds arrays {sorted(arrays.files)}; it needs one named 'X'"
                    " (samples) and one named 'y' (labels), e.g. np.savez(f, X=X, y=y)"
                )
            return arrays["X"], arrays["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{filename}: cannot read its arrays ({exc})") from None


def _from_arrays(filename: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DatasetError(
            f"{filename}: X and y must be numeric arrays, got {x.dtype} and {y.dtype}"
        )
    if x.ndim < 2:
        raise DatasetError(
            f"{filename}: X has shape {list(x.shape)}; it needs one row per sample,"
            " e.g. [N, features] or [N, C, H, W]"
        )
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise DatasetError(
            f"{filename}: y has shape {list(y.shape)} but X has {len(x)} samples;"
            f" y must be [{len(x)}] (labels) or [{len(x)}, k] (regression targets)"
        )
    if len(x) < 2:
        raise DatasetError(f"{filename}: it holds {len(x)} sample; training needs at least 2")
    for label, array in (("X", x), ("y", y)):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
            raise DatasetError(
                f"{filename}: {bad} sample(s) of {label} hold NaN or infinite values;"
                " fix or remove them"
            )
    integral_x = x.dtype.kind in "biu"
    xs = torch.tensor(x, dtype=torch.int64 if integral_x else torch.float32)
    dtype: Literal["float32", "int64"] = "int64" if integral_x else "float32"
    description = f"uploaded {filename}: {len(x)} samples of {list(x.shape[1:])}"
    if y.ndim == 1 and _integral(y):
        labels = y.astype(np.int64)
        classes = int(labels.max()) + 1
        if labels.min() < 0 or classes > MAX_CLASSES:
            raise DatasetError(
                f"{filename}: class labels must run from 0 to at most {MAX_CLASSES - 1},"
                f" got {labels.min()}..{labels.max()}; renumber them from 0"
            )
        return Dataset(
            filename,
            f"{description}, {classes} classes",
            "classification",
            xs,
            torch.tensor(labels),
            classes,
            tuple(x.shape[1:]),
            dtype,
        )
    targets = torch.tensor(y, dtype=torch.float32).reshape(len(y), -1)
    return Dataset(
        filename,
        f"{description}, regression targets {list(targets.shape[1:])}",
        "regression",
        xs,
        targets,
        None,
        tuple(x.shape[1:]),
        dtype,
    )


def _integral(values: np.ndarray) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(np.mod(values, 1) == 0))


# ---------------------------------------------------------------------------------------------
# Compatibility


def check_compatibility(analysis: Analysis, dataset: Dataset) -> list[str]:
    """Why this graph cannot train on this dataset, each reason saying what to change."""
    if not analysis.ok:
        return ["the graph has errors; fix them before training"]
    graph = analysis.graph
    input_node = next(n for n in graph.nodes if n.type == "Input")
    output_node = next(n for n in graph.nodes if n.type == "Output")
    given = analysis.infos[input_node.id]
    out_shape = analysis.infos[output_node.id].shape or ()
    last = analysis.inputs[output_node.id][0]
    problems: list[str] = []
    if given.shape != dataset.sample_shape:
        problems.append(
            f"{dataset.name} samples are {list(dataset.sample_shape)} but Input {input_node.id!r}"
            f" is {list(given.shape or ())}; set the Input's shape to {list(dataset.sample_shape)}"
        )
    if given.dtype == "int64" and dataset.dtype == "float32":
        problems.append(
            f"Input {input_node.id!r} expects int64 token ids but {dataset.name} holds float32"
            " values; set the Input's dtype to float32 (and remove the Embedding)"
        )
    if dataset.task == "classification":
        if out_shape != (dataset.num_classes,):
            problems.append(
                f"{dataset.name} has {dataset.num_classes} classes, so the model must output"
                f" [{dataset.num_classes}] scores per sample, but it outputs {list(out_shape)};"
                f" {_set_width(analysis, last, dataset.num_classes)}"
            )
    elif out_shape != dataset.target_shape:
        width = math.prod(dataset.target_shape)
        problems.append(
            f"{dataset.name} is a regression task (mean squared error) with targets"
            f" {list(dataset.target_shape)}, but the model outputs {list(out_shape)};"
            f" {_set_width(analysis, last, width)}"
        )
    return problems


def _set_width(analysis: Analysis, last: str, width: int | None) -> str:
    if analysis.node_type(last) == "Linear":
        return f"set out_features of Linear {last!r} to {width}"
    return f"end the model with a Linear of out_features={width} (after a Flatten if needed)"
