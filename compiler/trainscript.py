"""The exported `train.py`: a standalone training script for the generated `model.py`. Pure.

The script is one fixed, readable text; only three things vary with the graph: the defaults the
person chose in the app (TrainConfig's field names), the built-in data that fits the model's input
(the digits as images, rows or 28x28, the token task or the sine task; none for other shapes, and
then `--data` is required) and the graph's name in the docstring. The same script runs on one
device or, under `torchrun`, on many with DistributedDataParallel.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from compiler.analysis import Analysis
from compiler.codegen import safe_text

Shape = tuple[int, ...]


class TrainDefaults(BaseModel):
    """The app's training settings that train.py carries as defaults; other TrainConfig fields
    (dataset, report intervals) do not apply to the script and are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)

    epochs: int = Field(5, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1, le=10_000_000)
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    optimizer: Literal["sgd", "momentum", "adam", "adamw", "rmsprop"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0, le=100.0)
    schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, le=100_000_000)
    grad_clip: float | None = Field(None, gt=0.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = False
    early_stopping_patience: int | None = Field(None, ge=1, le=1_000_000)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)


def train_source(analysis: Analysis, defaults: TrainDefaults | None = None) -> str:
    """The train.py text for a valid analysis; `defaults` are the app's chosen settings."""
    if not analysis.ok:
        raise ValueError("cannot write a training script for a graph with errors")
    settings = defaults or TrainDefaults()
    input_node = next(n for n in analysis.graph.nodes if n.type == "Input")
    output_node = next(n for n in analysis.graph.nodes if n.type == "Output")
    data = builtin_data_source(
        analysis.infos[input_node.id].shape or (),
        analysis.infos[input_node.id].dtype or "float32",
        analysis.infos[output_node.id].shape or (),
    )
    data_help = 'help="an NPZ file with arrays X and y (class ids or targets)'
    if data is None:
        data_flag = f'required=True,\n        {data_help}",'
        data_source = NO_BUILTIN_DATA
    else:
        data_flag = f'default=None,\n        {data_help}; default:"\n        " {data[0]}",'
        data_source = data[1]
    return (
        TEMPLATE.replace("__NAME__", safe_text(analysis.graph.name))
        .replace("__DEFAULTS__", defaults_source(settings))
        .replace("__DATA_FLAG__", data_flag)
        .replace("__BUILTIN_DATA__", data_source)
    )


def defaults_source(settings: TrainDefaults) -> str:
    """The DEFAULTS dict literal: validated values only, written with repr (never user text)."""
    lines = [
        f"    {json.dumps(name)}: {literal(value)},"
        for name, value in settings.model_dump().items()
    ]
    return "DEFAULTS = {\n" + "\n".join(lines) + "\n}"


def literal(value: object) -> str:
    """Python source for a validated setting, with black's double quotes for strings."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def builtin_data_source(
    input_shape: Shape, dtype: str, output_shape: Shape
) -> tuple[str, str] | None:
    """(one-line description, `builtin_data` function source) for the built-in data that fits
    the model's input and output, or None when none does."""
    if dtype == "float32" and output_shape == (10,) and input_shape in DIGITS_LAYOUTS:
        description, expression = DIGITS_LAYOUTS[input_shape]
        return f"scikit-learn's digits {description}", DIGITS.replace(
            "__DESCRIPTION__", description
        ).replace("__EXPRESSION__", expression)
    if dtype == "int64" and input_shape == (16,) and output_shape == (16,):
        return "the generated token task (label: the token after the marker 1)", TOKENS
    if dtype == "float32" and input_shape == (32, 1) and output_shape == (1,):
        return "the generated sine task (predict the next value)", SINE
    return None


DIGITS_LAYOUTS: dict[Shape, tuple[str, str]] = {
    (1, 8, 8): ("as images [1, 8, 8]", "images.unsqueeze(1)"),
    (8, 8): ("as rows [8, 8]", "images"),
    (64,): ("as vectors [64]", "images.flatten(1)"),
    (1, 28, 28): (
        "resized to [1, 28, 28]",
        'nn.functional.interpolate(images.unsqueeze(1), size=(28, 28), mode="bilinear")',
    ),
}

DIGITS = '''def builtin_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, 1,797 images of 10 classes, __DESCRIPTION__."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16  # [N, 8, 8], 0 to 1
    x = __EXPRESSION__
    return x, torch.tensor(digits.target, dtype=torch.int64)'''

TOKENS = '''def builtin_data() -> tuple[torch.Tensor, torch.Tensor]:
    """4,096 random token sequences [16] (vocabulary 16), each with one marker token
    1; the label is the token right after the marker, so the model has to find it."""
    generator = torch.Generator().manual_seed(0)
    plain = torch.tensor([token for token in range(16) if token != 1])
    tokens = plain[torch.randint(len(plain), (4096, 16), generator=generator)]
    where = torch.randint(15, (4096,), generator=generator)
    rows = torch.arange(4096)
    tokens[rows, where] = 1
    return tokens, tokens[rows, where + 1].clone()'''

SINE = '''def builtin_data() -> tuple[torch.Tensor, torch.Tensor]:
    """2,048 noisy sine waves [32, 1] of random frequency and phase; the target [1] is the
    next clean value (regression)."""
    generator = torch.Generator().manual_seed(0)
    frequency = 0.1 + 0.4 * torch.rand(2048, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(2048, 1, generator=generator)
    clean = torch.sin(frequency * torch.arange(33, dtype=torch.float32) + phase)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=generator)
    return noisy[:, :32].unsqueeze(-1), clean[:, 32:]'''

NO_BUILTIN_DATA = '''def builtin_data() -> tuple[torch.Tensor, torch.Tensor]:
    """No built-in data fits this model's input and output: pass --data."""
    raise SystemExit(f"no built-in data fits input {list(INPUT_SHAPE)}; pass --data FILE.npz")'''


TEMPLATE = '''"""Train the model in model.py, exported by NetBuilder from graph '__NAME__'.

    python train.py                        # the settings chosen in NetBuilder
    python train.py --epochs 20 --lr 3e-4  # override any of them (--help lists all)
    python train.py --data mine.npz        # your data: arrays X and y in an NPZ file
    python train.py --resume               # continue from checkpoints/last.pt
    torchrun --nproc_per_node=4 train.py   # a process per GPU, DistributedDataParallel

--batch-size is the global batch: under torchrun each process takes an equal share, so
one device and many follow the same training curve. Every epoch writes, in checkpoints/,
model.pt (the weights: model.load_state_dict(torch.load(path, weights_only=True))),
last.pt (all that --resume needs) and a line of metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from model import INPUT_DTYPE, INPUT_SHAPE, OUTPUT_SHAPE, build_model

# The settings chosen in NetBuilder; each one has a command-line flag of the same name.
__DEFAULTS__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--epochs", type=int, default=DEFAULTS["epochs"])
    add("--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch")
    add("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate")
    add(
        "--optimizer",
        choices=("sgd", "momentum", "adam", "adamw", "rmsprop"),
        default=DEFAULTS["optimizer"],
    )
    add("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    add(
        "--schedule",
        choices=("constant", "step", "cosine"),
        default=DEFAULTS["schedule"],
        help="after warm-up: constant, x0.1 at 50%% and 75%% of the steps, or cosine",
    )
    add("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"])
    add("--grad-clip", type=float, default=DEFAULTS["grad_clip"], help="max grad norm")
    add("--seed", type=int, default=DEFAULTS["seed"])
    add("--device", choices=("auto", "cpu", "cuda", "mps"), default=DEFAULTS["device"])
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["amp"],
        help="mixed precision: float16 on CUDA, bfloat16 elsewhere",
    )
    add(
        "--patience",
        type=int,
        default=DEFAULTS["early_stopping_patience"],
        help="stop after this many epochs without a lower validation loss",
    )
    add("--val-fraction", type=float, default=DEFAULTS["val_fraction"])
    add(
        "--data",
        type=Path,
        __DATA_FLAG__
    )
    add("--out", type=Path, default=Path("checkpoints"), help="checkpoint folder")
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    return parser.parse_args(argv)


__BUILTIN_DATA__


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


def load_data(path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples as (X, y): the NPZ file at `path`, or the built-in data."""
    x, y = builtin_data() if path is None else read_npz(path)
    if tuple(x.shape[1:]) != INPUT_SHAPE:
        shape = ", ".join(map(str, INPUT_SHAPE))
        raise SystemExit(f"X is {list(x.shape)}; the model takes [N, {shape}]")
    if len(y) != len(x):
        raise SystemExit(f"X has {len(x)} samples but y has {len(y)}")
    if torch.is_floating_point(y):
        return x.to(INPUT_DTYPE), y.float().reshape(len(y), *OUTPUT_SHAPE)
    if len(OUTPUT_SHAPE) != 1 or y.min() < 0 or y.max() >= OUTPUT_SHAPE[0]:
        raise SystemExit(
            f"labels run from {int(y.min())} to {int(y.max())}, but the model outputs"
            f" {list(OUTPUT_SHAPE)} scores; make its last Linear as wide as the classes"
        )
    return x.to(INPUT_DTYPE), y.long()


def split(data: TensorDataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A seeded shuffle into (train, validation): the same split on every process."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    held_out = int(len(data) * fraction)
    return Subset(data, order[held_out:]), Subset(data, order[:held_out])


def make_loaders(
    train_set: Subset, val_set: Subset, args: argparse.Namespace, rank: int, world: int
) -> tuple[DataLoader, DataLoader]:
    """Each process trains on its share of every global batch (a DistributedSampler,
    seeded, reshuffled per epoch) and validates on every world-th sample."""
    batch = max(1, args.batch_size // world)
    if batch * world != args.batch_size and rank == 0:
        print(f"note: {world} processes take {batch} samples each per batch")
    sampler = DistributedSampler(train_set, world, rank, seed=args.seed)
    val_share = Subset(val_set, range(rank, len(val_set), world))
    return (
        DataLoader(train_set, batch_size=batch, sampler=sampler),
        DataLoader(val_share, batch_size=batch),
    )


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


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, decay = model.parameters(), args.lr, args.weight_decay
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay)
    if args.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=decay)


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """The multiplier on --lr at a step: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def tally(
    stats: torch.Tensor, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor
) -> None:
    """Add a batch to [loss sum, correct, count] (correct stays 0 for regression)."""
    stats[0] += loss.detach() * len(y)
    if not torch.is_floating_point(y):
        stats[1] += (out.argmax(-1) == y).sum()
    stats[2] += len(y)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    args: argparse.Namespace,
    device: torch.device,
) -> torch.Tensor:
    """One pass over this process's share of the data: [loss sum, correct, count]."""
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            out = model(x)
            loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        tally(stats, loss, out, y)
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    args: argparse.Namespace,
    device: torch.device,
) -> torch.Tensor:
    """[loss sum, correct, count] on this process's share of the validation data."""
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    model.eval()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=args.amp):
            out = model(x)
            loss = loss_fn(out.float(), y)
        tally(stats, loss, out, y)
    return stats


def summed(stats: torch.Tensor, world: int) -> list[float]:
    """Add up [loss sum, correct, count] over all processes."""
    if world > 1:
        dist.all_reduce(stats)
    return stats.tolist()


def epoch_record(
    epoch: int, train: list[float], val: list[float], seconds: float, labels: bool
) -> dict:
    """One metrics line: mean losses, accuracies (given class labels) and the speed."""
    record = {"epoch": epoch, "train_loss": train[0] / train[2]}
    if labels:
        record["train_accuracy"] = train[1] / train[2]
    if val[2]:
        record["val_loss"] = val[0] / val[2]
        if labels:
            record["val_accuracy"] = val[1] / val[2]
    record["samples_per_s"] = round(train[2] / seconds)
    return record


def describe(record: dict) -> str:
    """A metrics line for the log: 'epoch 3  train_loss 0.1465  ...'."""
    return "  ".join(
        f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in record.items()
    )


def save(state: dict, path: Path) -> None:
    """Write through a temporary file: a run killed mid-save keeps the previous one."""
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def checkpoint(folder: Path, parts: dict, progress: dict, record: dict) -> None:
    """last.pt (all that --resume needs), model.pt (the weights), a metrics line."""
    states = {name: part.state_dict() for name, part in parts.items()}
    save(states | progress, folder / "last.pt")
    save(parts["model"].state_dict(), folder / "model.pt")
    with open(folder / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps(record) + "\\n")


def restore(path: Path, parts: dict, device: torch.device) -> dict:
    """Load last.pt into the model, optimizer, schedule and scaler; return progress."""
    if not path.exists():
        raise SystemExit(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=device, weights_only=True)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    return {key: state[key] for key in ("epoch", "best", "stale")}


def train(
    args: argparse.Namespace, rank: int, world: int, device: torch.device
) -> nn.Module:
    """The whole run; returns the trained model (the same weights on every process)."""
    log = print if rank == 0 else (lambda *_: None)
    x, y = load_data(args.data)
    classification = not torch.is_floating_point(y)
    train_set, val_set = split(TensorDataset(x, y), args.val_fraction, args.seed)
    loader, val_loader = make_loaders(train_set, val_set, args, rank, world)

    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = build_model().to(device)
    wrapped = model
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(args, model)
    total = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, args.schedule, args.warmup_steps)
    )
    scaler = torch.amp.GradScaler(enabled=args.amp and device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    progress = {"epoch": 0, "best": math.inf, "stale": 0}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        progress = restore(args.out / "last.pt", parts, device)
        log(f"resuming after epoch {progress['epoch']}")
    log(f"{len(train_set)} samples to train on, {len(val_set)} to check, on {device}")

    for epoch in range(progress["epoch"], args.epochs):
        started = time.perf_counter()
        loader.sampler.set_epoch(epoch)  # a new shuffle, the same on every process
        torch.manual_seed(args.seed + 1000 * epoch + rank)  # dropout, also on resume
        stats = train_epoch(
            wrapped, loader, loss_fn, optimizer, scheduler, scaler, args, device
        )
        if world > 1:  # BatchNorm statistics: take rank 0's, so all processes agree
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        val_stats = evaluate(model, val_loader, loss_fn, args, device)
        record = epoch_record(
            epoch + 1,
            summed(stats, world),
            summed(val_stats, world),
            time.perf_counter() - started,
            classification,
        )
        if not math.isfinite(record["train_loss"]):
            raise SystemExit(
                f"the loss became {record['train_loss']} in epoch {epoch + 1}: try"
                f" a lower --lr than {args.lr} or --grad-clip 1 (last.pt is intact)"
            )
        watched = record.get("val_loss", record["train_loss"])
        if watched < progress["best"]:
            progress = {"epoch": epoch + 1, "best": watched, "stale": 0}
        else:
            progress = {**progress, "epoch": epoch + 1, "stale": progress["stale"] + 1}
        log(describe(record))
        if rank == 0:
            checkpoint(args.out, parts, progress, record)
        if args.patience and progress["stale"] >= args.patience:
            log(f"stopping early: no lower loss in {args.patience} epochs")
            break
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
