"""Upsample: grows [C, L] or [C, H, W] by a scale factor or to a size (nearest or linear)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from builder.layers.base import (
    IMAGE,
    SIGNAL,
    MAX_SIZE,
    Argument,
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
    need_rank,
    shape_text,
)
from builder.layers.conv import AXES, per_axis
from i18n import Message, N_, msg

Scale = Annotated[float, Field(gt=0.0, le=1000.0)]
Sizes = Annotated[int, Field(ge=1, le=MAX_SIZE)]


class UpsampleParams(Params):
    size: Sizes | list[Sizes] | None = Field(
        None, description=N_("a positive int or list of one per spatial dim, or null")
    )
    scale_factor: Scale | list[Scale] | None = Field(
        None, description=N_("a positive float up to 1000 or list of one per spatial dim, or null")
    )
    mode: Literal["nearest", "linear", "bilinear"] = Field(
        "nearest", description=N_("'nearest', 'linear' (for [C, L]) or 'bilinear' (for [C, H, W])")
    )
    align_corners: bool | None = Field(
        None, description=N_("true, false or null (linear modes only)")
    )

    @model_validator(mode="after")
    def _one_of_size_or_scale(self) -> UpsampleParams:
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError(N_("Upsample takes exactly one of size and scale_factor"))
        return self


def scales(p: UpsampleParams, n: int) -> tuple[float, ...]:
    factor = p.scale_factor
    return tuple([float(factor)] * n) if not isinstance(factor, list) else tuple(factor)


def upsample_sizes(p: UpsampleParams, size: Shape) -> Shape:
    """PyTorch's rule: the given size, or floor(I * scale_factor) per axis."""
    if p.size is not None:
        return as_tuple(p.size, len(size))
    return tuple(math.floor(i * s) for i, s in zip(size, scales(p, len(size)), strict=True))


def upsample_infer(p: UpsampleParams, xs: list[Tensor]) -> Tensor:
    x = xs[0]
    need_rank(x, (2, 3), msg("[C, L] or [C, H, W]"))
    n = len(x.shape) - 1
    wanted = {"linear": 1, "bilinear": 2}.get(p.mode)
    if wanted is not None and wanted != n:
        right = "linear" if n == 1 else "bilinear"
        raise LayerError(
            msg(
                "mode {mode} works on {layout} input, got {shape}; use {right}",
                mode=p.mode,
                layout="[C, L]" if wanted == 1 else "[C, H, W]",
                shape=shape_text(x.shape),
                right=right,
            ),
            Fix(msg("the mode must match the spatial dims"), set_params={"mode": right}),
        )
    if p.mode == "nearest" and p.align_corners is not None:
        raise LayerError(
            msg("align_corners applies to linear modes only; leave it null for nearest"),
            Fix(msg("nearest has no corners to align"), set_params={"align_corners": None}),
        )
    for value in (p.size, p.scale_factor):
        if isinstance(value, list) and len(value) != n:
            raise LayerError(
                msg(
                    "{value} needs one value per spatial dim of {shape} ({n})",
                    value=value,
                    shape=shape_text(x.shape),
                    n=n,
                )
            )
    out = upsample_sizes(p, x.shape[1:])
    if min(out) < 1 or max(out) > MAX_SIZE:
        raise LayerError(
            msg(
                "the output would be {shape}; each size must be from 1 to {limit}",
                shape=shape_text((x.shape[0], *out)),
                limit=MAX_SIZE,
            )
        )
    return Tensor((x.shape[0], *out))


def upsample_module(p: UpsampleParams, xs: list[Tensor]) -> str:
    return call("nn.Upsample", **changed(p, "size", "scale_factor", "mode", "align_corners"))


def upsample_explain(p: UpsampleParams, xs: list[Tensor], y: Tensor) -> Message:
    size = xs[0].shape[1:]
    if p.size is not None:
        return msg(
            "size {before} -> {after}", before=shape_text(size), after=shape_text(y.shape[1:])
        )
    return per_axis(
        [
            msg("{axis}: O = floor({size} * {scale}) = {out}", axis=axis, size=i, scale=s, out=o)
            for axis, i, s, o in zip(
                AXES[len(size)], size, scales(p, len(size)), y.shape[1:], strict=True
            )
        ]
    )


def upsample_from_module(m: Any) -> dict[str, Any]:
    if getattr(m, "recompute_scale_factor", None):
        raise NotMappable(msg("recompute_scale_factor=True"))
    if m.mode not in ("nearest", "linear", "bilinear"):
        raise NotMappable(
            msg("mode={mode}: only nearest, linear and bilinear map", mode=repr(m.mode))
        )
    factor = m.scale_factor
    if isinstance(factor, (tuple, list)):
        factor = float(factor[0]) if len(set(factor)) == 1 else [float(f) for f in factor]
    elif factor is not None:
        factor = float(factor)
    size = m.size
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if len(set(size)) == 1 else [int(s) for s in size]
    return {"size": size, "scale_factor": factor, "mode": m.mode, "align_corners": m.align_corners}


UPSAMPLE = LayerSpec(
    name="Upsample",
    category="Convolution",
    description=N_(
        "Grows the spatial size without weights: repeats values (nearest) or interpolates"
        " (linear, bilinear)."
    ),
    formula=N_("O = floor(I * scale_factor), or O = size"),
    params=UpsampleParams,
    infer=upsample_infer,
    torch_modules=("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"),
    functional=("torch.nn.functional.interpolate", "torch.nn.functional.upsample"),
    params_from_module=upsample_from_module,
    starter={"scale_factor": 2.0},
    module=upsample_module,
    explain=upsample_explain,
    key_params=("scale_factor", "size", "mode"),
    functional_reader="interpolate",
    examples=(
        Example(IMAGE, {"scale_factor": 1.5, "mode": "bilinear"}),
        Example(IMAGE, {"size": [9, 9]}),
        Example(SIGNAL, {"scale_factor": 2.0, "mode": "linear"}),
    ),
    shapes='exactly one of size and scale_factor; mode "linear" for [C, L], "bilinear" for'
    " [C, H, W]; O = floor(I * scale_factor) or size",
)


# ---------------------------------------------------------------------------------------------
# PixelShuffle: channels rearranged into space (super-resolution's sub-pixel convolution)


class PixelShuffleParams(Params):
    upscale_factor: Annotated[int, Field(ge=1, le=64)] = Field(
        description=N_("a positive int up to 64")
    )


def pixel_shuffle_infer(p: PixelShuffleParams, xs: list[Tensor]) -> Tensor:
    x = xs[0]
    need_rank(x, (3,), "[C, H, W]")
    r = p.upscale_factor
    if x.shape[0] % (r * r):
        raise LayerError(
            msg(
                "{channels} channels do not split into {r}x{r} = {square} pixels each;"
                " the channels must be a multiple of {square}",
                channels=x.shape[0],
                r=r,
                square=r * r,
            )
        )
    return Tensor((x.shape[0] // (r * r), x.shape[1] * r, x.shape[2] * r))


def pixel_shuffle_explain(p: PixelShuffleParams, xs: list[Tensor], y: Tensor) -> Message:
    return msg(
        "{before} -> {after}: each group of {square} channels becomes an {r}x{r} block of pixels",
        before=shape_text(xs[0].shape),
        after=shape_text(y.shape),
        square=p.upscale_factor**2,
        r=p.upscale_factor,
    )


def pixel_shuffle_module(p: PixelShuffleParams, xs: list[Tensor]) -> str:
    return call("nn.PixelShuffle", p.upscale_factor)


def pixel_shuffle_from_module(m: Any) -> dict[str, Any]:
    return {"upscale_factor": int(m.upscale_factor)}


PIXEL_SHUFFLE = LayerSpec(
    name="PixelShuffle",
    category="Convolution",
    description=N_(
        "Grows the picture by moving channels into space: r*r channels become an r x r block"
        " of pixels (the sub-pixel convolution of super-resolution)."
    ),
    formula=N_("[C*r*r, H, W] -> [C, H*r, W*r]"),
    params=PixelShuffleParams,
    infer=pixel_shuffle_infer,
    torch_modules=("PixelShuffle",),
    functional=("torch.nn.functional.pixel_shuffle",),
    functional_args=(Argument("upscale_factor", 1),),
    params_from_module=pixel_shuffle_from_module,
    starter={"upscale_factor": 2},
    module=pixel_shuffle_module,
    explain=pixel_shuffle_explain,
    key_params=("upscale_factor",),
    examples=(Example(IMAGE, {"upscale_factor": 2}),),
    shapes="[C*r*r, H, W] -> [C, H*r, W*r] (r = upscale_factor)",
)

ENTRIES = (UPSAMPLE, PIXEL_SHUFFLE)
