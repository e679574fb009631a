"""The training of one model: trains a run folder's model.py on its dataset and records it.

It runs in its own process (started by runtime/runs.py, or headless by `python -m runtime train`),
so a crash here cannot take the app down. The loop is runtime/loop.py and the code around it
(device, checkpoint, stop, records) runtime/run.py, the very files the exported train.py runs;
runtime/watched.py writes the run folder, and this module adds what the app watches as hooks.
Everything they report is gathered on the device and moved to the host in one go every
FLUSH_SECONDS, so watching a run costs next to nothing. Faults end the run with a named status
and a message that says what to change. A GAN pair trains in runtime/gan.py.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import nn

from builder.catalog import CATALOG
from builder.graph import Graph, GraphFormatError, load_graph
from compiler.analysis import Analysis, analyse, loss_of
from compiler.codegen import attribute_names, load_model_source
from compiler.gan import discriminator_graph
from i18n import Message, msg
from runtime import gan, run, store
from runtime.datasets import (
    Dataset,
    DatasetError,
    check_compatibility,
    dataset_from_path,
    load_dataset,
)
from runtime.loop import Data, Loop, Progress, Step, make_optimizer, split
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
from runtime.watched import (  # noqa: F401  (CheckpointError, load_checkpoint: step.py's)
    CheckpointError,
    RunResult,
    TrainingFault,
    WatchedRun,
    load_checkpoint,
    event_record,
    message_json,
    pick_device,
)

DEVICE_DATA_SHARE = 0.5  # a dataset may fill this share of the free GPU memory


# ---------------------------------------------------------------------------------------------
# Small pure pieces


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
# The trainer: the shared loop and run, watched through their hooks


@dataclass
class _PendingStep:
    step: int
    epoch: int
    loss: torch.Tensor
    lr: float
    time: float
    samples: int


class Trainer(WatchedRun):
    """One model's run: loop.py's Loop inside run.py's Run, with the app's instruments as hooks.
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
        self.analysis, self.model, self.data = analysis, model, data
        self.modules = module_attributes(analysis)
        types_ = node_types(analysis)
        self.optimizer = make_optimizer(config, list(model.parameters()))
        trainer = Loop(
            run.distributed(model, device, world),
            self.optimizer,
            data,
            config,
            loss[0],
            loss[1],
            device=device,
            rank=rank,
            world=world,
        )
        files = {"model": store.WEIGHTS_FILE}
        super().__init__(
            run_dir, config, trainer, {"model": model}, files, stop, on_epoch, rank, world
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
        self._reading: ActivationReading | None = None
        self._announce()

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.loop.scaler

    def _announce(self) -> None:
        """Events for what the loop decided on its own: mixed precision, a dropped batch."""
        self.announce_precision()
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

    def before_evaluate(self, progress: Progress) -> None:
        self.flush()
        super().before_evaluate(progress)

    # -- records ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Move everything gathered on the device to the log; detect divergence."""
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
        super().flush()

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

    # -- the run ---------------------------------------------------------------------------

    def finish(self) -> None:
        if self.world > 1:
            self._check_processes_agree()

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

    def completed_message(self) -> Message:
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
        return super().completed_message()


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
    if judge is not None:  # a GAN pair trains in runtime/gan.py
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
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", 0)), world)
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
        trainer.resume(state)
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
