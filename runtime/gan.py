"""Generative adversarial networks: a generator graph and a discriminator graph trained together.

The pair's file format and its checks are in compiler/gan.py. A GAN run is a run folder like any
other (graph.json holds the pair, model.py the generator, discriminator.py the discriminator);
runtime/loop.py's GanLoop trains it inside runtime/run.py's Run, the same wrapper as a plain run
(a second pair of model and optimizer, one checkpoint format), with the same settings. This
module records both losses, D(x) and D(G(z)) per step and a grid of generated samples as it goes.
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

from builder.graph import Graph
from compiler.analysis import analyse
from compiler.codegen import generate_source, load_model_source
from compiler.gan import check_pair, end_node
from i18n import Message, msg
from runtime import store
from runtime.datasets import Dataset
from runtime.loop import Diverged, GanLoop, GanStep, Progress
from runtime.settings import TrainConfig
from runtime.watched import RunResult, TrainingFault, WatchedRun

DISCRIMINATOR_FILE = "discriminator.py"
DISCRIMINATOR_WEIGHTS = "discriminator.pt"
SAMPLE_SECONDS = 3.0  # a new grid of generated samples this often (and at the end)
SAMPLE_COUNT = 16


@dataclass
class GanRecords:
    """What the trainer reports, gathered on the device and written at each flush."""

    steps: list[GanStep]
    samples: list[tuple[int, torch.Tensor]]


class GanTrainer(WatchedRun):
    """One GAN run: the shared GanLoop in the shared Run, watched and checkpointed like a plain
    run (its checkpoint holds both players and both optimizers)."""

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        loop: GanLoop,
        stop: threading.Event,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        models = {"generator": loop.generator, "discriminator": loop.discriminator}
        files = {"generator": store.WEIGHTS_FILE, "discriminator": DISCRIMINATOR_WEIGHTS}
        super().__init__(run_dir, config, loop, models, files, stop, on_epoch)
        generator = torch.Generator().manual_seed(config.seed + 1)
        self.noise = torch.randn(SAMPLE_COUNT, *loop.noise_shape, generator=generator)
        self.pending = GanRecords([], [])
        self.last_sample = time.perf_counter()
        self.announce_precision()

    @property
    def last_val(self) -> tuple[float | None, float | None]:
        return None, None

    # -- hooks -----------------------------------------------------------------------------

    def after_step(self, done: GanStep) -> None:
        self.pending.steps.append(done)

    def after_batch(self, progress: Progress) -> None:
        if time.perf_counter() - self.last_sample >= SAMPLE_SECONDS:
            self.sample()
        super().after_batch(progress)

    def record_epoch(self, record: dict[str, Any], progress: Progress) -> None:
        last = progress.epoch >= self.config.epochs
        if last or time.perf_counter() - self.last_sample >= SAMPLE_SECONDS:
            self.sample()
        super().record_epoch(record, progress)

    # -- records ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self) -> None:
        """Generated samples from the same fixed noise, so a person sees them improve."""
        generator = self.loop.generator
        generator.eval()
        images = generator(self.noise.to(self.device)).float().cpu()
        generator.train()
        self.pending.samples.append((self.progress.step, images))
        self.last_sample = time.perf_counter()

    def flush(self) -> None:
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
                    "lr": s.lr,
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
        super().flush()

    # -- the run ---------------------------------------------------------------------------

    def completed_message(self) -> Message:
        return msg(
            "completed {epochs} epochs; D(x) {real:.2f}, D(G(z)) {fake:.2f}",
            epochs=self.progress.epoch,
            real=self.last_record.get("d_real", math.nan),
            fake=self.last_record.get("d_fake", math.nan),
        )

    def run(self) -> RunResult:
        if self.progress.step == 0:
            self.sample()  # what the untrained generator makes, to compare with
        return super().run()


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
    discriminator = load_model_source(source.read_text(), DISCRIMINATOR_FILE).to(device)
    noise = generator_analysis.infos[end_node(generator_analysis, "Input")].shape or ()
    real = dataset.x.float().to(device)
    loop = GanLoop(generator, discriminator, real, config, tuple(noise), device=device)
    trainer = GanTrainer(run_dir, config, loop, stop, on_epoch)
    state = run_dir / store.CHECKPOINT_DIR / store.STATE_FILE
    if state.exists():
        trainer.resume(state)
        trainer.event(msg("resumed from the checkpoint at step {step}", step=trainer.progress.step))
    return trainer
