"""Core layers: Input, Output (and its loss), Linear, Identity, Flatten, Permute, Reshape, Slice
(a strided slice along one dim) and Pad (constant padding, as F.pad)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from builder.layers.base import (
    IMAGE,
    SEQUENCE,
    BOOL,
    MAX_RANK,
    MAX_SIZE,
    Advice,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NoParams,
    Params,
    Tensor,
    as_float,
    call,
    changed,
    count,
    dim_field,
    fmt,
    full_dim,
    keep_shape,
    need_rank,
    no_params_from_module,
    numel,
    same_shape_explained,
    shape_text,
)
from i18n import Message, N_, msg

# ---------------------------------------------------------------------------------------------
# Input


class InputParams(Params):
    shape: list[Annotated[int, Field(ge=1, le=MAX_SIZE)]] = Field(
        min_length=1,
        max_length=MAX_RANK,
        description=N_("a list of 1 to 6 positive ints, batch excluded"),
    )
    dtype: Literal["float32", "int64"] = Field("float32", description=N_("'float32' or 'int64'"))

    @model_validator(mode="after")
    def _not_huge(self) -> InputParams:
        if numel(self.shape) > 50_000_000:
            raise ValueError(N_("shape has over 50 million elements per sample"))
        return self


def input_infer(p: InputParams, xs: list[Tensor]) -> Tensor:
    return Tensor(tuple(p.shape), p.dtype)


INPUT = LayerSpec(
    name="Input",
    category="Core",
    description=N_("The data that enters the model: one sample's shape, without the batch."),
    formula=N_("x: [B, *shape]"),
    params=InputParams,
    infer=input_infer,
    starter={"shape": [1, 8, 8]},
    min_inputs=0,
    max_inputs=0,
    key_params=("shape", "dtype"),
    examples=(),
    shapes="- -> shape",
)


# ---------------------------------------------------------------------------------------------
# Output and its loss

# The Output's loss choices, in the order a form lists them: (name, what it is for, formula).
# Written once here; LOSSES (the names), the Loss type and runtime's loss code come from it.
LOSS_CHOICES: tuple[tuple[str, str, str], ...] = (
    (
        "auto",
        N_("Cross-entropy for integer class targets, mean squared error for float targets."),
        "cross_entropy | mse",
    ),
    (
        "cross_entropy",
        N_(
            "Classes: applies log-softmax to the scores (logits) itself, then takes the"
            " negative log-probability of the true class."
        ),
        "L = -log(softmax(y)[target]), smoothed: (1 - e) * L + e * mean_c(-log softmax(y)_c)",
    ),
    (
        "nll",
        N_(
            "Classes, for a model that ends in LogSoftmax: the negative log-probability of the"
            " true class."
        ),
        "L = -y[target]",
    ),
    (
        "bce_with_logits",
        N_(
            "Independent yes/no targets in [0, 1] per output: sigmoid and binary cross-entropy"
            " in one stable step."
        ),
        "L = -(t log sigmoid(y) + (1 - t) log(1 - sigmoid(y)))",
    ),
    ("mse", N_("Regression: the mean squared error."), "L = mean((y - t)^2)"),
    (
        "l1",
        N_("Regression: the mean absolute error, less sensitive to outliers."),
        "L = mean(|y - t|)",
    ),
    (
        "huber",
        N_("Regression: squared error near the target, absolute error far from it (delta 1)."),
        "L = 0.5 (y - t)^2 if |y - t| < 1 else |y - t| - 0.5",
    ),
    (
        "vae",
        N_(
            "A variational autoencoder: rebuild the input (binary cross-entropy of outputs in"
            " [0, 1] against it) plus the KL divergence of the Reparameterize layers' codes"
            " from N(0, 1); the labels are not used."
        ),
        "L = (sum BCE(y, x) + sum KL(N(mu, exp(logvar)) || N(0, 1))) / B",
    ),
)
LOSSES: tuple[str, ...] = tuple(name for name, _, _ in LOSS_CHOICES)
Loss = Literal[LOSSES]  # type: ignore[valid-type]  # the names above, as a pydantic choice
CLASS_LOSSES = frozenset({"cross_entropy", "nll"})
SOFTMAX_LOSSES = frozenset({"auto", "cross_entropy"})  # they apply log-softmax themselves


class OutputParams(Params):
    loss: Loss = Field(
        "auto",
        description=N_("one of auto, cross_entropy, nll, bce_with_logits, mse, l1, huber, vae"),
        # (tests/test_catalog.py checks that this sentence names every one of LOSSES)
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description=N_("a float in [0, 1) (cross_entropy only)")
    )


def output_infer(p: OutputParams, xs: list[Tensor]) -> Tensor:
    """The model's output is its input; the chosen loss must fit that shape."""
    y = xs[0]
    if p.label_smoothing and p.loss not in ("auto", "cross_entropy"):
        raise LayerError(
            msg("label_smoothing applies to cross_entropy only, not to {loss}", loss=p.loss),
            Fix(msg("label smoothing needs cross-entropy"), set_params={"label_smoothing": 0.0}),
        )
    if p.loss in CLASS_LOSSES and len(y.shape) not in (1, 2):
        raise LayerError(
            msg(
                "loss {loss} needs scores shaped [classes] or [T, classes], got {shape};"
                " Flatten or pool to one score per class",
                loss=p.loss,
                shape=shape_text(y.shape),
            )
        )
    return y


def output_advise(p: OutputParams, xs: list[Tensor]) -> list[Advice]:
    """A squashing layer just before a loss that squashes by itself (or the wrong one for nll):
    the model still trains, but slowly or towards the wrong thing."""
    source = xs[0].source_type
    if p.loss in SOFTMAX_LOSSES and source == "LogSoftmax":
        return [
            Advice(
                msg(
                    "the loss {loss} applies log-softmax itself, so after LogSoftmax it is"
                    " applied twice; use the loss nll, which expects log-probabilities",
                    loss=p.loss,
                ),
                Fix(msg("nll is cross-entropy for log-probabilities"), set_params={"loss": "nll"}),
            )
        ]
    if p.loss in SOFTMAX_LOSSES and source == "Softmax":
        return [
            Advice(
                msg(
                    "the loss {loss} applies softmax itself and expects raw scores (logits);"
                    " a Softmax before it squashes them twice and slows learning: remove it",
                    loss=p.loss,
                ),
                Fix(msg("the loss expects logits"), remove_input=True),
            )
        ]
    if p.loss == "bce_with_logits" and source == "Sigmoid":
        return [
            Advice(
                msg(
                    "the loss bce_with_logits applies sigmoid itself and expects raw scores"
                    " (logits); a Sigmoid before it squashes them twice: remove it"
                ),
                Fix(msg("the loss expects logits"), remove_input=True),
            )
        ]
    if p.loss == "nll" and source == "Softmax":
        return [
            Advice(
                msg(
                    "the loss nll expects log-probabilities, but Softmax gives probabilities;"
                    " use LogSoftmax instead, or remove the Softmax and use cross_entropy"
                )
            )
        ]
    return []


OUTPUT = LayerSpec(
    name="Output",
    category="Core",
    description=N_("Marks what the model returns, and the loss that training minimises."),
    formula=N_("y = x; loss(y, target)"),
    params=OutputParams,
    infer=output_infer,
    advise=output_advise,
    key_params=("loss",),
    takes_token_ids=True,
    view_of_input=True,
    examples=(),
    shapes="x -> x; the loss training minimises",
)


# ---------------------------------------------------------------------------------------------
# Linear


class LinearParams(Params):
    out_features: int = count()
    bias: bool = Field(True, description=BOOL)


def linear_infer(p: LinearParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], range(1, MAX_RANK + 1), "[..., F]")
    return Tensor(xs[0].shape[:-1] + (p.out_features,))


def linear_count(p: LinearParams, xs: list[Tensor]) -> int:
    return xs[0].shape[-1] * p.out_features + p.out_features * p.bias


def linear_macs(p: LinearParams, xs: list[Tensor], y: Tensor) -> int:
    return numel(xs[0].shape) * p.out_features


def linear_module(p: LinearParams, xs: list[Tensor]) -> str:
    return call("nn.Linear", xs[0].shape[-1], p.out_features, **changed(p, "bias"))


def linear_explain(p: LinearParams, xs: list[Tensor], y: Tensor) -> Message:
    i, o = xs[0].shape[-1], p.out_features
    if p.bias:
        return msg("[..., {i}] -> [..., {o}]; weights {i}*{o} + bias {o}", i=i, o=o)
    return msg("[..., {i}] -> [..., {o}]; weights {i}*{o}", i=i, o=o)


def linear_advise(p: LinearParams, xs: list[Tensor]) -> list[Advice]:
    if len(xs[0].shape) < 3:
        return []
    return [
        Advice(
            msg(
                "Linear acts on the last dim only, so {before} gives {after}; insert a Flatten"
                " before it for one vector of {flat} features per sample",
                before=shape_text(xs[0].shape),
                after=shape_text(xs[0].shape[:-1] + (p.out_features,)),
                flat=numel(xs[0].shape),
            ),
            Fix(msg("a classifier head usually wants one flat vector per sample"), "Flatten"),
        )
    ]


def linear_from_module(m: Any) -> dict[str, Any]:
    return {"out_features": m.out_features, "bias": m.bias is not None}


LINEAR = LayerSpec(
    name="Linear",
    category="Core",
    description=N_(
        "A fully connected layer: every output is a weighted sum of all input features."
    ),
    formula=N_("y = x W^T + b"),
    params=LinearParams,
    infer=linear_infer,
    torch_modules=("Linear",),
    params_from_module=linear_from_module,
    starter={"out_features": 64},
    count_params=linear_count,
    macs=linear_macs,
    module=linear_module,
    explain=linear_explain,
    advise=linear_advise,
    key_params=("out_features",),
    examples=(Example(SEQUENCE, {"out_features": 5}),),
    shapes="[..., F] -> [..., out_features]",
)


# ---------------------------------------------------------------------------------------------
# Identity


def identity_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Identity()"


IDENTITY = LayerSpec(
    name="Identity",
    category="Core",
    description=N_("Passes its input through unchanged."),
    formula=N_("y = x"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Identity",),
    params_from_module=no_params_from_module,
    module=identity_module,
    view_of_input=True,
)


# ---------------------------------------------------------------------------------------------
# Flatten


class FlattenParams(Params):
    start_dim: int = dim_field(1)
    end_dim: int = dim_field(-1)


def flatten_infer(p: FlattenParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    start = full_dim(p.start_dim, len(shape), "start_dim")
    end = full_dim(p.end_dim, len(shape), "end_dim")
    if start > end:
        raise LayerError(
            msg("start_dim {start} comes after end_dim {end}", start=p.start_dim, end=p.end_dim)
        )
    merged = numel(shape[start - 1 : end])
    return Tensor(shape[: start - 1] + (merged,) + shape[end:], xs[0].dtype)


def flatten_module(p: FlattenParams, xs: list[Tensor]) -> str:
    return call("nn.Flatten", **changed(p, "start_dim", "end_dim"))


def flatten_from_module(m: Any) -> dict[str, Any]:
    return {"start_dim": m.start_dim, "end_dim": m.end_dim}


FLATTEN = LayerSpec(
    name="Flatten",
    category="Core",
    description=N_("Joins dimensions into one, e.g. [C, H, W] into one vector for a Linear head."),
    formula=N_("[C, H, W] -> [C*H*W]"),
    params=FlattenParams,
    infer=flatten_infer,
    torch_modules=("Flatten",),
    functional=("torch.flatten", "Tensor.flatten"),
    params_from_module=flatten_from_module,
    module=flatten_module,
    explain=same_shape_explained,
    functional_reader="flatten",
    view_of_input=True,
    examples=(Example(IMAGE, {"start_dim": 2}),),
    shapes="[C, H, W] -> [C*H*W]",
)


# ---------------------------------------------------------------------------------------------
# Permute


class PermuteParams(Params):
    dims: list[Annotated[int, Field(ge=0, le=MAX_RANK)]] = Field(
        max_length=MAX_RANK + 1,
        description=N_("a permutation of all dims, counting the batch, 0 first"),
    )


def permute_infer(p: PermuteParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    full = len(shape) + 1
    if sorted(p.dims) != list(range(full)):
        raise LayerError(
            msg(
                "dims {dims} must be a permutation of 0..{last} for input {shape}",
                dims=p.dims,
                last=full - 1,
                shape=shape_text(("B", *shape)),  # type: ignore[arg-type]
            )
        )
    if p.dims[0] != 0:
        raise LayerError(msg("dims {dims} must keep the batch first (start with 0)", dims=p.dims))
    return Tensor(tuple(shape[d - 1] for d in p.dims[1:]), xs[0].dtype)


def permute_call(p: PermuteParams, attr: str, args: list[str]) -> str:
    return f"{args[0]}.permute({', '.join(map(str, p.dims))})"


PERMUTE = LayerSpec(
    name="Permute",
    category="Core",
    description=N_("Reorders dimensions, e.g. [C, L] from a Conv1d into [T, F] for an RNN."),
    formula=N_("y = x.permute(dims)"),
    params=PermuteParams,
    infer=permute_infer,
    functional=(
        "torch.permute",
        "Tensor.permute",
        "torch.transpose",
        "Tensor.transpose",
        "torch.swapaxes",
        "Tensor.swapaxes",
    ),
    starter={"dims": [0, 2, 1]},
    call=permute_call,
    key_params=("dims",),
    functional_reader="permute",
    view_of_input=True,
    examples=(Example(SEQUENCE, {"dims": [0, 2, 1]}),),
    shapes="reordered",
)


# ---------------------------------------------------------------------------------------------
# Reshape


class ReshapeParams(Params):
    shape: list[Annotated[int, Field(ge=-1, le=MAX_SIZE)]] = Field(
        min_length=1,
        max_length=MAX_RANK,
        description=N_("a list of positive ints, one of them may be -1"),
    )


def reshape_infer(p: ReshapeParams, xs: list[Tensor]) -> Tensor:
    total = numel(xs[0].shape)
    if p.shape.count(-1) > 1 or any(s == 0 or s < -1 for s in p.shape):
        raise LayerError(
            msg("shape {shape} may hold positive sizes and at most one -1", shape=p.shape)
        )
    known = numel(s for s in p.shape if s != -1)
    if -1 in p.shape:
        if total % known:
            raise LayerError(
                msg(
                    "cannot reshape {before} ({total} elements) to {shape}: {total} is not"
                    " divisible by {known}",
                    before=shape_text(xs[0].shape),
                    total=total,
                    shape=p.shape,
                    known=known,
                )
            )
        return Tensor(tuple(total // known if s == -1 else s for s in p.shape), xs[0].dtype)
    if known != total:
        raise LayerError(
            msg(
                "cannot reshape {before} ({total} elements) to {after} ({known} elements); the"
                " element counts must match",
                before=shape_text(xs[0].shape),
                total=total,
                after=shape_text(p.shape),
                known=known,
            )
        )
    return Tensor(tuple(p.shape), xs[0].dtype)


def reshape_call(p: ReshapeParams, attr: str, args: list[str]) -> str:
    return f"{args[0]}.reshape({args[0]}.size(0), {', '.join(map(str, p.shape))})"


RESHAPE = LayerSpec(
    name="Reshape",
    category="Core",
    description=N_("Views each sample with a new shape of the same number of elements."),
    formula=N_("y = x.reshape(B, *shape)"),
    params=ReshapeParams,
    infer=reshape_infer,
    functional=("torch.reshape", "Tensor.reshape", "Tensor.view"),
    starter={"shape": [-1]},
    call=reshape_call,
    key_params=("shape",),
    functional_reader="reshape",
    view_of_input=True,
    examples=(Example(SEQUENCE, {"shape": [48]}), Example(SEQUENCE, {"shape": [4, -1]})),
    shapes="same element count",
)


# ---------------------------------------------------------------------------------------------
# LearnedConstant: a learned tensor joined to the activations (a ViT's class token, a position
# table, ConvNeXt's layer scale)


class LearnedConstantParams(Params):
    shape: list[Annotated[int, Field(ge=1, le=MAX_SIZE)]] = Field(
        min_length=1,
        max_length=MAX_RANK,
        description=N_("a list of 1 to 6 positive ints, batch excluded"),
    )
    init: Literal["zeros", "normal", "ones"] = Field(
        "zeros", description=N_("'zeros', 'normal' (std 0.02) or 'ones'")
    )

    @model_validator(mode="after")
    def _not_huge(self) -> LearnedConstantParams:
        if numel(self.shape) > 50_000_000:
            raise ValueError(N_("shape has over 50 million elements per sample"))
        return self


# model.py's class for it. It loads a weight of its size in any shape: an imported model's
# parameter keeps its own ([1, 1, E] for a class token, [C] for a layer scale used as [C, 1, 1]).
LEARNED_CONSTANT = '''class LearnedConstant(nn.Module):
    """A learned tensor, the same for every sample; the input gives only the batch size."""

    def __init__(self, shape, init="zeros"):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        if init == "normal":
            nn.init.trunc_normal_(self.weight, std=0.02)
        elif init == "ones":
            nn.init.ones_(self.weight)

    def forward(self, x):
        return self.weight.expand(x.shape[0], *self.weight.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].numel() == self.weight.numel():
            state_dict[key] = state_dict[key].reshape(self.weight.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)
'''


def learned_constant_infer(p: LearnedConstantParams, xs: list[Tensor]) -> Tensor:
    return Tensor(tuple(p.shape))


def learned_constant_count(p: LearnedConstantParams, xs: list[Tensor]) -> int:
    return numel(p.shape)


def learned_constant_module(p: LearnedConstantParams, xs: list[Tensor]) -> str:
    return call("LearnedConstant", fmt(p.shape), **changed(p, "init"))


LEARNED_CONSTANT_SPEC = LayerSpec(
    name="LearnedConstant",
    category="Core",
    description=N_(
        "A learned tensor, the same for every sample, to join to the activations (a class"
        " token to Concat, a table or a scale to Add or Multiply); its input gives only the"
        " batch size."
    ),
    formula=N_("y = w, repeated for each sample of x"),
    params=LearnedConstantParams,
    infer=learned_constant_infer,
    starter={"shape": [1, 8]},
    count_params=learned_constant_count,
    module=learned_constant_module,
    key_params=("shape",),
    helper=("LearnedConstant", LEARNED_CONSTANT),
    takes_token_ids=True,
    examples=(Example(SEQUENCE, {"shape": [1, 6]}), Example(IMAGE, {"shape": [4, 1, 1]})),
    shapes="x -> shape (x gives the batch size only)",
)


# ---------------------------------------------------------------------------------------------
# Reparameterize: a variational autoencoder's sample of its code, z = mu + eps * std


# model.py's class for it: the sample as the PyTorch VAE example draws it, and the KL term of the
# batch kept for the loss "vae" (runtime/loop.py adds every such layer's `kl`).
REPARAMETERIZE = '''class Reparameterize(nn.Module):
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, 1); keeps the batch's KL divergence from
    N(0, 1) (summed) as self.kl for the loss "vae". In eval mode z = mu, unless eval_output
    is "sample" (as the PyTorch VAE example does)."""

    def __init__(self, eval_output="mean"):
        super().__init__()
        self.eval_output = eval_output

    def forward(self, mu, logvar):
        self.kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        if not self.training and self.eval_output == "mean":
            return mu
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std
'''


class ReparameterizeParams(Params):
    eval_output: Literal["mean", "sample"] = Field(
        "mean", description=N_("'mean' (z = mu in eval mode) or 'sample' (a sample always)")
    )


def reparameterize_infer(p: ReparameterizeParams, xs: list[Tensor]) -> Tensor:
    if len(xs) != 2 or xs[0].shape != xs[1].shape:
        raise LayerError(
            msg(
                "needs two inputs of one shape, the mean and the log-variance, got {shapes}",
                shapes=", ".join(shape_text(x.shape) for x in xs),
            )
        )
    return as_float(xs[0])


def reparameterize_module(p: ReparameterizeParams, xs: list[Tensor]) -> str:
    return call("Reparameterize", **changed(p, "eval_output"))


def reparameterize_call(p: ReparameterizeParams, attr: str, args: list[str]) -> str:
    return f"self.{attr}({args[0]}, {args[1]})"


def reparameterize_onnx(p: ReparameterizeParams, xs: list[Tensor], y: Tensor) -> Message | None:
    if p.eval_output == "mean":
        return None
    return msg(
        "it samples in eval mode, and ONNX Runtime draws other random numbers than PyTorch;"
        " set eval_output to mean"
    )


REPARAMETERIZE_SPEC = LayerSpec(
    name="Reparameterize",
    category="Core",
    description=N_(
        "A variational autoencoder's code: a random sample around the mean (input 0) with the"
        " spread its log-variance (input 1) gives; the loss vae pulls the codes towards N(0, 1)."
    ),
    formula=N_("z = mu + eps * exp(0.5 * logvar), eps ~ N(0, 1)"),
    params=ReparameterizeParams,
    infer=reparameterize_infer,
    min_inputs=2,
    max_inputs=2,
    module=reparameterize_module,
    call=reparameterize_call,
    helper=("Reparameterize", REPARAMETERIZE),
    onnx_limit=reparameterize_onnx,
    examples=(Example(SEQUENCE),),
    shapes="mu, logvar -> z, all one shape",
)


# ---------------------------------------------------------------------------------------------
# Slice: x[..., start:stop:step] along one dim (Swin's patch merging takes every other row)


class SliceParams(Params):
    dim: int = dim_field(1)
    start: int = Field(
        0, ge=-MAX_SIZE, le=MAX_SIZE, description=N_("an int (negative: from the end)")
    )
    stop: int | None = Field(
        None,
        ge=-MAX_SIZE,
        le=MAX_SIZE,
        description=N_("an int, or null for the end (negative: from the end)"),
    )
    step: int = count(N_("a positive int (every step-th element)"), 1)


def slice_length(p: SliceParams, size: int) -> int:
    """How many elements x[start:stop:step] keeps of `size`, as Python counts them."""
    return len(range(*slice(p.start, p.stop, p.step).indices(size)))


def slice_infer(p: SliceParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    dim = full_dim(p.dim, len(shape))
    kept = slice_length(p, shape[dim - 1])
    if kept < 1:
        raise LayerError(
            msg(
                "{start}:{stop}:{step} keeps nothing of dim {dim}, of size {size}",
                start=p.start,
                stop="" if p.stop is None else p.stop,
                step=p.step,
                dim=p.dim,
                size=shape[dim - 1],
            )
        )
    return Tensor(shape[: dim - 1] + (kept,) + shape[dim:], xs[0].dtype)


def slice_call(p: SliceParams, attr: str, args: list[str]) -> str:
    """x[:, :, 1::2] (dim 2), or from the end x[..., 1::2, :] (dim -2)."""
    stop = "" if p.stop is None else p.stop
    cut = f"{p.start or ''}:{stop}" + (f":{p.step}" if p.step != 1 else "")
    if p.dim < 0:
        return f"{args[0]}[..., {cut}{', :' * (-p.dim - 1)}]"
    return f"{args[0]}[{':, ' * p.dim}{cut}]"


SLICE = LayerSpec(
    name="Slice",
    category="Core",
    description=N_(
        "Keeps part of one dim: from start to stop, every step-th element (x[:, 1::2] takes"
        " the odd rows)."
    ),
    formula=N_("y = x[..., start:stop:step, ...] along dim"),
    params=SliceParams,
    infer=slice_infer,
    starter={"dim": 1, "start": 0, "step": 2},
    call=slice_call,
    key_params=("dim", "start", "stop", "step"),
    view_of_input=True,
    examples=(Example(IMAGE, {"dim": 2, "start": 1, "step": 2}), Example(SEQUENCE, {"stop": -1})),
    shapes="dim cut to start:stop:step",
)


# ---------------------------------------------------------------------------------------------
# Pad: constant padding at both ends of the last dims, as F.pad takes it


class PadParams(Params):
    pad: list[Annotated[int, Field(ge=0, le=MAX_SIZE)]] = Field(
        min_length=2,
        max_length=2 * MAX_RANK,
        description=N_(
            "an even number of ints >= 0: before and after the last dim, then the one before it"
        ),
    )
    value: float = Field(0.0, description=N_("a float (what the new places hold)"))

    @model_validator(mode="after")
    def _pairs(self) -> PadParams:
        if len(self.pad) % 2:
            raise ValueError(N_("pad needs an even number of ints, two per dim"))
        return self


def pad_infer(p: PadParams, xs: list[Tensor]) -> Tensor:
    shape = list(xs[0].shape)
    dims = len(p.pad) // 2
    if dims > len(shape):
        raise LayerError(
            msg(
                "pad {pad} pads {dims} dims, but {shape} has {rank} besides the batch",
                pad=p.pad,
                dims=dims,
                shape=shape_text(shape),
                rank=len(shape),
            )
        )
    for i in range(dims):
        shape[-1 - i] += p.pad[2 * i] + p.pad[2 * i + 1]
    return Tensor(tuple(shape), xs[0].dtype)


def pad_call(p: PadParams, attr: str, args: list[str]) -> str:
    value = f", value={fmt(p.value)}" if p.value else ""
    return f"nn.functional.pad({args[0]}, {fmt(p.pad)}{value})"


def pad_explain(p: PadParams, xs: list[Tensor], y: Tensor) -> Message:
    return msg(
        "{before} -> {after}, new places {value}",
        before=shape_text(xs[0].shape),
        after=shape_text(y.shape),
        value=p.value,
    )


PAD_SPEC = LayerSpec(
    name="Pad",
    category="Core",
    description=N_(
        "Adds places holding one value before and after the last dims (F.pad with a"
        " constant): pad [0, 1] adds one place after the last dim."
    ),
    formula=N_("y = F.pad(x, pad, value=value)"),
    params=PadParams,
    infer=pad_infer,
    functional=("torch.nn.functional.pad",),
    starter={"pad": [1, 1]},
    call=pad_call,
    explain=pad_explain,
    key_params=("pad",),
    functional_reader="pad",
    examples=(
        Example(IMAGE, {"pad": [0, 1, 2, 0]}),
        Example(SEQUENCE, {"pad": [1, 1], "value": 0.5}),
    ),
    shapes="each padded dim grows by its two pads",
)

ENTRIES = (
    INPUT,
    OUTPUT,
    LINEAR,
    IDENTITY,
    FLATTEN,
    PERMUTE,
    RESHAPE,
    LEARNED_CONSTANT_SPEC,
    REPARAMETERIZE_SPEC,
    SLICE,
    PAD_SPEC,
)
