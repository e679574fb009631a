"""The shared loop's own cost per step: Loop.step (with and without the app's instruments) against
a hand-written step on the same model and batches, interleaved in one process, no files written.

The epoch-level benchmark (train_speed.py) includes checkpoints and metrics; this one isolates the
loop, so that its ratio stays readable on a busy machine. Medians of interleaved rounds.
Run: .venv/bin/python benchmarks/loop_overhead.py [--template gpt_mini --dataset text --rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.graph import load_graph  # noqa: E402
from compiler import analyse, generate_source  # noqa: E402
from runtime.datasets import load_dataset  # noqa: E402
from runtime.loop import Hooks, Loop, make_optimizer, split  # noqa: E402
from runtime.metrics import grad_norm_probe  # noqa: E402
from runtime.trainer import TrainConfig, load_model_source, module_attributes  # noqa: E402

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"


class GradNorms(Hooks):
    """The trainer's per-step instrument: gradient norms of every layer, kept on the device."""

    def __init__(self, probe) -> None:
        self.probe, self.kept = probe, []

    def after_backward(self, step: int) -> None:
        self.kept.append(self.probe.measure())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--template", default="gpt_mini")
    parser.add_argument("--dataset", default="text")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    args = parser.parse_args()
    graph = load_graph((TEMPLATES / f"{args.template}.json").read_text())
    analysis = analyse(graph)
    source = generate_source(analysis)
    shape = next(analysis.infos[n.id].shape for n in graph.nodes if n.type == "Input")
    config = TrainConfig(dataset=args.dataset, batch_size=64, device="cpu")
    data = load_dataset(args.dataset, input_shape=tuple(shape))
    x = data.x.to(torch.int64 if data.dtype == "int64" else torch.float32)
    parts = split(x, data.y, config)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return load_model_source(source)

    hand_model, ours_model, watched_model = fresh(), fresh(), fresh()
    hand_opt = torch.optim.Adam(hand_model.parameters(), lr=config.lr)
    ours = Loop(
        ours_model, make_optimizer(config, list(ours_model.parameters())), parts, config, "auto"
    )
    probe = grad_norm_probe(watched_model, module_attributes(analysis))
    watched = Loop(
        watched_model,
        make_optimizer(config, list(watched_model.parameters())),
        parts,
        config,
        "auto",
        hooks=GradNorms(probe),
    )
    batches = [torch.randperm(len(parts.x_train))[:64] for _ in range(args.steps)]

    def hand_step(index: torch.Tensor) -> None:
        out = hand_model(parts.x_train[index])
        loss = F.cross_entropy(out.flatten(0, -2), parts.y_train[index].flatten())
        hand_opt.zero_grad(set_to_none=True)
        loss.backward()
        hand_opt.step()

    variants = {"baseline": hand_step, "ours": ours.step, "grad norms every step": watched.step}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.rounds + 1):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]  # no fixed position
        for name in order:
            step = variants[name]
            started = time.perf_counter()
            for index in batches:
                step(index)
            if round_:  # the first round warms up
                times[name].append((time.perf_counter() - started) / len(batches))
    base = statistics.median(times["baseline"])
    print(f"{args.template}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} median {median * 1000:8.2f} ms/step   ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
