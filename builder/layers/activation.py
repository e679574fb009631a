"""Activations: ReLU, ReLU6, LeakyReLU, PReLU, ELU, GELU, SiLU, Mish, Hardswish, Hardsigmoid,
Softplus, Tanh, Sigmoid, Softmax, LogSoftmax (each keeps the shape) and GLU (halves one dim)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from builder.layers.base import (
    IMAGE,
    SEQUENCE,
    Argument,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NoParams,
    NotMappable,
    Params,
    Tensor,
    as_float,
    call,
    changed,
    count,
    dim_field,
    full_dim,
    keep_shape,
    no_params_from_module,
)
from i18n import N_, msg

BOUNDED_FLOAT = N_("a float from -1000 to 1000")
POSITIVE_FLOAT = N_("a positive float, at most 1000")


# ---------------------------------------------------------------------------------------------
# Without parameters


def relu_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.ReLU()"


RELU = LayerSpec(
    name="ReLU",
    category="Activation",
    description=N_("Keeps positives, zeroes negatives."),
    formula=N_("y = max(0, x)"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("ReLU",),
    functional=("torch.nn.functional.relu", "torch.relu", "Tensor.relu"),
    params_from_module=no_params_from_module,
    module=relu_module,
)


def relu6_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.ReLU6()"


RELU6 = LayerSpec(
    name="ReLU6",
    category="Activation",
    description=N_("ReLU capped at 6, robust in low precision (MobileNet)."),
    formula=N_("y = min(max(0, x), 6)"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("ReLU6",),
    functional=("torch.nn.functional.relu6",),
    params_from_module=no_params_from_module,
    module=relu6_module,
)


def silu_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.SiLU()"


SILU = LayerSpec(
    name="SiLU",
    category="Activation",
    description=N_("Smooth ReLU-like gate (also called swish)."),
    formula=N_("y = x * sigmoid(x)"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("SiLU",),
    functional=("torch.nn.functional.silu",),
    params_from_module=no_params_from_module,
    module=silu_module,
)


def hardswish_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Hardswish()"


HARDSWISH = LayerSpec(
    name="Hardswish",
    category="Activation",
    description=N_("A cheap, piecewise version of SiLU (MobileNetV3)."),
    formula=N_("y = x * min(max(x + 3, 0), 6) / 6"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Hardswish",),
    functional=("torch.nn.functional.hardswish",),
    params_from_module=no_params_from_module,
    module=hardswish_module,
)


def hardsigmoid_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Hardsigmoid()"


HARDSIGMOID = LayerSpec(
    name="Hardsigmoid",
    category="Activation",
    description=N_("A cheap, piecewise version of Sigmoid (squeeze-and-excitation gates)."),
    formula=N_("y = min(max(x + 3, 0), 6) / 6"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Hardsigmoid",),
    functional=("torch.nn.functional.hardsigmoid",),
    params_from_module=no_params_from_module,
    module=hardsigmoid_module,
)


def tanh_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Tanh()"


TANH = LayerSpec(
    name="Tanh",
    category="Activation",
    description=N_("Squashes into (-1, 1)."),
    formula=N_("y = tanh(x)"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Tanh",),
    functional=("torch.tanh", "torch.nn.functional.tanh", "Tensor.tanh"),
    params_from_module=no_params_from_module,
    module=tanh_module,
)


def sigmoid_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Sigmoid()"


SIGMOID = LayerSpec(
    name="Sigmoid",
    category="Activation",
    description=N_("Squashes into (0, 1)."),
    formula=N_("y = 1 / (1 + exp(-x))"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Sigmoid",),
    functional=("torch.sigmoid", "torch.nn.functional.sigmoid", "Tensor.sigmoid"),
    params_from_module=no_params_from_module,
    module=sigmoid_module,
)


def mish_module(p: NoParams, xs: list[Tensor]) -> str:
    return "nn.Mish()"


MISH = LayerSpec(
    name="Mish",
    category="Activation",
    description=N_("A smooth, self-gated ReLU-like curve (YOLOv4)."),
    formula=N_("y = x * tanh(softplus(x))"),
    params=NoParams,
    infer=keep_shape,
    torch_modules=("Mish",),
    functional=("torch.nn.functional.mish",),
    params_from_module=no_params_from_module,
    module=mish_module,
)


# ---------------------------------------------------------------------------------------------
# With parameters


class GELUParams(Params):
    approximate: Literal["none", "tanh"] = Field("none", description=N_("'none' or 'tanh'"))


def gelu_module(p: GELUParams, xs: list[Tensor]) -> str:
    return call("nn.GELU", **changed(p, "approximate"))


def gelu_from_module(m: Any) -> dict[str, Any]:
    return {"approximate": m.approximate}


GELU = LayerSpec(
    name="GELU",
    category="Activation",
    description=N_("Smooth gate used in Transformers."),
    formula=N_("y = x * Phi(x)"),
    params=GELUParams,
    infer=keep_shape,
    torch_modules=("GELU",),
    functional=("torch.nn.functional.gelu",),
    params_from_module=gelu_from_module,
    module=gelu_module,
    functional_args=(Argument("approximate", 1, "none"),),
    examples=(Example(params={"approximate": "tanh"}),),
)


class LeakyReLUParams(Params):
    negative_slope: float = Field(0.01, ge=-1e3, le=1e3, description=BOUNDED_FLOAT)


def leaky_relu_module(p: LeakyReLUParams, xs: list[Tensor]) -> str:
    return call("nn.LeakyReLU", **changed(p, "negative_slope"))


def leaky_relu_from_module(m: Any) -> dict[str, Any]:
    return {"negative_slope": float(m.negative_slope)}


LEAKY_RELU = LayerSpec(
    name="LeakyReLU",
    category="Activation",
    description=N_("Like ReLU, but lets a small slope through for negatives."),
    formula=N_("y = x if x > 0 else negative_slope * x"),
    params=LeakyReLUParams,
    infer=keep_shape,
    torch_modules=("LeakyReLU",),
    functional=("torch.nn.functional.leaky_relu",),
    params_from_module=leaky_relu_from_module,
    module=leaky_relu_module,
    key_params=("negative_slope",),
    functional_args=(Argument("negative_slope", 1, 0.01),),
    examples=(Example(params={"negative_slope": 0.1}),),
)


class PReLUParams(Params):
    num_parameters: int = count(N_("1 or the number of channels"), default=1)
    init: float = Field(0.25, ge=-1e3, le=1e3, description=BOUNDED_FLOAT)


def prelu_infer(p: PReLUParams, xs: list[Tensor]) -> Tensor:
    channels = xs[0].shape[0]
    if p.num_parameters not in (1, channels):
        raise LayerError(
            msg(
                "num_parameters={n} must be 1 (one slope) or the {channels} channels of {shape}"
                " (one slope each)",
                n=p.num_parameters,
                channels=channels,
                shape=list(xs[0].shape),
            ),
            Fix(msg("one slope per channel"), set_params={"num_parameters": channels}),
        )
    return as_float(xs[0])


def prelu_count(p: PReLUParams, xs: list[Tensor]) -> int:
    return p.num_parameters


def prelu_module(p: PReLUParams, xs: list[Tensor]) -> str:
    return call("nn.PReLU", **changed(p, "num_parameters", "init"))


def prelu_from_module(m: Any) -> dict[str, Any]:
    return {"num_parameters": m.num_parameters, "init": float(m.init)}


PRELU = LayerSpec(
    name="PReLU",
    category="Activation",
    description=N_("LeakyReLU whose negative slope is learned (one, or one per channel)."),
    formula=N_("y = x if x > 0 else a * x, a learned"),
    params=PReLUParams,
    infer=prelu_infer,
    torch_modules=("PReLU",),
    params_from_module=prelu_from_module,
    count_params=prelu_count,
    module=prelu_module,
    key_params=("num_parameters",),
    examples=(Example(IMAGE, {"num_parameters": 4}),),
)


class ELUParams(Params):
    alpha: float = Field(1.0, ge=0.0, le=1e3, description=N_("a float from 0 to 1000"))


def elu_module(p: ELUParams, xs: list[Tensor]) -> str:
    return call("nn.ELU", **changed(p, "alpha"))


def elu_from_module(m: Any) -> dict[str, Any]:
    return {"alpha": float(m.alpha)}


ELU = LayerSpec(
    name="ELU",
    category="Activation",
    description=N_("Like ReLU, but negatives curve smoothly down to -alpha."),
    formula=N_("y = x if x > 0 else alpha * (exp(x) - 1)"),
    params=ELUParams,
    infer=keep_shape,
    torch_modules=("ELU",),
    functional=("torch.nn.functional.elu",),
    params_from_module=elu_from_module,
    module=elu_module,
    key_params=("alpha",),
    functional_args=(Argument("alpha", 1, 1.0),),
    examples=(Example(params={"alpha": 0.5}),),
)


class SoftplusParams(Params):
    beta: float = Field(1.0, gt=0.0, le=1e3, description=POSITIVE_FLOAT)
    threshold: float = Field(20.0, gt=0.0, le=1e3, description=POSITIVE_FLOAT)


def softplus_module(p: SoftplusParams, xs: list[Tensor]) -> str:
    return call("nn.Softplus", **changed(p, "beta", "threshold"))


def softplus_from_module(m: Any) -> dict[str, Any]:
    return {"beta": float(m.beta), "threshold": float(m.threshold)}


SOFTPLUS = LayerSpec(
    name="Softplus",
    category="Activation",
    description=N_("A smooth ReLU that is always positive (above threshold it is x itself)."),
    formula=N_("y = log(1 + exp(beta * x)) / beta"),
    params=SoftplusParams,
    infer=keep_shape,
    torch_modules=("Softplus",),
    functional=("torch.nn.functional.softplus",),
    params_from_module=softplus_from_module,
    module=softplus_module,
    key_params=("beta",),
    functional_args=(Argument("beta", 1, 1.0), Argument("threshold", 2, 20.0)),
    examples=(Example(params={"beta": 2.0}),),
)


# ---------------------------------------------------------------------------------------------
# Softmax, LogSoftmax: along one dim


class SoftmaxParams(Params):
    dim: int = dim_field(-1)


class LogSoftmaxParams(Params):
    dim: int = dim_field()


def softmax_infer(p: SoftmaxParams | LogSoftmaxParams, xs: list[Tensor]) -> Tensor:
    full_dim(p.dim, len(xs[0].shape))
    return as_float(xs[0])


def softmax_module(p: SoftmaxParams, xs: list[Tensor]) -> str:
    return call("nn.Softmax", dim=p.dim)


def log_softmax_module(p: LogSoftmaxParams, xs: list[Tensor]) -> str:
    return call("nn.LogSoftmax", dim=p.dim)


def softmax_from_module(m: Any) -> dict[str, Any]:
    if m.dim is None:
        raise NotMappable(msg("softmax without dim"))
    return {"dim": m.dim}


SOFTMAX = LayerSpec(
    name="Softmax",
    category="Activation",
    description=N_("Turns scores into probabilities that sum to 1 along dim."),
    formula=N_("y_i = exp(x_i) / sum_j exp(x_j)"),
    params=SoftmaxParams,
    infer=softmax_infer,
    torch_modules=("Softmax",),
    functional=("torch.nn.functional.softmax", "torch.softmax", "Tensor.softmax"),
    params_from_module=softmax_from_module,
    module=softmax_module,
    key_params=("dim",),
    functional_reader="softmax",
)

LOG_SOFTMAX = LayerSpec(
    name="LogSoftmax",
    category="Activation",
    description=N_(
        "The logarithm of Softmax, computed stably: log-probabilities for the nll loss."
    ),
    formula=N_("y_i = x_i - log(sum_j exp(x_j))"),
    params=LogSoftmaxParams,
    infer=softmax_infer,
    torch_modules=("LogSoftmax",),
    functional=("torch.nn.functional.log_softmax", "torch.log_softmax", "Tensor.log_softmax"),
    params_from_module=softmax_from_module,
    starter={"dim": -1},
    module=log_softmax_module,
    key_params=("dim",),
    functional_reader="softmax",
    examples=(Example(params={"dim": 1}),),
)

# ---------------------------------------------------------------------------------------------
# GLU: a gated linear unit, half of one dim gating the other half


class GLUParams(Params):
    dim: int = dim_field(-1)


def glu_infer(p: GLUParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    dim = full_dim(p.dim, len(shape))
    size = shape[dim - 1]
    if size % 2:
        raise LayerError(
            msg(
                "GLU halves dim {dim}, but its size {size} is odd; it needs an even size",
                dim=p.dim,
                size=size,
            )
        )
    return Tensor(shape[: dim - 1] + (size // 2,) + shape[dim:])


def glu_module(p: GLUParams, xs: list[Tensor]) -> str:
    return call("nn.GLU", **changed(p, "dim"))


def glu_from_module(m: Any) -> dict[str, Any]:
    return {"dim": m.dim}


GLU = LayerSpec(
    name="GLU",
    category="Activation",
    description=N_(
        "A gated linear unit: splits dim in two halves a and b and returns a * sigmoid(b)."
    ),
    formula=N_("y = a * sigmoid(b), (a, b) = halves of x along dim"),
    params=GLUParams,
    infer=glu_infer,
    torch_modules=("GLU",),
    functional=("torch.nn.functional.glu",),
    functional_args=(Argument("dim", 1, -1),),
    params_from_module=glu_from_module,
    module=glu_module,
    key_params=("dim",),
    examples=(Example(SEQUENCE), Example(SEQUENCE, {"dim": 1})),
    shapes="halves dim: [..., 2n, ...] -> [..., n, ...]",
)

ENTRIES = (
    RELU,
    RELU6,
    LEAKY_RELU,
    PRELU,
    ELU,
    GELU,
    SILU,
    MISH,
    HARDSWISH,
    HARDSIGMOID,
    SOFTPLUS,
    TANH,
    SIGMOID,
    SOFTMAX,
    LOG_SOFTMAX,
    GLU,
)
