"""Pooling: MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, AdaptiveMaxPool1d/2d, and
SequencePool (a sequence's last step, mean or max over time)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from builder.layers.base import (
    BOOL,
    MAX_RANK,
    PAD1,
    PAD2,
    SIZE1,
    SIZE2,
    Fix,
    LayerError,
    LayerSpec,
    NotMappable,
    Pad1,
    Pad2,
    Params,
    Size1,
    Size2,
    Tensor,
    as_float,
    as_tuple,
    call,
    changed,
    compact,
    fmt,
    need_rank,
)
from builder.layers.conv import window_explain, window_sizes
from i18n import Message, N_, msg

LAYOUT = {1: msg("[L] or [C, L]"), 2: msg("[H, W] or [C, H, W]")}
STRIDE1 = N_("a positive int (default: kernel_size)")
STRIDE2 = N_("a positive int or list of 2 (default: kernel_size)")


# ---------------------------------------------------------------------------------------------
# MaxPool, AvgPool


class MaxPool1dParams(Params):
    dims: ClassVar[int] = 1
    kernel_size: Size1 = Field(description=SIZE1)
    stride: Size1 | None = Field(None, description=STRIDE1)
    padding: Pad1 = Field(0, description=PAD1)
    ceil_mode: bool = Field(False, description=BOOL)
    dilation: Size1 = Field(1, description=SIZE1)


class MaxPool2dParams(Params):
    dims: ClassVar[int] = 2
    kernel_size: Size2 = Field(description=SIZE2)
    stride: Size2 | None = Field(None, description=STRIDE2)
    padding: Pad2 = Field(0, description=PAD2)
    ceil_mode: bool = Field(False, description=BOOL)
    dilation: Size2 = Field(1, description=SIZE2)


class AvgPool1dParams(Params):
    dims: ClassVar[int] = 1
    kernel_size: Size1 = Field(description=SIZE1)
    stride: Size1 | None = Field(None, description=STRIDE1)
    padding: Pad1 = Field(0, description=PAD1)
    ceil_mode: bool = Field(False, description=BOOL)
    count_include_pad: bool = Field(True, description=BOOL)


class AvgPool2dParams(Params):
    dims: ClassVar[int] = 2
    kernel_size: Size2 = Field(description=SIZE2)
    stride: Size2 | None = Field(None, description=STRIDE2)
    padding: Pad2 = Field(0, description=PAD2)
    ceil_mode: bool = Field(False, description=BOOL)
    count_include_pad: bool = Field(True, description=BOOL)


def pool_infer(p: Any, xs: list[Tensor]) -> Tensor:
    n = p.dims
    x = xs[0]
    need_rank(x, (n, n + 1), LAYOUT[n])
    lead, size = x.shape[:-n], x.shape[-n:]
    kernel, padding = as_tuple(p.kernel_size, n), as_tuple(p.padding, n)
    if any(padding[i] > kernel[i] // 2 for i in range(n)):
        raise LayerError(
            msg(
                "padding {padding} must be at most half the kernel size {kernel}",
                padding=p.padding,
                kernel=p.kernel_size,
            ),
            Fix(msg("padding may be at most half the kernel"), set_params={"padding": 0}),
        )
    return Tensor(lead + window_sizes(p, size, padding))


def max_pool_module(p: MaxPool1dParams | MaxPool2dParams, xs: list[Tensor]) -> str:
    return call(f"nn.MaxPool{p.dims}d", **changed(p, *type(p).model_fields))


def avg_pool_module(p: AvgPool1dParams | AvgPool2dParams, xs: list[Tensor]) -> str:
    return call(f"nn.AvgPool{p.dims}d", **changed(p, *type(p).model_fields))


def pool_explain(p: Any, xs: list[Tensor], y: Tensor) -> Message:
    return window_explain(p, xs[0].shape[-p.dims :], as_tuple(p.padding, p.dims))


def pool_stride(m: Any) -> Any:
    kernel, stride = compact(m.kernel_size), compact(m.stride)
    return None if stride == kernel else stride


def max_pool_from_module(m: Any) -> dict[str, Any]:
    if m.return_indices:
        raise NotMappable(msg("return_indices=True"))
    return {
        "kernel_size": compact(m.kernel_size),
        "stride": pool_stride(m),
        "padding": compact(m.padding),
        "dilation": compact(m.dilation),
        "ceil_mode": m.ceil_mode,
    }


def avg_pool_from_module(m: Any) -> dict[str, Any]:
    if getattr(m, "divisor_override", None) is not None:
        raise NotMappable(msg("divisor_override"))
    return {
        "kernel_size": compact(m.kernel_size),
        "stride": pool_stride(m),
        "padding": compact(m.padding),
        "ceil_mode": m.ceil_mode,
        "count_include_pad": m.count_include_pad,
    }


POOL_FORMULA = N_("O = floor((I + 2p - d(k-1) - 1)/s) + 1, s defaults to k")

MAX_POOL1D = LayerSpec(
    name="MaxPool1d",
    category="Pooling",
    description=N_("Keeps the largest value of each window, shrinking the spatial size."),
    formula=POOL_FORMULA,
    params=MaxPool1dParams,
    infer=pool_infer,
    torch_modules=("MaxPool1d",),
    functional=("torch.nn.functional.max_pool1d", "torch.max_pool1d"),
    params_from_module=max_pool_from_module,
    starter={"kernel_size": 2},
    module=max_pool_module,
    explain=pool_explain,
    key_params=("kernel_size", "stride"),
)

MAX_POOL2D = LayerSpec(
    name="MaxPool2d",
    category="Pooling",
    description=N_("Keeps the largest value of each window, shrinking the spatial size."),
    formula=POOL_FORMULA,
    params=MaxPool2dParams,
    infer=pool_infer,
    torch_modules=("MaxPool2d",),
    functional=("torch.nn.functional.max_pool2d", "torch.max_pool2d"),
    params_from_module=max_pool_from_module,
    starter={"kernel_size": 2},
    module=max_pool_module,
    explain=pool_explain,
    key_params=("kernel_size", "stride"),
)

AVG_POOL1D = LayerSpec(
    name="AvgPool1d",
    category="Pooling",
    description=N_("Keeps the mean of each window, shrinking the spatial size."),
    formula=POOL_FORMULA,
    params=AvgPool1dParams,
    infer=pool_infer,
    torch_modules=("AvgPool1d",),
    functional=("torch.nn.functional.avg_pool1d", "torch.avg_pool1d"),
    params_from_module=avg_pool_from_module,
    starter={"kernel_size": 2},
    module=avg_pool_module,
    explain=pool_explain,
    key_params=("kernel_size", "stride"),
)

AVG_POOL2D = LayerSpec(
    name="AvgPool2d",
    category="Pooling",
    description=N_("Keeps the mean of each window, shrinking the spatial size."),
    formula=POOL_FORMULA,
    params=AvgPool2dParams,
    infer=pool_infer,
    torch_modules=("AvgPool2d",),
    functional=("torch.nn.functional.avg_pool2d",),
    params_from_module=avg_pool_from_module,
    starter={"kernel_size": 2},
    module=avg_pool_module,
    explain=pool_explain,
    key_params=("kernel_size", "stride"),
)


# ---------------------------------------------------------------------------------------------
# Adaptive pooling: a fixed output size, whatever the input size


class Adaptive1dParams(Params):
    dims: ClassVar[int] = 1
    output_size: Size1 = Field(description=SIZE1)


class Adaptive2dParams(Params):
    dims: ClassVar[int] = 2
    output_size: Size2 = Field(description=SIZE2)


def adaptive_infer(p: Adaptive1dParams | Adaptive2dParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (p.dims, p.dims + 1), LAYOUT[p.dims])
    return Tensor(xs[0].shape[: -p.dims] + as_tuple(p.output_size, p.dims))


def adaptive_avg_module(p: Adaptive1dParams | Adaptive2dParams, xs: list[Tensor]) -> str:
    return call(f"nn.AdaptiveAvgPool{p.dims}d", fmt(p.output_size))


def adaptive_max_module(p: Adaptive1dParams | Adaptive2dParams, xs: list[Tensor]) -> str:
    return call(f"nn.AdaptiveMaxPool{p.dims}d", fmt(p.output_size))


def adaptive_from_module(m: Any) -> dict[str, Any]:
    if getattr(m, "return_indices", False):
        raise NotMappable(msg("return_indices=True"))
    sizes = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
    if any(s is None for s in sizes):
        raise NotMappable(msg("an output_size of None (keep the input size)"))
    return {"output_size": compact(m.output_size)}


ADAPTIVE_FORMULA = N_("window i covers [floor(i*I/O), ceil((i+1)*I/O))")

ADAPTIVE_AVG_POOL1D = LayerSpec(
    name="AdaptiveAvgPool1d",
    category="Pooling",
    description=N_("Averages into a fixed output size, whatever the input size."),
    formula=ADAPTIVE_FORMULA,
    params=Adaptive1dParams,
    infer=adaptive_infer,
    torch_modules=("AdaptiveAvgPool1d",),
    functional=("torch.nn.functional.adaptive_avg_pool1d", "torch.adaptive_avg_pool1d"),
    params_from_module=adaptive_from_module,
    starter={"output_size": 1},
    module=adaptive_avg_module,
    key_params=("output_size",),
)

ADAPTIVE_AVG_POOL2D = LayerSpec(
    name="AdaptiveAvgPool2d",
    category="Pooling",
    description=N_("Averages into a fixed output size, whatever the input size."),
    formula=ADAPTIVE_FORMULA,
    params=Adaptive2dParams,
    infer=adaptive_infer,
    torch_modules=("AdaptiveAvgPool2d",),
    functional=("torch.nn.functional.adaptive_avg_pool2d",),
    params_from_module=adaptive_from_module,
    starter={"output_size": 1},
    module=adaptive_avg_module,
    key_params=("output_size",),
)

ADAPTIVE_MAX_POOL1D = LayerSpec(
    name="AdaptiveMaxPool1d",
    category="Pooling",
    description=N_("Keeps the largest value of each of a fixed number of windows."),
    formula=ADAPTIVE_FORMULA,
    params=Adaptive1dParams,
    infer=adaptive_infer,
    torch_modules=("AdaptiveMaxPool1d",),
    functional=("torch.nn.functional.adaptive_max_pool1d",),
    params_from_module=adaptive_from_module,
    starter={"output_size": 1},
    module=adaptive_max_module,
    key_params=("output_size",),
)

ADAPTIVE_MAX_POOL2D = LayerSpec(
    name="AdaptiveMaxPool2d",
    category="Pooling",
    description=N_("Keeps the largest value of each of a fixed number of windows."),
    formula=ADAPTIVE_FORMULA,
    params=Adaptive2dParams,
    infer=adaptive_infer,
    torch_modules=("AdaptiveMaxPool2d",),
    functional=("torch.nn.functional.adaptive_max_pool2d",),
    params_from_module=adaptive_from_module,
    starter={"output_size": 1},
    module=adaptive_max_module,
    key_params=("output_size",),
)


# ---------------------------------------------------------------------------------------------
# SequencePool


class SequencePoolParams(Params):
    mode: Literal["last", "mean", "max"] = Field("last", description=N_("'last', 'mean' or 'max'"))


def sequence_pool_infer(p: SequencePoolParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], range(2, MAX_RANK + 1), "[T, F]")
    return as_float(Tensor(xs[0].shape[1:]))


def sequence_pool_call(p: SequencePoolParams, attr: str, args: list[str]) -> str:
    if p.mode == "last":
        return f"{args[0]}[:, -1]"
    if p.mode == "mean":
        return f"{args[0]}.mean(dim=1)"
    return f"{args[0]}.amax(dim=1)"


SEQUENCE_POOL = LayerSpec(
    name="SequencePool",
    category="Recurrent",
    description=N_("Summarises a sequence as one vector: its last step, mean or max over time."),
    formula=N_("y = x[:, -1] | mean_t x | max_t x"),
    params=SequencePoolParams,
    infer=sequence_pool_infer,
    functional=("Tensor.mean", "torch.mean", "Tensor.amax", "torch.amax", "Tensor.max"),
    call=sequence_pool_call,
    key_params=("mode",),
)

ENTRIES = (
    MAX_POOL1D,
    MAX_POOL2D,
    AVG_POOL1D,
    AVG_POOL2D,
    ADAPTIVE_AVG_POOL1D,
    ADAPTIVE_AVG_POOL2D,
    ADAPTIVE_MAX_POOL1D,
    ADAPTIVE_MAX_POOL2D,
    SEQUENCE_POOL,
)
