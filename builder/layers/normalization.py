"""Normalisation: BatchNorm1d/2d, InstanceNorm1d/2d, LayerNorm, RMSNorm, GroupNorm."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from builder.layers.base import (
    BOOL,
    EPS,
    Eps,
    Fix,
    LayerError,
    LayerSpec,
    NotMappable,
    Params,
    Probability,
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

BATCH_NORM1D = LayerSpec(
    name="BatchNorm1d",
    category="Normalisation",
    description=N_("Normalises each channel over the batch, then scales and shifts it."),
    formula=BATCH_NORM_FORMULA,
    params=BatchNorm1dParams,
    infer=batch_norm_infer,
    torch_modules=("BatchNorm1d",),
    params_from_module=batch_norm_from_module,
    count_params=channel_affine_count,
    module=batch_norm_module,
)

BATCH_NORM2D = LayerSpec(
    name="BatchNorm2d",
    category="Normalisation",
    description=N_("Normalises each channel over the batch, then scales and shifts it."),
    formula=BATCH_NORM_FORMULA,
    params=BatchNorm2dParams,
    infer=batch_norm_infer,
    torch_modules=("BatchNorm2d",),
    params_from_module=batch_norm_from_module,
    count_params=channel_affine_count,
    module=batch_norm_module,
)


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

INSTANCE_NORM1D = LayerSpec(
    name="InstanceNorm1d",
    category="Normalisation",
    description=N_(
        "Normalises each channel of each sample over its length (style transfer, GANs)."
    ),
    formula=INSTANCE_NORM_FORMULA,
    params=InstanceNorm1dParams,
    infer=instance_norm_infer,
    torch_modules=("InstanceNorm1d",),
    params_from_module=batch_norm_from_module,
    count_params=channel_affine_count,
    module=instance_norm_module,
)

INSTANCE_NORM2D = LayerSpec(
    name="InstanceNorm2d",
    category="Normalisation",
    description=N_(
        "Normalises each channel of each sample over its pixels (style transfer, GANs)."
    ),
    formula=INSTANCE_NORM_FORMULA,
    params=InstanceNorm2dParams,
    infer=instance_norm_infer,
    torch_modules=("InstanceNorm2d",),
    params_from_module=batch_norm_from_module,
    count_params=channel_affine_count,
    module=instance_norm_module,
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
    count_params=channel_affine_count,
    module=group_norm_module,
    key_params=("num_groups",),
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
