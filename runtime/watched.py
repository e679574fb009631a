"""A run as the app watches it: run.py's `Run` writing into its run folder.

What every app run shares, whether it trains one model (runtime/trainer.py) or a GAN pair
(runtime/gan.py): the metrics log and the status file, the stop flag (a threading.Event, or the
stop file a server writes), checkpoints written as often as they cost about CHECKPOINT_SHARE of
the time, the sentence each outcome ends with, and the RunResult. Neither trainer imports the
other; both import this.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from i18n import N_, Message, msg
from runtime import loop, run, store
from runtime.settings import TrainConfig

FLUSH_SECONDS = 0.5
CHECKPOINT_MIN_SECONDS = 2.0
CHECKPOINT_SHARE = 0.01  # checkpoints may take about this share of the training time
# How a run that early stopping ended says so, by the loss its loop watches.
EARLY_STOP = {
    "val_loss": N_(
        "stopped early after epoch {epoch}: the validation loss has not improved for"
        " {patience} epochs (best {best:.4g})"
    ),
    "g_loss": N_(
        "stopped early after epoch {epoch}: the generator's loss has not improved for"
        " {patience} epochs (best {best:.4g})"
    ),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, foreign, or does not fit the graph. `detail` is
    the sentence as a Message, rendered in the reader's language; str() is its English."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


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


def sentence(error: run.RunError) -> Message:
    """run.py's sentence as a Message, to be shown in the reader's language."""
    return msg(error.template, **error.values)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint or weights file read safely (weights_only=True), or a CheckpointError."""
    try:
        return run.load_checkpoint(path, device)
    except run.CheckpointError as exc:
        raise CheckpointError(sentence(exc)) from None


def pick_device(requested: str, local_rank: int = 0, processes: int = 1) -> torch.device:
    """run.py's device choice; a device this machine lacks fails the run with its sentence."""
    try:
        return run.pick_device(requested, local_rank, processes)
    except run.DeviceMissing as exc:
        raise TrainingFault("failed", sentence(exc)) from None


def event_record(step: int, message: Message | str) -> dict[str, Any]:
    """An event for metrics.jsonl: the English sentence, and the message as data to render."""
    record = {"kind": "event", "step": step, "message": str(message)}
    if isinstance(message, Message):
        record["code"] = message.to_json()
    return record


def message_json(message: Message | str) -> dict[str, Any] | None:
    return message.to_json() if isinstance(message, Message) else None


class WatchedRun(run.Run):
    """A Run that writes its run folder: records every FLUSH_SECONDS and each epoch, its status,
    checkpoints, and the sentence it ends with. `run()` trains until done, stopped or faulted.
    A subclass gathers its records on the device and writes them in `flush`."""

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        trainer: loop.Epochs,
        models: dict[str, nn.Module],
        weight_files: dict[str, str],
        stop: threading.Event,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(trainer, models, rank, world)
        self.run_dir, self.config, self.stop, self.on_epoch = run_dir, config, stop, on_epoch
        self.weight_files = weight_files  # model name -> file in the checkpoint folder
        self.log = store.MetricsLog(run_dir / store.METRICS_FILE) if self.writer else store.NoLog()
        self.last_flush = self.last_checkpoint = self.last_status = time.perf_counter()
        self.checkpoint_seconds: float | None = None  # how long the last checkpoint took

    def event(self, message: Message | str) -> None:
        self.log.write([event_record(self.progress.step, message)])

    def announce_precision(self) -> None:
        """Mixed precision was asked for: say what the loop decided."""
        if self.config.amp and self.device.type != "cuda":
            self.event(msg("mixed precision applies on CUDA only; training in float32"))
        elif self.config.amp:
            self.event(msg("mixed precision on {device}", device=self.device.type))

    # -- hooks -----------------------------------------------------------------------------

    def after_batch(self, progress: loop.Progress) -> None:
        if self.writer and time.perf_counter() - self.last_flush >= FLUSH_SECONDS:
            self.flush()  # (it also reads the stop file)
            self.update_status(progress)
            if not self.stop.is_set() and self.checkpoint_due():
                self.save_checkpoint()
        self.stop_requested = self.stop.is_set()
        super().after_batch(progress)

    def record_epoch(self, record: dict[str, Any], progress: loop.Progress) -> None:
        self.flush()
        self.log.write([record])
        if not self.writer:
            return
        last = progress.epoch >= self.config.epochs
        if not last and self.checkpoint_due():
            self.save_checkpoint()
        if last or time.perf_counter() - self.last_status >= FLUSH_SECONDS:
            self.update_status(progress)  # (short epochs: at most every FLUSH_SECONDS)
        if self.on_epoch:
            self.on_epoch(record)

    def update_status(self, progress: loop.Progress) -> None:
        """status.json's step and epoch, for the runs panel."""
        store.update_status(self.run_dir, step=progress.step, epoch=progress.epoch)
        self.last_status = time.perf_counter()

    def flush(self) -> None:
        """Write what was gathered since the last flush; read the stop file."""
        self.last_flush = time.perf_counter()
        if (self.run_dir / store.STOP_FILE).exists():
            self.stop.set()

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        """The first after CHECKPOINT_MIN_SECONDS of training, then as often as costs about
        CHECKPOINT_SHARE of the time (a run that ends or stops sooner checkpoints as it ends)."""
        spent = self.checkpoint_seconds or 0.0
        interval = max(CHECKPOINT_MIN_SECONDS, spent / CHECKPOINT_SHARE)
        return time.perf_counter() - self.last_checkpoint >= interval

    def save_checkpoint(self) -> None:
        """run.py's checkpoint as state.pt, and each model's weights on their own."""
        if not self.writer:
            return
        started = time.perf_counter()
        folder = self.run_dir / store.CHECKPOINT_DIR
        state = self.checkpoint()
        store.write_atomic(folder / store.STATE_FILE, lambda file: torch.save(state, file))
        for name, weights in self.weights().items():
            write = lambda file, weights=weights: torch.save(weights, file)  # noqa: E731
            store.write_atomic(folder / self.weight_files[name], write)
        self.last_checkpoint = time.perf_counter()
        self.checkpoint_seconds = self.last_checkpoint - started

    def resume(self, path: Path) -> None:
        """Restore the run's checkpoint, or fail it with the checkpoint's sentence."""
        try:
            self.restore(load_checkpoint(path, self.device), path.name)
        except run.CheckpointError as exc:
            raise CheckpointError(sentence(exc)) from None

    # -- the run ---------------------------------------------------------------------------

    @property
    def last_val(self) -> tuple[float | None, float | None]:
        return self.last_record.get("val_loss"), self.last_record.get("val_accuracy")

    def run(self) -> RunResult:
        started = time.perf_counter()
        outcome = self.train()
        if outcome == "diverged":
            self.flush()
            raise TrainingFault(
                "diverged",
                msg(
                    "diverged at step {step}: the loss is not finite; lower the learning rate",
                    step=self.diverged_at,
                ),
            )
        if outcome == "stopped":
            self.flush()
            message = msg(
                "stopped at step {step} (epoch {epoch}); resume to continue",
                step=self.progress.step,
                epoch=self.progress.epoch + 1,
            )
        elif outcome == "early":
            message = self.early_message()
        else:
            message = self.completed_message()
        self.save_checkpoint()
        seconds = time.perf_counter() - started
        self.finish()
        self.event(message)
        return RunResult(
            "stopped" if outcome == "stopped" else "completed",
            str(message),
            self.progress.epoch,
            self.progress.step,
            *self.last_val,
            seconds,
            message_json(message),
            self.last_record,
        )

    def finish(self) -> None:
        """After the last checkpoint, before the closing event (several processes compare)."""

    def early_message(self) -> Message:
        """Patience ran out on the loss the loop watches (validation; a GAN's generator)."""
        return msg(
            EARLY_STOP[self.loop.watched_key],
            epoch=self.progress.epoch,
            patience=self.config.early_stopping_patience,
            best=self.progress.best_val_loss,
        )

    def completed_message(self) -> Message:
        return msg("completed {epochs} epochs", epochs=self.progress.epoch)
