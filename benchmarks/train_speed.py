"""Training speed: our trainer against a careful hand-written PyTorch loop, measured in one run.

For each architecture (LeNet-5 on digits-28; the Transformer template on tokens; GPT-mini, a
next-character language model, on the text task), the same data,
batch size, optimizer and epochs, with a validation pass after every epoch in all variants:
  baseline        a hand-written nn.Module and a hand-written loop (data on the device, sliced)
  ours            the generated model.py in runtime/trainer.py, reports switched off
  instrumented    ours with grad norms every step, attention every 50 steps and activation
                  health every 10 (its default cadence)
  all_every_step  every instrument on every step (for reference; no target)
Each variant is timed per epoch (an epoch's steps, its validation pass and, for ours, whatever
checkpoint and metrics writing fell into it), leaving out the first epoch of each run. Variants
run interleaved after a warm-up; the fastest epoch of N repeats and the median are both shown,
because a shared machine is noisy.
Targets (issues 3 and 23): ours / baseline <= 1.03, instrumented / baseline <= 1.05 (median);
benchmarks/loop_overhead.py isolates the step (loop and per-batch hooks) for a busy machine.
Run: .venv/bin/python benchmarks/train_speed.py [--device cuda --amp] [--repeats 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import Graph, load_graph  # noqa: E402
from runtime.datasets import load_dataset  # noqa: E402
from runtime.runs import create_run  # noqa: E402
from runtime.store import METRICS_FILE, read_records  # noqa: E402
from runtime.loop import epoch_order  # noqa: E402
from runtime.trainer import TrainConfig, split_dataset, train_run  # noqa: E402

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"
NEVER = 10**9


class HandLeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.f5 = nn.Linear(400, 120)
        self.f6 = nn.Linear(120, 84)
        self.logits = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        x = F.relu(self.f5(x.flatten(1)))
        return self.logits(F.relu(self.f6(x)))


class HandTokenEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 32)
        self.local = nn.Conv1d(32, 32, 3, padding="same")
        self.encoder = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        self.head = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.local(self.embed(x).transpose(1, 2)).transpose(1, 2)
        return self.head(self.encoder(x).mean(dim=1))


class HandGPTBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x)), as in nanoGPT."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_a = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_b = nn.LayerNorm(width)
        self.expand = nn.Linear(width, 4 * width)
        self.project = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm_a(x)
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.project(F.gelu(self.expand(self.norm_b(x))))


class HandGPTMini(nn.Module):
    """The gpt_mini template written by hand: characters in, next-character scores out."""

    def __init__(self, vocab: int = 31, width: int = 64, length: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.blocks = nn.ModuleList(HandGPTBlock(width, 4) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.size(1)
        x = self.embed(ids) + self.position[:length]
        mask = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


class HandGenerator(nn.Module):
    """The dcgan_digits template's generator, by hand: noise [32] -> image [1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(32, 512)
        self.norm1 = nn.BatchNorm2d(128)
        self.up1 = nn.ConvTranspose2d(128, 64, 4, 2, 1)
        self.norm2 = nn.BatchNorm2d(64)
        self.up2 = nn.ConvTranspose2d(64, 1, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.project(z).reshape(-1, 128, 2, 2)))
        return torch.sigmoid(self.up2(F.relu(self.norm2(self.up1(x)))))


class HandDiscriminator(nn.Module):
    """The dcgan_digits template's discriminator, by hand: image -> one logit."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(1, 64, 4, 2, 1)
        self.down2 = nn.Conv2d(64, 128, 4, 2, 1)
        self.norm = nn.BatchNorm2d(128)
        self.score = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.down1(x), 0.2)
        x = F.leaky_relu(self.norm(self.down2(x)), 0.2)
        return self.score(x.flatten(1))


def hand_gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    x: torch.Tensor,
    noise_shape: tuple[int, ...],
) -> torch.Tensor:
    """One hand-written DCGAN step (non-saturating loss): D, then G; returns both losses' sum."""
    bce = F.binary_cross_entropy_with_logits
    fake = generator(torch.randn(len(x), *noise_shape, device=x.device))
    real_scores, fake_scores = discriminator(x), discriminator(fake.detach())
    d_loss = bce(real_scores, torch.ones_like(real_scores)) + bce(
        fake_scores, torch.zeros_like(fake_scores)
    )
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    fooled = discriminator(fake)
    g_loss = bce(fooled, torch.ones_like(fooled))
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    return d_loss + g_loss


def hand_gan_loop(config: TrainConfig, device: torch.device) -> list[float]:
    """A hand-written DCGAN loop (non-saturating loss): seconds of each epoch after the first."""
    real = load_dataset("digits").x.to(device)
    torch.manual_seed(config.seed)
    generator, discriminator = HandGenerator().to(device), HandDiscriminator().to(device)
    g_opt = torch.optim.Adam(generator.parameters(), config.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), config.lr, betas=(0.5, 0.999))
    size = config.batch_size
    ends = [time.perf_counter()]
    for epoch in range(config.epochs):
        order = epoch_order(config.seed, epoch, len(real)).to(device)
        for start in range(0, len(order), size):  # 1,797 = 28 x 64 + 5: as ours
            x = real[order[start : start + size]]
            losses = hand_gan_step(generator, discriminator, g_opt, d_opt, x, (32,))
        float(losses.detach())  # wait for the device, as ours does at its flush
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]


def measure_gan(runs: Path, device: str, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of the DCGAN template against the hand-written loop, interleaved."""
    config = TrainConfig(dataset="digits", epochs=4, batch_size=64, lr=5e-4, device=device)
    graph = load_graph((TEMPLATES / "dcgan_digits.json").read_text())
    steps = math.ceil(len(load_dataset("digits")) / config.batch_size)
    variants: dict[str, Callable[[], list[float]]] = {
        "baseline": partial(hand_gan_loop, config, torch.device(device)),
        "ours": partial(gan_loop, config, runs, graph),
    }
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name] += [seconds / steps for seconds in run()]
    return times


def gan_loop(config: TrainConfig, runs: Path, graph: Graph) -> list[float]:
    """Ours (samples every few seconds, as always): seconds of each epoch after the first."""
    folder = create_run(runs, graph, config)
    result = train_run(folder)
    assert result.status == "completed", result.message
    ends = [r["time"] for r in all_records(folder / METRICS_FILE) if r["kind"] == "epoch"]
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def all_records(path: Path) -> list[dict]:
    """Every record of a run, read offset by offset (one read returns at most 4 MB, and a run
    with attention maps on every step writes more)."""
    records, offset = [], 0
    while True:
        more, next_offset = read_records(path, offset)
        records += more
        if next_offset == offset:
            return records
        offset = next_offset


@dataclass(frozen=True)
class Case:
    name: str
    template: str
    hand: Callable[[], nn.Module]
    config: TrainConfig
    input_shape: tuple[int, ...] = ()  # the text task's length


def cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One label per sample, or one per position for a language model's [B, T, V] scores."""
    return F.cross_entropy(scores.flatten(0, -2), labels.flatten())


def hand_loop(case: Case, device: torch.device, amp: bool) -> list[float]:
    """The baseline: seconds of each epoch after the first, validation pass included."""
    config = case.config
    data = load_dataset(config.dataset, config.seed, case.input_shape)
    split = split_dataset(data, config, device, data.dtype)
    torch.manual_seed(config.seed)
    model = case.hand().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if amp else nullcontext
    size = config.batch_size
    ends = [time.perf_counter()]
    for epoch in range(config.epochs):
        order = epoch_order(config.seed, epoch, len(split.x_train)).to(device)
        for start in range(0, len(order), size):
            index = order[start : start + size]
            with autocast():
                loss = cross_entropy(model(split.x_train[index]), split.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad(), autocast():
            total = sum(
                cross_entropy(model(split.x_val[i : i + size]), split.y_val[i : i + size])
                * len(split.x_val[i : i + size])
                for i in range(0, len(split.x_val), size)
            )
        model.train()
        float(total)
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]


def our_loop(case: Case, runs: Path, graph: Graph, **changes: object) -> list[float]:
    """Ours: seconds of each epoch after the first, from the run's own epoch records."""
    folder = create_run(runs, graph, case.config.model_copy(update=changes))
    result = train_run(folder)
    assert result.status == "completed", result.message
    ends = [r["time"] for r in all_records(folder / METRICS_FILE) if r["kind"] == "epoch"]
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def cases(device: str, amp: bool) -> list[Case]:
    common = dict(device=device, amp=amp, batch_size=64, lr=1e-3)
    return [
        Case(
            "LeNet-5 / digits-28",
            "lenet5",
            HandLeNet5,
            TrainConfig(dataset="digits-28", epochs=4, **common),
        ),
        Case(
            "Transformer / tokens",
            "transformer_encoder",
            HandTokenEncoder,
            TrainConfig(dataset="tokens", epochs=3, **common),
        ),
        Case(
            "GPT-mini / text",
            "gpt_mini",
            HandGPTMini,
            TrainConfig(dataset="text", epochs=3, **common),
            input_shape=(64,),
        ),
    ]


def measure(case: Case, runs: Path, amp: bool, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one value per timed epoch, variants interleaved."""
    device = torch.device(case.config.device)
    graph = load_graph((TEMPLATES / f"{case.template}.json").read_text())
    variants: dict[str, Callable[[], list[float]]] = {
        "baseline": partial(hand_loop, case, device, amp),
        "ours": partial(our_loop, case, runs, graph, report_every=NEVER, attention_every=NEVER),
        "instrumented": partial(
            our_loop, case, runs, graph, report_every=1, health_every=10, attention_every=50
        ),
        "all_every_step": partial(
            our_loop, case, runs, graph, report_every=1, health_every=1, attention_every=1
        ),
    }
    data = load_dataset(case.config.dataset, input_shape=case.input_shape)
    train_size = len(data) - round(len(data) * case.config.val_fraction)
    steps = math.ceil(train_size / case.config.batch_size)  # per epoch
    for run in variants.values():
        run()  # warm-up: kernels, allocator, first-call costs
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name] += [seconds / steps for seconds in run()]
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {args.device}, amp {args.amp}, {threads} CPU threads")
    header = f"{'case':<22} {'variant':<15} {'best ms/step':>12} {'median':>8} {'samples/s':>10}"
    print(f"{header} {'ratio best':>10} {'ratio median':>12}")
    with tempfile.TemporaryDirectory() as runs_dir:
        for case in cases(args.device, args.amp):
            if args.only and args.only.lower() not in case.name.lower():
                continue
            times = measure(case, Path(runs_dir), args.amp, args.repeats)
            report(case.name, times, case.config.batch_size)
        if not args.only or args.only.lower() in "dcgan / digits":
            report("DCGAN / digits", measure_gan(Path(runs_dir), args.device, args.repeats), 64)


def report(name: str, times: dict[str, list[float]], batch_size: int) -> None:
    """One line per variant: best and median ms per step, and both ratios to the baseline."""
    base, base_median = min(times["baseline"]), statistics.median(times["baseline"])
    for variant, values in times.items():
        best, median = min(values), statistics.median(values)
        print(
            f"{name:<22} {variant:<15} {best * 1000:>12.3f} {median * 1000:>8.3f}"
            f" {batch_size / best:>10.0f} {best / base:>10.3f} {median / base_median:>12.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
