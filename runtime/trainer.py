"""The training loop: trains a run folder's model.py on its dataset and records what happens.

It runs in its own process (started by runtime/runs.py, or headless by `python -m runtime train`),
so a crash here cannot take the app down. The loop itself is runtime/loop.py, the very code the
exported train.py runs; this module adds what the app watches as hooks around it. Everything they
report is gathered on the device and moved to the host in one go every FLUSH_SECONDS, so watching
a run costs next to nothing. Faults end the run with a named
status and a message that says what to change.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from builder.catalog import CATALOG
from builder.graph import Graph, GraphFormatError, load_graph
from compiler.analysis import Analysis, analyse, loss_of
from compiler.codegen import attribute_names
from compiler.gan import discriminator_graph
from i18n import Message, msg
from runtime import store
from runtime.datasets import (
    Dataset,
    DatasetError,
    check_compatibility,
    dataset_from_path,
    load_dataset,
)
from runtime.loop import (
    Data,
    Diverged,
    Hooks,
    Loop,
    Progress,
    Step,
    any_process,
    make_optimizer,
    split,
    sum_over_processes,
)
from runtime.metrics import (
    ActivationReading,
    activation_probe,
    attention_layers,
    attention_lists,
    capture_attention,
    capture_feature_maps,
    feature_map_layers,
    feature_map_lists,
    grad_norm_probe,
)
from runtime.settings import TrainConfig
from runtime.sizing import check_fits

FLUSH_SECONDS = 0.5
CHECKPOINT_MIN_SECONDS = 2.0
CHECKPOINT_SHARE = 0.01  # checkpoints may take about this share of the training time
CHECKPOINT_FORMAT = "netbuilder.checkpoint/1"
# What a training checkpoint holds for a resume (the scaler and CUDA generators are optional).
RESUME_PARTS = ("model", "optimizer", "progress", "rng")
DEVICE_DATA_SHARE = 0.5  # a dataset may fill this share of the free GPU memory


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or does not fit the graph. `detail` is the sentence
    as a Message, rendered in the reader's language; str() is its English."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


# what load_state_dict and friends raise for a checkpoint of another graph or config
CHECKPOINT_MISFITS = (RuntimeError, KeyError, TypeError, ValueError, AttributeError)


def does_not_fit(name: str, exc: BaseException) -> CheckpointError:
    """The sentence for a checkpoint that cannot be loaded into this run, with torch's reason."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        msg(
            "checkpoint {file} does not fit this graph and config ({reason})",
            file=name,
            reason=reason,
        )
    )


class TrainingFault(Exception):
    """Training ends early with a named status (diverged, failed) and a message."""

    def __init__(self, status: str, message: Message | str) -> None:
        super().__init__(str(message))
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
    code: dict[str, Any] | None = None  # the message as data (template and values)
    metrics: dict[str, Any] | None = None  # the last epoch's record


# ---------------------------------------------------------------------------------------------
# Small pure pieces


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto prefers cuda, then mps, then cpu; an unavailable explicit choice is an error.
    Under torchrun each process takes the GPU of its local rank."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    chosen = next(name for name, ok in available.items() if ok)
    if requested != "auto":
        if not available[requested]:
            raise TrainingFault(
                "failed",
                msg(
                    "device {device} is not available on this machine; choose auto or cpu",
                    device=repr(requested),
                ),
            )
        chosen = requested
    return torch.device("cuda", local_rank) if chosen == "cuda" else torch.device(chosen)


def load_model_source(source: str) -> nn.Module:
    """Execute a generated model.py as a fresh module and build its model."""
    module = types.ModuleType("netbuilder_model")
    exec(compile(source, "model.py", "exec"), module.__dict__)
    return module.build_model()


def trained_model(run_dir: Path) -> nn.Module | None:
    """A run's model.py with its latest weights, on the CPU, or None before the first
    checkpoint."""
    weights = run_dir / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    if not weights.exists():
        return None
    model = load_model_source((run_dir / store.MODEL_FILE).read_text())
    model.load_state_dict(load_checkpoint(weights, torch.device("cpu")))
    return model


def node_types(analysis: Analysis) -> dict[str, str]:
    return {node.id: node.type for node in analysis.graph.nodes}


def module_attributes(analysis: Analysis) -> dict[str, str]:
    """Node id -> attribute of the generated module, for the nodes that are nn.Modules."""
    return {
        node_id: attribute
        for node_id, attribute in attribute_names(analysis).items()
        if CATALOG[analysis.node_type(node_id)].module is not None
    }


def data_device(dataset: Dataset, device: torch.device) -> torch.device:
    """Where the samples live: on the training device when they fit, else in host memory."""
    if device.type != "cuda":
        return device
    size = dataset.x.numel() * 8 + dataset.y.numel() * dataset.y.element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return device if size <= DEVICE_DATA_SHARE * free else torch.device("cpu")


def split_dataset(
    dataset: Dataset, config: TrainConfig, device: torch.device, input_dtype: str
) -> Data:
    """The loop's seeded split, with x cast to the Input's dtype first."""
    dtype = torch.int64 if input_dtype == "int64" else torch.float32
    return split(dataset.x.to(dtype), dataset.y, config, device)


def dataset_for_run(
    run_dir: Path, config: TrainConfig, input_shape: tuple[int, ...] = ()
) -> Dataset:
    """The run's uploaded copy if it has one, else the named built-in dataset."""
    uploads = sorted(run_dir.glob(f"{store.DATA_PREFIX}.*"))
    if uploads:  # a zip of pictures is read lazily from the run's copy
        return dataset_from_path(
            uploads[0], config.label_column, input_shape, config, name=config.dataset
        )
    pictures = Path(config.dataset)  # the command line's folder or zip, read where it lies
    if pictures.is_absolute() and (pictures.is_dir() or pictures.suffix.lower() == ".zip"):
        return dataset_from_path(pictures, None, input_shape, config)
    return load_dataset(config.dataset, seed=config.seed, input_shape=input_shape)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint read safely (weights_only=True); any problem becomes a CheckpointError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(msg("checkpoint {file} is missing", file=path.name)) from None
    except Exception as exc:  # torch.load raises many types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            msg(
                "checkpoint {file} is corrupt or not a NetBuilder checkpoint ({reason})",
                file=path.name,
                reason=reason,
            )
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(msg("checkpoint {file} holds no state dict", file=path.name))
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
# The trainer: the shared loop, watched through its hooks


@dataclass
class _PendingStep:
    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    time: float
    samples: int


class Trainer(Hooks):
    """One run's training: runtime/loop.py's Loop, with the app's instruments as its hooks.
    `run()` trains until done, stopped or faulted.

    Under torchrun (`world` processes), the loop trains a DistributedDataParallel wrapper;
    process 0 alone measures and writes (metrics, checkpoints, status), and a stop asked of any
    process stops them all at the same batch.
    """

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        analysis: Analysis,
        model: nn.Module,
        data: Data,
        device: torch.device,
        stop: threading.Event,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        loss: tuple[str, float] = ("auto", 0.0),
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.run_dir, self.config, self.analysis = run_dir, config, analysis
        self.model, self.data, self.device = model, data, device
        self.stop, self.on_epoch = stop, on_epoch
        self.rank, self.world, self.writer = rank, world, rank == 0
        self.modules = module_attributes(analysis)
        types_ = node_types(analysis)
        self.log = store.MetricsLog(run_dir / store.METRICS_FILE) if self.writer else store.NoLog()
        self.optimizer = make_optimizer(config, list(model.parameters()))
        trained = model
        if world > 1:
            trained = DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None
            )
        self.loop = Loop(
            trained,
            self.optimizer,
            data,
            config,
            loss[0],
            loss[1],
            hooks=self,
            device=device,
            rank=rank,
            world=world,
        )
        self.grad_probe = grad_norm_probe(model, self.modules)
        self.activations = activation_probe(model, self.modules, types_)
        self.attention = attention_layers(model, self.modules, types_)
        self.feature_layers = feature_map_layers(model, self.modules, types_)
        examples = data.x_val if len(data.x_val) else data.x_train
        self.example = examples[:1].to(device)
        self.pending: list[_PendingStep] = []
        self.pending_norms: list[tuple[int, torch.Tensor]] = []
        self.pending_health: list[tuple[int, ActivationReading]] = []
        self.pending_attention: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.pending_features: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.last_flush = self.last_checkpoint = time.perf_counter()
        self.checkpoint_seconds: float | None = None  # how long the last checkpoint took
        self.last_record: dict[str, Any] = {}
        self._reading: ActivationReading | None = None
        self._announce()

    @property
    def progress(self) -> Progress:
        return self.loop.progress

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.loop.scaler

    def _announce(self) -> None:
        """Events for what the loop decided on its own: mixed precision, a dropped batch."""
        if self.config.amp and self.device.type != "cuda":
            self.event(msg("mixed precision applies on CUDA only; training in float32"))
        elif self.config.amp:
            self.event(msg("mixed precision on {device}", device=self.device.type))
        if self.loop.left_out:
            self.event(
                msg(
                    "the last batch of each epoch holds a single sample, which BatchNorm cannot"
                    " normalise; it is left out of training ({count} of {total} samples)",
                    count=self.loop.left_out,
                    total=len(self.data.x_train),
                )
            )

    # -- hooks around the loop -------------------------------------------------------------

    @contextmanager
    def _watching(self) -> Iterator[None]:
        with self.activations.watching() as reading:
            self._reading = reading
            yield

    def forward(self, step: int) -> AbstractContextManager:
        health = step % (self.config.health_every or self.config.report_every) == 0
        return self._watching() if health and self.writer else nullcontext()

    def after_backward(self, step: int) -> None:
        if step % self.config.report_every == 0 and self.writer:
            self.pending_norms.append((step, self.grad_probe.measure()))

    def after_step(self, done: Step) -> None:
        if not self.writer:
            return
        if self._reading is not None:
            self.pending_health.append((done.step, self._reading))
            self._reading = None
        self.pending.append(
            _PendingStep(done.step, done.epoch, done.loss, done.lr, time.time(), len(done.index))
        )
        if self.attention and done.step % self.config.attention_every == 0:
            self.pending_attention.append(
                (done.step, capture_attention(self.model, self.attention, self.example))
            )
        every = self.config.attention_every
        if self.feature_layers and (done.step == 1 or done.step % every == 0):
            self.pending_features.append(  # (also at step 1: what it sees before it learns)
                (done.step, capture_feature_maps(self.model, self.feature_layers, self.example))
            )

    def after_batch(self, progress: Progress) -> None:
        if self.writer and time.perf_counter() - self.last_flush >= FLUSH_SECONDS:
            self.flush()  # (it also reads the stop flag)
            store.update_status(self.run_dir, step=progress.step)
            if not self.stop.is_set() and self.checkpoint_due():
                self.save_checkpoint()
        stop = self.stop.is_set()
        if self.world > 1:
            stop = any_process(stop, self.device)
        if stop:
            raise Stopped

    def before_evaluate(self, progress: Progress) -> None:
        self.flush()
        if self.world > 1:
            sum_over_processes(progress)

    def after_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        record = {
            "kind": "epoch",
            **{k: store.finite(v) if isinstance(v, float) else v for k, v in record.items()},
            "time": time.time(),
        }
        self.log.write([record])
        self.last_record = record
        if not self.writer:
            return
        if progress.epoch < self.config.epochs and self.checkpoint_due():
            self.save_checkpoint()
        store.update_status(self.run_dir, step=progress.step, epoch=progress.epoch)
        if self.on_epoch:
            self.on_epoch(record)

    # -- records ---------------------------------------------------------------------------

    def event(self, message: Message | str) -> None:
        self.log.write([event_record(self.progress.step, message)])

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
            {"kind": "attention", "step": step, "node": node, "weights": attention_lists(weights)}
            for step, captured in maps
            for node, weights in captured.items()
        )
        features, self.pending_features = self.pending_features, []
        self.log.write(
            {"kind": "feature_maps", "step": step, "node": node, "maps": feature_map_lists(maps)}
            for step, captured in features
            for node, maps in captured.items()
        )
        if (self.run_dir / store.STOP_FILE).exists():
            self.stop.set()

    def _flush_steps(self) -> None:
        pending, self.pending = self.pending, []
        losses = torch.stack([p.loss for p in pending]).float().tolist()
        window = max(pending[-1].time - pending[0].time, 1e-9)
        samples = sum(p.samples for p in pending[1:]) * self.world  # every process's share
        rate = samples / window if len(pending) > 1 else None
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
                self._diverged(item.step)
        self.log.write(records)

    def _diverged(self, step: int) -> None:
        """Name the first node whose output is non-finite on a batch, then end the run."""
        x = self.data.x_train[: self.config.batch_size].to(self.device)
        with torch.no_grad(), self.activations.watching(find_nonfinite=True) as reading:
            self.model(x)
        node = reading.first_nonfinite()
        self.log.write(
            [
                {
                    "kind": "health",
                    "step": step,
                    "dead_fraction": reading.dead_fractions(),
                    "nonfinite_node": node,
                }
            ]
        )
        if node:
            raise TrainingFault(
                "diverged",
                msg(
                    "diverged at step {step}; lower the learning rate (first non-finite output:"
                    " {node!r})",
                    step=step,
                    node=node,
                ),
            )
        raise TrainingFault(
            "diverged", msg("diverged at step {step}; lower the learning rate", step=step)
        )

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        """The first one at once, then as often as costs about CHECKPOINT_SHARE of the time."""
        if self.checkpoint_seconds is None:
            return True
        interval = max(CHECKPOINT_MIN_SECONDS, self.checkpoint_seconds / CHECKPOINT_SHARE)
        return time.perf_counter() - self.last_checkpoint >= interval

    def save_checkpoint(self) -> None:
        if not self.writer:
            return
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
            raise CheckpointError(
                msg("checkpoint {file} is not a NetBuilder training checkpoint", file=path.name)
            )
        for part in RESUME_PARTS:  # a resume needs every one; name the first that is missing
            if state.get(part) is None:
                raise CheckpointError(
                    msg(
                        "checkpoint {file} has no {part}, which resuming needs",
                        file=path.name,
                        part=part,
                    )
                )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.loop.progress = Progress(**state["progress"])
            torch.set_rng_state(state["rng"].cpu())
        except CHECKPOINT_MISFITS as exc:
            raise does_not_fit(path.name, exc) from None
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            status, message = "completed", self._train()
        except Stopped:
            self.flush()
            status = "stopped"
            message = msg(
                "stopped at step {step} (epoch {epoch}); resume to continue",
                step=self.progress.step,
                epoch=self.progress.epoch + 1,
            )
        self.save_checkpoint()
        seconds = time.perf_counter() - started
        if self.world > 1:
            self._check_processes_agree()
        self.event(message)
        return RunResult(
            status,
            str(message),
            self.progress.epoch,
            self.progress.step,
            *self.last_val,
            seconds,
            message_json(message),
            self.last_record,
        )

    def _check_processes_agree(self) -> None:
        """Every process ends with the same weights (DistributedDataParallel's promise): each
        weight's sum, compared across processes."""
        sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise TrainingFault(
                "failed",
                msg("the {world} processes ended with different weights", world=self.world),
            )
        self.event(msg("the weights agree on all {world} processes", world=self.world))

    @property
    def last_val(self) -> tuple[float | None, float | None]:
        return self.last_record.get("val_loss"), self.last_record.get("val_accuracy")

    def _train(self) -> Message:
        try:
            outcome = self.loop.train()
        except Diverged as exc:
            self.flush()
            raise TrainingFault(
                "diverged",
                msg(
                    "diverged at step {step}: the loss is not finite; lower the learning rate",
                    step=exc.step,
                ),
            ) from None
        if outcome == "early":
            return msg(
                "stopped early after epoch {epoch}: the validation loss has not improved for"
                " {patience} epochs (best {best:.4g})",
                epoch=self.progress.epoch,
                patience=self.config.early_stopping_patience,
                best=self.progress.best_val_loss,
            )
        val_loss, val_accuracy = self.last_val
        if val_accuracy is not None:
            return msg(
                "completed {epochs} epochs; validation accuracy {accuracy:.1%}",
                epochs=self.progress.epoch,
                accuracy=val_accuracy,
            )
        if val_loss is not None:
            return msg(
                "completed {epochs} epochs; validation loss {loss:.4g}",
                epochs=self.progress.epoch,
                loss=val_loss,
            )
        return msg("completed {epochs} epochs", epochs=self.progress.epoch)


def event_record(step: int, message: Message | str) -> dict[str, Any]:
    """An event for metrics.jsonl: the English sentence, and the message as data to render."""
    record = {"kind": "event", "step": step, "message": str(message)}
    if isinstance(message, Message):
        record["code"] = message.to_json()
    return record


def message_json(message: Message | str) -> dict[str, Any] | None:
    return message.to_json() if isinstance(message, Message) else None


class Stopped(Exception):
    """A stop was requested; unwinds the loop to the graceful-stop path."""


# ---------------------------------------------------------------------------------------------
# Entry point for a run folder


def train_run(
    run_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    rank: int = 0,
    world: int = 1,
) -> RunResult:
    """Train the run in run_dir (fresh, warm-started or resumed) and record its final status.

    Never raises for a training fault: divergence, out of memory, bad data, a bad checkpoint or
    an unexpected error each end as a status with a message (the traceback goes to stderr).
    Under torchrun (`world` > 1, the process group joined), process 0 records the status.
    """
    stop = stop or threading.Event()
    if (run_dir / store.STOP_FILE).exists():
        stop.set()
    if world == 1:  # with the threads it trains on (the pool splits the cores among CPU runs)
        threads = torch.get_num_threads()
        store.update_status(run_dir, status="running", pid=os.getpid(), message="", threads=threads)
    elif rank == 0:  # the launcher recorded torchrun's pid
        store.update_status(run_dir, status="running", message="")
    config: TrainConfig | None = None
    trainer: Any = None  # a Trainer, or a GanTrainer for a generator/discriminator pair
    try:
        config = _read_config(run_dir)
        trainer = _prepare(run_dir, config, stop, on_epoch, rank, world)
        result = trainer.run()
    except Exception as exc:  # every fault ends as a named status, never as a crash
        result = _failure(exc, config.batch_size if config else 0)
    if rank != 0:
        if trainer is not None:
            trainer.log.close()
        return result
    if trainer is not None:
        if result.status in ("diverged", "failed"):
            trainer.event(result.message)
            result.epochs, result.step = trainer.progress.epoch, trainer.progress.step
            result.val_loss, result.val_accuracy = trainer.last_val
            result.metrics = trainer.last_record
        trainer.log.close()
    else:
        _write_event(run_dir, result.message)
    store.update_status(
        run_dir,
        status=result.status,
        message=store.message_from_json(result.code) or result.message,
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
            "failed",
            msg(
                "config.json is not a valid training config: {where}: {reason}",
                where=where,
                reason=first["msg"],
            ),
        ) from None
    except OSError as exc:
        raise TrainingFault(
            "failed", msg("config.json cannot be read ({reason})", reason=exc.strerror)
        ) from None


def _failure(exc: Exception, batch_size: int) -> RunResult:
    """The status and message for whatever ended training early."""
    if isinstance(exc, TrainingFault):
        return RunResult(exc.status, str(exc.message), 0, 0, code=message_json(exc.message))
    if isinstance(exc, (DatasetError, CheckpointError, GraphFormatError)):
        text = getattr(exc, "detail", None) or getattr(exc, "text", str(exc))  # a Message, mostly
        return RunResult("failed", str(exc), 0, 0, code=message_json(text))
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        half = max(1, batch_size // 2)
        text = msg("out of memory at batch size {batch}; try {half}", batch=batch_size, half=half)
        return RunResult("failed", str(text), 0, 0, code=message_json(text))
    traceback.print_exception(exc)  # to trainer.log, for whoever debugs it
    return RunResult("failed", f"{type(exc).__name__}: {exc}", 0, 0)


def _write_event(run_dir: Path, message: str) -> None:
    log = store.MetricsLog(run_dir / store.METRICS_FILE)
    log.write([event_record(0, message)])
    log.close()


def _prepare(
    run_dir: Path,
    config: TrainConfig,
    stop: threading.Event,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """Load everything a run needs and restore its checkpoint or warm start."""
    graph = load_graph((run_dir / store.GRAPH_FILE).read_text())
    analysis = analyse(graph)
    too_big = check_fits(graph, analysis, config.batch_size, config.optimizer, config.device)
    if too_big is not None:  # refused before anything is built or loaded
        raise TrainingFault("failed", too_big)
    judge = discriminator_graph(graph)
    if judge is not None and world > 1:
        raise TrainingFault("failed", msg("a GAN pair trains in one process; choose one device"))
    if judge is not None:  # a GAN pair trains in runtime/gan.py (which imports this module)
        from runtime import gan

        dataset = dataset_for_run(run_dir, config)
        device = pick_device(config.device)
        store.update_status(run_dir, device=str(device))
        return gan.prepare(run_dir, config, graph, judge, dataset, device, stop, on_epoch)
    input_node = next(n for n in graph.nodes if n.type == "Input")
    input_shape = analysis.infos[input_node.id].shape or ()
    dataset = dataset_for_run(run_dir, config, input_shape)
    problems = check_compatibility(analysis, dataset, config.target)
    if problems:
        joined = "; ".join(map(str, problems))
        raise TrainingFault("failed", problems[0] if len(problems) == 1 else joined)
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1 and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on this process's GPU
    if rank == 0:
        store.update_status(
            run_dir, device=str(device) if world == 1 else f"{device.type} x{world}"
        )
    torch.manual_seed(config.seed)  # the same first weights in every process
    model = load_model_source((run_dir / store.MODEL_FILE).read_text()).to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingFault(
            "failed",
            msg("the model has no trainable parameters; add a layer with weights (a Linear)"),
        )
    input_dtype = analysis.infos[input_node.id].dtype or "float32"
    home = data_device(dataset, device)
    data = split_dataset(dataset, config, home, input_dtype)
    output = loss_of(analysis)
    loss = (output.loss, output.label_smoothing)
    trainer = Trainer(
        run_dir, config, analysis, model, data, device, stop, on_epoch, loss, rank, world
    )
    if home != device:
        trainer.event(
            msg(
                "the dataset does not fit in {device} memory: it stays in host memory and each"
                " batch is copied over",
                device=device.type,
            )
        )
    state = run_dir / store.CHECKPOINT_DIR / store.STATE_FILE
    if state.exists():
        trainer.restore(state)
        trainer.event(
            msg(
                "resumed from the checkpoint at step {step} (epoch {epoch}, batch {batch})",
                step=trainer.progress.step,
                epoch=trainer.progress.epoch + 1,
                batch=trainer.progress.batch,
            )
        )
    elif (run_dir / store.WARM_START_WEIGHTS).exists():
        _warm_start(trainer, run_dir, graph)
    return trainer


def _warm_start(trainer: Trainer, run_dir: Path, graph: Graph) -> None:
    old_weights = load_checkpoint(run_dir / store.WARM_START_WEIGHTS, trainer.device)
    old_graph = load_graph((run_dir / store.WARM_START_GRAPH).read_text())
    copied, fresh = warm_start(trainer.model, trainer.modules, graph, old_graph, old_weights)
    report = store.read_status(run_dir).get("warm_start_from")
    if trainer.writer:
        store.write_json(
            run_dir / store.WARM_START_REPORT, {"from": report, "copied": copied, "fresh": fresh}
        )
    trainer.event(
        msg(
            "warm start from run {run}: copied {copied}; fresh {fresh}",
            run=report,
            copied=", ".join(copied) or "-",
            fresh=", ".join(fresh) or "-",
        )
    )
