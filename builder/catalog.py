"""The layer catalog: everything NetBuilder knows about each layer type, in one entry per type.

An entry holds the parameter schema (a pydantic model: types, defaults, ranges, choices), the
palette category, the number of inputs, the shape rule, the parameter and MAC counts, the PyTorch
constructor it emits, its forward expression, a one-line description and the formula it applies.
Adding a layer type means adding one entry here (and one test).

Shapes never include the batch dimension; `dim`/`dims` parameters count it, as in PyTorch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

Shape = tuple[int, ...]
MAX_SIZE = 10_000_000

CATEGORIES = (
    "Core",
    "Convolution",
    "Pooling",
    "Normalisation",
    "Regularisation",
    "Activation",
    "Recurrent",
    "Attention",
    "Merge",
)
SEQUENCE_TYPES = frozenset(
    {"Embedding", "RNN", "LSTM", "GRU", "MultiheadAttention", "TransformerEncoderLayer"}
)


@dataclass(frozen=True)
class Tensor:
    """What flows along an edge: a per-sample shape, its dtype and the producing layer's type."""

    shape: Shape
    dtype: str = "float32"
    source_type: str = ""


@dataclass(frozen=True)
class Fix:
    """A suggested edit, relative to the node: insert a layer on one input edge, or set params."""

    why: str
    insert_type: str | None = None
    insert_params: dict[str, Any] = field(default_factory=dict)
    on_input: int = 0
    set_params: dict[str, Any] | None = None


class LayerError(Exception):
    """A shape rule failed: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, fix: Fix | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class Advice:
    """A warning: the graph runs, but probably not as meant."""

    message: str
    fix: Fix | None = None


# ---------------------------------------------------------------------------------------------
# Parameter types. Each field's description is the phrase used in error messages and form help.


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _spatial(n: int, minimum: int) -> Any:
    """An int or a list of n ints, each >= minimum (PyTorch's `int or tuple`)."""

    def check(value: int | list[int]) -> int | list[int]:
        values = [value] * n if isinstance(value, int) else value
        if len(values) != n or any(v < minimum for v in values):
            raise ValueError(f"needs {n} values >= {minimum}")
        return value

    return Annotated[int | list[int], AfterValidator(check)]


def _expect(n: int, minimum: int) -> str:
    noun = "positive int" if minimum == 1 else f"int >= {minimum}"
    return f"a {noun}" if n == 1 else f"a {noun} or list of {n}"


def _tuple(value: int | list[int] | None, n: int) -> tuple[int, ...]:
    return tuple([value] * n) if isinstance(value, int) else tuple(value or ())


def _req_int(expect: str = "a positive int", le: int = MAX_SIZE) -> Any:
    return Field(ge=1, le=le, description=expect)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Eps = Annotated[float, Field(gt=0.0, le=1.0)]


# ---------------------------------------------------------------------------------------------
# Small helpers for the rules and the emitted code.


def _fmt(value: Any) -> str:
    """Python source for a parameter value (lists become tuples, strings are escaped)."""
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return json.dumps(value)  # double quotes, as black writes them; escapes are Python's too
    return repr(value)


def _call(func: str, *args: Any, **kwargs: Any) -> str:
    parts = [str(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
    return f"{func}({', '.join(parts)})"


def _changed(p: Params, *names: str) -> dict[str, Any]:
    """The named params whose value differs from the default (so the code shows only choices)."""
    fields = type(p).model_fields
    return {
        n: getattr(p, n)
        for n in names
        if fields[n].is_required() or getattr(p, n) != fields[n].default
    }


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _need_rank(x: Tensor, ranks: Sequence[int], layout: str, hint: str = "") -> None:
    if len(x.shape) not in ranks:
        raise LayerError(f"needs {layout} input, got {shape_text(x.shape)}{hint}")


def _full_dim(dim: int, rank: int, what: str = "dim") -> int:
    """Normalise a batch-counting dim for a per-sample rank; the batch dim itself is refused."""
    full = rank + 1
    if not -full <= dim < full:
        raise LayerError(f"{what} {dim} is out of range: the input has {full} dims with the batch")
    dim = dim % full
    if dim == 0:
        raise LayerError(f"{what} 0 is the batch dimension; dims count the batch, so use 1 or more")
    return dim


def _divisors_up_to(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class LayerSpec:
    """One layer type. `infer` raises LayerError; `module` returns constructor source or None."""

    name: str
    category: str
    description: str
    formula: str
    params: type[Params]
    infer: Callable[[Any, list[Tensor]], Tensor]
    min_inputs: int = 1
    max_inputs: int | None = 1
    count_params: Callable[[Any, list[Tensor]], int] = lambda p, xs: 0
    macs: Callable[[Any, list[Tensor], Tensor], int] = lambda p, xs, y: 0
    module: Callable[[Any, list[Tensor]], str] | None = None
    call: Callable[[Any, str, list[str]], str] = lambda p, attr, args: f"self.{attr}({args[0]})"
    explain: Callable[[Any, list[Tensor], Tensor], str] | None = None
    advise: Callable[[Any, list[Tensor]], list[Advice]] = lambda p, xs: []
    key_params: tuple[str, ...] = ()


CATALOG: dict[str, LayerSpec] = {}


def _add(spec: LayerSpec) -> None:
    CATALOG[spec.name] = spec


def _float(x: Tensor) -> Tensor:
    return Tensor(x.shape, "float32")


def _same(p: Any, xs: list[Tensor]) -> Tensor:
    return _float(xs[0])


# ---------------------------------------------------------------------------------------------
# Core


class InputParams(Params):
    shape: list[Annotated[int, AfterValidator(_positive), Field(le=MAX_SIZE)]] = Field(
        min_length=1, max_length=6, description="a list of 1 to 6 positive ints, batch excluded"
    )
    dtype: Literal["float32", "int64"] = Field("float32", description="'float32' or 'int64'")

    @model_validator(mode="after")
    def _not_huge(self) -> InputParams:
        if _numel(self.shape) > 50_000_000:
            raise ValueError("shape has over 50 million elements per sample")
        return self


_add(
    LayerSpec(
        name="Input",
        category="Core",
        description="The data that enters the model: one sample's shape, without the batch.",
        formula="x: [B, *shape]",
        params=InputParams,
        min_inputs=0,
        max_inputs=0,
        infer=lambda p, xs: Tensor(tuple(p.shape), p.dtype),
        key_params=("shape", "dtype"),
    )
)


class NoParams(Params):
    pass


_add(
    LayerSpec(
        name="Output",
        category="Core",
        description="Marks what the model returns.",
        formula="y = x",
        params=NoParams,
        infer=lambda p, xs: xs[0],
    )
)


class LinearParams(Params):
    out_features: int = _req_int()
    bias: bool = Field(True, description="true or false")


def _linear_infer(p: LinearParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], range(1, 7), "[..., F]")
    return Tensor(xs[0].shape[:-1] + (p.out_features,))


def _linear_advise(p: LinearParams, xs: list[Tensor]) -> list[Advice]:
    if len(xs[0].shape) < 3:
        return []
    flat = _numel(xs[0].shape)
    return [
        Advice(
            f"Linear acts on the last dim only, so {shape_text(xs[0].shape)} gives"
            f" {shape_text(xs[0].shape[:-1] + (p.out_features,))}; insert a Flatten before it"
            f" for one vector of {flat} features per sample",
            Fix("a classifier head usually wants one flat vector per sample", "Flatten"),
        )
    ]


_add(
    LayerSpec(
        name="Linear",
        category="Core",
        description="A fully connected layer: every output is a weighted sum of all input features.",
        formula="y = x W^T + b",
        params=LinearParams,
        infer=_linear_infer,
        count_params=lambda p, xs: xs[0].shape[-1] * p.out_features + p.out_features * p.bias,
        macs=lambda p, xs, y: _numel(xs[0].shape) * p.out_features,
        module=lambda p, xs: _call(
            "nn.Linear", xs[0].shape[-1], p.out_features, **_changed(p, "bias")
        ),
        explain=lambda p, xs, y: (
            f"[..., {xs[0].shape[-1]}] -> [..., {p.out_features}]; weights"
            f" {xs[0].shape[-1]}*{p.out_features}" + (f" + bias {p.out_features}" if p.bias else "")
        ),
        advise=_linear_advise,
        key_params=("out_features",),
    )
)


class FlattenParams(Params):
    start_dim: int = Field(1, description="an int (counts the batch)")
    end_dim: int = Field(-1, description="an int (counts the batch)")


def _flatten_infer(p: FlattenParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    start = _full_dim(p.start_dim, len(shape), "start_dim")
    end = _full_dim(p.end_dim, len(shape), "end_dim")
    if start > end:
        raise LayerError(f"start_dim {p.start_dim} comes after end_dim {p.end_dim}")
    merged = _numel(shape[start - 1 : end])
    return Tensor(shape[: start - 1] + (merged,) + shape[end:], xs[0].dtype)


_add(
    LayerSpec(
        name="Flatten",
        category="Core",
        description="Joins dimensions into one, e.g. [C, H, W] into one vector for a Linear head.",
        formula="[C, H, W] -> [C*H*W]",
        params=FlattenParams,
        infer=_flatten_infer,
        module=lambda p, xs: _call("nn.Flatten", **_changed(p, "start_dim", "end_dim")),
        explain=lambda p, xs, y: f"{shape_text(xs[0].shape)} -> {shape_text(y.shape)}",
    )
)


class PermuteParams(Params):
    dims: list[int] = Field(description="a permutation of all dims, counting the batch, 0 first")


def _permute_infer(p: PermuteParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    full = len(shape) + 1
    if sorted(p.dims) != list(range(full)):
        raise LayerError(
            f"dims {p.dims} must be a permutation of 0..{full - 1} for input"
            f" [B, {', '.join(map(str, shape))}]"
        )
    if p.dims[0] != 0:
        raise LayerError(f"dims {p.dims} must keep the batch first (start with 0)")
    return Tensor(tuple(shape[d - 1] for d in p.dims[1:]), xs[0].dtype)


_add(
    LayerSpec(
        name="Permute",
        category="Core",
        description="Reorders dimensions, e.g. [C, L] from a Conv1d into [T, F] for an RNN.",
        formula="y = x.permute(dims)",
        params=PermuteParams,
        infer=_permute_infer,
        call=lambda p, attr, args: f"{args[0]}.permute({', '.join(map(str, p.dims))})",
        key_params=("dims",),
    )
)


class ReshapeParams(Params):
    shape: list[int] = Field(
        min_length=1, max_length=6, description="a list of positive ints, one of them may be -1"
    )


def _reshape_infer(p: ReshapeParams, xs: list[Tensor]) -> Tensor:
    total = _numel(xs[0].shape)
    if p.shape.count(-1) > 1 or any(s == 0 or s < -1 for s in p.shape):
        raise LayerError(f"shape {p.shape} may hold positive sizes and at most one -1")
    known = _numel(s for s in p.shape if s != -1)
    if -1 in p.shape:
        if total % known:
            raise LayerError(
                f"cannot reshape {shape_text(xs[0].shape)} ({total} elements) to {p.shape}:"
                f" {total} is not divisible by {known}"
            )
        return Tensor(tuple(total // known if s == -1 else s for s in p.shape), xs[0].dtype)
    if known != total:
        raise LayerError(
            f"cannot reshape {shape_text(xs[0].shape)} ({total} elements) to"
            f" {shape_text(p.shape)} ({known} elements); the element counts must match"
        )
    return Tensor(tuple(p.shape), xs[0].dtype)


_add(
    LayerSpec(
        name="Reshape",
        category="Core",
        description="Views each sample with a new shape of the same number of elements.",
        formula="y = x.reshape(B, *shape)",
        params=ReshapeParams,
        infer=_reshape_infer,
        call=lambda p, attr, args: (
            f"{args[0]}.reshape({args[0]}.size(0), {', '.join(map(str, p.shape))})"
        ),
        key_params=("shape",),
    )
)


# ---------------------------------------------------------------------------------------------
# Convolution and pooling


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """O = floor((I + 2p - d(k-1) - 1)/s) + 1, PyTorch's rule (ceil_mode as in its pooling)."""
    span = size + 2 * p - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


def _formula_text(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> str:
    rounding = "ceil" if ceil_mode else "floor"
    out = _out_size(size, k, s, p, d, ceil_mode)
    return f"O = {rounding}(({size} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 = {out}"


def _window_sizes(n: int, p: Any, size: Sequence[int], padding: Sequence[int]) -> Shape:
    k, s = _tuple(p.kernel_size, n), _tuple(p.stride or p.kernel_size, n)
    d = _tuple(getattr(p, "dilation", 1), n)
    ceil_mode = getattr(p, "ceil_mode", False)
    out = tuple(_out_size(size[i], k[i], s[i], padding[i], d[i], ceil_mode) for i in range(n))
    if min(out) < 1:
        dilated = [d[i] * (k[i] - 1) + 1 for i in range(n)]
        padded = [size[i] + 2 * padding[i] for i in range(n)]
        raise LayerError(
            f"kernel {'x'.join(map(str, k))} (dilated {'x'.join(map(str, dilated))}) exceeds"
            f" padded input {'x'.join(map(str, padded))}; use a smaller kernel or more padding"
        )
    return out


def _window_explain(n: int, p: Any, size: Sequence[int], padding: Sequence[int]) -> str:
    k, s = _tuple(p.kernel_size, n), _tuple(p.stride or p.kernel_size, n)
    d = _tuple(getattr(p, "dilation", 1), n)
    ceil_mode = getattr(p, "ceil_mode", False)
    return "; ".join(
        _formula_text(size[i], k[i], s[i], padding[i], d[i], ceil_mode) for i in range(n)
    )


def _conv_params_model(n: int) -> type[Params]:
    class ConvParams(Params):
        out_channels: int = _req_int()
        kernel_size: _spatial(n, 1) = Field(description=_expect(n, 1))  # type: ignore[valid-type]
        stride: _spatial(n, 1) = Field(1, description=_expect(n, 1))  # type: ignore[valid-type]
        padding: _spatial(n, 0) | Literal["same", "valid"] = Field(  # type: ignore[valid-type]
            0, description=_expect(n, 0) + ", 'same' or 'valid'"
        )
        dilation: _spatial(n, 1) = Field(1, description=_expect(n, 1))  # type: ignore[valid-type]
        groups: int = Field(1, ge=1, le=MAX_SIZE, description="a positive int")
        bias: bool = Field(True, description="true or false")

    ConvParams.__name__ = f"Conv{n}dParams"
    return ConvParams


def _conv_padding(n: int, p: Any) -> tuple[int, ...]:
    """Symmetric padding for the shape rule ('same' keeps the size, 'valid' is 0)."""
    if p.padding == "valid":
        return (0,) * n
    if p.padding == "same":
        return (0,) * n  # shapes for 'same' are handled directly
    return _tuple(p.padding, n)


def _conv_infer(n: int) -> Callable[[Any, list[Tensor]], Tensor]:
    layout = "[C, L]" if n == 1 else "[C, H, W]"

    def infer(p: Any, xs: list[Tensor]) -> Tensor:
        x = xs[0]
        if len(x.shape) != n + 1:
            fix = None
            if n == 2 and len(x.shape) == 2:
                fix = Fix(
                    "add a channel dimension", "Reshape", {"shape": [1, *x.shape]}
                )
            raise LayerError(f"needs {layout} input, got {shape_text(x.shape)}", fix)
        channels, size = x.shape[0], x.shape[1:]
        if channels % p.groups or p.out_channels % p.groups:
            raise LayerError(
                f"groups={p.groups} must divide both in_channels ({channels}) and out_channels"
                f" ({p.out_channels})",
                Fix("groups must divide the channels", set_params={"groups": math.gcd(channels, p.out_channels)}),
            )
        if p.padding == "same":
            if any(s != 1 for s in _tuple(p.stride, n)):
                raise LayerError(
                    "padding 'same' needs stride 1; use a number for padding",
                    Fix("'same' needs stride 1", set_params={"stride": 1}),
                )
            return Tensor((p.out_channels, *size))
        try:
            out = _window_sizes(n, p, size, _conv_padding(n, p))
        except LayerError as exc:
            fix = None
            if all(s == 1 for s in _tuple(p.stride, n)):
                fix = Fix("'same' padding keeps the input size", set_params={"padding": "same"})
            raise LayerError(exc.message, fix) from None
        return Tensor((p.out_channels, *out))

    return infer


def _conv_count(p: Any, xs: list[Tensor]) -> int:
    n = len(xs[0].shape) - 1
    weights = p.out_channels * (xs[0].shape[0] // p.groups) * _numel(_tuple(p.kernel_size, n))
    return weights + p.out_channels * p.bias


def _conv_macs(p: Any, xs: list[Tensor], y: Tensor) -> int:
    n = len(xs[0].shape) - 1
    return _numel(y.shape) * (xs[0].shape[0] // p.groups) * _numel(_tuple(p.kernel_size, n))


def _conv_explain(n: int) -> Callable[[Any, list[Tensor], Tensor], str]:
    def explain(p: Any, xs: list[Tensor], y: Tensor) -> str:
        if p.padding == "same":
            return f"'same' padding keeps the size: {shape_text(xs[0].shape[1:])}"
        return _window_explain(n, p, xs[0].shape[1:], _conv_padding(n, p))

    return explain


def _conv_advise(n: int) -> Callable[[Any, list[Tensor]], list[Advice]]:
    def advise(p: Any, xs: list[Tensor]) -> list[Advice]:
        if n == 1 and xs[0].source_type in SEQUENCE_TYPES:
            return [
                Advice(
                    f"{xs[0].source_type} gives [T, F] but Conv1d reads [C, L]: it would treat"
                    " time steps as channels; insert a Permute [0, 2, 1] before it",
                    Fix("Conv1d wants features as channels", "Permute", {"dims": [0, 2, 1]}),
                )
            ]
        return []

    return advise


for _n in (1, 2):
    _add(
        LayerSpec(
            name=f"Conv{_n}d",
            category="Convolution",
            description=(
                "Slides learned filters along the sequence: [C, L] -> [out_channels, L']."
                if _n == 1
                else "Slides learned filters over the image: [C, H, W] -> [out_channels, H', W']."
            ),
            formula="O = floor((I + 2p - d(k-1) - 1)/s) + 1",
            params=_conv_params_model(_n),
            infer=_conv_infer(_n),
            count_params=_conv_count,
            macs=_conv_macs,
            module=lambda p, xs, _n=_n: _call(
                f"nn.Conv{_n}d",
                xs[0].shape[0],
                p.out_channels,
                **_changed(p, "kernel_size", "stride", "padding", "dilation", "groups", "bias"),
            ),
            explain=_conv_explain(_n),
            advise=_conv_advise(_n),
            key_params=("out_channels", "kernel_size", "stride", "padding"),
        )
    )


def _pool_params_model(n: int, kind: str) -> type[Params]:
    class PoolParams(Params):
        kernel_size: _spatial(n, 1) = Field(description=_expect(n, 1))  # type: ignore[valid-type]
        stride: _spatial(n, 1) | None = Field(  # type: ignore[valid-type]
            None, description=_expect(n, 1) + " (default: kernel_size)"
        )
        padding: _spatial(n, 0) = Field(0, description=_expect(n, 0))  # type: ignore[valid-type]
        ceil_mode: bool = Field(False, description="true or false")

    if kind == "Max":

        class MaxPoolParams(PoolParams):
            dilation: _spatial(n, 1) = Field(1, description=_expect(n, 1))  # type: ignore[valid-type]

        MaxPoolParams.__name__ = f"MaxPool{n}dParams"
        return MaxPoolParams

    class AvgPoolParams(PoolParams):
        count_include_pad: bool = Field(True, description="true or false")

    AvgPoolParams.__name__ = f"AvgPool{n}dParams"
    return AvgPoolParams


def _pool_infer(n: int) -> Callable[[Any, list[Tensor]], Tensor]:
    layout = "[L] or [C, L]" if n == 1 else "[H, W] or [C, H, W]"

    def infer(p: Any, xs: list[Tensor]) -> Tensor:
        x = xs[0]
        _need_rank(x, (n, n + 1), layout)
        lead, size = x.shape[:-n], x.shape[-n:]
        k, pad = _tuple(p.kernel_size, n), _tuple(p.padding, n)
        if any(pad[i] > k[i] // 2 for i in range(n)):
            raise LayerError(
                f"padding {p.padding} must be at most half the kernel size {p.kernel_size}",
                Fix("padding may be at most half the kernel", set_params={"padding": 0}),
            )
        return Tensor(lead + _window_sizes(n, p, size, pad))

    return infer


for _n in (1, 2):
    for _kind, _what in (("Max", "the largest value"), ("Avg", "the mean")):
        _add(
            LayerSpec(
                name=f"{_kind}Pool{_n}d",
                category="Pooling",
                description=f"Keeps {_what} of each window, shrinking the spatial size.",
                formula="O = floor((I + 2p - d(k-1) - 1)/s) + 1, s defaults to k",
                params=_pool_params_model(_n, _kind),
                infer=_pool_infer(_n),
                module=lambda p, xs, _n=_n, _kind=_kind: _call(
                    f"nn.{_kind}Pool{_n}d",
                    **_changed(p, *type(p).model_fields),
                ),
                explain=lambda p, xs, y, _n=_n: _window_explain(
                    _n, p, xs[0].shape[-_n:], _tuple(p.padding, _n)
                ),
                key_params=("kernel_size", "stride"),
            )
        )


def _adaptive_params_model(n: int) -> type[Params]:
    class AdaptiveParams(Params):
        output_size: _spatial(n, 1) = Field(description=_expect(n, 1))  # type: ignore[valid-type]

    AdaptiveParams.__name__ = f"AdaptiveAvgPool{n}dParams"
    return AdaptiveParams


def _adaptive_infer(n: int) -> Callable[[Any, list[Tensor]], Tensor]:
    layout = "[L] or [C, L]" if n == 1 else "[H, W] or [C, H, W]"

    def infer(p: Any, xs: list[Tensor]) -> Tensor:
        _need_rank(xs[0], (n, n + 1), layout)
        return Tensor(xs[0].shape[:-n] + _tuple(p.output_size, n))

    return infer


for _n in (1, 2):
    _add(
        LayerSpec(
            name=f"AdaptiveAvgPool{_n}d",
            category="Pooling",
            description="Averages into a fixed output size, whatever the input size.",
            formula="window i covers [floor(i*I/O), ceil((i+1)*I/O))",
            params=_adaptive_params_model(_n),
            infer=_adaptive_infer(_n),
            module=lambda p, xs, _n=_n: _call(f"nn.AdaptiveAvgPool{_n}d", _fmt(p.output_size)),
            key_params=("output_size",),
        )
    )


# ---------------------------------------------------------------------------------------------
# Normalisation


class BatchNormParams(Params):
    eps: Eps = Field(1e-5, description="a small positive float")
    momentum: Probability | None = Field(0.1, description="a float in [0, 1] or null")
    affine: bool = Field(True, description="true or false")
    track_running_stats: bool = Field(True, description="true or false")


def _batchnorm_infer(n: int) -> Callable[[Any, list[Tensor]], Tensor]:
    ranks, layout = ((1, 2), "[C] or [C, L]") if n == 1 else ((3,), "[C, H, W]")

    def infer(p: Any, xs: list[Tensor]) -> Tensor:
        _need_rank(xs[0], ranks, layout, f"; use BatchNorm{3 - n}d for that shape")
        return _float(xs[0])

    return infer


for _n in (1, 2):
    _add(
        LayerSpec(
            name=f"BatchNorm{_n}d",
            category="Normalisation",
            description="Normalises each channel over the batch, then scales and shifts it.",
            formula="y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta",
            params=BatchNormParams,
            infer=_batchnorm_infer(_n),
            count_params=lambda p, xs: 2 * xs[0].shape[0] * p.affine,
            module=lambda p, xs, _n=_n: _call(
                f"nn.BatchNorm{_n}d",
                xs[0].shape[0],
                **_changed(p, "eps", "momentum", "affine", "track_running_stats"),
            ),
        )
    )


class LayerNormParams(Params):
    eps: Eps = Field(1e-5, description="a small positive float")
    elementwise_affine: bool = Field(True, description="true or false")
    bias: bool = Field(True, description="true or false")


_add(
    LayerSpec(
        name="LayerNorm",
        category="Normalisation",
        description="Normalises each position over its last dim (the features).",
        formula="y = (x - mean) / sqrt(var + eps) * gamma + beta",
        params=LayerNormParams,
        infer=_same,
        count_params=lambda p, xs: xs[0].shape[-1] * p.elementwise_affine * (1 + p.bias),
        module=lambda p, xs: _call(
            "nn.LayerNorm", xs[0].shape[-1], **_changed(p, "eps", "elementwise_affine", "bias")
        ),
    )
)


class RMSNormParams(Params):
    eps: Eps | None = Field(None, description="a small positive float or null")
    elementwise_affine: bool = Field(True, description="true or false")


_add(
    LayerSpec(
        name="RMSNorm",
        category="Normalisation",
        description="Scales each position by the root mean square of its features.",
        formula="y = x / sqrt(mean(x^2) + eps) * gamma",
        params=RMSNormParams,
        infer=_same,
        count_params=lambda p, xs: xs[0].shape[-1] * p.elementwise_affine,
        module=lambda p, xs: _call(
            "nn.RMSNorm", xs[0].shape[-1], **_changed(p, "eps", "elementwise_affine")
        ),
    )
)


class GroupNormParams(Params):
    num_groups: int = _req_int()
    eps: Eps = Field(1e-5, description="a small positive float")
    affine: bool = Field(True, description="true or false")


def _groupnorm_infer(p: GroupNormParams, xs: list[Tensor]) -> Tensor:
    channels = xs[0].shape[0]
    if channels % p.num_groups:
        raise LayerError(
            f"num_groups={p.num_groups} must divide the {channels} channels",
            Fix(
                "num_groups must divide the channels",
                set_params={"num_groups": _divisors_up_to(channels, p.num_groups)},
            ),
        )
    return _float(xs[0])


_add(
    LayerSpec(
        name="GroupNorm",
        category="Normalisation",
        description="Normalises groups of channels per sample (works with any batch size).",
        formula="y = (x - mean_group) / sqrt(var_group + eps) * gamma + beta",
        params=GroupNormParams,
        infer=_groupnorm_infer,
        count_params=lambda p, xs: 2 * xs[0].shape[0] * p.affine,
        module=lambda p, xs: _call(
            "nn.GroupNorm", p.num_groups, xs[0].shape[0], **_changed(p, "eps", "affine")
        ),
        key_params=("num_groups",),
    )
)


# ---------------------------------------------------------------------------------------------
# Regularisation and activations


class DropoutParams(Params):
    p: Probability = Field(0.5, description="a probability in [0, 1]")


def _dropout2d_infer(p: DropoutParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], (3,), "[C, H, W]", "; use Dropout for other shapes")
    return _float(xs[0])


for _name, _infer, _text in (
    ("Dropout", _same, "Zeroes random elements while training (probability p), a regulariser."),
    ("Dropout2d", _dropout2d_infer, "Zeroes whole random channels while training."),
):
    _add(
        LayerSpec(
            name=_name,
            category="Regularisation",
            description=_text,
            formula="y = x * mask / (1 - p) in training, y = x in eval",
            params=DropoutParams,
            infer=_infer,
            module=lambda p, xs, _name=_name: _call(f"nn.{_name}", **_changed(p, "p")),
            key_params=("p",),
        )
    )


_ACTIVATIONS = {
    "ReLU": ("Keeps positives, zeroes negatives.", "y = max(0, x)"),
    "SiLU": ("Smooth ReLU-like gate (also called swish).", "y = x * sigmoid(x)"),
    "Tanh": ("Squashes into (-1, 1).", "y = tanh(x)"),
    "Sigmoid": ("Squashes into (0, 1).", "y = 1 / (1 + exp(-x))"),
    "Identity": ("Passes its input through unchanged.", "y = x"),
}
for _name, (_text, _formula) in _ACTIVATIONS.items():
    _add(
        LayerSpec(
            name=_name,
            category="Activation" if _name != "Identity" else "Core",
            description=_text,
            formula=_formula,
            params=NoParams,
            infer=_same,
            module=lambda p, xs, _name=_name: f"nn.{_name}()",
        )
    )


class GELUParams(Params):
    approximate: Literal["none", "tanh"] = Field("none", description="'none' or 'tanh'")


_add(
    LayerSpec(
        name="GELU",
        category="Activation",
        description="Smooth gate used in Transformers.",
        formula="y = x * Phi(x)",
        params=GELUParams,
        infer=_same,
        module=lambda p, xs: _call("nn.GELU", **_changed(p, "approximate")),
    )
)


class LeakyReLUParams(Params):
    negative_slope: float = Field(0.01, description="a float")


_add(
    LayerSpec(
        name="LeakyReLU",
        category="Activation",
        description="Like ReLU, but lets a small slope through for negatives.",
        formula="y = x if x > 0 else negative_slope * x",
        params=LeakyReLUParams,
        infer=_same,
        module=lambda p, xs: _call("nn.LeakyReLU", **_changed(p, "negative_slope")),
        key_params=("negative_slope",),
    )
)


class SoftmaxParams(Params):
    dim: int = Field(-1, description="an int (counts the batch)")


def _softmax_infer(p: SoftmaxParams, xs: list[Tensor]) -> Tensor:
    _full_dim(p.dim, len(xs[0].shape))
    return _float(xs[0])


_add(
    LayerSpec(
        name="Softmax",
        category="Activation",
        description="Turns scores into probabilities that sum to 1 along dim.",
        formula="y_i = exp(x_i) / sum_j exp(x_j)",
        params=SoftmaxParams,
        infer=_softmax_infer,
        module=lambda p, xs: _call("nn.Softmax", dim=p.dim),
        key_params=("dim",),
    )
)


# ---------------------------------------------------------------------------------------------
# Recurrent and attention


class EmbeddingParams(Params):
    num_embeddings: int = _req_int("a positive int (vocabulary size)")
    embedding_dim: int = _req_int()
    padding_idx: int | None = Field(None, description="a token id or null")


def _embedding_infer(p: EmbeddingParams, xs: list[Tensor]) -> Tensor:
    if xs[0].dtype != "int64":
        raise LayerError(
            f"needs int64 token ids, got {xs[0].dtype}; set the Input's dtype to int64"
        )
    if p.padding_idx is not None and not -p.num_embeddings <= p.padding_idx < p.num_embeddings:
        raise LayerError(f"padding_idx {p.padding_idx} is outside 0..{p.num_embeddings - 1}")
    return Tensor(xs[0].shape + (p.embedding_dim,))


_add(
    LayerSpec(
        name="Embedding",
        category="Recurrent",
        description="Looks up a learned vector for each token id: int64 [T] -> [T, D].",
        formula="y[t] = W[token[t]]",
        params=EmbeddingParams,
        infer=_embedding_infer,
        count_params=lambda p, xs: p.num_embeddings * p.embedding_dim,
        module=lambda p, xs: _call(
            "nn.Embedding", p.num_embeddings, p.embedding_dim, **_changed(p, "padding_idx")
        ),
        key_params=("num_embeddings", "embedding_dim"),
    )
)


class RecurrentParams(Params):
    hidden_size: int = _req_int()
    num_layers: int = Field(1, ge=1, le=100, description="a positive int")
    bidirectional: bool = Field(False, description="true or false")
    dropout: Probability = Field(0.0, description="a probability in [0, 1]")
    bias: bool = Field(True, description="true or false")


class RNNParams(RecurrentParams):
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description="'tanh' or 'relu'")


_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent_infer(p: RecurrentParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], (2,), "[T, F]", "; Reshape or Permute it into time steps x features")
    return Tensor((xs[0].shape[0], p.hidden_size * (2 if p.bidirectional else 1)))


def _recurrent_layers(p: RecurrentParams, features: int) -> list[tuple[int, int]]:
    """(input size, hidden size) of each layer and direction."""
    directions = 2 if p.bidirectional else 1
    sizes = [features] + [p.hidden_size * directions] * (p.num_layers - 1)
    return [(size, p.hidden_size) for size in sizes for _ in range(directions)]


def _recurrent_count(gates: int) -> Callable[[Any, list[Tensor]], int]:
    def count(p: RecurrentParams, xs: list[Tensor]) -> int:
        return sum(
            gates * h * (i + h) + 2 * gates * h * p.bias
            for i, h in _recurrent_layers(p, xs[0].shape[-1])
        )

    return count


def _recurrent_advise(p: RecurrentParams, xs: list[Tensor]) -> list[Advice]:
    if xs[0].source_type == "Conv1d":
        return [
            Advice(
                "Conv1d gives [C, L] but recurrent layers read [T, F]: the channels would become"
                " time steps; insert a Permute [0, 2, 1] before it",
                Fix("recurrent layers want time first", "Permute", {"dims": [0, 2, 1]}),
            )
        ]
    return []


for _name, _gates in _GATES.items():
    _add(
        LayerSpec(
            name=_name,
            category="Recurrent",
            description={
                "RNN": "A simple recurrent layer: a hidden state updated at each time step.",
                "GRU": "A gated recurrent layer (update and reset gates).",
                "LSTM": "A recurrent layer with a memory cell and input, forget and output gates.",
            }[_name],
            formula={
                "RNN": "h_t = tanh(W_ih x_t + W_hh h_(t-1) + b)",
                "GRU": "h_t = (1 - z_t) * n_t + z_t * h_(t-1)",
                "LSTM": "c_t = f_t * c_(t-1) + i_t * g_t; h_t = o_t * tanh(c_t)",
            }[_name],
            params=RNNParams if _name == "RNN" else RecurrentParams,
            infer=_recurrent_infer,
            count_params=_recurrent_count(_gates),
            macs=lambda p, xs, y, _gates=_gates: xs[0].shape[0]
            * sum(_gates * h * (i + h) for i, h in _recurrent_layers(p, xs[0].shape[-1])),
            module=lambda p, xs, _name=_name: _call(
                f"nn.{_name}",
                xs[0].shape[-1],
                p.hidden_size,
                **_changed(
                    p,
                    *(["nonlinearity"] if _name == "RNN" else []),
                    "num_layers",
                    "bias",
                    "dropout",
                    "bidirectional",
                ),
                batch_first=True,
            ),
            call=lambda p, attr, args: f"self.{attr}({args[0]})[0]",
            explain=lambda p, xs, y: f"{shape_text(xs[0].shape)} -> {shape_text(y.shape)}",
            advise=_recurrent_advise,
            key_params=("hidden_size", "num_layers", "bidirectional"),
        )
    )


def _heads_check(embed: int, heads: int, field_name: str) -> None:
    if embed % heads:
        raise LayerError(
            f"{field_name}={heads} must divide the embedding size {embed}",
            Fix(
                f"{field_name} must divide the embedding size",
                set_params={field_name: _divisors_up_to(embed, heads)},
            ),
        )


class AttentionParams(Params):
    num_heads: int = _req_int()
    dropout: Probability = Field(0.0, description="a probability in [0, 1]")
    bias: bool = Field(True, description="true or false")
    causal: bool = Field(False, description="true or false (mask out future positions)")


def _attention_infer(p: AttentionParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], (2,), "[T, E]")
    _heads_check(xs[0].shape[-1], p.num_heads, "num_heads")
    return _float(xs[0])


def _attention_macs(t: int, e: int) -> int:
    return 4 * t * e * e + 2 * t * t * e


def _attention_call(p: AttentionParams, attr: str, args: list[str]) -> str:
    x = args[0]
    mask = f"attn_mask=causal_mask({x}.size(1), {x}.device), " if p.causal else ""
    return f"self.{attr}({x}, {x}, {x}, {mask}need_weights=False)[0]"


_add(
    LayerSpec(
        name="MultiheadAttention",
        category="Attention",
        description="Self-attention: each position mixes in the others, weighted by similarity.",
        formula="softmax(Q K^T / sqrt(d)) V, per head",
        params=AttentionParams,
        infer=_attention_infer,
        count_params=lambda p, xs: 4 * xs[0].shape[-1] ** 2 + 4 * xs[0].shape[-1] * p.bias,
        macs=lambda p, xs, y: _attention_macs(*xs[0].shape),
        module=lambda p, xs: _call(
            "nn.MultiheadAttention",
            xs[0].shape[-1],
            p.num_heads,
            **_changed(p, "dropout", "bias"),
            batch_first=True,
        ),
        call=_attention_call,
        key_params=("num_heads", "causal"),
    )
)


class EncoderParams(Params):
    nhead: int = _req_int()
    dim_feedforward: int = Field(2048, ge=1, le=MAX_SIZE, description="a positive int")
    dropout: Probability = Field(0.1, description="a probability in [0, 1]")
    activation: Literal["relu", "gelu"] = Field("relu", description="'relu' or 'gelu'")
    layer_norm_eps: Eps = Field(1e-5, description="a small positive float")
    norm_first: bool = Field(False, description="true or false")
    bias: bool = Field(True, description="true or false")


def _encoder_infer(p: EncoderParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], (2,), "[T, E]")
    _heads_check(xs[0].shape[-1], p.nhead, "nhead")
    return _float(xs[0])


def _encoder_count(p: EncoderParams, xs: list[Tensor]) -> int:
    e, f = xs[0].shape[-1], p.dim_feedforward
    attention = 4 * e * e + 4 * e * p.bias
    feedforward = 2 * e * f + (e + f) * p.bias
    norms = 2 * (e + e * p.bias)
    return attention + feedforward + norms


_add(
    LayerSpec(
        name="TransformerEncoderLayer",
        category="Attention",
        description="Self-attention plus a feed-forward block, each with a residual and a norm.",
        formula="x = norm(x + attn(x)); y = norm(x + ff(x))",
        params=EncoderParams,
        infer=_encoder_infer,
        count_params=_encoder_count,
        macs=lambda p, xs, y: _attention_macs(*xs[0].shape)
        + 2 * _numel(xs[0].shape) * p.dim_feedforward,
        module=lambda p, xs: _call(
            "nn.TransformerEncoderLayer",
            xs[0].shape[-1],
            p.nhead,
            **_changed(
                p, "dim_feedforward", "dropout", "activation", "layer_norm_eps", "norm_first", "bias"
            ),
            batch_first=True,
        ),
        key_params=("nhead", "dim_feedforward"),
    )
)


class SequencePoolParams(Params):
    mode: Literal["last", "mean", "max"] = Field("last", description="'last', 'mean' or 'max'")


def _sequence_pool_infer(p: SequencePoolParams, xs: list[Tensor]) -> Tensor:
    _need_rank(xs[0], range(2, 7), "[T, F]")
    return _float(Tensor(xs[0].shape[1:]))


_add(
    LayerSpec(
        name="SequencePool",
        category="Recurrent",
        description="Summarises a sequence as one vector: its last step, mean or max over time.",
        formula="y = x[:, -1] | mean_t x | max_t x",
        params=SequencePoolParams,
        infer=_sequence_pool_infer,
        call=lambda p, attr, args: {
            "last": f"{args[0]}[:, -1]",
            "mean": f"{args[0]}.mean(dim=1)",
            "max": f"{args[0]}.amax(dim=1)",
        }[p.mode],
        key_params=("mode",),
    )
)


# ---------------------------------------------------------------------------------------------
# Merge


def _elementwise_infer(p: NoParams, xs: list[Tensor]) -> Tensor:
    first = xs[0].shape
    for index, x in enumerate(xs[1:], start=1):
        if x.shape != first:
            raise LayerError(
                f"inputs must have one shape, got {shape_text(first)} and {shape_text(x.shape)};"
                " project the skip input to match",
                _projection_fix(x.shape, first, index),
            )
    return Tensor(first)


def _projection_fix(skip: Shape, main: Shape, index: int) -> Fix | None:
    """A 1x1 Conv2d on the skip path, the standard ResNet fix for a channel or stride change."""
    if len(skip) != 3 or len(main) != 3 or skip[1] % main[1] or skip[2] % main[2]:
        return None
    stride = skip[1] // main[1]
    if stride != skip[2] // main[2]:
        return None
    params: dict[str, Any] = {"out_channels": main[0], "kernel_size": 1}
    if stride > 1:
        params["stride"] = stride
    return Fix(
        f"a 1x1 Conv2d projects {shape_text(skip)} to {shape_text(main)}",
        "Conv2d",
        params,
        on_input=index,
    )


for _name, _op, _text in (
    ("Add", "+", "Adds its inputs element-wise: the residual connection of a ResNet."),
    ("Multiply", "*", "Multiplies its inputs element-wise, e.g. a gate."),
):
    _add(
        LayerSpec(
            name=_name,
            category="Merge",
            description=_text,
            formula=f"y = a {_op} b {_op} ...",
            params=NoParams,
            infer=_elementwise_infer,
            min_inputs=2,
            max_inputs=None,
            call=lambda p, attr, args, _op=_op: f" {_op} ".join(args),
        )
    )


class ConcatParams(Params):
    dim: int = Field(1, description="an int (counts the batch)")


def _concat_infer(p: ConcatParams, xs: list[Tensor]) -> Tensor:
    first = xs[0].shape
    if any(len(x.shape) != len(first) for x in xs):
        raise LayerError(
            "inputs must have the same number of dims, got "
            + " and ".join(shape_text(x.shape) for x in xs)
        )
    dim = _full_dim(p.dim, len(first))
    for x in xs[1:]:
        others = [i for i in range(len(first)) if i != dim - 1 and x.shape[i] != first[i]]
        if others:
            raise LayerError(
                f"inputs must match except along dim {p.dim}, got {shape_text(first)} and"
                f" {shape_text(x.shape)}"
            )
    joined = sum(x.shape[dim - 1] for x in xs)
    return Tensor(first[: dim - 1] + (joined,) + first[dim:])


_add(
    LayerSpec(
        name="Concat",
        category="Merge",
        description="Joins its inputs along one dim (channels by default), in port order.",
        formula="y = cat([a, b, ...], dim)",
        params=ConcatParams,
        infer=_concat_infer,
        min_inputs=2,
        max_inputs=None,
        call=lambda p, attr, args: f"torch.cat([{', '.join(args)}], dim={p.dim})",
        key_params=("dim",),
    )
)


# ---------------------------------------------------------------------------------------------


def describe_param_errors(model: type[Params], exc: ValidationError, given: dict[str, Any]) -> str:
    """One readable line for a params ValidationError: field, expectation, offending value."""
    messages: list[str] = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            messages.append(f"unknown parameter {name!r} (known: {known})")
        elif error["type"] == "missing":
            messages.append(f"{name} is required ({model.model_fields[name].description})")
        elif name in model.model_fields:
            expect = model.model_fields[name].description or error["msg"]
            messages.append(f"{name} must be {expect}, got {given.get(name)!r}")
        else:
            messages.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(dict.fromkeys(messages))
