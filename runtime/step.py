"""One training step of a person's own network, number by number: what each node outputs, the
loss, the gradient that reaches each node and weight, and how the optimizer moves each weight.

The step is the trainer's step, not a second implementation of it: the model is the generated
model.py built the way the runtime builds it (seeded, then optionally loaded from a run's weights),
the loss is runtime/loop.py's `compute_loss` for the Output's loss, and the optimizer is
`make_optimizer`. The "explain" functions write a formula out with this step's numbers for one
picked element; every number they start from is torch's (the recorded outputs and gradients,
the optimizer's own state after its step), and each says what torch computed beside what the
formula gives, so a reader (and tests/test_step.py) can see they agree.

Dropout masks and the noise of a VAE's Reparameterize layers come from the seed:
`torch.manual_seed(seed)` is set right before the forward pass (and again before the forward pass
that measures the loss after the step), so a check that seeds the same way before `model(x)` in
train mode draws the same masks and noise, and the same step taken again is the same step.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compiler.analysis import Analysis, loss_of
from compiler.codegen import attribute_names, generate_source
from i18n import Message, msg, render
from runtime import store
from runtime.datasets import Dataset
from runtime.loop import compute_loss, has_batch_statistics, make_optimizer, resolved_loss
from runtime.settings import TrainConfig
from runtime.trainer import CheckpointError, load_checkpoint, load_model_source

FIRST_VALUES = 64  # values of the first sample (or of a parameter) that step.json keeps
MAX_INPUT_VALUES = 65_536  # the batch's input values step.json keeps in full
SHOWN_TERMS = 8  # terms of a long sum written out one by one; the rest are summed


class StepError(ValueError):
    """A step that cannot be taken (a bad index, batch or checkpoint): `detail` is the sentence."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


@dataclass
class NodeTrace:
    """One node in this step: its type, its output for the whole batch and dL/d(output)."""

    type: str
    shape: tuple[int, ...]  # per sample
    output: torch.Tensor
    grad: torch.Tensor | None  # None where no gradient reaches it (int64 ids, a cut branch)


@dataclass
class StepRecord:
    """Everything one step computed, detached and on the CPU."""

    x: torch.Tensor
    y: torch.Tensor
    loss_name: str  # resolved (never "auto")
    label_smoothing: float
    loss_before: float
    loss_after: float
    output: torch.Tensor  # the model's output, [B, ...]
    nodes: dict[str, NodeTrace]  # in the order forward computes them
    inputs: dict[str, list[str]]  # node id -> the ids it reads
    attributes: dict[str, str]  # node id -> module attribute (module nodes only)
    modules: dict[str, nn.Module]  # node id -> its module (its settings, not its weights)
    before: dict[str, torch.Tensor]  # the state_dict before the step
    after: dict[str, torch.Tensor]  # and after it
    grads: dict[str, torch.Tensor | None]  # parameter name -> dL/dw
    optimizer: str
    hyperparameters: dict[str, Any]  # the optimizer's param group (everything it used)
    optimizer_state: dict[str, dict[str, torch.Tensor]]  # parameter name -> torch's state
    seed: int
    source: str  # the model.py it ran
    optimizer_saved: dict[str, Any] = field(default_factory=dict)  # for the next step's resume

    def parameters_of(self, node_id: str) -> list[str]:
        """The state_dict names of a node's trainable parameters."""
        attribute = self.attributes.get(node_id)
        if attribute is None:
            return []
        return [name for name in self.grads if name.startswith(f"{attribute}.")]


# ---------------------------------------------------------------------------------------------
# Taking the step


def build_model(
    source: str, seed: int, weights: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """The generated model, built as the trainer builds it (seeded first, so the same seed gives
    the same first weights as a run), then loaded with `weights` where given."""
    torch.manual_seed(seed)
    model = load_model_source(source)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "?"
            raise StepError(
                msg("the checkpoint does not fit this graph ({reason})", reason=reason)
            ) from None
    return model


def optimizer_settings(optimizer: str, lr: float, weight_decay: float = 0.0) -> TrainConfig:
    """The settings make_optimizer reads (validated: a bad lr is refused here, not by torch)."""
    return TrainConfig(optimizer=optimizer, lr=lr, weight_decay=weight_decay)


def take_step(
    analysis: Analysis,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainConfig,
    weights: dict[str, torch.Tensor] | None = None,
    resume: dict[str, Any] | None = None,
) -> StepRecord:
    """One training step on the batch (x, y) in train mode, from the seed's first weights or
    from `weights`: forward, loss, backward, the optimizer's step, and the loss after it.
    `resume` is the optimizer's state_dict after an earlier step (momentum, Adam's m and v), so
    a sequence of steps goes on as training does; without it the optimizer starts fresh.

    It runs on one CPU thread: a step on a few samples gains nothing from a second one, and on a
    busy machine two threads wait on each other (LeNet-5, one sample, load 12 on 2 cores: 400 ms
    on two threads, 35 ms on one)."""
    with one_thread():
        return _take_step(analysis, x, y, settings, weights, resume)


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _take_step(
    analysis: Analysis,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainConfig,
    weights: dict[str, torch.Tensor] | None,
    resume: dict[str, Any] | None,
) -> StepRecord:
    source = generate_source(analysis)
    seed = settings.seed
    model = build_model(source, seed, weights)
    if has_batch_statistics(model) and len(x) < 2:
        raise StepError(
            msg(
                "this graph has batch normalisation, which needs at least 2 samples in train"
                " mode; take a batch of 2 or more"
            )
        )
    names = attribute_names(analysis)
    output_params = loss_of(analysis)
    loss_name = resolved_loss(output_params.loss, y)
    if loss_name == "vae":  # a VAE rebuilds its input, as the loop trains it
        y = x.detach().clone().float()
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    optimizer = make_optimizer(settings, list(model.parameters()))
    if resume is not None:
        optimizer.load_state_dict(copy.deepcopy(resume))
    model.train()
    x = x.detach().clone()
    if torch.is_floating_point(x):
        x.requires_grad_(True)  # dL/dx: what the input's numbers contribute
    torch.manual_seed(seed)  # Dropout's masks, Reparameterize's noise
    with _forward_locals(type(model).forward.__code__) as seen:
        out = model(x)
    loss = compute_loss(loss_name, out.float(), y, output_params.label_smoothing, model)
    traced = _node_tensors(analysis, names, seen, x, out)
    for tensor in traced.values():
        if tensor.requires_grad and tensor is not x:
            tensor.retain_grad()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = dict(model.named_parameters())
    grads = {
        name: (p.grad.detach().clone() if p.grad is not None else None)
        for name, p in parameters.items()
    }
    optimizer.step()
    after = {name: value.detach().clone() for name, value in model.state_dict().items()}
    state = {
        name: {
            key: (value.detach().clone() if isinstance(value, torch.Tensor) else value)
            for key, value in optimizer.state.get(p, {}).items()
        }
        for name, p in parameters.items()
    }
    hyperparameters = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    saved = copy.deepcopy(optimizer.state_dict())
    loss_after = _loss_again(model, x, y, loss_name, output_params.label_smoothing, seed)
    nodes = {
        node_id: NodeTrace(
            analysis.node_type(node_id),
            tuple(analysis.infos[node_id].shape or ()),
            tensor.detach().clone(),
            tensor.grad.detach().clone() if tensor.grad is not None else None,
        )
        for node_id, tensor in traced.items()
    }
    modules = {
        node_id: getattr(model, attribute)
        for node_id, attribute in names.items()
        if isinstance(getattr(model, attribute, None), nn.Module)
    }
    return StepRecord(
        x=x.detach(),
        y=y.detach(),
        loss_name=loss_name,
        label_smoothing=output_params.label_smoothing,
        loss_before=float(loss.detach()),
        loss_after=loss_after,
        output=out.detach(),
        nodes=nodes,
        inputs={node_id: list(analysis.inputs[node_id]) for node_id in traced},
        attributes={node_id: names[node_id] for node_id in modules},
        modules=modules,
        before=before,
        after=after,
        grads=grads,
        optimizer=settings.optimizer,
        hyperparameters=hyperparameters,
        optimizer_state=state,
        seed=seed,
        source=source,
        optimizer_saved=saved,
    )


@contextmanager
def _forward_locals(code: types.CodeType) -> Iterator[dict[str, Any]]:
    """The local variables of the generated forward as it returns: one per node, by attribute
    name. Functional nodes (Add, Concat, Permute, SequencePool) have no module to hook, so the
    frame itself is read; any tracer already set (a debugger, coverage) is put back after."""
    seen: dict[str, Any] = {}

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: types.FrameType, event: str, arg: Any) -> Any:
            if event == "return":
                seen.update(frame.f_locals)
            return local

        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield seen
    finally:
        sys.settrace(previous)


def _node_tensors(
    analysis: Analysis,
    names: dict[str, str],
    seen: dict[str, Any],
    x: torch.Tensor,
    out: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Node id -> its output tensor, in forward's order; the Input is x, the Output (and the node
    whose value forward returns directly) is the model's output."""
    traced: dict[str, torch.Tensor] = {}
    output_id = next(n.id for n in analysis.graph.nodes if n.type == "Output")
    last = analysis.inputs[output_id][0]
    for node_id in analysis.order:
        if node_id not in analysis.live:
            continue
        kind = analysis.node_type(node_id)
        if kind == "Input":
            traced[node_id] = x
        elif kind == "Output" or (node_id == last and names.get(node_id) not in seen):
            traced[node_id] = out
        elif isinstance(seen.get(names.get(node_id, "")), torch.Tensor):
            traced[node_id] = seen[names[node_id]]
    return traced


def _loss_again(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, smoothing: float, seed: int
) -> float:
    """The loss on the same samples after the step, in train mode with the same Dropout masks
    (and Reparameterize noise), on a copy (its BatchNorm running statistics must not move a
    second time). A Reparameterize layer's kl from the step's forward pass is kept detached:
    deepcopy takes no tensor inside an autograd graph."""
    for module in model.modules():
        if isinstance(getattr(module, "kl", None), torch.Tensor):
            module.kl = module.kl.detach()
    twin = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(compute_loss(loss, twin(x.detach()).float(), y, smoothing, twin))


# ---------------------------------------------------------------------------------------------
# step.json


def summary(tensor: torch.Tensor | None, first_sample: bool = True) -> dict[str, Any] | None:
    """{"first": up to FIRST_VALUES values (of the first sample, or of the whole tensor), "mean",
    "std"} with the population std (correction 0) over the whole tensor."""
    if tensor is None:
        return None
    values = tensor[0] if first_sample and tensor.dim() > 0 else tensor
    whole = tensor.detach().double()
    return {
        "first": values.detach().flatten()[:FIRST_VALUES].tolist(),
        "mean": _finite(whole.mean()),
        "std": _finite(whole.std(correction=0)) if whole.numel() else None,
    }


def _finite(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def step_json(record: StepRecord, about: dict[str, Any]) -> dict[str, Any]:
    """The step as step.json holds it (the format is in README and ../shared/GRAPH_FORMAT.md)."""
    flat = record.x.flatten()
    params = {}
    for name, grad in record.grads.items():
        params[name] = {
            "shape": list(record.before[name].shape),
            "grad": summary(grad, first_sample=False),
            "before": summary(record.before[name], first_sample=False),
            "after": summary(record.after[name], first_sample=False),
        }
    return {
        **about,
        "mode": "train",
        "seed": record.seed,
        "dropout": "torch.manual_seed(seed) right before model(x) in train mode",
        "input": {
            "shape": list(record.x.shape),
            "dtype": str(record.x.dtype).removeprefix("torch."),
            "values": flat[:MAX_INPUT_VALUES].tolist(),
            "truncated": flat.numel() > MAX_INPUT_VALUES,
        },
        "target": {"shape": list(record.y.shape), "values": record.y.flatten().tolist()},
        "loss": record.loss_before,
        "loss_after": record.loss_after,
        "loss_function": {"name": record.loss_name, "label_smoothing": record.label_smoothing},
        "optimizer": {"name": record.optimizer, **_jsonable(record.hyperparameters)},
        "nodes": {
            node_id: {
                "type": trace.type,
                "shape": list(trace.shape),
                "output": summary(trace.output),
                "grad": summary(trace.grad),
            }
            for node_id, trace in record.nodes.items()
        },
        "params": params,
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's settings as JSON (tuples as lists; a tensor lr as a number)."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, (bool, int, float, str, list)):
            result[key] = value
    return result


# ---------------------------------------------------------------------------------------------
# Explanations: a formula with this step's numbers for one picked element


@dataclass
class Explanation:
    """A formula written out with numbers. `lines` are equations (plain text) and sentences
    (Messages); `value` is what the formula gives and `torch_value` what torch computed."""

    title: Message
    lines: list[Message | str]
    value: float
    torch_value: float
    window: dict[str, Any] | None = None  # for a convolution or pooling: where it read its input

    @property
    def agrees(self) -> bool:
        return math.isclose(self.value, self.torch_value, rel_tol=1e-4, abs_tol=1e-5)


def number(value: float) -> str:
    """A number as the formulas show it: 4 significant digits."""
    return f"{value:.4g}"


def factor(value: float) -> str:
    """A number inside a product: a negative one in parentheses, 0.5·(−0.2)."""
    return f"({number(value)})" if value < 0 else number(value)


LOSS_NAMES = {
    "cross_entropy": msg("cross-entropy"),
    "nll": msg("negative log-likelihood"),
    "bce_with_logits": msg("binary cross-entropy on logits"),
    "mse": msg("mean squared error"),
    "l1": msg("mean absolute error (L1)"),
    "huber": msg("Huber loss"),
    "vae": msg("variational autoencoder loss (reconstruction + KL)"),
}
LOSS_WORDS = {
    "cross_entropy": msg(
        "softmax turns the scores z into probabilities; the loss is minus the log of the"
        " probability of the right class y, averaged over the samples"
    ),
    "nll": msg("the model outputs log-probabilities; the loss is minus the right class's one"),
    "bce_with_logits": msg(
        "each output is a logit z of a yes/no target y; σ(z) is its probability of yes"
    ),
    "mse": msg("the square of each difference between output and target, averaged"),
    "l1": msg("the size of each difference between output and target, averaged"),
    "huber": msg("squares small differences (below 1) and counts large ones linearly, averaged"),
    "vae": msg(
        "the reconstruction term is the binary cross-entropy of each output ŷ in [0, 1] against"
        " the input value x it rebuilds, summed; the KL term of each Reparameterize layer pulls"
        " its codes towards N(0, 1); their sum is divided by the number of samples"
    ),
}
OPTIMIZER_NAMES = {
    "sgd": "SGD",
    "momentum": msg("SGD with momentum"),
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
}


def _index_text(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, index)) + "]"


def _sum_text(terms: list[tuple[float, float]]) -> str:
    """'w·x + w·x + ... (+ k more = s)': the largest terms by size written out, the rest summed."""
    order = sorted(range(len(terms)), key=lambda i: -abs(terms[i][0] * terms[i][1]))
    shown = order[:SHOWN_TERMS]
    parts = [f"{factor(terms[i][0])}·{factor(terms[i][1])}" for i in sorted(shown)]
    text = " + ".join(parts)
    rest = [terms[i][0] * terms[i][1] for i in order[SHOWN_TERMS:]]
    if rest:
        rest_text = msg("(… {count} more = {sum})", count=len(rest), sum=number(math.fsum(rest)))
        text += " + " + render(rest_text)  # in the reader's language, as the sentences are
    return text


def _source_output(record: StepRecord, node_id: str) -> torch.Tensor:
    return record.nodes[record.inputs[node_id][0]].output


def conv_window(
    module: nn.Module, x: torch.Tensor, index: tuple[int, ...]
) -> tuple[torch.Tensor, list[tuple[int, ...]], int]:
    """For output element (channel, *position) of a Conv1d/Conv2d: the input values it reads
    [in_channels/groups, *kernel] (zero where it reads padding), their input coordinates (None
    coordinates are padding) and the first input channel of its group."""
    dims = len(module.kernel_size)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    padding = module.padding
    if isinstance(padding, str):  # "same": torch pads d(k-1) in total, the extra one at the end
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    channel, position = index[0], index[1:]
    per_group = module.out_channels // module.groups
    first = (channel // per_group) * (module.in_channels // module.groups)
    channels = range(first, first + module.in_channels // module.groups)
    offsets = [range(k) for k in kernel]
    values = torch.zeros(len(channels), *kernel, dtype=x.dtype)
    where: list[tuple[int, ...]] = []
    for at in _grid(offsets):
        source = tuple(
            position[d] * stride[d] - padding[d] + at[d] * dilation[d] for d in range(dims)
        )
        inside = all(0 <= source[d] < x.shape[d + 1] for d in range(dims))
        where.append(source if inside else ())
        for slot, c in enumerate(channels):
            if inside:
                values[(slot, *at)] = x[(c, *source)]
    return values, where, first


def weight_reads(
    module: nn.Module,
    x: torch.Tensor,
    channel: int,
    at: tuple[int, ...],
    out_size: tuple[int, ...],
) -> torch.Tensor:
    """The input values that convolution weight [channel, *at] multiplies at every output
    position of a batch x [B, C, *size]: [B, *out_size] (zero where it reads padding)."""
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module.padding, str):  # "same": d(k-1) in total, the extra one at the end
        pads = [
            (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)
        ]
    else:
        pads = [(p, p) for p in module.padding]
    flat_pads = [side for pair in reversed(pads) for side in pair]  # F.pad: last dim first
    per_group = module.out_channels // module.groups
    first = (channel // per_group) * (module.in_channels // module.groups)
    padded = F.pad(x[:, first + at[0]], flat_pads)
    slices = tuple(
        slice(at[1 + d] * dilation[d], at[1 + d] * dilation[d] + stride[d] * (n - 1) + 1, stride[d])
        for d, n in enumerate(out_size)
    )
    return padded[(slice(None), *slices)]


def _grid(ranges: list[range]) -> list[tuple[int, ...]]:
    points: list[tuple[int, ...]] = [()]
    for values in ranges:
        points = [(*point, value) for point in points for value in values]
    return points


def explain_output(
    record: StepRecord,
    node_id: str,
    index: tuple[int, ...],
    sample: int = 0,
    shown_as: int | None = None,
) -> Explanation:
    """The formula of one output element of a node (index within one sample) with its numbers.
    `shown_as` is the number the reader knows the sample by (its place in the dataset); without
    it, its place in the batch, counted from 1."""
    trace = record.nodes[node_id]
    torch_value = float(trace.output[(sample, *index)])
    title = msg(
        "{node} ({kind}), output {index} of sample {sample}",
        node=node_id,
        kind=trace.type,
        index=_index_text(index),
        sample=sample + 1 if shown_as is None else shown_as,
    )
    module = record.modules.get(node_id)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return _explain_conv(record, node_id, module, index, sample, title, torch_value)
    if isinstance(module, nn.Linear):
        return _explain_linear(record, node_id, module, index, sample, title, torch_value)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        return _explain_pool(record, node_id, module, index, sample, title, torch_value)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _explain_batchnorm(record, node_id, module, index, sample, title, torch_value)
    if isinstance(module, nn.Softmax):
        return _explain_softmax(record, node_id, module, index, sample, title, torch_value)
    if trace.type in ELEMENTWISE and record.inputs.get(node_id):
        x = float(_source_output(record, node_id)[(sample, *index)])
        formula, value = ELEMENTWISE[trace.type](x, module)
        return Explanation(
            title, [formula.format(x=number(x), y=number(value))], value, torch_value
        )
    return Explanation(
        title,
        [
            msg(
                "torch computed {value}; this layer's formula is not written out here",
                value=number(torch_value),
            )
        ],
        torch_value,
        torch_value,
    )


def _relu(x: float, module: Any) -> tuple[str, float]:
    return "y = max(0, x) = max(0, {x}) = {y}", max(0.0, x)


def _leaky(x: float, module: Any) -> tuple[str, float]:
    slope = module.negative_slope
    return f"y = x if x > 0 else {number(slope)}·x; x = {{x}} → y = {{y}}", (
        x if x > 0 else slope * x
    )


def _sigmoid(x: float, module: Any) -> tuple[str, float]:
    return "y = 1 / (1 + e^(−x)) = 1 / (1 + e^(−{x})) = {y}", 1 / (1 + math.exp(-x))


def _tanh(x: float, module: Any) -> tuple[str, float]:
    return "y = tanh(x) = tanh({x}) = {y}", math.tanh(x)


def _gelu(x: float, module: Any) -> tuple[str, float]:
    return "y = x·Φ(x) = {x}·Φ({x}) = {y}", x * 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _silu(x: float, module: Any) -> tuple[str, float]:
    return "y = x·σ(x) = {x}·σ({x}) = {y}", x / (1 + math.exp(-x))


def _identity(x: float, module: Any) -> tuple[str, float]:
    return "y = x = {y}", x


ELEMENTWISE = {
    "ReLU": _relu,
    "LeakyReLU": _leaky,
    "Sigmoid": _sigmoid,
    "Tanh": _tanh,
    "GELU": _gelu,
    "SiLU": _silu,
    "Identity": _identity,
}


def _explain_conv(
    record: StepRecord,
    node_id: str,
    module: nn.Module,
    index: tuple[int, ...],
    sample: int,
    title: Message,
    torch_value: float,
) -> Explanation:
    attribute = record.attributes[node_id]
    x = _source_output(record, node_id)[sample].detach().double()
    window, where, first = conv_window(module, x, index)
    weight = record.before[f"{attribute}.weight"][index[0]].double()
    bias_name = f"{attribute}.bias"
    bias = float(record.before[bias_name][index[0]]) if bias_name in record.before else 0.0
    terms = list(zip(weight.flatten().tolist(), window.flatten().tolist(), strict=True))
    total = math.fsum(w * v for w, v in terms)
    value = total + bias
    lines: list[Message | str] = [
        msg(
            "the sum over its {count} window values (input channels {first}–{last}, kernel"
            " {kernel}) of weight × input, plus the bias",
            count=len(terms),
            first=first,
            last=first + window.shape[0] - 1,
            kernel="×".join(map(str, module.kernel_size)),
        ),
        "y = b + Σ w·x",
        f"  = {number(bias)} + {_sum_text(terms)}",
        f"  = {number(bias)} + {number(total)} = {number(value)}",
    ]
    covered = [at for at in where if at]
    box = {
        "channels": [first, first + window.shape[0] - 1],
        "positions": covered,
        "padding_reads": len(where) - len(covered),
    }
    return Explanation(title, lines, value, torch_value, box)


def _explain_linear(
    record: StepRecord,
    node_id: str,
    module: nn.Linear,
    index: tuple[int, ...],
    sample: int,
    title: Message,
    torch_value: float,
) -> Explanation:
    attribute = record.attributes[node_id]
    x = _source_output(record, node_id)[(sample, *index[:-1])].detach().double()
    unit = index[-1]
    weight = record.before[f"{attribute}.weight"][unit].double()
    bias_name = f"{attribute}.bias"
    bias = float(record.before[bias_name][unit]) if bias_name in record.before else 0.0
    terms = list(zip(weight.tolist(), x.tolist(), strict=True))
    total = math.fsum(w * v for w, v in terms)
    value = total + bias
    lines: list[Message | str] = [
        msg(
            "row {unit} of the weights times the {count} inputs, plus the bias",
            unit=unit,
            count=len(terms),
        ),
        f"y[{unit}] = w[{unit}]·x + b[{unit}]",
        f"  = {_sum_text(terms)} + {number(bias)}",
        f"  = {number(total)} + {number(bias)} = {number(value)}",
    ]
    return Explanation(title, lines, value, torch_value)


def _explain_pool(
    record: StepRecord,
    node_id: str,
    module: nn.Module,
    index: tuple[int, ...],
    sample: int,
    title: Message,
    torch_value: float,
) -> Explanation:
    dims = 2 if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) else 1
    pair = nn.modules.utils._pair if dims == 2 else nn.modules.utils._single
    kernel, stride, padding = pair(module.kernel_size), pair(module.stride), pair(module.padding)
    dilation = pair(getattr(module, "dilation", 1))
    x = _source_output(record, node_id)[sample, index[0]].detach().double()
    values, positions = [], []
    for at in _grid([range(k) for k in kernel]):
        source = tuple(
            index[1 + d] * stride[d] - padding[d] + at[d] * dilation[d] for d in range(dims)
        )
        if all(0 <= source[d] < x.shape[d] for d in range(dims)):
            values.append(float(x[source]))
            positions.append(source)
        elif isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)) and module.count_include_pad:
            values.append(0.0)
    shown = ", ".join(number(v) for v in values[: SHOWN_TERMS * 2])
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        value = max(values)
        lines: list[Message | str] = [
            msg("the largest of the {count} values in its window", count=len(values)),
            f"y = max({shown}) = {number(value)}",
        ]
    else:
        value = math.fsum(values) / len(values)
        lines = [
            msg("the mean of the {count} values in its window", count=len(values)),
            f"y = ({' + '.join(number(v) for v in values[:SHOWN_TERMS * 2])}) / {len(values)}"
            f" = {number(value)}",
        ]
    window = {"channels": [index[0], index[0]], "positions": positions, "padding_reads": 0}
    return Explanation(title, lines, value, torch_value, window)


def _explain_batchnorm(
    record: StepRecord,
    node_id: str,
    module: nn.Module,
    index: tuple[int, ...],
    sample: int,
    title: Message,
    torch_value: float,
) -> Explanation:
    """Train mode: the channel is normalised with this batch's mean and (biased) variance."""
    attribute = record.attributes[node_id]
    x = _source_output(record, node_id).detach().double()
    channel = index[0]
    values = x.select(1, channel)
    mean, variance = float(values.mean()), float(values.var(correction=0))
    gamma = float(record.before[f"{attribute}.weight"][channel]) if module.affine else 1.0
    beta = float(record.before[f"{attribute}.bias"][channel]) if module.affine else 0.0
    own = float(x[(sample, *index)])
    value = gamma * (own - mean) / math.sqrt(variance + module.eps) + beta
    lines: list[Message | str] = [
        msg(
            "channel {channel} normalised with this batch's mean and variance ({count} values),"
            " then scaled by γ and shifted by β",
            channel=channel,
            count=values.numel(),
        ),
        "y = γ·(x − μ)/√(σ² + ε) + β",
        f"  = {number(gamma)}·({number(own)} − {number(mean)})/√({number(variance)} +"
        f" {number(module.eps)}) + {number(beta)} = {number(value)}",
    ]
    return Explanation(title, lines, value, torch_value)


def _explain_softmax(
    record: StepRecord,
    node_id: str,
    module: nn.Softmax,
    index: tuple[int, ...],
    sample: int,
    title: Message,
    torch_value: float,
) -> Explanation:
    z = _source_output(record, node_id)[sample].detach().double()
    dim = (module.dim if module.dim is not None else -1) % (z.dim() + 1) - 1  # within a sample
    if dim < 0:  # a softmax across the batch: not one sample's formula
        return Explanation(title, [], torch_value, torch_value)
    row = z.movedim(dim, -1)[tuple(index[:dim] + index[dim + 1 :])]
    own = float(z[index])
    exps = [math.exp(v) for v in row.tolist()]
    value = math.exp(own) / math.fsum(exps)
    lines: list[Message | str] = [
        "y_i = e^(z_i) / Σ_j e^(z_j)",
        f"  = e^({number(own)}) / ({' + '.join(number(e) for e in exps[:SHOWN_TERMS * 2])})"
        f" = {number(math.exp(own))} / {number(math.fsum(exps))} = {number(value)}",
    ]
    return Explanation(title, lines, value, torch_value)


def explain_loss(record: StepRecord) -> Explanation:
    """The Output's loss written out with this batch's numbers."""
    out = record.output.detach().double()
    y = record.y
    name = record.loss_name
    title = msg("the loss: {name}", name=LOSS_NAMES[name])
    lines: list[Message | str] = [LOSS_WORDS[name]]
    if name == "vae":
        value = _vae_terms(record, out, lines)
    elif name in ("cross_entropy", "nll"):
        logits = out.flatten(0, -2)
        labels = y.flatten()
        per: list[float] = []
        smoothing = record.label_smoothing if name == "cross_entropy" else 0.0
        for row, (z, label) in enumerate(zip(logits, labels.tolist(), strict=True)):
            log_p = torch.log_softmax(z, -1) if name == "cross_entropy" else z
            own = -float(log_p[label])
            loss = (1 - smoothing) * own - smoothing * float(log_p.mean()) if smoothing else own
            per.append(loss)
            if row < SHOWN_TERMS:
                zs = ", ".join(number(v) for v in z.tolist()[: SHOWN_TERMS * 2])
                if name == "cross_entropy":
                    lines.append(f"z = [{zs}], y = {label}")
                    lines.append(
                        f"−log softmax(z)_y = −(z_y − log Σ e^z) = −({number(float(z[label]))}"
                        f" − {number(float(torch.logsumexp(z, -1)))}) = {number(own)}"
                    )
                else:
                    lines.append(f"log p = [{zs}], y = {label} → −log p_y = {number(own)}")
        if smoothing:
            lines.append(
                msg(
                    "with label smoothing {s}: (1 − s)·(−log p_y) + s·mean(−log p)",
                    s=number(smoothing),
                )
            )
        value = math.fsum(per) / len(per)
        lines.insert(1, "L = −log softmax(z)_y" if name == "cross_entropy" else "L = −log p_y")
    else:
        target = y.double().view_as(out)
        diff = (out - target).flatten()
        shown = diff.tolist()[: SHOWN_TERMS * 2]
        if name == "mse":
            value = float((diff**2).mean())
            lines += ["L = mean((ŷ − y)²)", "ŷ − y = [" + ", ".join(map(number, shown)) + "]"]
        elif name == "l1":
            value = float(diff.abs().mean())
            lines += ["L = mean(|ŷ − y|)", "ŷ − y = [" + ", ".join(map(number, shown)) + "]"]
        elif name == "huber":
            a = diff.abs()
            value = float(torch.where(a < 1, 0.5 * a**2, a - 0.5).mean())
            lines += [
                "L = mean(½d² if |d| < 1 else |d| − ½), d = ŷ − y",
                "d = [" + ", ".join(map(number, shown)) + "]",
            ]
        else:  # bce_with_logits
            z, t = out.flatten(), target.flatten()
            per = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z))
            value = float(per.mean())
            lines += [
                "L = mean(−[y·log σ(z) + (1 − y)·log(1 − σ(z))])",
                "z = [" + ", ".join(map(number, z.tolist()[: SHOWN_TERMS * 2])) + "]",
            ]
        lines.append(msg("averaged over {count} values", count=diff.numel()))
    if name != "vae":  # (the VAE's last line already ends "= L")
        lines.append(f"L = {number(value)}")
    return Explanation(title, lines, value, record.loss_before)


def _vae_terms(record: StepRecord, out: torch.Tensor, lines: list[Message | str]) -> float:
    """The VAE loss written out: the reconstruction term (BCE, its log clamped at -100 as
    torch's is) and each Reparameterize layer's KL term from the mu and logvar it was given,
    per sample and for the batch; returns L."""
    x = record.x.detach().double().view_as(out)
    log_p, log_q = torch.log(out).clamp(min=-100), torch.log(1 - out).clamp(min=-100)
    bce = -(x * log_p + (1 - x) * log_q)
    rebuilt = bce.flatten(1).sum(1)  # per sample
    kl_terms: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for node_id, trace in record.nodes.items():
        if trace.type == "Reparameterize":
            mu_id, logvar_id = record.inputs[node_id]
            mu = record.nodes[mu_id].output.detach().double()
            logvar = record.nodes[logvar_id].output.detach().double()
            inner = 1 + logvar - mu**2 - logvar.exp()
            kl_terms.append((node_id, mu, logvar, -0.5 * inner.flatten(1).sum(1)))
    kl = sum((terms[-1] for terms in kl_terms), torch.zeros_like(rebuilt))
    count = len(out)
    lines += [
        "L = (Σ BCE(ŷ, x) + Σ KL) / B",
        "BCE(ŷ, x) = −[x·log ŷ + (1 − x)·log(1 − ŷ)]",
        "KL = −0.5·Σ(1 + logvar − mu² − e^logvar)",
        msg("sample {n}:", n=1),
        "ŷ = [" + ", ".join(map(number, out[0].flatten().tolist()[: SHOWN_TERMS * 2])) + "]",
        "x = [" + ", ".join(map(number, x[0].flatten().tolist()[: SHOWN_TERMS * 2])) + "]",
        f"Σ BCE = {number(float(rebuilt[0]))}",
    ]
    for node_id, mu, logvar, per_sample in kl_terms:
        shown = min(mu[0].numel(), SHOWN_TERMS)
        lines += [
            f"{node_id}: mu = [" + ", ".join(map(number, mu[0].flatten().tolist()[:shown])) + "]",
            f"{node_id}: logvar = ["
            + ", ".join(map(number, logvar[0].flatten().tolist()[:shown]))
            + "]",
            f"KL({node_id}) = −0.5·({number(float(-2 * per_sample[0]))})"
            f" = {number(float(per_sample[0]))}",
        ]
    for sample in range(1, min(count, SHOWN_TERMS)):
        lines.append(
            msg(
                "sample {n}: reconstruction {rebuilt}, KL {kl}",
                n=sample + 1,
                rebuilt=number(float(rebuilt[sample])),
                kl=number(float(kl[sample])),
            )
        )
    total_rebuilt, total_kl = float(rebuilt.sum()), float(kl.sum())
    value = (total_rebuilt + total_kl) / count
    lines.append(f"L = ({number(total_rebuilt)} + {number(total_kl)}) / {count} = {number(value)}")
    return value


def explain_gradient(record: StepRecord, name: str, index: tuple[int, ...]) -> Explanation:
    """dL/dw for one weight by the chain rule, dL/dw = Σ dL/dy · ∂y/∂w over the outputs y that
    the weight touches: written out for Linear and convolution weights and biases; for other
    layers the vector-Jacobian product that torch's backward computes is stated."""
    grad = record.grads[name]
    torch_value = float(grad[index]) if grad is not None else 0.0
    title = msg("the gradient of weight {name}{index}", name=name, index=_index_text(index))
    node_id = next((n for n, a in record.attributes.items() if name.startswith(f"{a}.")), None)
    module = record.modules.get(node_id) if node_id else None
    kind = name.rsplit(".", 1)[-1]
    if node_id is None or record.nodes[node_id].grad is None:
        return Explanation(
            title, [msg("no gradient reaches this weight")], torch_value, torch_value
        )
    dy = record.nodes[node_id].grad.double()
    x = _source_output(record, node_id).detach().double()
    lines: list[Message | str] = [
        msg(
            "the chain rule: each output y the weight touches passes back dL/dy (what arrives"
            " from the layers above), times how much y moves with the weight, ∂y/∂w"
        ),
        "dL/dw = Σ dL/dy · ∂y/∂w",
    ]
    if isinstance(module, nn.Linear):
        unit = index[0]
        dy_unit = dy[..., unit].flatten()
        if kind == "bias":
            terms = [(g, 1.0) for g in dy_unit.tolist()]
            lines.append(
                msg("∂y/∂b = 1 for each of the {count} outputs it adds to", count=len(terms))
            )
        else:
            xs = x[..., index[1]].flatten()
            terms = list(zip(dy_unit.tolist(), xs.tolist(), strict=True))
            lines.append(
                msg(
                    "∂y[{unit}]/∂w[{unit}, {i}] = x[{i}]: the input it multiplies, once per"
                    " sample (and position)",
                    unit=unit,
                    i=index[1],
                )
            )
    elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
        channel = index[0]
        dy_channel = dy[:, channel]
        if kind == "bias":
            terms = [(g, 1.0) for g in dy_channel.flatten().tolist()]
            lines.append(msg("∂y/∂b = 1 at each of the {count} output positions", count=len(terms)))
        else:
            reads = weight_reads(module, x, channel, index[1:], tuple(dy.shape[2:]))
            terms = list(zip(dy_channel.flatten().tolist(), reads.flatten().tolist(), strict=True))
            lines.append(
                msg(
                    "∂y/∂w = the input value the weight multiplies at each of the {count}"
                    " output positions (over the batch)",
                    count=len(terms),
                )
            )
    else:
        lines.append(
            msg(
                "torch's backward multiplies dL/dy (mean {mean}) by this layer's ∂y/∂w and sums;"
                " for this weight that gives {value}",
                mean=number(float(dy.mean())),
                value=number(torch_value),
            )
        )
        return Explanation(title, lines, torch_value, torch_value)
    value = math.fsum(g * d for g, d in terms)
    lines.append(f"  = {_sum_text(terms)}")
    lines.append(f"  = {number(value)}")
    return Explanation(title, lines, value, torch_value)


def explain_update(record: StepRecord, name: str, index: tuple[int, ...]) -> Explanation:
    """The optimizer's rule for one weight with every number: the gradient, torch's own state
    after its step (momentum buffer, Adam's m and v, RMSprop's mean square) and before → after."""
    hyper = record.hyperparameters
    lr, decay = float(hyper["lr"]), float(hyper.get("weight_decay", 0.0))
    w = float(record.before[name][index])
    after = float(record.after[name][index])
    grad = record.grads[name]
    g = float(grad[index]) if grad is not None else 0.0
    state = record.optimizer_state.get(name, {})
    title = msg(
        "{optimizer} updates {name}{index}",
        optimizer=OPTIMIZER_NAMES[record.optimizer],
        name=name,
        index=_index_text(index),
    )
    lines: list[Message | str] = []
    effective = g + decay * w if record.optimizer != "adamw" else g
    if decay and record.optimizer != "adamw":
        lines.append(
            f"g = dL/dw + λ·w = {number(g)} + {number(decay)}·{factor(w)} = {number(effective)}"
        )
    else:
        lines.append(f"g = dL/dw = {number(g)}")
    if g > 0:
        lines.append(msg("dL/dw > 0: a larger weight would raise the loss, so the step lowers it"))
    elif g < 0:
        lines.append(msg("dL/dw < 0: a larger weight would lower the loss, so the step raises it"))
    else:
        lines.append(msg("dL/dw = 0: the loss does not feel this weight on these samples"))
    if record.optimizer == "sgd":
        value = w - lr * effective
        lines += ["w ← w − lr·g", f"  = {number(w)} − {number(lr)}·{factor(effective)}"]
    elif record.optimizer == "momentum":
        buffer = float(state["momentum_buffer"][index])
        mu = float(hyper["momentum"])
        value = w - lr * buffer
        lines += [
            msg("the velocity v starts as g on the first step, then v ← μ·v + g"),
            f"v = {number(buffer)}  (μ = {number(mu)})",
            "w ← w − lr·v",
            f"  = {number(w)} − {number(lr)}·{factor(buffer)}",
        ]
    elif record.optimizer in ("adam", "adamw"):
        (beta1, beta2), eps = hyper["betas"], float(hyper["eps"])
        m, v = float(state["exp_avg"][index]), float(state["exp_avg_sq"][index])
        t = int(float(state["step"]))
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        lines += [
            f"m ← β₁·m + (1 − β₁)·g = {number(m)}   (β₁ = {number(beta1)})",
            f"v ← β₂·v + (1 − β₂)·g² = {number(v)}   (β₂ = {number(beta2)})",
            msg("bias correction at step t = {t}:", t=t),
            f"m̂ = m/(1 − β₁^t) = {number(m_hat)},  v̂ = v/(1 − β₂^t) = {number(v_hat)}",
        ]
        shrunk = w * (1 - lr * decay) if record.optimizer == "adamw" else w
        if record.optimizer == "adamw":
            lines.append(
                f"w ← w·(1 − lr·λ) − lr·m̂/(√v̂ + ε), λ = {number(decay)}, ε = {number(eps)}"
            )
        else:
            lines.append(f"w ← w − lr·m̂/(√v̂ + ε), ε = {number(eps)}")
        value = shrunk - lr * m_hat / (math.sqrt(v_hat) + eps)
        lines.append(
            f"  = {number(shrunk)} − {number(lr)}·{factor(m_hat)}/(√{number(v_hat)} +"
            f" {number(eps)})"
        )
    else:  # rmsprop
        alpha, eps = float(hyper["alpha"]), float(hyper["eps"])
        square = float(state["square_avg"][index])
        value = w - lr * effective / (math.sqrt(square) + eps)
        lines += [
            f"s ← α·s + (1 − α)·g² = {number(square)}   (α = {number(alpha)})",
            f"w ← w − lr·g/(√s + ε), ε = {number(eps)}",
            f"  = {number(w)} − {number(lr)}·{factor(effective)}/(√{number(square)} +"
            f" {number(eps)})",
        ]
    lines.append(f"  = {number(value)}")
    lines.append(
        msg(
            "before → after: {before} → {after} (change {change})",
            before=number(w),
            after=number(after),
            change=number(after - w),
        )
    )
    return Explanation(title, lines, value, after)


# ---------------------------------------------------------------------------------------------
# Samples, checkpoints and the step's files (for `python -m runtime step` and the page)


def batch_from(
    dataset: Dataset, analysis: Analysis, index: int, batch: int, target: str = "label"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples index .. index + batch - 1 of the dataset (in its own order), x cast to the
    Input's dtype; y is x itself when the model learns to reproduce its input."""
    count = len(dataset)
    if batch < 1 or index < 0 or index + batch > count:
        raise StepError(
            msg(
                "samples {first} to {last} are not in {name}, which has {count} (numbered 0 to"
                " {end}); choose an index from 0 to {most}",
                first=index,
                last=index + batch - 1,
                name=dataset.name,
                count=count,
                end=count - 1,
                most=max(0, count - max(batch, 1)),
            )
        )
    input_node = next(n for n in analysis.graph.nodes if n.type == "Input")
    dtype = torch.int64 if analysis.infos[input_node.id].dtype == "int64" else torch.float32
    x = dataset.x[index : index + batch].to(dtype)
    y = x if target == "input" else dataset.y[index : index + batch]
    return x, y


def run_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """A run's latest trained weights (its checkpoint), read safely."""
    path = run_dir / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    if not path.exists():
        raise StepError(msg("run {run} has no checkpoint yet", run=run_dir.name))
    try:
        return load_checkpoint(path, torch.device("cpu"))
    except CheckpointError as exc:
        raise StepError(exc.detail) from None


def write_step(out: Path, record: StepRecord, about: dict[str, Any]) -> None:
    """DIR/model.py, DIR/before.pt and DIR/after.pt (state_dicts for that model.py) and
    DIR/step.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.py").write_text(record.source)
    torch.save(record.before, out / "before.pt")
    torch.save(record.after, out / "after.pt")
    (out / "step.json").write_text(json.dumps(step_json(record, about)) + "\n")
