"""Pooling: MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, AdaptiveMaxPool1d/2d, and
SequencePool (a sequence's last step, mean or max over time)."""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import Field

from builder.layers.base import (
    IMAGE,
    SEQUENCE,
    SIGNAL,
    BOOL,
    MAX_RANK,
    PAD,
    PAD_TEXT,
    SIZE,
    SIZE_TEXT,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NotMappable,
    Params,
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
STRIDE_TEXT = {
    1: N_("a positive int (default: kernel_size)"),
    2: N_("a positive int or list of 2 (default: kernel_size)"),
    3: N_("a positive int or list of 3 (default: kernel_size)"),
}


# ---------------------------------------------------------------------------------------------
# MaxPool, AvgPool: one definition each, the dimension a parameter (torch's _MaxPoolNd)


@cache  # one class per dimension, the one pickle finds under its name below
def max_pool_params(n: int) -> type[Params]:
    """The params of MaxPool{n}d."""

    class MaxPoolParams(Params):
        __qualname__ = f"MaxPool{n}dParams"
        dims: ClassVar[int] = n
        kernel_size: SIZE[n] = Field(description=SIZE_TEXT[n])
        stride: SIZE[n] | None = Field(None, description=STRIDE_TEXT[n])
        padding: PAD[n] = Field(0, description=PAD_TEXT[n])
        ceil_mode: bool = Field(False, description=BOOL)
        dilation: SIZE[n] = Field(1, description=SIZE_TEXT[n])

    MaxPoolParams.__name__ = MaxPoolParams.__qualname__
    return MaxPoolParams


@cache  # one class per dimension, the one pickle finds under its name below
def avg_pool_params(n: int) -> type[Params]:
    """The params of AvgPool{n}d."""

    class AvgPoolParams(Params):
        __qualname__ = f"AvgPool{n}dParams"
        dims: ClassVar[int] = n
        kernel_size: SIZE[n] = Field(description=SIZE_TEXT[n])
        stride: SIZE[n] | None = Field(None, description=STRIDE_TEXT[n])
        padding: PAD[n] = Field(0, description=PAD_TEXT[n])
        ceil_mode: bool = Field(False, description=BOOL)
        count_include_pad: bool = Field(True, description=BOOL)

    AvgPoolParams.__name__ = AvgPoolParams.__qualname__
    return AvgPoolParams


MaxPool1dParams = max_pool_params(1)
MaxPool2dParams = max_pool_params(2)
AvgPool1dParams = avg_pool_params(1)
AvgPool2dParams = avg_pool_params(2)


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


def max_pool_module(p: Any, xs: list[Tensor]) -> str:
    return call(f"nn.MaxPool{p.dims}d", **changed(p, *type(p).model_fields))


def avg_pool_module(p: Any, xs: list[Tensor]) -> str:
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


def max_pool_entry(n: int, functional: tuple[str, ...], example: Example) -> LayerSpec:
    """MaxPool{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"MaxPool{n}d",
        category="Pooling",
        description=N_("Keeps the largest value of each window, shrinking the spatial size."),
        formula=POOL_FORMULA,
        params=max_pool_params(n),
        infer=pool_infer,
        torch_modules=(f"MaxPool{n}d",),
        functional=functional,
        functional_reader="pool",
        params_from_module=max_pool_from_module,
        starter={"kernel_size": 2},
        module=max_pool_module,
        explain=pool_explain,
        key_params=("kernel_size", "stride"),
        examples=(example,),
        shapes=f"{LAYOUT[n]}, shrunk by the window",
    )


def avg_pool_entry(n: int, functional: tuple[str, ...], example: Example) -> LayerSpec:
    """AvgPool{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"AvgPool{n}d",
        category="Pooling",
        description=N_("Keeps the mean of each window, shrinking the spatial size."),
        formula=POOL_FORMULA,
        params=avg_pool_params(n),
        infer=pool_infer,
        torch_modules=(f"AvgPool{n}d",),
        functional=functional,
        functional_reader="pool",
        params_from_module=avg_pool_from_module,
        starter={"kernel_size": 2},
        module=avg_pool_module,
        explain=pool_explain,
        key_params=("kernel_size", "stride"),
        examples=(example,),
        shapes=f"{LAYOUT[n]}, shrunk by the window",
    )


MAX_POOL1D = max_pool_entry(
    1,
    ("torch.nn.functional.max_pool1d", "torch.max_pool1d"),
    Example(SIGNAL, {"kernel_size": 2}),
)
MAX_POOL2D = max_pool_entry(
    2,
    ("torch.nn.functional.max_pool2d", "torch.max_pool2d"),
    Example(IMAGE, {"kernel_size": 3, "stride": 2, "padding": 1}),
)
AVG_POOL1D = avg_pool_entry(
    1,
    ("torch.nn.functional.avg_pool1d", "torch.avg_pool1d"),
    Example(SIGNAL, {"kernel_size": 3, "count_include_pad": False, "padding": 1}),
)
AVG_POOL2D = avg_pool_entry(
    2, ("torch.nn.functional.avg_pool2d",), Example(IMAGE, {"kernel_size": 2})
)


# ---------------------------------------------------------------------------------------------
# Adaptive pooling: a fixed output size, whatever the input size


@cache  # one class per dimension, the one pickle finds under its name below
def adaptive_params(n: int) -> type[Params]:
    """The params of AdaptiveAvgPool{n}d and AdaptiveMaxPool{n}d."""

    class AdaptiveParams(Params):
        __qualname__ = f"Adaptive{n}dParams"
        dims: ClassVar[int] = n
        output_size: SIZE[n] = Field(description=SIZE_TEXT[n])

    AdaptiveParams.__name__ = AdaptiveParams.__qualname__
    return AdaptiveParams


Adaptive1dParams = adaptive_params(1)
Adaptive2dParams = adaptive_params(2)


def adaptive_infer(p: Any, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (p.dims, p.dims + 1), LAYOUT[p.dims])
    return Tensor(xs[0].shape[: -p.dims] + as_tuple(p.output_size, p.dims))


def adaptive_avg_module(p: Any, xs: list[Tensor]) -> str:
    return call(f"nn.AdaptiveAvgPool{p.dims}d", fmt(p.output_size))


def adaptive_max_module(p: Any, xs: list[Tensor]) -> str:
    return call(f"nn.AdaptiveMaxPool{p.dims}d", fmt(p.output_size))


def adaptive_from_module(m: Any) -> dict[str, Any]:
    if getattr(m, "return_indices", False):
        raise NotMappable(msg("return_indices=True"))
    sizes = m.output_size if isinstance(m.output_size, (tuple, list)) else [m.output_size]
    if any(s is None for s in sizes):
        raise NotMappable(msg("an output_size of None (keep the input size)"))
    return {"output_size": compact(m.output_size)}


ADAPTIVE_FORMULA = N_("window i covers [floor(i*I/O), ceil((i+1)*I/O))")


def adaptive_max_onnx_limit(p: Any, xs: list[Tensor], y: Tensor) -> Message | None:
    """ONNX has no adaptive max pooling: it exports as a plain MaxPool, which needs each output
    size to divide the input size."""
    size, out = xs[0].shape[-p.dims :], y.shape[-p.dims :]
    if all(i % o == 0 for i, o in zip(size, out, strict=True)):
        return None
    return msg(
        "ONNX has no adaptive max pooling; it exports only where the output size divides the"
        " input size, here {size} by {out}",
        size=str(list(size)),
        out=str(list(out)),
    )


def adaptive_avg_entry(n: int, functional: tuple[str, ...], example: Example) -> LayerSpec:
    """AdaptiveAvgPool{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"AdaptiveAvgPool{n}d",
        category="Pooling",
        description=N_("Averages into a fixed output size, whatever the input size."),
        formula=ADAPTIVE_FORMULA,
        params=adaptive_params(n),
        infer=adaptive_infer,
        torch_modules=(f"AdaptiveAvgPool{n}d",),
        functional=functional,
        functional_reader="adaptive_pool",
        params_from_module=adaptive_from_module,
        starter={"output_size": 1},
        module=adaptive_avg_module,
        key_params=("output_size",),
        examples=(example,),
        shapes=f"{LAYOUT[n]} -> [C, output_size...]",
    )


def adaptive_max_entry(n: int, functional: tuple[str, ...], example: Example) -> LayerSpec:
    """AdaptiveMaxPool{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"AdaptiveMaxPool{n}d",
        category="Pooling",
        description=N_("Keeps the largest value of each of a fixed number of windows."),
        formula=ADAPTIVE_FORMULA,
        params=adaptive_params(n),
        infer=adaptive_infer,
        torch_modules=(f"AdaptiveMaxPool{n}d",),
        functional=functional,
        functional_reader="adaptive_pool",
        params_from_module=adaptive_from_module,
        starter={"output_size": 1},
        module=adaptive_max_module,
        key_params=("output_size",),
        onnx_limit=adaptive_max_onnx_limit,
        examples=(example,),
        shapes=f"{LAYOUT[n]} -> [C, output_size...] (ONNX: the output size divides the input)",
    )


ADAPTIVE_AVG_POOL1D = adaptive_avg_entry(
    1,
    ("torch.nn.functional.adaptive_avg_pool1d", "torch.adaptive_avg_pool1d"),
    Example(SIGNAL, {"output_size": 4}),
)
ADAPTIVE_AVG_POOL2D = adaptive_avg_entry(
    2, ("torch.nn.functional.adaptive_avg_pool2d",), Example(IMAGE, {"output_size": 2})
)
ADAPTIVE_MAX_POOL1D = adaptive_max_entry(
    1, ("torch.nn.functional.adaptive_max_pool1d",), Example(SIGNAL, {"output_size": 4})
)
ADAPTIVE_MAX_POOL2D = adaptive_max_entry(
    2, ("torch.nn.functional.adaptive_max_pool2d",), Example(IMAGE, {"output_size": 3})
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
    functional_reader="reduce",
    call=sequence_pool_call,
    key_params=("mode",),
    examples=(Example(SEQUENCE, {"mode": "max"}), Example(SEQUENCE, {"mode": "mean"})),
    shapes="[T, F] -> [F]",
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
