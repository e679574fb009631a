"""Dropout layers: Dropout, Dropout2d (regularisers, active only while training)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from builder.layers.base import (
    IMAGE,
    SEQUENCE,
    PROBABILITY,
    Example,
    LayerSpec,
    Params,
    Probability,
    Tensor,
    as_float,
    call,
    changed,
    keep_shape,
    need_rank,
)
from i18n import N_, msg


class DropoutParams(Params):
    p: Probability = Field(0.5, description=PROBABILITY)


def dropout_module(p: DropoutParams, xs: list[Tensor]) -> str:
    return call("nn.Dropout", **changed(p, "p"))


def dropout2d_infer(p: DropoutParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (3,), "[C, H, W]", msg("; use Dropout for other shapes"))
    return as_float(xs[0])


def dropout2d_module(p: DropoutParams, xs: list[Tensor]) -> str:
    return call("nn.Dropout2d", **changed(p, "p"))


def dropout_from_module(m: Any) -> dict[str, Any]:
    return {"p": float(m.p)}


DROPOUT_FORMULA = N_("y = x * mask / (1 - p) in training, y = x in eval")

DROPOUT = LayerSpec(
    name="Dropout",
    category="Regularisation",
    description=N_("Zeroes random elements while training (probability p), a regulariser."),
    formula=DROPOUT_FORMULA,
    params=DropoutParams,
    infer=keep_shape,
    torch_modules=("Dropout",),
    functional=("torch.nn.functional.dropout",),
    params_from_module=dropout_from_module,
    module=dropout_module,
    key_params=("p",),
    functional_reader="dropout",
    examples=(Example(SEQUENCE, {"p": 0.3}),),
)

DROPOUT2D = LayerSpec(
    name="Dropout2d",
    category="Regularisation",
    description=N_("Zeroes whole random channels while training."),
    formula=DROPOUT_FORMULA,
    params=DropoutParams,
    infer=dropout2d_infer,
    torch_modules=("Dropout2d",),
    functional=("torch.nn.functional.dropout2d",),
    params_from_module=dropout_from_module,
    module=dropout2d_module,
    key_params=("p",),
    functional_reader="dropout",
    examples=(Example(IMAGE, {"p": 0.3}),),
    shapes="[C, H, W] kept",
)

ENTRIES = (DROPOUT, DROPOUT2D)
