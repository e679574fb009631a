"""What a person watches while a model learns, measured on the device without slowing training.

Each instrument maps the generated module's attributes back to the graph's node ids, keeps its
results as device tensors, and leaves it to the trainer to move them to the host once per report.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from builder.catalog import ATTENTION_TYPES

DEAD_UNIT_TYPES = frozenset({"ReLU", "LeakyReLU"})
# An attention map as recorded: at most this many heads, each at most this many positions a side
# (longer sequences are averaged in blocks), its weights rounded to this many decimals.
MAX_ATTENTION_HEADS = 8
MAX_ATTENTION_SIZE = 64
ATTENTION_DECIMALS = 4


@dataclass
class GradNormProbe:
    """Per-node gradient L2 norms: sqrt of the sum of squared norms of the node's parameters.

    Each report costs one fused norm over all gradients; the per-node sums wait for the flush.
    """

    nodes: list[str]
    parameters: list[nn.Parameter]
    owner: torch.Tensor  # index into nodes, one entry per parameter

    def measure(self) -> torch.Tensor:
        """Each parameter's gradient norm, [parameters] on the device (no gradient: zero)."""
        grads = [p.grad if p.grad is not None else p.new_zeros(()) for p in self.parameters]
        return torch.stack(torch._foreach_norm(grads))  # what clip_grad_norm_ uses

    def per_node(self, measured: list[torch.Tensor]) -> list[list[float]]:
        """Per-node norms for several reports, moved to the host in one transfer."""
        squares = torch.stack(measured).float().square()
        totals = squares.new_zeros(len(measured), len(self.nodes))
        return totals.index_add_(1, self.owner, squares).sqrt().tolist()


def grad_norm_probe(model: nn.Module, modules: dict[str, str]) -> GradNormProbe:
    """Probe for every node (id -> attribute name) that has trainable parameters."""
    nodes: list[str] = []
    parameters: list[nn.Parameter] = []
    owner: list[int] = []
    for node_id, attribute in modules.items():
        own = [p for p in getattr(model, attribute).parameters() if p.requires_grad]
        if own:
            owner += [len(nodes)] * len(own)
            nodes.append(node_id)
            parameters += own
    device = parameters[0].device if parameters else torch.device("cpu")
    return GradNormProbe(nodes, parameters, torch.tensor(owner, dtype=torch.long, device=device))


@dataclass
class ActivationProbe:
    """Forward hooks that watch ReLU-family outputs (dead units) and find non-finite outputs."""

    modules: dict[str, nn.Module]
    dead_nodes: frozenset[str]

    @contextmanager
    def watching(self, find_nonfinite: bool = False) -> Iterator[ActivationReading]:
        reading = ActivationReading({}, [])

        def hook(node_id: str):
            def observe(module: nn.Module, args: object, output: object) -> None:
                if not isinstance(output, torch.Tensor):
                    output = output[0] if isinstance(output, tuple) else None
                if output is None:
                    return
                if node_id in self.dead_nodes:
                    reading.peaks[node_id] = output.detach().flatten(1).amax(dim=0)
                if find_nonfinite:
                    reading.finite.append((node_id, torch.isfinite(output.detach()).all()))

            return observe

        watched = self.modules if find_nonfinite else {n: self.modules[n] for n in self.dead_nodes}
        handles = [m.register_forward_hook(hook(n)) for n, m in watched.items()]
        try:
            yield reading
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class ActivationReading:
    peaks: dict[str, torch.Tensor]  # each unit's largest output over the batch
    finite: list[tuple[str, torch.Tensor]]  # in the order the nodes ran

    def dead_fractions(self) -> dict[str, float]:
        """Per node, the share of units that were never positive for any sample of the batch."""
        if not self.peaks:
            return {}
        dead = torch.stack([(peak <= 0).float().mean() for peak in self.peaks.values()])
        return dict(zip(self.peaks, dead.tolist(), strict=True))

    def first_nonfinite(self) -> str | None:
        if not self.finite:
            return None
        flags = torch.stack([flag for _, flag in self.finite]).tolist()
        return next(
            (node for (node, _), ok in zip(self.finite, flags, strict=True) if not ok), None
        )


def activation_probe(
    model: nn.Module, modules: dict[str, str], types: dict[str, str]
) -> ActivationProbe:
    instances = {node_id: getattr(model, attribute) for node_id, attribute in modules.items()}
    dead = frozenset(n for n in modules if types[n] in DEAD_UNIT_TYPES)
    return ActivationProbe(instances, dead)


def attention_layers(
    model: nn.Module, modules: dict[str, str], types: dict[str, str]
) -> dict[str, nn.Module]:
    """The attention module of each attention node (the catalog's ATTENTION_TYPES; an encoder
    layer's is its self_attn; a WindowAttention is its own)."""
    layers = {}
    for node_id, attribute in modules.items():
        if types[node_id] in ATTENTION_TYPES:
            module = getattr(model, attribute)
            layers[node_id] = getattr(module, "self_attn", module)
    return layers


def cut_to_budget(maps: torch.Tensor, count: int, side: int) -> torch.Tensor:
    """Maps [N, H, W] cut before they leave the device: the first `count`, each averaged in
    blocks to at most `side` a side (what a heat map can show), so a record's size never grows
    with the model."""
    kept = maps[:count].float()
    size = (min(kept.shape[-2], side), min(kept.shape[-1], side))
    return kept if size == tuple(kept.shape[-2:]) else F.adaptive_avg_pool2d(kept, size)


def rounded_lists(maps: torch.Tensor, decimals: int) -> list:
    """Recorded maps as JSON-ready nested lists, rounded so each value is a few characters."""
    return maps.double().round(decimals=decimals).tolist()


def downsample_attention(weights: torch.Tensor) -> torch.Tensor:
    """A map [heads, T, S]: the first heads, at most MAX_ATTENTION_SIZE a side."""
    return cut_to_budget(weights, MAX_ATTENTION_HEADS, MAX_ATTENTION_SIZE)


def attention_lists(weights: torch.Tensor) -> list:
    return rounded_lists(weights, ATTENTION_DECIMALS)


def run_hooked(model: nn.Module, handles: list, example: torch.Tensor) -> None:
    """One forward pass in eval mode for the hooks behind `handles`, which are removed after;
    the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def capture_attention(
    model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Attention weights [heads, T, T] of each layer for one example (batch of 1), in eval mode,
    cut to the recorded budget (downsample_attention) as soon as they are computed.

    The generated code asks for no weights (it is faster), so each layer's call is repeated
    with need_weights=True from a forward hook. Gradients stay enabled because PyTorch's fused
    inference path for encoder layers would skip the hooked attention module altogether.

    A WindowAttention (Swin) computes its weights itself, [windows, heads, N, N] going into its
    attention_dropout: the first window's are kept (the map's top-left window, shifted windows
    rolled as the layer rolls them).
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(node_id: str):
        def observe(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: object):
            options = kwargs | {"need_weights": True, "average_attn_weights": False}
            _, weights = module.forward(*args, **options)
            captured[node_id] = downsample_attention(weights[0].detach())

        return observe

    def window_hook(node_id: str):
        def observe(dropout: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[node_id] = downsample_attention(output[0].detach())

        return observe

    handles = [
        (
            layer.register_forward_hook(hook(node_id), with_kwargs=True)
            if isinstance(layer, nn.MultiheadAttention)
            else layer.attention_dropout.register_forward_hook(window_hook(node_id))
        )
        for node_id, layer in layers.items()
    ]
    run_hooked(model, handles, example)
    return captured


# ---------------------------------------------------------------------------------------------
# What each convolution sees: feature maps for the run's fixed sample

# Recorded like the attention maps: the first few channels, each at most this many a side
# (larger maps are averaged in blocks), rounded to this many decimals.
FEATURE_MAP_TYPES = frozenset({"Conv2d", "ConvTranspose2d"})
MAX_FEATURE_CHANNELS = 8
MAX_FEATURE_SIZE = 64
FEATURE_DECIMALS = 3


def feature_map_layers(
    model: nn.Module, modules: dict[str, str], types: dict[str, str]
) -> dict[str, nn.Module]:
    """The module of each 2-d convolution node, whose outputs are images a person can read."""
    return {
        node_id: getattr(model, attribute)
        for node_id, attribute in modules.items()
        if types[node_id] in FEATURE_MAP_TYPES
    }


def downsample_feature_maps(maps: torch.Tensor) -> torch.Tensor:
    """Maps [C, H, W]: the first channels, at most MAX_FEATURE_SIZE a side."""
    return cut_to_budget(maps, MAX_FEATURE_CHANNELS, MAX_FEATURE_SIZE)


def feature_map_lists(maps: torch.Tensor) -> list:
    return rounded_lists(maps, FEATURE_DECIMALS)


@torch.no_grad()
def capture_feature_maps(
    model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each convolution's output [C, H, W] for one example (a batch of 1), in eval mode, cut to
    the recorded budget as soon as it is computed."""
    captured: dict[str, torch.Tensor] = {}

    def hook(node_id: str):
        def observe(module: nn.Module, args: object, output: torch.Tensor) -> None:
            captured[node_id] = downsample_feature_maps(output[0].detach())

        return observe

    handles = [layer.register_forward_hook(hook(node_id)) for node_id, layer in layers.items()]
    run_hooked(model, handles, example)
    return captured


# ---------------------------------------------------------------------------------------------
# Samples from a trained model: generated text and reconstructions


@torch.no_grad()
def generate_text(
    model: nn.Module,
    prompt: str,
    length: int,
    context: int,
    temperature: float = 1.0,
    seed: int = 0,
    alphabet: str | None = None,
) -> str:
    """`length` characters that a next-character model writes after `prompt`, one at a time.

    The model reads a fixed window of `context` characters (its Input's T): the prompt and what
    it wrote so far, from position 0 (padded with spaces after it, which a causal model cannot
    see), and the scores at the last written position pick the next character: sampled at
    `temperature`, or the likeliest at 0. Once the window is full it slides along. `alphabet`
    is an uploaded text's vocabulary (None: the built-in text task's).
    """
    from runtime.builtin_data import TEXT_ALPHABET, decode, decode_text, encode, encode_text

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if alphabet is None:
        ids = encode(prompt).tolist() or [TEXT_ALPHABET.index("\n")]
        space = TEXT_ALPHABET.index(" ")
    else:
        ids = encode_text(prompt, alphabet).tolist() or [max(0, alphabet.find("\n"))]
        space = max(0, alphabet.find(" "))
    was_training = model.training
    model.eval()
    written: list[int] = []
    try:
        for _ in range(length):
            window = (ids + written)[-context:]
            last = len(window) - 1
            window = window + [space] * (context - len(window))
            scores = model(torch.tensor([window], device=device))[0, last].float()
            if temperature <= 0:
                written.append(int(scores.argmax()))
            else:
                probabilities = torch.softmax(scores / temperature, dim=-1)
                written.append(int(torch.multinomial(probabilities, 1, generator=generator)))
    finally:
        model.train(was_training)
    return decode(written) if alphabet is None else decode_text(written, alphabet)


@torch.no_grad()
def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs for samples `x` in eval mode, on the host."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return model(x.to(device)).float().cpu()
    finally:
        model.train(was_training)
