"""The code around the training loop, written once: the device, the checkpoint (one format, saved
and restored), stop and divergence, and one record per epoch.

Standalone like loop.py (torch and the standard library only) and shipped beside it in the export
bundle: the app's trainers (runtime/trainer.py, runtime/gan.py) and both exported train.py
scripts wrap their loop in a `Run`, so a run picks its device, saves, resumes, stops and ends the
same way wherever it runs. A plain run trains one model and its optimizer ("model"); a GAN trains
two ("generator" and "discriminator") in the same wrapper.

A sentence a person reads is a `RunError`: a template marked for translation and its values (the
app shows it in the reader's language; str() is the English).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if __package__ == "runtime":  # in NetBuilder, loop.py is runtime/loop.py ...
    from runtime import loop
else:  # ... and in an exported bundle it sits beside this file
    import loop  # type: ignore[no-redef]

FORMAT = "netbuilder.checkpoint"
VERSION = 2  # 1: the app's own (one model, no schedule); train.py's and the GAN's had no tag
PARTS = ("models", "optimizers", "progress", "rng")  # what a resume needs, all of them
STOP_EVERY = 16  # under torchrun, the processes agree on a stop every this many batches


def N_(text: str) -> str:
    """Marks a sentence for translation (see loop.py's N_)."""
    return text


class RunError(Exception):
    """A sentence for the person: `template` filled with `values`; str() is its English."""

    def __init__(self, template: str, **values: Any) -> None:
        super().__init__(template.format(**values))
        self.template, self.values = template, values


class DeviceMissing(RunError):
    """The device asked for by name is not on this machine."""


class CheckpointError(RunError):
    """A checkpoint that is missing, corrupt, foreign, older, incomplete, or for another model."""


class Stopped(Exception):
    """A stop was asked for; unwinds the loop to the graceful-stop path."""


# -- the device ------------------------------------------------------------------------------


def pick_device(choice: str, local_rank: int = 0, processes: int = 1) -> torch.device:
    """auto: cuda, then mps, then cpu. A device named that this machine lacks is refused with a
    sentence, never swapped for another. Under torchrun (`processes` > 1) each process takes the
    GPU of its local rank, and MPS, which serves one process, is left out."""
    mps = torch.backends.mps.is_available()
    present = {"cuda": torch.cuda.is_available(), "mps": mps and processes == 1, "cpu": True}
    if choice == "auto":
        choice = next(name for name, ok in present.items() if ok)
    elif choice == "mps" and mps and not present["mps"]:
        raise DeviceMissing(
            N_("device 'mps' serves one process; choose cpu or cuda to train under torchrun")
        )
    elif choice == "mps" and not present["mps"]:
        raise DeviceMissing(
            N_("device 'mps' is not available on this machine (no Apple GPU); choose auto or cpu")
        )
    elif not present[choice]:
        raise DeviceMissing(
            N_("device 'cuda' is not available on this machine (no CUDA GPU is visible);"
               " choose auto or cpu")
        )  # fmt: skip
    return torch.device("cuda", local_rank) if choice == "cuda" else torch.device(choice)


def distributed(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """The module the loop trains: DistributedDataParallel's wrapper under torchrun."""
    if world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


# -- the checkpoint --------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random state of the CPU and of the training device, so that a resume repeats the
    same dropout masks and noise."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"].cpu())


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A file read safely (weights_only=True: no code can run); any problem is a sentence."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(N_("checkpoint {file} is missing"), file=path.name) from None
    except Exception as exc:  # torch.load raises many types for corrupt or unsafe files
        raise CheckpointError(
            N_("checkpoint {file} is corrupt or not a NetBuilder checkpoint ({reason})"),
            file=path.name,
            reason=first_line(exc),
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(N_("checkpoint {file} holds no state dict"), file=path.name)
    return state


def check_checkpoint(state: dict[str, Any], name: str, models: list[str]) -> None:
    """Refuse, with a sentence, a checkpoint that is foreign, older, incomplete, or holds other
    players than this run's `models`."""
    if state.get("format") != FORMAT:
        refusal = N_("checkpoint {file} is not a NetBuilder training checkpoint")
        if state.get("format") == "netbuilder.checkpoint/1" or {"generator", "rng"} & set(state):
            refusal = N_(
                "checkpoint {file} was written by an older NetBuilder, whose checkpoints this one"
                " does not read; start the run afresh"
            )
        raise CheckpointError(refusal, file=name)
    if state.get("version") != VERSION:
        raise CheckpointError(
            N_(
                "checkpoint {file} has format version {found}; this NetBuilder reads version"
                " {version}; start the run afresh"
            ),
            file=name,
            found=state.get("version"),
            version=VERSION,
        )
    for part in PARTS:  # a resume needs every one; name the first that is missing
        if not isinstance(state.get(part), dict):
            raise CheckpointError(
                N_("checkpoint {file} has no {part}, which resuming needs"), file=name, part=part
            )
    if sorted(state["models"]) != sorted(models):
        raise CheckpointError(
            N_("checkpoint {file} holds {found}, but this run trains {wanted}"),
            file=name,
            found=", ".join(sorted(state["models"])),
            wanted=", ".join(sorted(models)),
        )


def first_line(exc: BaseException) -> str:
    """An error's reason in one short line, for a sentence."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder: readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- processes (torchrun) --------------------------------------------------------------------


def sum_over_processes(progress: loop.Progress) -> None:
    """Before validation under torchrun: the epoch's sums over every process, on each."""
    counts = [progress.samples, progress.predictions]
    counted = torch.tensor(counts, dtype=torch.float64, device=progress.totals.device)
    dist.all_reduce(progress.totals)
    dist.all_reduce(counted)
    progress.samples, progress.predictions = (int(c) for c in counted.tolist())


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on one (a stop asked of one stops all at the same
    batch: a process that went on alone would wait forever for the others' gradients)."""
    raised = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(raised, op=dist.ReduceOp.MAX)
    return bool(raised.item())


# -- the run ---------------------------------------------------------------------------------


class Run(loop.Hooks):
    """A loop with what surrounds it: `train()` runs it to an outcome, `checkpoint()` and
    `restore()` are the one checkpoint format, and each epoch ends as a record.

    `models` are the unwrapped modules by name ("model", or "generator" and "discriminator"), in
    the order of the loop's `optimizers`. A subclass watches more through the loop's hooks and
    says what an epoch's record becomes in `record_epoch`; `stop_requested` set to True stops
    the run after the batch at hand (under torchrun, at the next batch all processes check).
    """

    def __init__(
        self,
        trainer: loop.Epochs,
        models: dict[str, nn.Module],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.loop, self.models, self.rank, self.world = trainer, models, rank, world
        trainer.hooks = self
        self.device = trainer.device
        self.writer = rank == 0  # process 0 alone writes files
        self.stop_requested = False
        self.diverged_at: int | None = None
        self.last_record: dict[str, Any] = {}
        self.epoch_started = time.perf_counter()

    @property
    def progress(self) -> loop.Progress:
        return self.loop.progress

    def train(self) -> str:
        """completed, early (patience ran out), stopped, or diverged (at `diverged_at`)."""
        self.epoch_started = time.perf_counter()
        try:
            return self.loop.train()
        except Stopped:
            return "stopped"
        except loop.Diverged as exc:
            self.diverged_at = exc.step
            return "diverged"

    # -- hooks -----------------------------------------------------------------------------

    def after_batch(self, progress: loop.Progress) -> None:
        stop = self.stop_requested
        if self.world > 1:  # all processes stop at the same batch, or none does
            if progress.step % STOP_EVERY:
                return
            stop = any_process(stop, self.device)
        if stop:
            raise Stopped

    def before_evaluate(self, progress: loop.Progress) -> None:
        if self.world > 1:
            sum_over_processes(progress)

    def after_epoch(self, record: dict[str, Any], progress: loop.Progress) -> None:
        seconds = max(time.perf_counter() - self.epoch_started, 1e-9)
        trained = self.loop.samples - self.loop.left_out  # by all processes together
        record = {
            "kind": "epoch",
            **{k: finite(v) if isinstance(v, float) else v for k, v in record.items()},
            "samples_per_s": round(trained / seconds),
            "time": time.time(),
        }
        self.last_record = record
        self.record_epoch(record, progress)
        self.epoch_started = time.perf_counter()

    def record_epoch(self, record: dict[str, Any], progress: loop.Progress) -> None:
        """What becomes of an epoch's record (written, printed, checkpointed): here, nothing."""

    # -- the checkpoint --------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything a resume needs, in the one format every NetBuilder run writes."""
        settings = self.loop.settings
        scaler = self.loop.scaler
        return {
            "format": FORMAT,
            "version": VERSION,
            "models": {name: model.state_dict() for name, model in self.models.items()},
            "optimizers": {name: o.state_dict() for name, o in self.loop.optimizers.items()},
            "scaler": scaler.state_dict() if scaler else None,
            "schedule": {
                "schedule": settings.schedule,
                "lr": settings.lr,
                "warmup_steps": settings.warmup_steps,
                "total_steps": self.loop.total_steps,
            },
            "rng": rng_state(self.device),
            "epoch": self.progress.epoch,
            "step": self.progress.step,
            "progress": vars(self.progress).copy(),
        }

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each model's weights on the CPU: what model.load_state_dict takes."""
        return {
            name: {key: value.detach().cpu() for key, value in model.state_dict().items()}
            for name, model in self.models.items()
        }

    def restore(self, state: dict[str, Any], name: str) -> None:
        """Models, optimizers, scaler, progress and random state from a checkpoint; one that is
        foreign, older, incomplete or for another graph is refused with a sentence."""
        check_checkpoint(state, name, list(self.models))
        try:
            for key, model in self.models.items():
                model.load_state_dict(state["models"][key])
            for key, optimizer in self.loop.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][key])
            if self.loop.scaler and state.get("scaler"):
                self.loop.scaler.load_state_dict(state["scaler"])
            self.loop.progress = loop.Progress(**state["progress"])
            set_rng_state(state["rng"], self.device)
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                N_("checkpoint {file} does not fit this graph and config ({reason})"),
                file=name,
                reason=first_line(exc),
            ) from None


# -- train.py's side --------------------------------------------------------------------------


def describe(record: dict[str, Any]) -> str:
    """A metrics line for a terminal: 'epoch 3  train_loss 0.1465  ...'."""
    return "  ".join(
        f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in record.items()
        if not isinstance(value, list) and key not in ("kind", "time")
    )


def save_files(run: Run, out: Path, weight_files: dict[str, str], record: dict[str, Any]) -> None:
    """train.py's files after an epoch: last.pt (the checkpoint --resume reads), each model's
    weights, and the record as a line of metrics.jsonl."""
    state = run.checkpoint()
    write_atomic(out / "last.pt", lambda file: torch.save(state, file))
    for name, weights in run.weights().items():
        write_atomic(out / weight_files[name], lambda file, w=weights: torch.save(w, file))
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps(record) + "\n")


def resume(run: Run, path: Path) -> None:
    """train.py's --resume: the checkpoint at `path`, or the sentence that says why not."""
    if not path.exists():
        raise SystemExit(f"nothing to resume: {path} does not exist")
    try:
        run.restore(load_checkpoint(path, run.device), path.name)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None


def end(run: Run, outcome: str, settings: Any) -> None:
    """train.py's last word on an outcome: advice for a diverged run (and exit status 1)."""
    if outcome == "diverged":
        raise SystemExit(
            f"the loss is not finite at step {run.diverged_at}: try a lower --lr than"
            f" {settings.lr} or --grad-clip 1 (last.pt holds the last good epoch)"
        )
    if outcome == "early" and run.writer:
        print(f"stopped early: no lower loss in {settings.early_stopping_patience} epochs")


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a record holds null for them."""
    return value if math.isfinite(value) else None
