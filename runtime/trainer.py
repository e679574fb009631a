"""The training loop: trains a run folder's model.py on its dataset and records what happens.

It runs in its own process (started by runtime/runs.py, or headless by `python -m runtime train`),
so a crash here cannot take the app down. The loop is a plain PyTorch loop over a dataset that
sits on the device; everything it reports is gathered on the device and moved to the host in one
go every FLUSH_SECONDS, so watching a run costs next to nothing. Faults end the run with a named
status and a message that says what to change.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
import types
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from builder.catalog import CATALOG
from builder.graph import Graph, load_graph
from compiler.analysis import Analysis, analyse
from compiler.codegen import attribute_names
from runtime import store
from runtime.datasets import (
    Dataset,
    DatasetError,
    check_compatibility,
    dataset_from_upload,
    load_dataset,
)
from runtime.sizing import check_fits
from runtime.metrics import (
    ActivationReading,
    activation_probe,
    attention_layers,
    capture_attention,
    grad_norm_probe,
)

FLUSH_SECONDS = 0.5
CHECKPOINT_MIN_SECONDS = 2.0
CHECKPOINT_SHARE = 0.01  # checkpoints may take about this share of the training time
CHECKPOINT_FORMAT = "netbuilder.checkpoint/1"
STEP_DECAY_POINTS = (0.5, 0.75)  # the "step" schedule divides the lr by 10 at these fractions
DEVICE_DATA_SHARE = 0.5  # a dataset may fill this share of the free GPU memory


class TrainConfig(BaseModel):
    """Everything a person chooses about a run; config.json holds exactly this."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = "digits"
    label_column: str | None = None
    epochs: int = Field(5, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["sgd", "momentum", "adam", "adamw", "rmsprop"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = False
    early_stopping_patience: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, ge=0, le=0.9)
    report_every: int = Field(10, ge=1)
    health_every: int | None = Field(None, ge=1)  # None: every report_every steps
    attention_every: int = Field(50, ge=1)


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or does not fit the graph."""


class TrainingFault(Exception):
    """Training ends early with a named status (diverged, failed) and a message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RunResult:
    status: str
    message: str
    epochs: int
    step: int
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_seconds: float = 0.0


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resume continues exactly."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0
    best_val_loss: float | None = None
    stale_epochs: int = 0


# ---------------------------------------------------------------------------------------------
# Small pure pieces


def pick_device(requested: str) -> torch.device:
    """auto prefers cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise TrainingFault(
            "failed", f"device {requested!r} is not available on this machine; choose auto or cpu"
        )
    return torch.device(requested)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The lr for a 0-based step: linear warmup, then constant, step decay or cosine decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    if config.schedule == "step":
        return config.lr * 0.1 ** sum(progress >= point for point in STEP_DECAY_POINTS)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """One epoch's shuffled sample order, fixed by seed and epoch so that a resume repeats it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator)


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    lr, decay = config.lr, config.weight_decay
    match config.optimizer:
        case "sgd":
            return torch.optim.SGD(parameters, lr=lr, weight_decay=decay)
        case "momentum":
            return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=decay)
        case "adam":
            return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
        case "adamw":
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)
        case "rmsprop":
            return torch.optim.RMSprop(parameters, lr=lr, weight_decay=decay)


def load_model_source(source: str) -> nn.Module:
    """Execute a generated model.py as a fresh module and build its model."""
    module = types.ModuleType("netbuilder_model")
    exec(compile(source, "model.py", "exec"), module.__dict__)
    return module.build_model()


def node_types(analysis: Analysis) -> dict[str, str]:
    return {node.id: node.type for node in analysis.graph.nodes}


def module_attributes(analysis: Analysis) -> dict[str, str]:
    """Node id -> attribute of the generated module, for the nodes that are nn.Modules."""
    return {
        node_id: attribute
        for node_id, attribute in attribute_names(analysis).items()
        if CATALOG[analysis.node_type(node_id)].module is not None
    }


@dataclass
class Split:
    """Train and validation tensors, already on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def data_device(dataset: Dataset, device: torch.device) -> torch.device:
    """Where the samples live: on the training device when they fit, else in host memory."""
    if device.type != "cuda":
        return device
    size = dataset.x.numel() * 8 + dataset.y.numel() * dataset.y.element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return device if size <= DEVICE_DATA_SHARE * free else torch.device("cpu")


def split_dataset(
    dataset: Dataset, val_fraction: float, seed: int, device: torch.device, input_dtype: str
) -> Split:
    """A seeded shuffle split; x is cast to the Input's dtype and both parts move to device."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    val_count = min(len(dataset) - 1, round(len(dataset) * val_fraction))
    dtype = torch.int64 if input_dtype == "int64" else torch.float32
    x = dataset.x.to(dtype)
    train, val = order[val_count:], order[:val_count]
    return Split(
        x[train].to(device),
        dataset.y[train].to(device),
        x[val].to(device),
        dataset.y[val].to(device),
    )


def dataset_for_run(run_dir: Path, config: TrainConfig) -> Dataset:
    """The run's uploaded copy if it has one, else the named built-in dataset."""
    uploads = sorted(run_dir.glob(f"{store.DATA_PREFIX}.*"))
    if uploads:
        return dataset_from_upload(
            f"{config.dataset}", uploads[0].read_bytes(), label_column=config.label_column
        )
    return load_dataset(config.dataset, seed=config.seed)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint read safely (weights_only=True); any problem becomes a CheckpointError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path.name} is missing") from None
    except Exception as exc:  # torch.load raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path.name} is corrupt or not a NetBuilder checkpoint ({reason})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path.name} holds no state dict")
    return state


def warm_start(
    model: nn.Module,
    modules: dict[str, str],
    graph: Graph,
    old_graph: Graph,
    old_weights: dict[str, Any],
) -> tuple[list[str], list[str]]:
    """Copy the nodes whose id, type and every parameter shape match; return (copied, fresh)."""
    old_analysis = analyse(old_graph)
    old_modules = module_attributes(old_analysis) if old_analysis.ok else {}
    old_types = {node.id: node.type for node in old_graph.nodes}
    state = model.state_dict()
    copied, fresh = [], []
    for node_id, attribute in modules.items():
        keys = [key for key in state if key.startswith(f"{attribute}.")]
        if not keys:
            continue
        old_attribute = old_modules.get(node_id)
        same_type = old_types.get(node_id) == graph.node(node_id).type
        sources = {key: f"{old_attribute}.{key[len(attribute) + 1 :]}" for key in keys}
        fits = same_type and all(
            isinstance(old_weights.get(source), torch.Tensor)
            and old_weights[source].shape == state[key].shape
            for key, source in sources.items()
        )
        if fits:
            for key, source in sources.items():
                state[key] = old_weights[source]
            copied.append(node_id)
        else:
            fresh.append(node_id)
    model.load_state_dict(state)
    return copied, fresh


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclass
class _PendingStep:
    step: int
    epoch: int
    loss: torch.Tensor
    guess: torch.Tensor | None  # predicted classes, checked against the labels at the flush
    lr: float
    time: float
    batch: torch.Tensor


@dataclass
class Trainer:
    """One run's training state. `run()` trains until done, stopped or faulted."""

    run_dir: Path
    config: TrainConfig
    analysis: Analysis
    model: nn.Module
    split: Split
    dataset: Dataset
    device: torch.device
    stop: threading.Event
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        self.modules = module_attributes(self.analysis)
        types_ = node_types(self.analysis)
        self.log = store.MetricsLog(self.run_dir / store.METRICS_FILE)
        self.optimizer = build_optimizer(self.config, list(self.model.parameters()))
        self.classify = self.dataset.task == "classification"
        self.grad_probe = grad_norm_probe(self.model, self.modules)
        self.activations = activation_probe(self.model, self.modules, types_)
        self.attention = attention_layers(self.model, self.modules, types_)
        examples = self.split.x_val if len(self.split.x_val) else self.split.x_train
        self.example = examples[:1].to(self.device)
        self.batches = math.ceil(len(self.split.x_train) / self.config.batch_size)
        self.total_steps = self.batches * self.config.epochs
        self.schedule_active = self.config.schedule != "constant" or self.config.warmup_steps > 0
        self.autocast, self.scaler = self._mixed_precision()
        self.pending: list[_PendingStep] = []
        self.pending_norms: list[tuple[int, torch.Tensor]] = []
        self.pending_health: list[tuple[int, ActivationReading]] = []
        self.pending_attention: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.last_flush = self.last_checkpoint = time.perf_counter()
        self.checkpoint_seconds: float | None = None  # how long the last checkpoint took
        self.last_val: tuple[float | None, float | None] = (None, None)

    def _mixed_precision(self) -> tuple[Callable[[], AbstractContextManager], Any]:
        if not self.config.amp:
            return nullcontext, None
        if self.device.type != "cuda":
            self.event("mixed precision applies on CUDA only; training in float32")
            return nullcontext, None
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.event(f"mixed precision: {str(dtype).removeprefix('torch.')}")
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler

    # -- records ---------------------------------------------------------------------------

    def event(self, message: str) -> None:
        self.log.write([{"kind": "event", "step": self.progress.step, "message": message}])

    def flush(self) -> None:
        """Move everything gathered on the device to the log; detect divergence."""
        self.last_flush = time.perf_counter()
        if self.pending:
            self._flush_steps()
        norms, self.pending_norms = self.pending_norms, []
        if norms:
            values = self.grad_probe.per_node([n for _, n in norms])
            self.log.write(
                {
                    "kind": "grad_norms",
                    "step": step,
                    "norms": {
                        n: store.finite(v) for n, v in zip(self.grad_probe.nodes, row, strict=True)
                    },
                }
                for (step, _), row in zip(norms, values, strict=True)
            )
        health, self.pending_health = self.pending_health, []
        self.log.write(
            {
                "kind": "health",
                "step": step,
                "dead_fraction": reading.dead_fractions(),
                "nonfinite_node": None,
            }
            for step, reading in health
        )
        maps, self.pending_attention = self.pending_attention, []
        self.log.write(
            {"kind": "attention", "step": step, "node": node, "weights": weights.float().tolist()}
            for step, captured in maps
            for node, weights in captured.items()
        )
        if (self.run_dir / store.STOP_FILE).exists():
            self.stop.set()

    def _flush_steps(self) -> None:
        pending, self.pending = self.pending, []
        losses = torch.stack([p.loss for p in pending]).float().tolist()
        window = max(pending[-1].time - pending[0].time, 1e-9)
        rate = sum(len(p.batch) for p in pending[1:]) / window if len(pending) > 1 else None
        records = []
        for item, loss in zip(pending, losses, strict=True):
            records.append(
                {
                    "kind": "step",
                    "step": item.step,
                    "epoch": item.epoch,
                    "loss": store.finite(loss),
                    "lr": item.lr,
                    "samples_per_s": rate,
                    "time": item.time,
                }
            )
            if not math.isfinite(loss):
                self.log.write(records)
                self._diverged(item)
            self.progress.loss_sum += loss * len(item.batch)
            self.progress.seen += len(item.batch)
        self.log.write(records)
        if self.classify:
            guesses = torch.cat([p.guess for p in pending])
            labels = self.split.y_train.index_select(0, torch.cat([p.batch for p in pending]))
            self.progress.correct += int((guesses == labels.to(guesses.device)).sum())

    def _diverged(self, item: _PendingStep) -> None:
        """Name the first node whose output is non-finite on the batch, then end the run."""
        x = self.split.x_train.index_select(0, item.batch).to(self.device)
        with torch.no_grad(), self.activations.watching(find_nonfinite=True) as reading:
            self.model(x)
        node = reading.first_nonfinite()
        self.log.write(
            [
                {
                    "kind": "health",
                    "step": item.step,
                    "dead_fraction": reading.dead_fractions(),
                    "nonfinite_node": node,
                }
            ]
        )
        where = f" (first non-finite output: {node!r})" if node else ""
        raise TrainingFault(
            "diverged", f"diverged at step {item.step}; lower the learning rate{where}"
        )

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        """The first one at once, then as often as costs about CHECKPOINT_SHARE of the time."""
        if self.checkpoint_seconds is None:
            return True
        interval = max(CHECKPOINT_MIN_SECONDS, self.checkpoint_seconds / CHECKPOINT_SHARE)
        return time.perf_counter() - self.last_checkpoint >= interval

    def save_checkpoint(self) -> None:
        started = time.perf_counter()
        folder = self.run_dir / store.CHECKPOINT_DIR
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "progress": vars(self.progress).copy(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        store.write_atomic(folder / store.STATE_FILE, lambda file: torch.save(state, file))
        store.write_atomic(folder / store.WEIGHTS_FILE, lambda file: torch.save(weights, file))
        self.last_checkpoint = time.perf_counter()
        self.checkpoint_seconds = self.last_checkpoint - started

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.device)
        if state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"checkpoint {path.name} is not a NetBuilder training checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.progress = Progress(**state["progress"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"checkpoint {path.name} does not fit this graph and config ({reason})"
            ) from None
        torch.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            status, message = "completed", self._train()
        except _Stopped:
            self.flush()
            status = "stopped"
            message = (
                f"stopped at step {self.progress.step} (epoch {self.progress.epoch + 1});"
                " resume to continue"
            )
        self.save_checkpoint()
        seconds = time.perf_counter() - started
        self.event(message)
        val_loss, val_accuracy = self.last_val
        return RunResult(
            status,
            message,
            self.progress.epoch,
            self.progress.step,
            val_loss,
            val_accuracy,
            seconds,
        )

    def _train(self) -> str:
        config = self.config
        while self.progress.epoch < config.epochs:
            epoch = self.progress.epoch
            order = epoch_order(config.seed, epoch, len(self.split.x_train))
            order = order.to(self.split.x_train.device)
            for batch in range(self.progress.batch, self.batches):
                self._step(order[batch * config.batch_size : (batch + 1) * config.batch_size])
                self.progress.batch = batch + 1
                if self.stop.is_set():
                    raise _Stopped
                now = time.perf_counter()
                if now - self.last_flush >= FLUSH_SECONDS:
                    self.flush()
                    store.update_status(self.run_dir, step=self.progress.step)
                    if self.checkpoint_due():
                        self.save_checkpoint()
                    if self.stop.is_set():
                        raise _Stopped
            if self._end_epoch():
                best = self.progress.best_val_loss
                return (
                    f"stopped early after epoch {self.progress.epoch}: validation loss has not"
                    f" improved for {config.early_stopping_patience} epochs (best {best:.4g})"
                )
        return f"completed {self.progress.epoch} epochs" + self._val_summary()

    def _val_summary(self) -> str:
        val_loss, val_accuracy = self.last_val
        if val_accuracy is not None:
            return f"; validation accuracy {val_accuracy:.1%}"
        return f"; validation loss {val_loss:.4g}" if val_loss is not None else ""

    def _step(self, index: torch.Tensor) -> None:
        progress, config = self.progress, self.config
        x = self.split.x_train.index_select(0, index).to(self.device, non_blocking=True)
        y = self.split.y_train.index_select(0, index).to(self.device, non_blocking=True)
        lr = config.lr
        if self.schedule_active:
            lr = learning_rate(config, progress.step, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        progress.step += 1
        report = progress.step % config.report_every == 0
        health = progress.step % (config.health_every or config.report_every) == 0
        watch = self.activations.watching() if health else nullcontext()
        with watch as reading, self.autocast():
            output = self.model(x)
            loss = self._loss(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            if report or config.grad_clip:
                self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if report:
            self.pending_norms.append((progress.step, self.grad_probe.measure()))
        if health:
            self.pending_health.append((progress.step, reading))
        if config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        guess = output.argmax(-1) if self.classify else None
        self.pending.append(
            _PendingStep(
                progress.step, progress.epoch + 1, loss.detach(), guess, lr, time.time(), index
            )
        )
        if self.attention and progress.step % config.attention_every == 0:
            self.pending_attention.append(
                (progress.step, capture_attention(self.model, self.attention, self.example))
            )

    def _loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classify:
            return F.cross_entropy(output, y)
        return F.mse_loss(output, y)

    def evaluate(self) -> tuple[float | None, float | None]:
        """Mean validation loss and accuracy (None for regression, or with no validation set)."""
        x_val, y_val = self.split.x_val, self.split.y_val
        if not len(x_val):
            return None, None
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(x_val), self.config.batch_size):
                x = x_val[start : start + self.config.batch_size].to(self.device)
                y = y_val[start : start + self.config.batch_size].to(self.device)
                with self.autocast():
                    output = self.model(x)
                    loss = self._loss(output, y)
                loss_sum += loss.float() * len(x)
                if self.classify:
                    correct += (output.argmax(-1) == y).sum()
        self.model.train()
        total, hits = torch.stack([loss_sum, correct.float()]).tolist()
        return total / len(x_val), (hits / len(x_val) if self.classify else None)

    def _end_epoch(self) -> bool:
        """Record the epoch, checkpoint, and say whether early stopping ends the run."""
        self.flush()
        progress = self.progress
        val_loss, val_accuracy = self.evaluate()
        if val_loss is not None and not math.isfinite(val_loss):
            raise TrainingFault(
                "diverged",
                f"diverged at step {progress.step}: the validation loss is not finite;"
                " lower the learning rate",
            )
        train_accuracy = progress.correct / progress.seen if self.classify else None
        record = {
            "kind": "epoch",
            "epoch": progress.epoch + 1,
            "step": progress.step,
            "train_loss": store.finite(progress.loss_sum / max(progress.seen, 1)),
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "time": time.time(),
        }
        self.log.write([record])
        self.last_val = (val_loss, val_accuracy)
        progress.epoch += 1
        progress.batch = 0
        progress.loss_sum, progress.seen, progress.correct = 0.0, 0, 0
        patience = self.config.early_stopping_patience
        if val_loss is not None:
            if progress.best_val_loss is None or val_loss < progress.best_val_loss:
                progress.best_val_loss, progress.stale_epochs = val_loss, 0
            else:
                progress.stale_epochs += 1
        if progress.epoch < self.config.epochs and self.checkpoint_due():
            self.save_checkpoint()
        store.update_status(self.run_dir, step=progress.step, epoch=progress.epoch)
        if self.on_epoch:
            self.on_epoch(record)
        return patience is not None and progress.stale_epochs >= patience


class _Stopped(Exception):
    """A stop was requested; unwinds the loop to the graceful-stop path."""


# ---------------------------------------------------------------------------------------------
# Entry point for a run folder


def train_run(
    run_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Train the run in run_dir (fresh, warm-started or resumed) and record its final status.

    Never raises for a training fault: divergence, out of memory, bad data, a bad checkpoint or
    an unexpected error each end as a status with a message (the traceback goes to stderr).
    """
    stop = stop or threading.Event()
    if (run_dir / store.STOP_FILE).exists():
        stop.set()
    store.update_status(run_dir, status="running", pid=os.getpid(), message="")
    config: TrainConfig | None = None
    trainer: Trainer | None = None
    try:
        config = _read_config(run_dir)
        trainer = _prepare(run_dir, config, stop, on_epoch)
        result = trainer.run()
    except Exception as exc:  # every fault ends as a named status, never as a crash
        result = _failure(exc, config.batch_size if config else 0)
    if trainer is not None:
        if result.status in ("diverged", "failed"):
            trainer.event(result.message)
            result.epochs, result.step = trainer.progress.epoch, trainer.progress.step
            result.val_loss, result.val_accuracy = trainer.last_val
        trainer.log.close()
    else:
        _write_event(run_dir, result.message)
    store.update_status(
        run_dir,
        status=result.status,
        message=result.message,
        epoch=result.epochs,
        step=result.step,
    )
    return result


def _read_config(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig.model_validate_json((run_dir / store.CONFIG_FILE).read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "file"
        raise TrainingFault(
            "failed", f"config.json is not a valid training config: {where}: {first['msg']}"
        ) from None
    except OSError as exc:
        raise TrainingFault("failed", f"config.json cannot be read ({exc.strerror})") from None


def _failure(exc: Exception, batch_size: int) -> RunResult:
    """The status and message for whatever ended training early."""
    if isinstance(exc, TrainingFault):
        return RunResult(exc.status, exc.message, 0, 0)
    if isinstance(exc, (DatasetError, CheckpointError)):
        return RunResult("failed", str(exc), 0, 0)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        half = max(1, batch_size // 2)
        return RunResult("failed", f"out of memory at batch size {batch_size}; try {half}", 0, 0)
    traceback.print_exception(exc)  # to trainer.log, for whoever debugs it
    return RunResult("failed", f"{type(exc).__name__}: {exc}", 0, 0)


def _write_event(run_dir: Path, message: str) -> None:
    log = store.MetricsLog(run_dir / store.METRICS_FILE)
    log.write([{"kind": "event", "step": 0, "message": message}])
    log.close()


def _prepare(
    run_dir: Path,
    config: TrainConfig,
    stop: threading.Event,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> Trainer:
    """Load everything a run needs and restore its checkpoint or warm start."""
    graph = load_graph((run_dir / store.GRAPH_FILE).read_text())
    analysis = analyse(graph)
    too_big = check_fits(graph, analysis, config.batch_size, config.optimizer, config.device)
    if too_big is not None:  # refused before anything is built or loaded
        raise TrainingFault("failed", too_big)
    dataset = dataset_for_run(run_dir, config)
    problems = check_compatibility(analysis, dataset)
    if problems:
        raise TrainingFault("failed", "; ".join(problems))
    device = pick_device(config.device)
    store.update_status(run_dir, device=str(device))
    torch.manual_seed(config.seed)
    model = load_model_source((run_dir / store.MODEL_FILE).read_text()).to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingFault(
            "failed", "the model has no trainable parameters; add a layer with weights (a Linear)"
        )
    input_node = next(n for n in graph.nodes if n.type == "Input")
    input_dtype = analysis.infos[input_node.id].dtype or "float32"
    home = data_device(dataset, device)
    split = split_dataset(dataset, config.val_fraction, config.seed, home, input_dtype)
    trainer = Trainer(run_dir, config, analysis, model, split, dataset, device, stop, on_epoch)
    if home != device:
        trainer.event(
            f"the dataset does not fit in {device.type} memory: it stays in host memory and"
            " each batch is copied over"
        )
    state = run_dir / store.CHECKPOINT_DIR / store.STATE_FILE
    if state.exists():
        trainer.restore(state)
        trainer.event(
            f"resumed from the checkpoint at step {trainer.progress.step}"
            f" (epoch {trainer.progress.epoch + 1}, batch {trainer.progress.batch})"
        )
    elif (run_dir / store.WARM_START_WEIGHTS).exists():
        _warm_start(trainer, run_dir, graph)
    return trainer


def _warm_start(trainer: Trainer, run_dir: Path, graph: Graph) -> None:
    old_weights = load_checkpoint(run_dir / store.WARM_START_WEIGHTS, trainer.device)
    old_graph = load_graph((run_dir / store.WARM_START_GRAPH).read_text())
    copied, fresh = warm_start(trainer.model, trainer.modules, graph, old_graph, old_weights)
    report = store.read_status(run_dir).get("warm_start_from")
    store.write_json(
        run_dir / store.WARM_START_REPORT, {"from": report, "copied": copied, "fresh": fresh}
    )
    trainer.event(
        f"warm start from run {report}: copied {', '.join(copied) or 'nothing'};"
        f" fresh {', '.join(fresh) or 'nothing'}"
    )
