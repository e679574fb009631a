"""Convolutions: Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d, and the window arithmetic
(O = floor((I + 2p - d(k-1) - 1)/s) + 1) that pooling shares."""

from __future__ import annotations

from math import gcd
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import Field

from builder.layers.base import (
    IMAGE,
    SIGNAL,
    BOOL,
    PAD,
    PAD_TEXT,
    SIZE,
    SIZE_TEXT,
    Advice,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NotMappable,
    Params,
    Shape,
    Tensor,
    as_tuple,
    call,
    changed,
    compact,
    count,
    numel,
    shape_text,
)
from i18n import Message, N_, msg

AXES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
LAYOUT = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}
GROWN = {1: "[out_channels, L']", 2: "[out_channels, H', W']", 3: "[out_channels, D', H', W']"}


# ---------------------------------------------------------------------------------------------
# Window arithmetic, shared with pooling


def out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """O = floor((I + 2p - d(k-1) - 1)/s) + 1, PyTorch's rule (ceil_mode as in its pooling)."""
    span = size + 2 * p - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


def window(p: Any) -> tuple[Shape, Shape, Shape]:
    """Kernel, stride (default: the kernel) and dilation (default 1), one value per axis."""
    n = p.dims
    kernel = as_tuple(p.kernel_size, n)
    stride = as_tuple(p.stride, n) if p.stride is not None else kernel
    return kernel, stride, as_tuple(getattr(p, "dilation", 1), n)


def window_sizes(p: Any, size: Shape, padding: Shape) -> Shape:
    """Output size per axis of a sliding window; an output below 1 is the node's error."""
    k, s, d = window(p)
    ceil_mode = getattr(p, "ceil_mode", False)
    out = tuple(out_size(size[i], k[i], s[i], padding[i], d[i], ceil_mode) for i in range(p.dims))
    if min(out) < 1:
        raise LayerError(
            msg(
                "kernel {kernel} (dilated {dilated}) exceeds padded input {padded}; use a smaller"
                " kernel or more padding",
                kernel="x".join(map(str, k)),
                dilated="x".join(str(d[i] * (k[i] - 1) + 1) for i in range(p.dims)),
                padded="x".join(str(size[i] + 2 * padding[i]) for i in range(p.dims)),
            )
        )
    return out


def per_axis(parts: list[Message]) -> Message:
    """One formula per spatial axis: 'L: ...' or 'H: ...; W: ...'."""
    if len(parts) == 1:
        return parts[0]
    return msg("{h}; {w}", h=parts[0], w=parts[1])


def window_axis(axis: str, size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> Message:
    """The output-size formula for one axis, with its numbers plugged in."""
    out = out_size(size, k, s, p, d, ceil_mode)
    values = {"axis": axis, "size": size, "p": p, "d": d, "k": k, "s": s, "out": out}
    if ceil_mode:
        return msg("{axis}: O = ceil(({size} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 = {out}", **values)
    return msg("{axis}: O = floor(({size} + 2*{p} - {d}*({k}-1) - 1)/{s}) + 1 = {out}", **values)


def window_explain(p: Any, size: Shape, padding: Shape) -> Message:
    k, s, d = window(p)
    ceil_mode = getattr(p, "ceil_mode", False)
    return per_axis(
        [
            window_axis(AXES[p.dims][i], size[i], k[i], s[i], padding[i], d[i], ceil_mode)
            for i in range(p.dims)
        ]
    )


# ---------------------------------------------------------------------------------------------
# Conv1d, Conv2d: one definition, the dimension a parameter (torch's _ConvNd)


CONV_PADDING_TEXT = {
    1: N_("an int >= 0, 'same' or 'valid'"),
    2: N_("an int >= 0 or list of 2, 'same' or 'valid'"),
    3: N_("an int >= 0 or list of 3, 'same' or 'valid'"),
}


@cache  # one class per dimension, the one pickle finds under its name below
def conv_params(n: int) -> type[Params]:
    """The params of Conv{n}d: sizes take an int or a list of n."""

    class ConvParams(Params):
        __qualname__ = f"Conv{n}dParams"
        dims: ClassVar[int] = n
        out_channels: int = count()
        kernel_size: SIZE[n] = Field(description=SIZE_TEXT[n])
        stride: SIZE[n] = Field(1, description=SIZE_TEXT[n])
        padding: PAD[n] | Literal["same", "valid"] = Field(0, description=CONV_PADDING_TEXT[n])
        dilation: SIZE[n] = Field(1, description=SIZE_TEXT[n])
        groups: int = count(default=1)
        bias: bool = Field(True, description=BOOL)

    ConvParams.__name__ = ConvParams.__qualname__
    return ConvParams


Conv1dParams = conv_params(1)
Conv2dParams = conv_params(2)


def need_layout(p: Any, x: Tensor) -> None:
    """Convolutions read [C, L] or [C, H, W]; a bare [H, W] image is offered a channel dim."""
    if len(x.shape) == p.dims + 1:
        return
    fix = None
    if p.dims == 2 and len(x.shape) == 2:
        fix = Fix(msg("add a channel dimension"), "Reshape", {"shape": [1, *x.shape]})
    raise LayerError(
        msg("needs {layout} input, got {shape}", layout=LAYOUT[p.dims], shape=shape_text(x.shape)),
        fix,
    )


def check_groups(p: Any, channels: int) -> None:
    if channels % p.groups or p.out_channels % p.groups:
        raise LayerError(
            msg(
                "groups={groups} must divide both in_channels ({channels}) and out_channels"
                " ({out})",
                groups=p.groups,
                channels=channels,
                out=p.out_channels,
            ),
            Fix(
                msg("groups must divide the channels"),
                set_params={"groups": gcd(channels, p.out_channels)},
            ),
        )


def conv_padding(p: Any) -> Shape:
    """Symmetric padding per axis ('valid' is 0; 'same' is handled by the rule itself)."""
    if isinstance(p.padding, str):
        return (0,) * p.dims
    return as_tuple(p.padding, p.dims)


def conv_infer(p: Any, xs: list[Tensor]) -> Tensor:
    x = xs[0]
    need_layout(p, x)
    channels, size = x.shape[0], x.shape[1:]
    check_groups(p, channels)
    if p.padding == "same":
        if any(s != 1 for s in as_tuple(p.stride, p.dims)):
            raise LayerError(
                msg("padding 'same' needs stride 1; use a number for padding"),
                Fix(msg("'same' needs stride 1"), set_params={"stride": 1}),
            )
        return Tensor((p.out_channels, *size))
    try:
        out = window_sizes(p, size, conv_padding(p))
    except LayerError as exc:
        fix = None
        if all(s == 1 for s in as_tuple(p.stride, p.dims)):
            fix = Fix(msg("'same' padding keeps the input size"), set_params={"padding": "same"})
        raise LayerError(exc.text, fix) from None
    return Tensor((p.out_channels, *out))


def conv_count(p: Any, xs: list[Tensor]) -> int:
    weights = p.out_channels * (xs[0].shape[0] // p.groups) * numel(as_tuple(p.kernel_size, p.dims))
    return weights + p.out_channels * p.bias


def conv_macs(p: Any, xs: list[Tensor], y: Tensor) -> int:
    kernel = numel(as_tuple(p.kernel_size, p.dims))
    return numel(y.shape) * (xs[0].shape[0] // p.groups) * kernel


def conv_module(p: Any, xs: list[Tensor]) -> str:
    return call(
        f"nn.Conv{p.dims}d",
        xs[0].shape[0],
        p.out_channels,
        **changed(p, "kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    )


def conv_explain(p: Any, xs: list[Tensor], y: Tensor) -> Message:
    if p.padding == "same":
        return msg("'same' padding keeps the size: {size}", size=shape_text(xs[0].shape[1:]))
    return window_explain(p, xs[0].shape[1:], conv_padding(p))


def conv_advise(p: Any, xs: list[Tensor]) -> list[Advice]:
    if p.dims != 1 or not xs[0].time_first:
        return []
    return [
        Advice(
            msg(
                "{source} gives [T, F] but Conv1d reads [C, L]: it would treat time steps as"
                " channels; insert a Permute [0, 2, 1] before it",
                source=xs[0].source_type,
            ),
            Fix(msg("Conv1d wants features as channels"), "Permute", {"dims": [0, 2, 1]}),
        )
    ]


def zero_padding_only(m: Any) -> None:
    if m.padding_mode != "zeros":
        raise NotMappable(
            msg("padding_mode={mode}: only zero padding maps", mode=repr(m.padding_mode))
        )


def conv_from_module(m: Any) -> dict[str, Any]:
    zero_padding_only(m)
    return {
        "out_channels": m.out_channels,
        "kernel_size": compact(m.kernel_size),
        "stride": compact(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else compact(m.padding),
        "dilation": compact(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


def conv_entry(n: int, description: str, example: Example) -> LayerSpec:
    """Conv{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"Conv{n}d",
        category="Convolution",
        description=description,
        formula=N_("O = floor((I + 2p - d(k-1) - 1)/s) + 1"),
        params=conv_params(n),
        infer=conv_infer,
        torch_modules=(f"Conv{n}d",),
        params_from_module=conv_from_module,
        starter={"out_channels": 16, "kernel_size": 3, "padding": 1},
        count_params=conv_count,
        macs=conv_macs,
        module=conv_module,
        explain=conv_explain,
        advise=conv_advise,
        key_params=("out_channels", "kernel_size", "stride", "padding"),
        examples=(example,),
        shapes=f"{LAYOUT[n]} -> {GROWN[n]}",
    )


CONV1D = conv_entry(
    1,
    N_("Slides learned filters along the sequence: [C, L] -> [out_channels, L']."),
    Example(SIGNAL, {"out_channels": 8, "kernel_size": 3, "padding": 1}),
)
CONV2D = conv_entry(
    2,
    N_("Slides learned filters over the image: [C, H, W] -> [out_channels, H', W']."),
    Example(IMAGE, {"out_channels": 8, "kernel_size": 3, "padding": "same", "groups": 2}),
)


# ---------------------------------------------------------------------------------------------
# ConvTranspose1d, ConvTranspose2d: the gradient of a convolution, which grows the size


@cache  # one class per dimension, the one pickle finds under its name below
def conv_transpose_params(n: int) -> type[Params]:
    """The params of ConvTranspose{n}d: sizes take an int or a list of n."""

    class ConvTransposeParams(Params):
        __qualname__ = f"ConvTranspose{n}dParams"
        dims: ClassVar[int] = n
        out_channels: int = count()
        kernel_size: SIZE[n] = Field(description=SIZE_TEXT[n])
        stride: SIZE[n] = Field(1, description=SIZE_TEXT[n])
        padding: PAD[n] = Field(0, description=PAD_TEXT[n])
        output_padding: PAD[n] = Field(0, description=PAD_TEXT[n])
        groups: int = count(default=1)
        bias: bool = Field(True, description=BOOL)
        dilation: SIZE[n] = Field(1, description=SIZE_TEXT[n])

    ConvTransposeParams.__name__ = ConvTransposeParams.__qualname__
    return ConvTransposeParams


ConvTranspose1dParams = conv_transpose_params(1)
ConvTranspose2dParams = conv_transpose_params(2)


def transposed_size(size: int, k: int, s: int, p: int, d: int, extra: int) -> int:
    """O = (I - 1)s - 2p + d(k - 1) + output_padding + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + extra + 1


def transposed_axes(p: Any) -> list[Shape]:
    """Per axis: kernel, stride, padding, dilation, output_padding."""
    n = p.dims
    values = (p.kernel_size, p.stride, p.padding, p.dilation, p.output_padding)
    columns = [as_tuple(v, n) for v in values]
    return [tuple(column[i] for column in columns) for i in range(n)]


def conv_transpose_infer(p: Any, xs: list[Tensor]) -> Tensor:
    x = xs[0]
    need_layout(p, x)
    check_groups(p, x.shape[0])
    axes = transposed_axes(p)
    for k, s, pad, d, extra in axes:
        if extra >= s and extra >= d:
            raise LayerError(
                msg(
                    "output_padding {extra} must be smaller than the stride {s} or the dilation"
                    " {d}",
                    extra=extra,
                    s=s,
                    d=d,
                ),
                Fix(
                    msg("output_padding only picks among sizes a stride allows"),
                    set_params={"output_padding": 0},
                ),
            )
    out = tuple(
        transposed_size(size, k, s, pad, d, extra)
        for size, (k, s, pad, d, extra) in zip(x.shape[1:], axes, strict=True)
    )
    if min(out) < 1:
        raise LayerError(
            msg(
                "padding {padding} removes more than the layer makes: the output would be {shape};"
                " use less padding",
                padding=p.padding,
                shape=shape_text((p.out_channels, *out)),
            ),
            Fix(msg("less padding keeps a positive size"), set_params={"padding": 0}),
        )
    return Tensor((p.out_channels, *out))


def conv_transpose_count(p: Any, xs: list[Tensor]) -> int:
    kernel = numel(as_tuple(p.kernel_size, p.dims))
    return xs[0].shape[0] * (p.out_channels // p.groups) * kernel + p.out_channels * p.bias


def conv_transpose_macs(p: Any, xs: list[Tensor], y: Tensor) -> int:
    kernel = numel(as_tuple(p.kernel_size, p.dims))
    return numel(xs[0].shape) * (p.out_channels // p.groups) * kernel


def conv_transpose_module(p: Any, xs: list[Tensor]) -> str:
    return call(
        f"nn.ConvTranspose{p.dims}d",
        xs[0].shape[0],
        p.out_channels,
        **changed(
            p, "kernel_size", "stride", "padding", "output_padding", "groups", "bias", "dilation"
        ),
    )


def conv_transpose_explain(p: Any, xs: list[Tensor], y: Tensor) -> Message:
    return per_axis(
        [
            msg(
                "{axis}: O = ({size}-1)*{s} - 2*{p} + {d}*({k}-1) + {extra} + 1 = {out}",
                axis=AXES[p.dims][i],
                size=size,
                s=s,
                p=pad,
                d=d,
                k=k,
                extra=extra,
                out=transposed_size(size, k, s, pad, d, extra),
            )
            for i, (size, (k, s, pad, d, extra)) in enumerate(
                zip(xs[0].shape[1:], transposed_axes(p), strict=True)
            )
        ]
    )


def conv_transpose_from_module(m: Any) -> dict[str, Any]:
    zero_padding_only(m)
    return {
        "out_channels": m.out_channels,
        "kernel_size": compact(m.kernel_size),
        "stride": compact(m.stride),
        "padding": compact(m.padding),
        "output_padding": compact(m.output_padding),
        "groups": m.groups,
        "bias": m.bias is not None,
        "dilation": compact(m.dilation),
    }


def conv_transpose_entry(n: int, description: str, example: Example) -> LayerSpec:
    """ConvTranspose{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"ConvTranspose{n}d",
        category="Convolution",
        description=description,
        formula=N_("O = (I - 1)s - 2p + d(k - 1) + output_padding + 1"),
        params=conv_transpose_params(n),
        infer=conv_transpose_infer,
        torch_modules=(f"ConvTranspose{n}d",),
        params_from_module=conv_transpose_from_module,
        starter={"out_channels": 16, "kernel_size": 2, "stride": 2},
        count_params=conv_transpose_count,
        macs=conv_transpose_macs,
        module=conv_transpose_module,
        explain=conv_transpose_explain,
        key_params=("out_channels", "kernel_size", "stride"),
        examples=(example,),
        shapes=f"{LAYOUT[n]} -> {GROWN[n]}, grown",
    )


CONV_TRANSPOSE1D = conv_transpose_entry(
    1,
    N_("Grows a sequence with learned filters (a 'deconvolution'): [C, L] -> [out_channels, L']."),
    Example(SIGNAL, {"out_channels": 4, "kernel_size": 3, "stride": 2}),
)
CONV_TRANSPOSE2D = conv_transpose_entry(
    2,
    N_(
        "Grows an image with learned filters (a 'deconvolution'), as in U-Net decoders and GAN"
        " generators: [C, H, W] -> [out_channels, H', W']."
    ),
    Example(IMAGE, {"out_channels": 4, "kernel_size": 3, "stride": 2, "output_padding": 1}),
)

ENTRIES = (CONV1D, CONV2D, CONV_TRANSPOSE1D, CONV_TRANSPOSE2D)
