"""Normalisation: BatchNorm1d/2d, InstanceNorm1d/2d, LayerNorm, RMSNorm, GroupNorm."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from builder.layers.base import (
    IMAGE,
    SEQUENCE,
    SIGNAL,
    BOOL,
    EPS,
    Eps,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NotMappable,
    Params,
    Probability,
    Shape,
    Tensor,
    as_float,
    call,
    changed,
    count,
    keep_shape,
    fitting_divisor,
    need_rank,
    numel,
    shape_text,
)
from i18n import N_, msg

LAYOUT = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}
MOMENTUM = N_("a float in [0, 1] or null")


# ---------------------------------------------------------------------------------------------
# BatchNorm1d, BatchNorm2d


class BatchNorm1dParams(Params):
    dims: ClassVar[int] = 1
    eps: Eps = Field(1e-5, description=EPS)
    momentum: Probability | None = Field(0.1, description=MOMENTUM)
    affine: bool = Field(True, description=BOOL)
    track_running_stats: bool = Field(True, description=BOOL)


class BatchNorm2dParams(BatchNorm1dParams):
    dims: ClassVar[int] = 2


def batch_norm_infer(p: BatchNorm1dParams, xs: list[Tensor]) -> Tensor:
    if p.dims == 1:
        need_rank(xs[0], (1, 2), msg("[C] or [C, L]"), msg("; use BatchNorm2d for that shape"))
    else:
        need_rank(xs[0], (3,), "[C, H, W]", msg("; use BatchNorm1d for that shape"))
    return as_float(xs[0])


def channel_affine_count(p: Any, xs: list[Tensor]) -> int:
    """A scale and a shift per channel where the layer is affine."""
    return 2 * xs[0].shape[0] * p.affine


def batch_norm_module(p: BatchNorm1dParams, xs: list[Tensor]) -> str:
    return call(
        f"nn.BatchNorm{p.dims}d",
        xs[0].shape[0],
        **changed(p, "eps", "momentum", "affine", "track_running_stats"),
    )


def batch_norm_from_module(m: Any) -> dict[str, Any]:
    return {
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


BATCH_NORM_FORMULA = N_("y = (x - mean_B) / sqrt(var_B + eps) * gamma + beta")


def batch_norm_entry(n: int, params: type[Params], example: Example) -> LayerSpec:
    """BatchNorm{n}d: the same entry for every dimension (torch's _BatchNorm)."""
    return LayerSpec(
        name=f"BatchNorm{n}d",
        category="Normalisation",
        description=N_("Normalises each channel over the batch, then scales and shifts it."),
        formula=BATCH_NORM_FORMULA,
        params=params,
        infer=batch_norm_infer,
        torch_modules=(f"BatchNorm{n}d",),
        params_from_module=batch_norm_from_module,
        count_params=channel_affine_count,
        module=batch_norm_module,
        examples=(example,),
    )


BATCH_NORM1D = batch_norm_entry(1, BatchNorm1dParams, Example(SIGNAL))
BATCH_NORM2D = batch_norm_entry(2, BatchNorm2dParams, Example(IMAGE, {"momentum": None}))


# ---------------------------------------------------------------------------------------------
# InstanceNorm1d, InstanceNorm2d


class InstanceNorm1dParams(Params):
    dims: ClassVar[int] = 1
    eps: Eps = Field(1e-5, description=EPS)
    momentum: Probability | None = Field(0.1, description=MOMENTUM)
    affine: bool = Field(False, description=BOOL)
    track_running_stats: bool = Field(False, description=BOOL)


class InstanceNorm2dParams(InstanceNorm1dParams):
    dims: ClassVar[int] = 2


def instance_norm_infer(p: InstanceNorm1dParams, xs: list[Tensor]) -> Tensor:
    if p.dims == 1:
        need_rank(xs[0], (2,), "[C, L]", msg("; use InstanceNorm2d for images"))
    else:
        need_rank(xs[0], (3,), "[C, H, W]", msg("; use InstanceNorm1d for [C, L]"))
    if numel(xs[0].shape[1:]) == 1:
        raise LayerError(
            msg(
                "needs more than one value per channel to normalise, got {shape}: the mean of one"
                " value is the value itself, so every output would be 0",
                shape=shape_text(xs[0].shape),
            )
        )
    return as_float(xs[0])


def instance_norm_module(p: InstanceNorm1dParams, xs: list[Tensor]) -> str:
    return call(
        f"nn.InstanceNorm{p.dims}d",
        xs[0].shape[0],
        **changed(p, "eps", "momentum", "affine", "track_running_stats"),
    )


INSTANCE_NORM_FORMULA = N_(
    "y = (x - mean_HW) / sqrt(var_HW + eps) * gamma + beta, per sample and channel"
)


def instance_norm_entry(
    n: int, params: type[Params], description: str, example: Example
) -> LayerSpec:
    """InstanceNorm{n}d: the same entry for every dimension."""
    return LayerSpec(
        name=f"InstanceNorm{n}d",
        category="Normalisation",
        description=description,
        formula=INSTANCE_NORM_FORMULA,
        params=params,
        infer=instance_norm_infer,
        torch_modules=(f"InstanceNorm{n}d",),
        functional_reader="instance_norm",
        params_from_module=batch_norm_from_module,
        count_params=channel_affine_count,
        module=instance_norm_module,
        examples=(example,),
        shapes=f"{LAYOUT[n]} kept",
    )


INSTANCE_NORM1D = instance_norm_entry(
    1,
    InstanceNorm1dParams,
    N_("Normalises each channel of each sample over its length (style transfer, GANs)."),
    Example(SIGNAL),
)
INSTANCE_NORM2D = instance_norm_entry(
    2,
    InstanceNorm2dParams,
    N_("Normalises each channel of each sample over its pixels (style transfer, GANs)."),
    Example(IMAGE, {"affine": True}),
)


# ---------------------------------------------------------------------------------------------
# LayerNorm, RMSNorm: over the last dim


class LayerNormParams(Params):
    eps: Eps = Field(1e-5, description=EPS)
    elementwise_affine: bool = Field(True, description=BOOL)
    bias: bool = Field(True, description=BOOL)


def layer_norm_count(p: LayerNormParams, xs: list[Tensor]) -> int:
    return xs[0].shape[-1] * p.elementwise_affine * (1 + p.bias)


def layer_norm_module(p: LayerNormParams, xs: list[Tensor]) -> str:
    return call("nn.LayerNorm", xs[0].shape[-1], **changed(p, "eps", "elementwise_affine", "bias"))


def last_dim_only(m: Any) -> None:
    if len(m.normalized_shape) != 1:
        raise NotMappable(
            msg(
                "normalized_shape {shape}: only the last dim maps",
                shape=str(list(m.normalized_shape)),
            )
        )


def layer_norm_from_module(m: Any) -> dict[str, Any]:
    last_dim_only(m)
    bias = m.bias is not None if m.elementwise_affine else True
    return {"eps": m.eps, "elementwise_affine": m.elementwise_affine, "bias": bias}


LAYER_NORM = LayerSpec(
    name="LayerNorm",
    category="Normalisation",
    description=N_("Normalises each position over its last dim (the features)."),
    formula=N_("y = (x - mean) / sqrt(var + eps) * gamma + beta"),
    params=LayerNormParams,
    infer=keep_shape,
    torch_modules=("LayerNorm",),
    params_from_module=layer_norm_from_module,
    count_params=layer_norm_count,
    module=layer_norm_module,
    examples=(Example(SEQUENCE), Example(SEQUENCE, {"bias": False})),
    shapes="the last dim normalised",
)


class RMSNormParams(Params):
    eps: Eps | None = Field(None, description=N_("a small positive float, at most 1, or null"))
    elementwise_affine: bool = Field(True, description=BOOL)


def rms_norm_count(p: RMSNormParams, xs: list[Tensor]) -> int:
    return xs[0].shape[-1] * p.elementwise_affine


def rms_norm_module(p: RMSNormParams, xs: list[Tensor]) -> str:
    return call("nn.RMSNorm", xs[0].shape[-1], **changed(p, "eps", "elementwise_affine"))


def rms_norm_from_module(m: Any) -> dict[str, Any]:
    last_dim_only(m)
    return {"eps": m.eps, "elementwise_affine": m.elementwise_affine}


RMS_NORM = LayerSpec(
    name="RMSNorm",
    category="Normalisation",
    description=N_("Scales each position by the root mean square of its features."),
    formula=N_("y = x / sqrt(mean(x^2) + eps) * gamma"),
    params=RMSNormParams,
    infer=keep_shape,
    torch_modules=("RMSNorm",),
    params_from_module=rms_norm_from_module,
    count_params=rms_norm_count,
    module=rms_norm_module,
    examples=(Example(SEQUENCE, {"eps": 1e-6}),),
    shapes="the last dim normalised",
)


# ---------------------------------------------------------------------------------------------
# GroupNorm


class GroupNormParams(Params):
    num_groups: int = count()
    eps: Eps = Field(1e-5, description=EPS)
    affine: bool = Field(True, description=BOOL)


def group_norm_infer(p: GroupNormParams, xs: list[Tensor]) -> Tensor:
    channels = xs[0].shape[0]
    if channels % p.num_groups:
        raise LayerError(
            msg(
                "num_groups={groups} must divide the {channels} channels",
                groups=p.num_groups,
                channels=channels,
            ),
            Fix(
                msg("num_groups must divide the channels"),
                set_params={"num_groups": fitting_divisor(channels, p.num_groups)},
            ),
        )
    return as_float(xs[0])


def group_norm_module(p: GroupNormParams, xs: list[Tensor]) -> str:
    return call("nn.GroupNorm", p.num_groups, xs[0].shape[0], **changed(p, "eps", "affine"))


def group_norm_from_module(m: Any) -> dict[str, Any]:
    return {"num_groups": m.num_groups, "eps": m.eps, "affine": m.affine}


def group_norm_fitted(shape: Shape) -> dict[str, Any]:
    """A new GroupNorm: up to 8 groups that divide the channels."""
    return {"num_groups": fitting_divisor(shape[0], 8)}


GROUP_NORM = LayerSpec(
    name="GroupNorm",
    category="Normalisation",
    description=N_("Normalises groups of channels per sample (works with any batch size)."),
    formula=N_("y = (x - mean_group) / sqrt(var_group + eps) * gamma + beta"),
    params=GroupNormParams,
    infer=group_norm_infer,
    torch_modules=("GroupNorm",),
    params_from_module=group_norm_from_module,
    starter={"num_groups": 1},
    fitted_starter=group_norm_fitted,
    count_params=channel_affine_count,
    module=group_norm_module,
    key_params=("num_groups",),
    examples=(Example(IMAGE, {"num_groups": 2}),),
    shapes="[C, ...] kept; num_groups divides C",
)

ENTRIES = (
    BATCH_NORM1D,
    BATCH_NORM2D,
    INSTANCE_NORM1D,
    INSTANCE_NORM2D,
    LAYER_NORM,
    RMS_NORM,
    GROUP_NORM,
)
