"""How much memory a model needs, estimated from its analysis before anything is built. Pure.

PyTorch allocates every parameter when a model is constructed, so a model that cannot fit must be
refused from these figures, never discovered by the allocator. Parameters are float32; a training
step also holds one gradient per parameter, the optimizer's state (Adam keeps two more copies),
and the forward activations that backward needs, for every sample of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from builder.catalog import VIEW_TYPES
from builder.graph import Graph
from compiler.analysis import Analysis, Diagnostic
from i18n import Message, msg

PARAMETER_BYTES = 4  # float32
DTYPE_BYTES = {"float32": 4, "int64": 8}
# Per-parameter copies each optimizer keeps besides the gradient: momentum buffers, Adam's moments.
OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2, "rmsprop": 1}
# `python -m compiler check` calls a model whose parameters alone exceed this an error.
DEFAULT_PARAMETER_BUDGET = 16 * 10**9


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory a model needs: parameters, activations per sample, and a training step."""

    parameters: int
    parameter_bytes: int
    activation_bytes_per_sample: int
    batch_size: int
    optimizer: str

    @property
    def gradient_bytes(self) -> int:
        return self.parameter_bytes

    @property
    def optimizer_bytes(self) -> int:
        return OPTIMIZER_COPIES.get(self.optimizer, 2) * self.parameter_bytes

    @property
    def activation_bytes(self) -> int:
        """The forward activations of a whole batch, kept until backward has used them."""
        return self.activation_bytes_per_sample * self.batch_size

    @property
    def weights_and_state_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes

    @property
    def training_bytes(self) -> int:
        """One training step at this batch size: weights, gradients, optimizer state, activations."""
        return self.weights_and_state_bytes + self.activation_bytes

    def to_json(self) -> dict[str, int | str]:
        return {
            "parameter_bytes": self.parameter_bytes,
            "activation_bytes_per_sample": self.activation_bytes_per_sample,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "training_bytes": self.training_bytes,
        }


def estimate_memory(
    graph: Graph, analysis: Analysis, batch_size: int = 64, optimizer: str = "adam"
) -> MemoryEstimate:
    """Parameter and activation memory of the graph's model (its live nodes with known shapes)."""
    parameters = analysis.total_params
    activations = 0
    for node_id in analysis.order:
        info = analysis.infos.get(node_id)
        if node_id not in analysis.live or info is None or info.shape is None:
            continue
        if graph.node(node_id).type in VIEW_TYPES:  # a view of its input: nothing new kept
            continue
        activations += _numel(info.shape) * DTYPE_BYTES.get(info.dtype or "float32", 4)
    return MemoryEstimate(
        parameters=parameters,
        parameter_bytes=parameters * PARAMETER_BYTES,
        activation_bytes_per_sample=activations,
        batch_size=batch_size,
        optimizer=optimizer,
    )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def format_bytes(count: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks and `free` print them)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def over_parameter_budget(
    estimate: MemoryEstimate, budget: int = DEFAULT_PARAMETER_BUDGET
) -> Message | None:
    """An error when the parameters alone exceed the budget; None when they fit."""
    if estimate.parameter_bytes <= budget:
        return None
    return msg(
        "the model needs {need} for parameters alone ({count} parameters), over the budget of"
        " {budget}; make the largest layers smaller",
        need=format_bytes(estimate.parameter_bytes),
        count=format(estimate.parameters, ","),
        budget=format_bytes(budget),
    )


def for_a_gan_step(generator: MemoryEstimate, discriminator: MemoryEstimate) -> MemoryEstimate:
    """A GAN's training step holds both players, and the discriminator sees a real and a
    generated batch: their memory adds up."""
    return replace(
        generator,
        parameters=generator.parameters + discriminator.parameters,
        parameter_bytes=generator.parameter_bytes + discriminator.parameter_bytes,
        activation_bytes_per_sample=generator.activation_bytes_per_sample
        + 2 * discriminator.activation_bytes_per_sample,
    )


def does_not_fit(estimate: MemoryEstimate, device: str, available: int) -> Message | None:
    """A refusal naming both figures when a training step needs more than is available."""
    if estimate.training_bytes <= available:
        return None
    return msg(
        "the model needs {need} to train at batch size {batch} ({weights} of it for parameters,"
        " gradients and optimizer state), but {device} has only {available} available; make the"
        " model or the batch smaller",
        need=format_bytes(estimate.training_bytes),
        batch=estimate.batch_size,
        weights=format_bytes(estimate.weights_and_state_bytes),
        device=device,
        available=format_bytes(available),
    )


def budget_diagnostic(
    graph: Graph, analysis: Analysis, budget: int = DEFAULT_PARAMETER_BUDGET
) -> Diagnostic | None:
    """The over-budget error for `compiler check`, on the layer holding the most parameters."""
    problem = over_parameter_budget(estimate_memory(graph, analysis), budget)
    if problem is None:
        return None
    counted = [n for n in analysis.order if n in analysis.live and analysis.infos[n].params]
    largest = max(counted, key=lambda n: analysis.infos[n].params or 0, default=None)
    return Diagnostic(largest, problem)
