"""Recurrent layers: RNN, LSTM, GRU (always batch_first: [T, F] -> [T, hidden])."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from builder.layers.base import (
    SEQUENCE,
    BOOL,
    PROBABILITY,
    Advice,
    Example,
    Fix,
    LayerSpec,
    NotMappable,
    Params,
    Probability,
    Tensor,
    call,
    changed,
    count,
    need_rank,
    same_shape_explained,
)
from i18n import N_, msg


class RecurrentParams(Params):
    """Shared by RNN, LSTM and GRU; `kind` names the torch class, `gates` its weight blocks."""

    kind: ClassVar[str] = "RNN"
    gates: ClassVar[int] = 1
    hidden_size: int = count()
    num_layers: int = Field(1, ge=1, le=100, description=N_("a positive int, at most 100"))
    bidirectional: bool = Field(False, description=BOOL)
    dropout: Probability = Field(0.0, description=PROBABILITY)
    bias: bool = Field(True, description=BOOL)


class RNNParams(RecurrentParams):
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description=N_("'tanh' or 'relu'"))


class LSTMParams(RecurrentParams):
    kind: ClassVar[str] = "LSTM"
    gates: ClassVar[int] = 4


class GRUParams(RecurrentParams):
    kind: ClassVar[str] = "GRU"
    gates: ClassVar[int] = 3


def recurrent_infer(p: RecurrentParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (2,), "[T, F]", msg("; Reshape or Permute it into time steps x features"))
    return Tensor((xs[0].shape[0], p.hidden_size * (2 if p.bidirectional else 1)))


def recurrent_layers(p: RecurrentParams, features: int) -> list[tuple[int, int]]:
    """(input size, hidden size) of each layer and direction."""
    directions = 2 if p.bidirectional else 1
    sizes = [features] + [p.hidden_size * directions] * (p.num_layers - 1)
    return [(size, p.hidden_size) for size in sizes for _ in range(directions)]


def recurrent_count(p: RecurrentParams, xs: list[Tensor]) -> int:
    return sum(
        p.gates * h * (i + h) + 2 * p.gates * h * p.bias
        for i, h in recurrent_layers(p, xs[0].shape[-1])
    )


def recurrent_macs(p: RecurrentParams, xs: list[Tensor], y: Tensor) -> int:
    steps = xs[0].shape[0]
    return steps * sum(p.gates * h * (i + h) for i, h in recurrent_layers(p, xs[0].shape[-1]))


def recurrent_module(p: RecurrentParams, xs: list[Tensor]) -> str:
    options = ["num_layers", "bias", "dropout", "bidirectional"]
    if isinstance(p, RNNParams):
        options.insert(0, "nonlinearity")
    return call(
        f"nn.{p.kind}", xs[0].shape[-1], p.hidden_size, **changed(p, *options), batch_first=True
    )


def recurrent_call(p: RecurrentParams, attr: str, args: list[str]) -> str:
    """Item 0 of (output, state): the output at every time step."""
    return f"self.{attr}({args[0]})[0]"


def recurrent_advise(p: RecurrentParams, xs: list[Tensor]) -> list[Advice]:
    if xs[0].source_type != "Conv1d":
        return []
    return [
        Advice(
            msg(
                "Conv1d gives [C, L] but recurrent layers read [T, F]: the channels would become"
                " time steps; insert a Permute [0, 2, 1] before it"
            ),
            Fix(msg("recurrent layers want time first"), "Permute", {"dims": [0, 2, 1]}),
        )
    ]


def recurrent_from_module(m: Any) -> dict[str, Any]:
    if not m.batch_first:
        raise NotMappable(msg("batch_first=False: NetBuilder's recurrent layers read [B, T, F]"))
    if getattr(m, "proj_size", 0):
        raise NotMappable(msg("proj_size"))
    params = {
        "hidden_size": m.hidden_size,
        "num_layers": m.num_layers,
        "bidirectional": m.bidirectional,
        "dropout": float(m.dropout),
        "bias": m.bias,
    }
    if type(m).__name__ == "RNN":
        params["nonlinearity"] = m.nonlinearity
    return params


def recurrent_entry(
    params: type[RecurrentParams],
    description: str,
    formula: str,
    second_output: str,
    example: Example,
) -> LayerSpec:
    """RNN, LSTM, GRU: one entry, the kind a parameter (torch's RNNBase)."""
    return LayerSpec(
        name=params.kind,
        category="Recurrent",
        description=description,
        formula=formula,
        params=params,
        infer=recurrent_infer,
        torch_modules=(params.kind,),
        params_from_module=recurrent_from_module,
        starter={"hidden_size": 64},
        count_params=recurrent_count,
        macs=recurrent_macs,
        module=recurrent_module,
        call=recurrent_call,
        explain=same_shape_explained,
        advise=recurrent_advise,
        key_params=("hidden_size", "num_layers", "bidirectional"),
        second_output=second_output,
        sequence_output=True,
        examples=(example,),
        shapes="[T, F] -> [T, hidden_size (x2 if bidirectional)]",
    )


RNN = recurrent_entry(
    RNNParams,
    N_("A simple recurrent layer: a hidden state updated at each time step."),
    N_("h_t = tanh(W_ih x_t + W_hh h_(t-1) + b)"),
    N_("the final hidden state h_n"),
    Example(SEQUENCE, {"hidden_size": 8}),
)
LSTM = recurrent_entry(
    LSTMParams,
    N_("A recurrent layer with a memory cell and input, forget and output gates."),
    N_("c_t = f_t * c_(t-1) + i_t * g_t; h_t = o_t * tanh(c_t)"),
    N_("the final states (h_n, c_n)"),
    Example(SEQUENCE, {"hidden_size": 8, "bidirectional": True}),
)
GRU = recurrent_entry(
    GRUParams,
    N_("A gated recurrent layer (update and reset gates)."),
    N_("h_t = (1 - z_t) * n_t + z_t * h_(t-1)"),
    N_("the final hidden state h_n"),
    Example(SEQUENCE, {"hidden_size": 8, "num_layers": 2}),
)

ENTRIES = (RNN, LSTM, GRU)
