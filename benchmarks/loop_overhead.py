"""What a step pays besides the model: the app's step (loop.py's step and run.py's per-batch hook,
as the Trainer or GanTrainer runs them, writing their records) against a hand-written step on the
same model and batches, interleaved in one process.

The epoch-level benchmark (train_speed.py) adds validation, checkpoints and whole runs; this one
isolates the step, so that its ratio stays readable on a busy machine. Medians of interleaved
rounds (each variant's place in the round turns, so none always goes first).
Run: .venv/bin/python benchmarks/loop_overhead.py [--template lenet5 --dataset digits-28]
     [--clock cpu --threads 1]  (CPU seconds: steadier than the wall clock on a busy machine)
     .venv/bin/python benchmarks/loop_overhead.py --template dcgan_digits --dataset digits
Targets (issue 23): ours / baseline <= 1.03, instrumented / baseline <= 1.05 (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import load_graph  # noqa: E402
from compiler import analyse, generate_source  # noqa: E402
from compiler.gan import discriminator_graph, end_node  # noqa: E402
from runtime import store  # noqa: E402
from runtime.datasets import load_dataset  # noqa: E402
from runtime.gan import GanTrainer  # noqa: E402
from runtime.loop import GanLoop, split  # noqa: E402
from runtime.trainer import TrainConfig, Trainer, load_model_source  # noqa: E402
from train_speed import hand_gan_step  # noqa: E402  (benchmarks/, this script's folder)

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"
NEVER = 10**9
Step = Callable[[torch.Tensor], None]


def run_folder(runs: Path) -> Path:
    """A folder the trainer writes its metrics and status into, as a run's."""
    folder = Path(tempfile.mkdtemp(dir=runs))
    store.write_json(folder / store.STATUS_FILE, {"status": "running"})
    return folder


def fresh(source: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model_source(source)


def model_variants(graph, args, runs: Path) -> tuple[dict[str, Step], int]:
    """A model's hand step, and the Trainer's step and per-batch hook, bare and instrumented."""
    analysis = analyse(graph)
    source = generate_source(analysis)
    shape = tuple(next(analysis.infos[n.id].shape for n in graph.nodes if n.type == "Input"))
    data = load_dataset(args.dataset, input_shape=shape)
    x = data.x.to(torch.int64 if data.dtype == "int64" else torch.float32)

    def trainer(**instruments: int) -> Step:
        config = TrainConfig(dataset=args.dataset, batch_size=64, device="cpu", **instruments)
        model = fresh(source)
        run = Trainer(
            run_folder(runs), config, analysis, model, split(x, data.y, config), torch.device("cpu"),
            threading.Event(),
        )  # fmt: skip

        def step(index: torch.Tensor) -> None:
            run.loop.step(index)
            run.after_batch(run.progress)

        return step

    config = TrainConfig(dataset=args.dataset, batch_size=64)
    parts = split(x, data.y, config)
    hand_model = fresh(source)
    hand_opt = torch.optim.Adam(hand_model.parameters(), lr=config.lr)

    def hand_step(index: torch.Tensor) -> None:
        out = hand_model(parts.x_train[index])
        loss = F.cross_entropy(out.flatten(0, -2), parts.y_train[index].flatten())
        hand_opt.zero_grad(set_to_none=True)
        loss.backward()
        hand_opt.step()

    variants = {
        "baseline": hand_step,
        "ours": trainer(report_every=NEVER, attention_every=NEVER),
        "instrumented": trainer(report_every=1, health_every=10, attention_every=50),
    }
    return variants, len(parts.x_train)


def gan_variants(graph, args, runs: Path) -> tuple[dict[str, Step], int]:
    """A GAN's hand step (DCGAN's, as train_speed.py's baseline) and the GanTrainer's."""
    generator_analysis = analyse(graph)
    g_source = generate_source(generator_analysis)
    d_source = generate_source(analyse(discriminator_graph(graph)))
    noise = tuple(generator_analysis.infos[end_node(generator_analysis, "Input")].shape or ())
    real = load_dataset(args.dataset).x.float()
    config = TrainConfig(dataset=args.dataset, batch_size=64, lr=5e-4, device="cpu")
    loop = GanLoop(fresh(g_source), fresh(d_source), real, config, noise)
    run = GanTrainer(run_folder(runs), config, loop, threading.Event())

    def ours(index: torch.Tensor) -> None:
        run.loop.step(index)
        run.after_batch(run.progress)

    generator, discriminator = fresh(g_source), fresh(d_source)
    g_opt = torch.optim.Adam(generator.parameters(), config.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), config.lr, betas=(0.5, 0.999))

    def hand_step(index: torch.Tensor) -> None:
        hand_gan_step(generator, discriminator, g_opt, d_opt, real[index], noise)

    return {"baseline": hand_step, "ours": ours}, len(real)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--template", default="lenet5")
    parser.add_argument("--dataset", default="digits-28")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU seconds, which other programs on a busy machine disturb far"
        " less than the wall clock",
    )
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    graph = load_graph((TEMPLATES / f"{args.template}.json").read_text())
    with tempfile.TemporaryDirectory() as runs:
        pair = discriminator_graph(graph) is not None
        make = gan_variants if pair else model_variants
        variants, samples = make(graph, args, Path(runs))
        batches = [torch.randperm(samples)[:64] for _ in range(args.steps)]
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.rounds + 1):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                started = clock()
                for index in batches:
                    variants[name](index)
                if round_:  # the first round warms up
                    times[name].append((clock() - started) / len(batches))
    base = statistics.median(times["baseline"])
    threads = torch.get_num_threads()
    print(f"{args.template}, {threads} threads, {args.rounds} rounds, {args.clock} clock")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<14} median {median * 1000:8.2f} ms/step   ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
