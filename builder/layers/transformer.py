"""Attention and Transformers: MultiheadAttention (self-attention), TransformerEncoderLayer,
and PositionalEncoding (not in torch: model.py then defines a small class of its own)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from builder.layers.base import (
    SEQUENCE,
    BOOL,
    EPS,
    MAX_SIZE,
    PROBABILITY,
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
    fitting_divisor,
    need_rank,
    numel,
    shape_text,
)
from i18n import Message, N_, msg

CAUSAL_MASK = '''def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """True above the diagonal: no position may attend to a later one."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)'''

POSITIONAL_ENCODING = '''class PositionalEncoding(nn.Module):
    """Adds a position signal to [B, T, E]: learned vectors, or fixed sines and cosines."""

    def __init__(
        self, embed_dim: int, max_len: int, kind: str = "learned", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        if kind == "learned":
            self.weight = nn.Parameter(torch.randn(max_len, embed_dim) * 0.02)
            return
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        step = torch.arange(0, embed_dim, 2, dtype=torch.float32)
        rate = torch.exp(step * (-torch.log(torch.tensor(10000.0)) / embed_dim))
        table = torch.zeros(max_len, embed_dim)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate[: embed_dim // 2])
        self.register_buffer("weight", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.weight[: x.size(1)])'''


def heads_check(embed: int, heads: int, field_name: str) -> None:
    if embed % heads:
        raise LayerError(
            msg(
                "{field}={heads} must divide the embedding size {embed}",
                field=field_name,
                heads=heads,
                embed=embed,
            ),
            Fix(
                msg("{field} must divide the embedding size", field=field_name),
                set_params={field_name: fitting_divisor(embed, heads)},
            ),
        )


def attention_macs(t: int, e: int) -> int:
    """Q, K, V and output projections (4 T E^2) plus scores and mixing (2 T^2 E)."""
    return 4 * t * e * e + 2 * t * t * e


# ---------------------------------------------------------------------------------------------
# MultiheadAttention


class AttentionParams(Params):
    num_heads: int = count()
    dropout: Probability = Field(0.0, description=PROBABILITY)
    bias: bool = Field(True, description=BOOL)
    causal: bool = Field(False, description=N_("true or false (mask out future positions)"))


def attention_infer(p: AttentionParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (2,), "[T, E]")
    heads_check(xs[0].shape[-1], p.num_heads, "num_heads")
    return as_float(xs[0])


def attention_count(p: AttentionParams, xs: list[Tensor]) -> int:
    e = xs[0].shape[-1]
    return 4 * e * e + 4 * e * p.bias


def attention_node_macs(p: AttentionParams, xs: list[Tensor], y: Tensor) -> int:
    return attention_macs(*xs[0].shape)


def attention_module(p: AttentionParams, xs: list[Tensor]) -> str:
    return call(
        "nn.MultiheadAttention",
        xs[0].shape[-1],
        p.num_heads,
        **changed(p, "dropout", "bias"),
        batch_first=True,
    )


def attention_call(p: AttentionParams, attr: str, args: list[str]) -> str:
    """Self-attention: the input is query, key and value; item 0 is the output."""
    x = args[0]
    mask = f"attn_mask=causal_mask({x}.size(1), {x}.device), " if p.causal else ""
    return f"self.{attr}({x}, {x}, {x}, {mask}need_weights=False)[0]"


def attention_from_module(m: Any) -> dict[str, Any]:
    if not m.batch_first:
        raise NotMappable(msg("batch_first=False: NetBuilder's attention reads [B, T, E]"))
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise NotMappable(msg("kdim/vdim, add_bias_kv and add_zero_attn are not in the catalog"))
    return {
        "num_heads": m.num_heads,
        "dropout": float(m.dropout),
        "bias": m.in_proj_bias is not None,
    }


def attention_fitted(shape: Shape) -> dict[str, Any]:
    """A new attention layer: up to 4 heads that divide the width."""
    return {"num_heads": fitting_divisor(shape[-1], 4)}


MULTIHEAD_ATTENTION = LayerSpec(
    name="MultiheadAttention",
    category="Attention",
    description=N_("Self-attention: each position mixes in the others, weighted by similarity."),
    formula=N_("softmax(Q K^T / sqrt(d)) V, per head"),
    params=AttentionParams,
    infer=attention_infer,
    torch_modules=("MultiheadAttention",),
    params_from_module=attention_from_module,
    starter={"num_heads": 1},
    count_params=attention_count,
    macs=attention_node_macs,
    module=attention_module,
    call=attention_call,
    key_params=("num_heads", "causal"),
    helper=("causal_mask", CAUSAL_MASK),
    fitted_starter=attention_fitted,
    second_output=N_("the attention weights"),
    sequence_output=True,
    attends=True,
    examples=(Example(SEQUENCE, {"num_heads": 2, "causal": True}),),
    shapes="self-attention [T, E] -> [T, E]; num_heads divides E",
)


# ---------------------------------------------------------------------------------------------
# TransformerEncoderLayer


class EncoderParams(Params):
    nhead: int = count()
    dim_feedforward: int = count(default=2048)
    dropout: Probability = Field(0.1, description=PROBABILITY)
    activation: Literal["relu", "gelu"] = Field("relu", description=N_("'relu' or 'gelu'"))
    layer_norm_eps: Eps = Field(1e-5, description=EPS)
    norm_first: bool = Field(False, description=BOOL)
    bias: bool = Field(True, description=BOOL)
    causal: bool = Field(False, description=N_("true or false (mask out future positions)"))


def encoder_infer(p: EncoderParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (2,), "[T, E]")
    heads_check(xs[0].shape[-1], p.nhead, "nhead")
    return as_float(xs[0])


def encoder_count(p: EncoderParams, xs: list[Tensor]) -> int:
    e, f = xs[0].shape[-1], p.dim_feedforward
    attention = 4 * e * e + 4 * e * p.bias
    feedforward = 2 * e * f + (e + f) * p.bias
    norms = 2 * (e + e * p.bias)
    return attention + feedforward + norms


def encoder_macs(p: EncoderParams, xs: list[Tensor], y: Tensor) -> int:
    return attention_macs(*xs[0].shape) + 2 * numel(xs[0].shape) * p.dim_feedforward


def encoder_module(p: EncoderParams, xs: list[Tensor]) -> str:
    return call(
        "nn.TransformerEncoderLayer",
        xs[0].shape[-1],
        p.nhead,
        **changed(
            p, "dim_feedforward", "dropout", "activation", "layer_norm_eps", "norm_first", "bias"
        ),
        batch_first=True,
    )


def encoder_call(p: EncoderParams, attr: str, args: list[str]) -> str:
    """The layer on its input; a causal one masks every later position (a language model)."""
    x = args[0]
    if not p.causal:
        return f"self.{attr}({x})"
    return f"self.{attr}({x}, src_mask=causal_mask({x}.size(1), {x}.device))"


def encoder_from_module(m: Any) -> dict[str, Any]:
    if not m.self_attn.batch_first:
        raise NotMappable(msg("batch_first=False: NetBuilder's encoder layer reads [B, T, E]"))
    activation = {1: "relu", 2: "gelu"}.get(m.activation_relu_or_gelu)
    if activation is None:
        raise NotMappable(msg("an activation other than relu or gelu"))
    return {
        "nhead": m.self_attn.num_heads,
        "dim_feedforward": m.linear1.out_features,
        "dropout": float(m.dropout.p),
        "activation": activation,
        "layer_norm_eps": m.norm1.eps,
        "norm_first": m.norm_first,
        "bias": m.linear1.bias is not None,
    }


def encoder_fitted(shape: Shape) -> dict[str, Any]:
    """A new encoder layer: up to 4 heads that divide the width, a feed-forward 4x as wide."""
    return {"nhead": fitting_divisor(shape[-1], 4), "dim_feedforward": 4 * shape[-1]}


TRANSFORMER_ENCODER_LAYER = LayerSpec(
    name="TransformerEncoderLayer",
    category="Attention",
    description=N_("Self-attention plus a feed-forward block, each with a residual and a norm."),
    formula=N_("x = norm(x + attn(x)); y = norm(x + ff(x))"),
    params=EncoderParams,
    infer=encoder_infer,
    torch_modules=("TransformerEncoderLayer",),
    params_from_module=encoder_from_module,
    starter={"nhead": 1, "dim_feedforward": 128},
    count_params=encoder_count,
    macs=encoder_macs,
    module=encoder_module,
    call=encoder_call,
    key_params=("nhead", "dim_feedforward", "causal"),
    helper=("causal_mask", CAUSAL_MASK),
    fitted_starter=encoder_fitted,
    sequence_output=True,
    attends=True,
    examples=(
        Example(SEQUENCE, {"nhead": 2, "dim_feedforward": 16}),
        Example(SEQUENCE, {"nhead": 2, "dim_feedforward": 16, "causal": True}),
    ),
    shapes="[T, E] -> [T, E]",
)


# ---------------------------------------------------------------------------------------------
# PositionalEncoding


class PositionalEncodingParams(Params):
    kind: Literal["learned", "sinusoidal"] = Field(
        "learned", description=N_("'learned' or 'sinusoidal'")
    )
    max_len: int = Field(ge=1, le=MAX_SIZE, description=N_("a positive int (the longest sequence)"))
    dropout: Probability = Field(0.0, description=PROBABILITY)


def positional_infer(p: PositionalEncodingParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (2,), "[T, E]", msg("; positions count along T"))
    steps = xs[0].shape[0]
    if steps > p.max_len:
        raise LayerError(
            msg(
                "the sequence has {steps} steps but max_len is {max_len}; positions beyond"
                " max_len have no encoding",
                steps=steps,
                max_len=p.max_len,
            ),
            Fix(msg("max_len must cover the sequence"), set_params={"max_len": steps}),
        )
    return as_float(xs[0])


def positional_count(p: PositionalEncodingParams, xs: list[Tensor]) -> int:
    return p.max_len * xs[0].shape[-1] if p.kind == "learned" else 0


def positional_module(p: PositionalEncodingParams, xs: list[Tensor]) -> str:
    return call(
        "PositionalEncoding",
        xs[0].shape[-1],
        max_len=p.max_len,
        **changed(p, "kind", "dropout"),
    )


def positional_explain(p: PositionalEncodingParams, xs: list[Tensor], y: Tensor) -> Message:
    return msg(
        "{shape} + positions 0..{last} of a {kind} table [{max_len}, {embed}]",
        shape=shape_text(xs[0].shape),
        last=xs[0].shape[0] - 1,
        kind=p.kind,
        max_len=p.max_len,
        embed=xs[0].shape[-1],
    )


POSITIONAL_ENCODING_SPEC = LayerSpec(
    name="PositionalEncoding",
    category="Attention",
    description=N_(
        "Adds where each position is to its vector, since attention alone ignores order:"
        " learned vectors or fixed sines and cosines."
    ),
    formula=N_(
        "y[t] = x[t] + P[t]; sinusoidal: P[t, 2i] = sin(t / 10000^(2i/E)),"
        " P[t, 2i+1] = cos(t / 10000^(2i/E))"
    ),
    params=PositionalEncodingParams,
    infer=positional_infer,
    starter={"max_len": 512},
    count_params=positional_count,
    module=positional_module,
    explain=positional_explain,
    key_params=("kind", "max_len"),
    helper=("PositionalEncoding", POSITIONAL_ENCODING),
    sequence_output=True,
    examples=(
        Example(SEQUENCE, {"kind": "sinusoidal", "max_len": 10}),
        Example(SEQUENCE, {"max_len": 8, "dropout": 0.1}),
    ),
    shapes="[T, E] -> [T, E], added; T <= max_len (model.py defines a small class for it)",
)

ENTRIES = (MULTIHEAD_ATTENTION, TRANSFORMER_ENCODER_LAYER, POSITIONAL_ENCODING_SPEC)
