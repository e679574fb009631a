"""Generative adversarial networks: a generator graph and a discriminator graph trained together.

The pair's file format and its checks are in compiler/gan.py. A GAN run is a run folder like any other (graph.json holds the pair, model.py the generator,
discriminator.py the discriminator); runtime/loop.py's GanLoop trains it, and this module records
both losses, D(x) and D(G(z)) per step and a grid of generated samples as it goes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from builder.graph import Graph
from compiler.analysis import analyse
from compiler.codegen import generate_source
from compiler.gan import check_pair, end_node
from i18n import Message, msg
from runtime import store
from runtime.datasets import Dataset
from runtime.loop import Diverged, GanHooks, GanLoop, GanStep, Progress
from runtime.settings import TrainConfig
from runtime.trainer import (
    CHECKPOINT_MISFITS,
    CheckpointError,
    RunResult,
    Stopped,
    TrainingFault,
    does_not_fit,
    event_record,
    load_checkpoint,
    load_model_source,
    message_json,
)

DISCRIMINATOR_FILE = "discriminator.py"
DISCRIMINATOR_WEIGHTS = "discriminator.pt"
GAN_RESUME_PARTS = ("generator", "discriminator", "g_optimizer", "d_optimizer", "progress", "rng")
FLUSH_SECONDS = 0.5
SAMPLE_SECONDS = 3.0  # a new grid of generated samples at most this often (and every epoch)
SAMPLE_COUNT = 16


def load_source(source: str, filename: str) -> nn.Module:
    """Execute generated source as a fresh module and build its model."""
    namespace: dict[str, Any] = {"__name__": filename}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["build_model"]()


@dataclass
class GanRecords:
    """What the trainer reports, gathered on the device and written at each flush."""

    steps: list[GanStep]
    samples: list[tuple[int, torch.Tensor]]


class GanTrainer(GanHooks):
    """One GAN run: the shared GanLoop, watched and checkpointed like a plain run."""

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        loop: GanLoop,
        stop: threading.Event,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.run_dir, self.config, self.loop, self.stop = run_dir, config, loop, stop
        self.on_epoch = on_epoch
        loop.hooks = self
        self.log = store.MetricsLog(run_dir / store.METRICS_FILE)
        generator = torch.Generator().manual_seed(config.seed + 1)
        self.noise = torch.randn(SAMPLE_COUNT, *loop.noise_shape, generator=generator)
        self.pending = GanRecords([], [])
        self.last_flush = self.last_sample = time.perf_counter()
        self.last_record: dict[str, Any] = {}

    @property
    def progress(self) -> Progress:
        return self.loop.progress

    @property
    def last_val(self) -> tuple[float | None, float | None]:
        return None, None

    def event(self, message: Message | str) -> None:
        self.log.write([event_record(self.progress.step, message)])

    # -- hooks -----------------------------------------------------------------------------

    def after_step(self, done: GanStep) -> None:
        self.pending.steps.append(done)

    def after_batch(self, progress: Progress) -> None:
        now = time.perf_counter()
        if now - self.last_sample >= SAMPLE_SECONDS:
            self.sample()
        if now - self.last_flush >= FLUSH_SECONDS:
            self.flush()
            store.update_status(self.run_dir, step=progress.step)
        if self.stop.is_set():
            raise Stopped

    def after_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        self.sample()
        self.flush()
        record = {"kind": "epoch", **record, "time": time.time()}
        self.log.write([record])
        self.last_record = record
        self.save_checkpoint()
        store.update_status(self.run_dir, step=progress.step, epoch=progress.epoch)
        if self.on_epoch:
            self.on_epoch(record)

    # -- records ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self) -> None:
        """Generated samples from the same fixed noise, so a person sees them improve."""
        generator = self.loop.generator
        generator.eval()
        images = generator(self.noise.to(self.loop.device)).float().cpu()
        generator.train()
        self.pending.samples.append((self.progress.step, images))
        self.last_sample = time.perf_counter()

    def flush(self) -> None:
        self.last_flush = time.perf_counter()
        steps, self.pending.steps = self.pending.steps, []
        if steps:
            values = torch.stack(
                [torch.stack([s.d_loss, s.g_loss, s.d_real, s.d_fake]).float() for s in steps]
            ).tolist()
            now = time.time()
            records = [
                {
                    "kind": "gan",
                    "step": s.step,
                    "epoch": s.epoch,
                    "d_loss": store.finite(row[0]),
                    "g_loss": store.finite(row[1]),
                    "d_real": store.finite(row[2]),
                    "d_fake": store.finite(row[3]),
                    "time": now,
                }
                for s, row in zip(steps, values, strict=True)
            ]
            self.log.write(records)
            if not all(math.isfinite(v) for row in values for v in row[:2]):
                raise Diverged(steps[-1].step)
        samples, self.pending.samples = self.pending.samples, []
        self.log.write(
            {
                "kind": "samples",
                "step": step,
                "images": images.clamp(0, 1).round(decimals=3).tolist(),
            }
            for step, images in samples
        )
        if (self.run_dir / store.STOP_FILE).exists():
            self.stop.set()

    def save_checkpoint(self) -> None:
        folder = self.run_dir / store.CHECKPOINT_DIR
        loop = self.loop
        state = {
            "generator": loop.generator.state_dict(),
            "discriminator": loop.discriminator.state_dict(),
            "g_optimizer": loop.g_optimizer.state_dict(),
            "d_optimizer": loop.d_optimizer.state_dict(),
            "progress": vars(self.progress).copy(),
            "rng": torch.get_rng_state(),
        }
        generator = {k: v.detach().cpu() for k, v in loop.generator.state_dict().items()}
        judge = {k: v.detach().cpu() for k, v in loop.discriminator.state_dict().items()}
        store.write_atomic(folder / store.STATE_FILE, lambda file: torch.save(state, file))
        store.write_atomic(folder / store.WEIGHTS_FILE, lambda file: torch.save(generator, file))
        store.write_atomic(folder / DISCRIMINATOR_WEIGHTS, lambda file: torch.save(judge, file))

    def restore(self, state: dict[str, Any], name: str = store.STATE_FILE) -> None:
        """Both players, their optimizers, the progress and the random state; a checkpoint
        that lacks one, or does not fit, is named in a sentence (CheckpointError)."""
        for part in GAN_RESUME_PARTS:  # name the first that is missing
            if not isinstance(state, dict) or state.get(part) is None:
                raise CheckpointError(
                    msg(
                        "checkpoint {file} has no {part}, which resuming needs",
                        file=name,
                        part=part,
                    )
                )
        loop = self.loop
        try:
            loop.generator.load_state_dict(state["generator"])
            loop.discriminator.load_state_dict(state["discriminator"])
            loop.g_optimizer.load_state_dict(state["g_optimizer"])
            loop.d_optimizer.load_state_dict(state["d_optimizer"])
            loop.progress = Progress(**state["progress"])
            torch.set_rng_state(state["rng"].cpu())
        except CHECKPOINT_MISFITS as exc:
            raise does_not_fit(name, exc) from None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        if self.progress.step == 0:
            self.sample()  # what the untrained generator makes, to compare with
        try:
            self.loop.train()
            status = "completed"
            message = msg(
                "completed {epochs} epochs; D(x) {real:.2f}, D(G(z)) {fake:.2f}",
                epochs=self.progress.epoch,
                real=self.last_record.get("d_real", math.nan),
                fake=self.last_record.get("d_fake", math.nan),
            )
        except Stopped:
            self.flush()
            status = "stopped"
            message = msg(
                "stopped at step {step} (epoch {epoch}); resume to continue",
                step=self.progress.step,
                epoch=self.progress.epoch + 1,
            )
        except Diverged as exc:
            raise TrainingFault(
                "diverged",
                msg(
                    "diverged at step {step}: a loss is not finite; lower the learning rate",
                    step=exc.step,
                ),
            ) from None
        self.save_checkpoint()
        self.event(message)
        seconds = time.perf_counter() - started
        return RunResult(
            status,
            str(message),
            self.progress.epoch,
            self.progress.step,
            None,
            None,
            seconds,
            message_json(message),
            self.last_record,
        )


def prepare(
    run_dir: Path,
    config: TrainConfig,
    graph: Graph,
    judge: Graph,
    dataset: Dataset,
    device: torch.device,
    stop: threading.Event,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> GanTrainer:
    """Check the pair against the data, build both players and restore a checkpoint."""
    generator_analysis, judge_analysis = analyse(graph), analyse(judge)
    problems = check_pair(generator_analysis, judge_analysis, dataset.sample_shape)
    if problems:
        joined = "; ".join(map(str, problems))
        raise TrainingFault("failed", problems[0] if len(problems) == 1 else joined)
    source = run_dir / DISCRIMINATOR_FILE
    if not source.exists():
        source.write_text(generate_source(judge_analysis))
    torch.manual_seed(config.seed)
    generator = load_model_source((run_dir / store.MODEL_FILE).read_text()).to(device)
    discriminator = load_source(source.read_text(), DISCRIMINATOR_FILE).to(device)
    noise = generator_analysis.infos[end_node(generator_analysis, "Input")].shape or ()
    real = dataset.x.float().to(device)
    loop = GanLoop(generator, discriminator, real, config, tuple(noise), device=device)
    trainer = GanTrainer(run_dir, config, loop, stop, on_epoch)
    state = run_dir / store.CHECKPOINT_DIR / store.STATE_FILE
    if state.exists():
        trainer.restore(load_checkpoint(state, device))
        trainer.event(msg("resumed from the checkpoint at step {step}", step=trainer.progress.step))
    return trainer
