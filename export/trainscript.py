"""The exported `train.py`: a short standalone script around the shared training loop and run.

The bundle carries runtime/loop.py, runtime/run.py and runtime/builtin_data.py verbatim as
loop.py, run.py and builtin_data.py, so train.py runs the very loop, the same code around it
(device, checkpoint, stop, records) and the same data the app trains with. Its command line is
derived from TrainConfig, the one settings model: one flag per field that applies outside the app,
with the field's type, choices, help and, as default, the value the person chose. Only that,
the Output's loss and the built-in dataset that fits the model (runtime.datasets.fitting_builtin,
as the Train page picks it) vary with the graph. The same
script runs on one device or, under `torchrun`, on many with DistributedDataParallel.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import black
from pydantic.fields import FieldInfo

from compiler.analysis import Analysis, loss_of
from compiler.codegen import safe_text
from runtime.datasets import fitting_builtin
from runtime.settings import APP_ONLY, GAN_UNUSED, TrainConfig

LINE_LENGTH = 88
RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
# The files the bundle copies verbatim from the runtime, by their name in the bundle.
SHARED_FILES = {
    "loop.py": RUNTIME / "loop.py",
    "run.py": RUNTIME / "run.py",
    "builtin_data.py": RUNTIME / "builtin_data.py",
    "csv_table.py": RUNTIME / "csv_table.py",
    "image_folder.py": RUNTIME / "image_folder.py",
}


def shared_sources() -> dict[str, str]:
    """loop.py, run.py, builtin_data.py and csv_table.py, exactly as the app runs them."""
    return {name: path.read_text() for name, path in SHARED_FILES.items()}


def train_source(analysis: Analysis, settings: TrainConfig | None = None) -> str:
    """The train.py text for a valid analysis; `settings` are the app's chosen ones."""
    if not analysis.ok:
        raise ValueError("cannot write a training script for a graph with errors")
    settings = settings or TrainConfig()
    dataset = fitting_builtin(analysis, settings.target, settings.dataset)
    output = loss_of(analysis)
    loss, smoothing = output.loss, output.label_smoothing
    source = (
        TEMPLATE.replace("__NAME__", docstring_name(analysis.graph.name))
        .replace("__LOSS__", f"LOSS = {json.dumps(loss)}\nLABEL_SMOOTHING = {smoothing!r}")
        .replace("__FLAGS__", "\n    ".join(flag_lines(settings, dataset)))
        .replace("__LABEL_COLUMN__", literal(settings.label_column))
    )
    return black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH))


def flag_lines(
    settings: TrainConfig, dataset: str | None, left_out: tuple[str, ...] = APP_ONLY
) -> list[str]:
    """One `add(...)` call per TrainConfig field that train.py takes, defaulting to `settings`."""
    lines = []
    for name, info in TrainConfig.model_fields.items():
        if name in left_out:
            continue
        value = dataset if name == "dataset" else getattr(settings, name)
        lines.append(flag_line(name, info, value))
    return lines


def flag_line(name: str, info: FieldInfo, value: Any) -> str:
    """`add("--batch-size", type=int, default=64, help="global batch")` for one field."""
    options = [json.dumps("--" + name.replace("_", "-"))]
    annotation = info.annotation
    if name == "dataset":
        from runtime.builtin_data import DESCRIPTIONS  # torch: only when exporting

        options.append(f"choices={tuple(DESCRIPTIONS)!r}")
    elif typing.get_origin(annotation) is Literal:
        options.append(f"choices={typing.get_args(annotation)!r}")
    elif annotation is bool:
        options.append("action=argparse.BooleanOptionalAction")
    else:
        options.append(f"type={plain_type(annotation).__name__}")
    options.append(f"default={literal(value)}")
    bounds = bounds_text(info)
    help_text = "; ".join(part for part in (info.description, bounds) if part)
    if help_text:
        options.append(f"help={json.dumps(help_text.replace('%', '%%'))}")
    return f"add({', '.join(options)})"


def plain_type(annotation: Any) -> type:
    """int for `int | None`, float for `float`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def bounds_text(info: FieldInfo) -> str:
    """The field's range as TrainConfig checks it, e.g. '>= 1, <= 100000'."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [
        f"{signs[key]} {getattr(item, key)}"
        for item in info.metadata
        for key in signs
        if getattr(item, key, None) is not None
    ]
    return ", ".join(parts)


def docstring_name(name: str, limit: int = 70) -> str:
    """The graph's name for the docstring: sanitised, and cut to keep the line short."""
    text = safe_text(name)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def literal(value: object) -> str:
    """Python source for a validated setting, with black's double quotes for strings."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


TEMPLATE = '''"""Train the model in model.py, exported by NetBuilder.

Graph: '__NAME__'.

    python train.py                        # the settings chosen in NetBuilder
    python train.py --epochs 20 --lr 3e-4  # override any of them (--help lists all)
    python train.py --data mine.csv        # your data: a CSV (label: last column) ...
    python train.py --data mine.npz        # ... or arrays X and y in an NPZ file
    python train.py --data photos.zip      # ... or class folders of pictures
    python train.py --data photos/         # ... the same, unzipped
    python train.py --data story.txt       # ... or a text, for a next-character model
    python train.py --resume               # continue from checkpoints/last.pt
    torchrun --nproc_per_node=4 train.py   # a process per GPU, DistributedDataParallel

loop.py is NetBuilder's own training loop, run.py the code around it (device,
checkpoint, stop, records), builtin_data.py its built-in datasets and csv_table.py its
CSV reader, the very files the app trains with: the same settings and seed on CPU give
the same weights, and a CSV is read as the app reads it (a label column of words, such
as cat and dog, becomes classes in sorted order).
--batch-size is the global batch: under torchrun each process takes a share of it.
Every epoch writes, in checkpoints/ beside this file (--out chooses another folder),
model.pt (the weights: model.load_state_dict(torch.load(path, weights_only=True))),
last.pt (all that --resume needs) and a line of metrics.jsonl.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import builtin_data
import csv_table
import loop
import run
from model import INPUT_DTYPE, INPUT_SHAPE, OUTPUT_SHAPE, build_model

# The Output node's loss, as designed in NetBuilder.
__LOSS__
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """NetBuilder's TrainConfig fields, defaulting to the values chosen there."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    __FLAGS__
    add(
        "--data",
        type=Path,
        help="your data instead of --dataset: a CSV file (a header row, one sample"
        " per row), an NPZ file with arrays X and y, a .zip or folder of class"
        " folders of pictures (cats/1.jpg, dogs/...), or a UTF-8 .txt for a"
        " next-character model",
    )
    add(
        "--label-column",
        default=__LABEL_COLUMN__,
        help="the CSV column that holds the labels (default: the last column)",
    )
    add(
        "--out",
        type=Path,
        default=HERE / "checkpoints",
        help="checkpoint folder (default: checkpoints/ beside train.py)",
    )
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    args = parser.parse_args(argv)
    if args.data is None and args.dataset is None:
        parser.error(
            f"no built-in dataset fits input {list(INPUT_SHAPE)}; pass --data FILE.csv"
            " or FILE.npz"
        )
    return args


def read_csv(path: Path, label_column: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A CSV read by csv_table.py, as the app reads it: features X, labels y (class ids
    for whole numbers or words, a column of regression targets for fractions)."""
    try:
        table = csv_table.read_csv_table(path.name, path.read_bytes(), label_column)
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc}")
    except csv_table.CsvError as exc:
        raise SystemExit(str(exc))
    if table.class_names:
        names = ", ".join(table.class_names)
        print(f"classes: {names} (ids 0 to {len(table.class_names) - 1}, in this order)")
    y = torch.from_numpy(table.labels)
    return torch.from_numpy(table.features), y if y.dtype == torch.int64 else y.reshape(-1, 1)


def read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrays X and y of an NPZ file, read with allow_pickle=False: no code can run."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return torch.from_numpy(arrays["X"]), torch.from_numpy(arrays["y"])
    except KeyError:
        raise SystemExit(f"{path} needs two arrays, named X and y")
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"cannot read {path} as an NPZ file of numbers: {exc}")


def read_pictures(path: Path, args: argparse.Namespace) -> tuple[object, torch.Tensor]:
    """Class folders of pictures (a .zip or a folder), read by image_folder.py as the
    app reads them: x decodes each batch when asked (DataLoader workers read ahead),
    augmented as --augment-* say on training batches only, normalised by the training
    split."""
    import image_folder  # Pillow: only for pictures

    def training_rows(count: int) -> torch.Tensor:
        rows = torch.arange(count)
        return loop.split(rows, rows, args).y_train

    try:
        x, y, classes = image_folder.load_image_folder(path, INPUT_SHAPE, args, training_rows)
    except (image_folder.ImageFolderError, OSError) as exc:
        raise SystemExit(str(exc))
    print(f"classes: {', '.join(classes)} (ids 0 to {len(classes) - 1}, in this order)")
    return x, y


def read_text(path: Path, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of a UTF-8 text, as the app cuts them: its own vocabulary (id 0 for any
    character left out), the validation windows from the text's last part."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8")
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc}")
    alphabet = builtin_data.vocabulary(text)
    count = builtin_data.TEXT_SAMPLES
    rows = torch.arange(count)
    held_out = loop.split(rows, rows, args).y_val
    ids = builtin_data.encode_text(text, alphabet)
    if len(ids) < 2 * (INPUT_SHAPE[0] + 1):
        length = INPUT_SHAPE[0]
        raise SystemExit(f"{path} holds {len(ids)} characters: too few for {length}")
    print(f"vocabulary: {len(alphabet)} characters (id 0 for any other)")
    return builtin_data.windows_by_position(ids, INPUT_SHAPE[0], held_out, count, args.seed)


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples as (X, y): --data (CSV, NPZ, pictures, text) or --dataset."""
    pictures = args.data is not None and (args.data.is_dir() or args.data.suffix.lower() == ".zip")
    if pictures:
        x, y = read_pictures(args.data, args)
    elif args.data is not None and args.data.suffix.lower() == ".txt":
        x, y = read_text(args.data, args)
    elif args.data is not None and args.data.suffix.lower() == ".csv":
        x, y = read_csv(args.data, args.label_column)
    elif args.data is not None:
        x, y = read_npz(args.data)
    else:
        length = INPUT_SHAPE[0] if len(INPUT_SHAPE) == 1 else None
        x, y = builtin_data.load(args.dataset, args.seed, length)
    if tuple(x.shape[1:]) != INPUT_SHAPE:
        shape = ", ".join(map(str, INPUT_SHAPE))
        raise SystemExit(f"X is {list(x.shape)}; the model takes [N, {shape}]")
    if len(y) != len(x):
        raise SystemExit(f"X has {len(x)} samples but y has {len(y)}")
    # The loss vae: binary cross-entropy against the input, which must lie in [0, 1].
    if LOSS == "vae" and pictures:
        raise SystemExit(
            "the loss vae needs inputs in [0, 1], but pictures are normalised per"
            " channel; pass them as an array X in an NPZ file, scaled to [0, 1]"
        )
    if LOSS == "vae" and (x.min() < 0 or x.max() > 1):
        low, high = float(x.min()), float(x.max())
        raise SystemExit(
            "the loss vae rebuilds the input by binary cross-entropy, which needs"
            f" values in [0, 1], but X holds values from {low:.4g} to {high:.4g};"
            " scale X to [0, 1]"
        )
    if args.target == "input" or LOSS == "vae" or torch.is_floating_point(y):
        return x.to(INPUT_DTYPE), y.float()
    classes = OUTPUT_SHAPE[-1] if OUTPUT_SHAPE else 1
    if y.min() < 0 or y.max() >= classes:
        raise SystemExit(
            f"labels run from {int(y.min())} to {int(y.max())}, but the model outputs"
            f" {list(OUTPUT_SHAPE)} scores; make its last Linear as wide as the classes"
        )
    return x.to(INPUT_DTYPE), y.long()


def start_processes(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, joins the process group: NCCL on
    GPUs, gloo on CPUs; alone, it is rank 0 of 1."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    try:
        device = run.pick_device(device_choice, int(os.environ.get("LOCAL_RANK", 0)), world)
    except run.DeviceMissing as exc:
        raise SystemExit(str(exc)) from None
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


class Checkpoints(run.Run):
    """Each epoch: a metrics line and (process 0) last.pt, model.pt, metrics.jsonl."""

    def __init__(self, trainer: loop.Loop, model: nn.Module, out: Path, rank: int, world: int):
        super().__init__(trainer, {"model": model}, rank, world)
        self.out = out

    def record_epoch(self, record: dict, progress: loop.Progress) -> None:
        if self.writer:
            print(run.describe(record), flush=True)
            run.save_files(self, self.out, {"model": "model.pt"}, record)


def train(
    args: argparse.Namespace, rank: int, world: int, device: torch.device
) -> nn.Module:
    """The whole run; returns the trained model (the same weights on every process)."""
    x, y = load_data(args)
    data = loop.split(x, y, args, device)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = build_model().to(device)
    optimizer = loop.make_optimizer(args, list(model.parameters()))
    trainer = loop.Loop(
        run.distributed(model, device, world), optimizer, data, args, LOSS,
        LABEL_SMOOTHING, device=device, rank=rank, world=world,
    )
    checkpoints = Checkpoints(trainer, model, args.out, rank, world)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        run.resume(checkpoints, args.out / "last.pt")
        if rank == 0:
            print(f"resuming after epoch {trainer.progress.epoch}")
    if rank == 0:
        train_count, val_count = len(data.x_train), len(data.x_val)
        print(f"{train_count} samples to train on, {val_count} to check, on {device}")
        if trainer.left_out:
            print("the last batch of one sample is left out: BatchNorm needs two or more")
    run.end(checkpoints, checkpoints.train(), args)
    return model


def main(argv: list[str] | None = None) -> nn.Module:
    """Train and return the model (with the same weights on every process)."""
    args = parse_args(argv)
    rank, world, device = start_processes(args.device)
    try:
        return train(args, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
'''


# ---------------------------------------------------------------------------------------------
# A GAN pair


def gan_model_source(name: str) -> str:
    """model.py of a GAN bundle: both players, from generator.py and discriminator.py."""
    return f'''"""The GAN '{safe_text(name)}', exported by NetBuilder: build_generator() and
build_discriminator(). NOISE_SHAPE is the generator's input (one sample, no batch)."""

from discriminator import build_model as build_discriminator
from generator import INPUT_SHAPE as NOISE_SHAPE
from generator import build_model as build_generator

__all__ = ["NOISE_SHAPE", "build_discriminator", "build_generator"]
'''


def gan_train_source(generator: Analysis, settings: TrainConfig | None = None) -> str:
    """train.py of a GAN bundle (`generator`: the pair's analysis): the shared GanLoop with
    flags derived from TrainConfig, less the settings a GAN has no use for."""
    settings = settings or TrainConfig()
    dataset = fitting_builtin(generator, "label", settings.dataset)
    flags = flag_lines(settings, dataset, APP_ONLY + GAN_UNUSED)
    source = GAN_TEMPLATE.replace("__NAME__", docstring_name(generator.graph.name)).replace(
        "__FLAGS__", "\n    ".join(flags)
    )
    return black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH))


GAN_TEMPLATE = '''"""Train the GAN in model.py, exported by NetBuilder.

Graph: '__NAME__'.

    python train.py                      # the settings chosen in NetBuilder
    python train.py --epochs 50          # override any of them (--help lists all)
    python train.py --data mine.npz      # your images: an array X in an NPZ file
    python train.py --resume             # continue from checkpoints/last.pt

loop.py is NetBuilder's own training loop (GanLoop: the discriminator, then the
generator, in alternating steps, each with its own optimizer from the same settings)
and run.py the code around it (device, checkpoint, stop, records), as the app runs them;
builtin_data.py holds its datasets. Every epoch writes, in checkpoints/ beside this file
(--out chooses another folder), generator.pt and discriminator.pt (state_dicts),
last.pt (all that --resume needs), samples.pt (generated images from fixed noise) and a
line of metrics.jsonl.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import builtin_data
import loop
import run
from model import NOISE_SHAPE, build_discriminator, build_generator

WEIGHTS = {"generator": "generator.pt", "discriminator": "discriminator.pt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """NetBuilder's TrainConfig fields, defaulting to the values chosen there."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    __FLAGS__
    add("--gan-loss", choices=loop.GAN_LOSSES, default="non_saturating")
    add("--data", type=Path, help="an NPZ file with an array X of images")
    add(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "checkpoints",
        help="checkpoint folder (default: checkpoints/ beside train.py)",
    )
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    args = parser.parse_args(argv)
    if args.data is None and args.dataset is None:
        parser.error("no built-in dataset fits the generator's output; pass --data")
    return args


def real_samples(args: argparse.Namespace) -> torch.Tensor:
    """The images the generator learns to imitate."""
    if args.data is None:
        return builtin_data.load(args.dataset, args.seed)[0].float()
    import numpy as np

    with np.load(args.data, allow_pickle=False) as arrays:
        return torch.from_numpy(arrays["X"]).float()


class Checkpoints(run.Run):
    """Each epoch: a metrics line, both players' weights, last.pt and a grid of samples."""

    def __init__(self, trainer: loop.GanLoop, out: Path, seed: int) -> None:
        models = {"generator": trainer.generator, "discriminator": trainer.discriminator}
        super().__init__(trainer, models)
        self.out = out
        self.noise = torch.randn(16, *NOISE_SHAPE, generator=torch.Generator().manual_seed(seed))

    def record_epoch(self, record: dict, progress: loop.Progress) -> None:
        print(run.describe(record), flush=True)
        run.save_files(self, self.out, WEIGHTS, record)
        generator = self.loop.generator
        with torch.no_grad():
            generator.eval()
            samples = generator(self.noise.to(self.device)).cpu()
            generator.train()
        torch.save(samples, self.out / "samples.pt")


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Train and return the generator."""
    args = parse_args(argv)
    try:
        device = run.pick_device(args.device)
    except run.DeviceMissing as exc:
        raise SystemExit(str(exc)) from None
    real = real_samples(args).to(device)
    torch.manual_seed(args.seed)
    generator, discriminator = build_generator().to(device), build_discriminator().to(device)
    trainer = loop.GanLoop(
        generator, discriminator, real, args, tuple(NOISE_SHAPE), args.gan_loss, device=device
    )
    checkpoints = Checkpoints(trainer, args.out, args.seed + 1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        run.resume(checkpoints, args.out / "last.pt")
        print(f"resuming after epoch {trainer.progress.epoch}")
    print(f"{len(real)} images to imitate, on {device}")
    run.end(checkpoints, checkpoints.train(), args)
    return generator


if __name__ == "__main__":
    main()
'''
