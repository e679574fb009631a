"""The exported `train.py`: a short standalone script around the shared training loop. Pure.

The bundle carries runtime/loop.py and runtime/builtin_data.py verbatim as loop.py and
builtin_data.py, so train.py runs the very loop and data the app trains with. Its command line is
derived from TrainConfig, the one settings model: one flag per field that applies outside the app,
with the field's type, choices, help and, as default, the value the person chose. Only that,
the Output's loss and the built-in dataset that fits the model vary with the graph. The same
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
from runtime.settings import APP_ONLY, TrainConfig

Shape = tuple[int, ...]
LINE_LENGTH = 88
RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
# The files the bundle copies verbatim from the runtime, by their name in the bundle.
SHARED_FILES = {
    "loop.py": RUNTIME / "loop.py",
    "builtin_data.py": RUNTIME / "builtin_data.py",
    "csv_table.py": RUNTIME / "csv_table.py",
}


def shared_sources() -> dict[str, str]:
    """loop.py, builtin_data.py and csv_table.py, exactly as the app runs them."""
    return {name: path.read_text() for name, path in SHARED_FILES.items()}


def train_source(analysis: Analysis, settings: TrainConfig | None = None) -> str:
    """The train.py text for a valid analysis; `settings` are the app's chosen ones."""
    if not analysis.ok:
        raise ValueError("cannot write a training script for a graph with errors")
    settings = settings or TrainConfig()
    input_node = next(n for n in analysis.graph.nodes if n.type == "Input")
    output_node = next(n for n in analysis.graph.nodes if n.type == "Output")
    dataset = fitting_dataset(
        settings.dataset,
        analysis.infos[input_node.id].shape or (),
        analysis.infos[input_node.id].dtype or "float32",
        analysis.infos[output_node.id].shape or (),
        settings.target,
    )
    output = loss_of(analysis)
    loss, smoothing = output.loss, output.label_smoothing
    source = (
        TEMPLATE.replace("__NAME__", docstring_name(analysis.graph.name))
        .replace("__LOSS__", f"LOSS = {json.dumps(loss)}\nLABEL_SMOOTHING = {smoothing!r}")
        .replace("__FLAGS__", "\n    ".join(flag_lines(settings, dataset)))
        .replace("__LABEL_COLUMN__", literal(settings.label_column))
    )
    return black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH))


def fitting_dataset(
    chosen: str, input_shape: Shape, dtype: str, output_shape: Shape, target: str
) -> str | None:
    """The built-in dataset train.py uses by default: the one chosen in the app where the
    bundle carries it and it fits, else one whose samples fit the model, else None."""
    fits = dataset_fits(input_shape, dtype, output_shape, target)
    if chosen in fits:
        return chosen
    return fits[0] if fits else None


def dataset_fits(input_shape: Shape, dtype: str, output_shape: Shape, target: str) -> list[str]:
    """The built-in datasets whose samples (and targets) fit the model's input and output."""
    from runtime.builtin_data import TEXT_ALPHABET  # torch: only when exporting

    vocab = len(TEXT_ALPHABET)
    images = {(1, 8, 8): "digits", (8, 8): "digits-rows", (1, 28, 28): "digits-28"}
    if dtype == "float32" and input_shape in images:
        wanted = input_shape if target == "input" else (10,)
        return [images[input_shape]] if output_shape == wanted else []
    if target == "input":
        return []
    if dtype == "int64" and input_shape == (16,) and output_shape == (16,):
        return ["tokens"]
    if dtype == "int64" and len(input_shape) == 1 and output_shape == (*input_shape, vocab):
        return ["text"]
    if dtype == "float32" and input_shape == (32, 1) and output_shape == (1,):
        return ["sine"]
    return []


def flag_lines(settings: TrainConfig, dataset: str | None) -> list[str]:
    """One `add(...)` call per TrainConfig field that train.py takes, defaulting to `settings`."""
    lines = []
    for name, info in TrainConfig.model_fields.items():
        if name in APP_ONLY:
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
    python train.py --resume               # continue from checkpoints/last.pt
    torchrun --nproc_per_node=4 train.py   # a process per GPU, DistributedDataParallel

loop.py is NetBuilder's own training loop, builtin_data.py its built-in datasets and
csv_table.py its CSV reader, the very files the app trains with: the same settings and
seed on CPU give the same weights, and a CSV is read as the app reads it (a label column
of words, such as cat and dog, becomes classes in sorted order).
--batch-size is the global batch: under torchrun each process takes a share of it.
Every epoch writes, in checkpoints/ beside this file (--out chooses another folder),
model.pt (the weights: model.load_state_dict(torch.load(path, weights_only=True))),
last.pt (all that --resume needs) and a line of metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import builtin_data
import csv_table
import loop
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
        " per row) or an NPZ file with arrays X and y",
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


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples as (X, y): the NPZ file of --data, or the built-in --dataset."""
    if args.data is not None and args.data.suffix.lower() == ".csv":
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
    if args.target == "input" or torch.is_floating_point(y):
        return x.to(INPUT_DTYPE), y.float()
    classes = OUTPUT_SHAPE[-1] if OUTPUT_SHAPE else 1
    if y.min() < 0 or y.max() >= classes:
        raise SystemExit(
            f"labels run from {int(y.min())} to {int(y.max())}, but the model outputs"
            f" {list(OUTPUT_SHAPE)} scores; make its last Linear as wide as the classes"
        )
    return x.to(INPUT_DTYPE), y.long()


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available() and "WORLD_SIZE" not in os.environ:
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but no CUDA GPU is visible; use --device cpu")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device mps, but MPS is not available; use --device cpu")
    if choice == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(choice)


def start_processes(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, joins the process group: NCCL on
    GPUs, gloo on CPUs; alone, it is rank 0 of 1."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_choice, int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1:
        if device.type == "mps":
            raise SystemExit("MPS cannot run under torchrun; use --device cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def describe(record: dict) -> str:
    """A metrics line for the log: 'epoch 3  train_loss 0.1465  ...'."""
    return "  ".join(
        f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in record.items()
        if not isinstance(value, list)
    )


def save(state: dict, path: Path) -> None:
    """Write through a temporary file: a run killed mid-save keeps the previous one."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


class Checkpoints(loop.Hooks):
    """Each epoch: a metrics line and (rank 0) last.pt, model.pt, metrics.jsonl."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, rank: int, world: int):
        self.args, self.model, self.rank, self.world = args, model, rank, world
        self.trainer: loop.Loop | None = None
        self.started = time.perf_counter()

    def before_evaluate(self, progress: loop.Progress) -> None:
        if self.world > 1:
            loop.sum_over_processes(progress)

    def after_epoch(self, record: dict, progress: loop.Progress) -> None:
        seconds = time.perf_counter() - self.started
        samples = len(self.trainer.data.x_train) - self.trainer.left_out
        record["samples_per_s"] = round(samples / seconds)
        if self.rank == 0:
            print(describe(record), flush=True)
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.trainer.optimizer.state_dict(),
                "progress": vars(progress).copy(),
                "rng": torch.get_rng_state(),
            }
            save(state, self.args.out / "last.pt")
            save(self.model.state_dict(), self.args.out / "model.pt")
            with open(self.args.out / "metrics.jsonl", "a") as metrics:
                metrics.write(json.dumps(record) + "\\n")
        self.started = time.perf_counter()


def restore(path: Path, trainer: loop.Loop, model: nn.Module, device: torch.device) -> None:
    """Load last.pt into the model, the optimizer and the loop's progress."""
    if not path.exists():
        raise SystemExit(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.progress = loop.Progress(**state["progress"])
    torch.set_rng_state(state["rng"].cpu())


def train(
    args: argparse.Namespace, rank: int, world: int, device: torch.device
) -> nn.Module:
    """The whole run; returns the trained model (the same weights on every process)."""
    x, y = load_data(args)
    data = loop.split(x, y, args, device)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = build_model().to(device)
    wrapped = model
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    optimizer = loop.make_optimizer(args, list(model.parameters()))
    hooks = Checkpoints(args, model, rank, world)
    trainer = loop.Loop(
        wrapped, optimizer, data, args, LOSS, LABEL_SMOOTHING, hooks, device=device,
        rank=rank, world=world,
    )
    hooks.trainer = trainer
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        restore(args.out / "last.pt", trainer, model, device)
        if rank == 0:
            print(f"resuming after epoch {trainer.progress.epoch}")
    if rank == 0:
        train_count, val_count = len(data.x_train), len(data.x_val)
        print(f"{train_count} samples to train on, {val_count} to check, on {device}")
        if trainer.left_out:
            print("the last batch of one sample is left out: BatchNorm needs two or more")
    try:
        outcome = trainer.train()
    except loop.Diverged as exc:
        raise SystemExit(
            f"the loss is not finite at step {exc.step}: try a lower --lr than"
            f" {args.lr} or --grad-clip 1 (last.pt holds the last good epoch)"
        )
    if outcome == "early" and rank == 0:
        print(f"stopped early: no lower loss in {args.early_stopping_patience} epochs")
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


def gan_train_source(
    generator: Analysis, sample_shape: Shape, settings: TrainConfig | None = None
) -> str:
    """train.py of a GAN bundle: the shared GanLoop with flags derived from TrainConfig."""
    settings = settings or TrainConfig()
    images = {(1, 8, 8): "digits", (1, 28, 28): "digits-28"}
    dataset = settings.dataset if settings.dataset in images.values() else None
    dataset = dataset or images.get(sample_shape)
    source = GAN_TEMPLATE.replace("__NAME__", docstring_name(generator.graph.name)).replace(
        "__FLAGS__", "\n    ".join(flag_lines(settings, dataset))
    )
    return black.format_str(source, mode=black.Mode(line_length=LINE_LENGTH))


GAN_TEMPLATE = '''"""Train the GAN in model.py, exported by NetBuilder.

Graph: '__NAME__'.

    python train.py                      # the settings chosen in NetBuilder
    python train.py --epochs 50          # override any of them (--help lists all)
    python train.py --data mine.npz      # your images: an array X in an NPZ file

loop.py is NetBuilder's own training loop (GanLoop: the discriminator, then the
generator, each with Adam, in alternating steps) and builtin_data.py its datasets.
Every epoch writes, in checkpoints/ beside this file (--out chooses another folder),
generator.pt and discriminator.pt (state_dicts), samples.pt (generated images from
fixed noise) and a line of metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import builtin_data
import loop
from model import NOISE_SHAPE, build_discriminator, build_generator


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


class Checkpoints(loop.GanHooks):
    """Each epoch: a metrics line, both players' weights and a grid of samples."""

    def __init__(self, args: argparse.Namespace, trainer: loop.GanLoop) -> None:
        self.args, self.trainer = args, trainer
        noise = torch.Generator().manual_seed(args.seed + 1)
        self.noise = torch.randn(16, *NOISE_SHAPE, generator=noise)

    def after_epoch(self, record: dict, progress: loop.Progress) -> None:
        print("  ".join(f"{key} {value:.4g}" for key, value in record.items()))
        generator = self.trainer.generator
        torch.save(generator.state_dict(), self.args.out / "generator.pt")
        judge = self.trainer.discriminator.state_dict()
        torch.save(judge, self.args.out / "discriminator.pt")
        with torch.no_grad():
            generator.eval()
            samples = generator(self.noise.to(self.trainer.device)).cpu()
            generator.train()
        torch.save(samples, self.args.out / "samples.pt")
        with open(self.args.out / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps(record) + "\\n")


def main(argv: list[str] | None = None) -> torch.nn.Module:
    """Train and return the generator."""
    args = parse_args(argv)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    real = real_samples(args).to(device)
    torch.manual_seed(args.seed)
    generator, discriminator = build_generator().to(device), build_discriminator().to(device)
    trainer = loop.GanLoop(
        generator, discriminator, real, args, tuple(NOISE_SHAPE), args.gan_loss, device=device
    )
    trainer.hooks = Checkpoints(args, trainer)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.train()
    return generator


if __name__ == "__main__":
    main()
'''
