"""Attention and Transformers: MultiheadAttention (self-attention), TransformerEncoderLayer,
PositionalEncoding, Swin's WindowAttention and MaxViT's RelativeAttention (these three are not
in torch: model.py then defines a small class of its own)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from builder.layers.base import (
    SEQUENCE,
    BOOL,
    PAD,
    PAD_TEXT,
    SIZE,
    SIZE_TEXT,
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
    as_tuple,
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


# ---------------------------------------------------------------------------------------------
# WindowAttention: Swin's shifted-window self-attention on a channels-last [H, W, C] map (not in
# torch: model.py then defines a small class of its own, torchvision's shifted_window_attention
# written out, with its weights under torchvision's names)

WINDOW_ATTENTION = '''class WindowAttention(nn.Module):
    """Self-attention within windows of a channels-last [B, H, W, C] map (Swin): the map is
    padded to whole windows and, for shifted windows, rolled by shift_size (no shift along an
    axis that one window covers). v2: cosine attention and a position bias from a small MLP."""

    def __init__(
        self,
        dim,
        num_heads,
        window_size,
        shift_size=(0, 0),
        qkv_bias=True,
        proj_bias=True,
        attention_dropout=0.0,
        dropout=0.0,
        v2=False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.v2 = v2
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.dropout = nn.Dropout(dropout)
        wh, ww = window_size
        grid = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :]  # [2, N, N], N = wh * ww
        index = (relative[0] + wh - 1) * (2 * ww - 1) + relative[1] + ww - 1
        self.register_buffer("relative_position_index", index.flatten())
        if not v2:
            table = torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads)
            self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
            return
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        offsets_h = torch.arange(-(wh - 1), wh, dtype=torch.float32) / (wh - 1)
        offsets_w = torch.arange(-(ww - 1), ww, dtype=torch.float32) / (ww - 1)
        table = torch.stack(torch.meshgrid(offsets_h, offsets_w, indexing="ij"), -1) * 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / 3.0
        self.register_buffer("relative_coords_table", table.unsqueeze(0))

    def position_bias(self):
        """[1, heads, N, N]: a learned bias per relative position (v2: from the MLP)."""
        n = self.window_size[0] * self.window_size[1]
        if self.v2:
            table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        else:
            table = self.relative_position_bias_table
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def shift_mask(self, height, width, shift, like):
        """[windows, N, N]: -100 between positions that the roll brought from apart."""
        wh, ww = self.window_size
        regions = like.new_zeros((height, width))
        count = 0
        for h in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for w in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                regions[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        regions = regions.view(height // wh, wh, width // ww, ww).permute(0, 2, 1, 3)
        regions = regions.reshape(-1, wh * ww)
        mask = regions.unsqueeze(1) - regions.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x):
        batch, height, width, channels = x.shape
        wh, ww = self.window_size
        x = nn.functional.pad(x, (0, 0, 0, -width % ww, 0, -height % wh))
        _, padded_h, padded_w, _ = x.shape
        rows, cols = padded_h // wh, padded_w // ww
        # no shift along an axis that one window covers
        shift = [self.shift_size[0] if rows > 1 else 0, self.shift_size[1] if cols > 1 else 0]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = rows * cols
        x = x.view(batch, rows, wh, cols, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch * windows, wh * ww, channels)  # one row of positions per window

        qkv_bias = self.qkv.bias
        if self.v2 and qkv_bias is not None:  # v2 has no key bias
            q_bias, _, v_bias = qkv_bias.chunk(3)
            qkv_bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
        heads, head_dim = self.num_heads, channels // self.num_heads
        qkv = nn.functional.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(x.size(0), x.size(1), 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if self.v2:
            k = nn.functional.normalize(k, dim=-1).transpose(-2, -1)
            attn = nn.functional.normalize(q, dim=-1) @ k
            attn = attn * torch.clamp(self.logit_scale, max=4.605170185988092).exp()  # log(100)
        else:
            attn = (q * head_dim**-0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.position_bias()
        if sum(shift) > 0:
            mask = self.shift_mask(padded_h, padded_w, shift, x)
            attn = attn.view(batch, windows, heads, x.size(1), x.size(1)) + mask[:, None]
            attn = attn.view(-1, heads, x.size(1), x.size(1))
        attn = self.attention_dropout(attn.softmax(dim=-1))
        x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), channels)
        x = self.dropout(self.proj(x))

        x = x.view(batch, rows, cols, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, padded_h, padded_w, channels)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()'''


class WindowAttentionParams(Params):
    num_heads: int = count()
    window_size: SIZE[2] = Field(7, description=SIZE_TEXT[2])
    shift_size: PAD[2] = Field(0, description=PAD_TEXT[2])
    qkv_bias: bool = Field(True, description=BOOL)
    proj_bias: bool = Field(True, description=BOOL)
    attention_dropout: Probability = Field(0.0, description=PROBABILITY)
    dropout: Probability = Field(0.0, description=PROBABILITY)
    v2: bool = Field(
        False,
        description=N_("true or false (Swin v2: cosine attention, a position bias from an MLP)"),
    )


def padded_map(p: WindowAttentionParams, shape: Shape) -> tuple[int, int]:
    """The [H, W] map padded up to whole windows."""
    wh, ww = as_tuple(p.window_size, 2)
    return -(-shape[0] // wh) * wh, -(-shape[1] // ww) * ww


def window_attention_infer(p: WindowAttentionParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (3,), "channels-last [H, W, C]", msg("; Permute a [C, H, W] map first"))
    heads_check(xs[0].shape[-1], p.num_heads, "num_heads")
    window, shift = as_tuple(p.window_size, 2), as_tuple(p.shift_size, 2)
    if any(s >= w for s, w in zip(shift, window, strict=True)):
        raise LayerError(
            msg(
                "shift_size {shift} must be smaller than window_size {window}",
                shift=list(shift),
                window=list(window),
            ),
            Fix(msg("shift by half a window"), set_params={"shift_size": [w // 2 for w in window]}),
        )
    if p.v2 and min(window) < 2:
        raise LayerError(
            msg("v2 needs windows of at least 2 x 2: its position table divides by the size - 1")
        )
    return as_float(xs[0])


def window_attention_count(p: WindowAttentionParams, xs: list[Tensor]) -> int:
    c = xs[0].shape[-1]
    wh, ww = as_tuple(p.window_size, 2)
    projections = 3 * c * c + 3 * c * p.qkv_bias + c * c + c * p.proj_bias
    if p.v2:  # logit_scale, and the MLP 2 -> 512 -> heads
        return projections + p.num_heads + (2 * 512 + 512) + 512 * p.num_heads
    return projections + (2 * wh - 1) * (2 * ww - 1) * p.num_heads


def window_attention_macs(p: WindowAttentionParams, xs: list[Tensor], y: Tensor) -> int:
    """Q, K, V and output projections of every position of the padded map (4 T C^2), and each
    position's scores and mixing within its window of N (2 T N C)."""
    c = xs[0].shape[-1]
    positions = numel(padded_map(p, xs[0].shape))
    return 4 * positions * c * c + 2 * positions * numel(as_tuple(p.window_size, 2)) * c


def window_attention_module(p: WindowAttentionParams, xs: list[Tensor]) -> str:
    shift = as_tuple(p.shift_size, 2)
    return call(
        "WindowAttention",
        xs[0].shape[-1],
        p.num_heads,
        window_size=list(as_tuple(p.window_size, 2)),
        **({"shift_size": list(shift)} if any(shift) else {}),
        **changed(p, "qkv_bias", "proj_bias", "attention_dropout", "dropout", "v2"),
    )


def window_attention_explain(p: WindowAttentionParams, xs: list[Tensor], y: Tensor) -> Message:
    wh, ww = as_tuple(p.window_size, 2)
    height, width = padded_map(p, xs[0].shape)
    return msg(
        "{shape}: {windows} windows of {wh} x {ww} over the map padded to {height} x {width},"
        " shifted by {shift}",
        shape=shape_text(xs[0].shape),
        windows=(height // wh) * (width // ww),
        wh=wh,
        ww=ww,
        height=height,
        width=width,
        shift=list(as_tuple(p.shift_size, 2)),
    )


def window_attention_fitted(shape: Shape) -> dict[str, Any]:
    """A new window attention: up to 4 heads that divide the channels (the last dim)."""
    return {"num_heads": fitting_divisor(shape[-1], 4)}


WINDOW_ATTENTION_SPEC = LayerSpec(
    name="WindowAttention",
    category="Attention",
    description=N_(
        "Swin's self-attention: each position of a channels-last map attends to those in its"
        " window; a shift moves the windows so that the next layer joins neighbouring ones."
    ),
    formula=N_(
        "per window: softmax(Q K^T / sqrt(d) + B) V, per head, B a learned bias per relative"
        " position; v2: cosine(Q, K) * exp(logit_scale) + 16 sigmoid(MLP(position))"
    ),
    params=WindowAttentionParams,
    infer=window_attention_infer,
    starter={"num_heads": 1, "window_size": 4},
    count_params=window_attention_count,
    macs=window_attention_macs,
    module=window_attention_module,
    explain=window_attention_explain,
    key_params=("num_heads", "window_size", "shift_size", "v2"),
    helper=("WindowAttention", WINDOW_ATTENTION),
    fitted_starter=window_attention_fitted,
    attends=True,  # its first window's map (runtime.metrics.capture_attention)
    examples=(
        Example((5, 6, 4), {"num_heads": 2, "window_size": 3, "shift_size": 1}),
        Example((4, 4, 4), {"num_heads": 2, "window_size": 2, "shift_size": 1, "v2": True}),
    ),
    shapes="channels-last [H, W, C] -> [H, W, C]; num_heads divides C",
)

# ---------------------------------------------------------------------------------------------
# RelativeAttention: MaxViT's self-attention within groups of positions, with a learned bias per
# relative position (not in torch: model.py then defines a small class of its own, torchvision's
# RelativePositionalMultiHeadAttention written out, with its weights under torchvision's names)

RELATIVE_ATTENTION = '''class RelativeAttention(nn.Module):
    """Self-attention within each group of [B, G, P, D] (MaxViT): the P positions of a group
    are a size x size window (P = size^2), and each head adds a learned bias per relative
    position. As torchvision's, the keys are scaled by D^-0.5 (the features, not a head's)."""

    def __init__(self, feat_dim, head_dim, max_seq_len):
        super().__init__()
        self.n_heads = feat_dim // head_dim
        self.head_dim = head_dim
        self.size = int(round(max_seq_len**0.5))
        self.max_seq_len = max_seq_len
        self.to_qkv = nn.Linear(feat_dim, self.n_heads * head_dim * 3)
        self.scale_factor = feat_dim**-0.5
        self.merge = nn.Linear(self.n_heads * head_dim, feat_dim)
        table = torch.zeros((2 * self.size - 1) ** 2, self.n_heads)
        self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        grid = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :]  # [2, P, P]
        index = (relative[0] + self.size - 1) * (2 * self.size - 1) + relative[1] + self.size - 1
        self.register_buffer("relative_position_index", index)

    def position_bias(self):
        """[1, heads, P, P]: the learned bias of each pair's relative position."""
        p = self.max_seq_len
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(p, p, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x):
        batch, groups, positions, features = x.shape
        heads, head_dim = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q = q.reshape(batch, groups, positions, heads, head_dim).permute(0, 1, 3, 2, 4)
        k = k.reshape(batch, groups, positions, heads, head_dim).permute(0, 1, 3, 2, 4)
        v = v.reshape(batch, groups, positions, heads, head_dim).permute(0, 1, 3, 2, 4)
        attn = q.matmul((k * self.scale_factor).transpose(-2, -1))  # [B, G, heads, P, P]
        attn = torch.softmax(attn + self.position_bias(), dim=-1)
        out = attn.matmul(v).permute(0, 1, 3, 2, 4).reshape(batch, groups, positions, features)
        return self.merge(out)'''


class RelativeAttentionParams(Params):
    head_dim: int = count(N_("a positive int that divides the features (the last dim)"))


def window_side(positions: int) -> int:
    """The side of a square window of this many positions (0 where there is none)."""
    side = math.isqrt(positions)
    return side if side * side == positions else 0


def relative_attention_infer(p: RelativeAttentionParams, xs: list[Tensor]) -> Tensor:
    need_rank(xs[0], (3,), "[G, P, D]")
    groups, positions, features = xs[0].shape
    heads_check(features, p.head_dim, "head_dim")
    if not window_side(positions):
        raise LayerError(
            msg(
                "{positions} positions per group are not a square window (P = size x size)",
                positions=positions,
            )
        )
    return as_float(xs[0])


def relative_attention_count(p: RelativeAttentionParams, xs: list[Tensor]) -> int:
    _, positions, d = xs[0].shape
    side = window_side(positions)
    return 3 * d * d + 3 * d + d * d + d + (2 * side - 1) ** 2 * (d // p.head_dim)


def relative_attention_macs(p: RelativeAttentionParams, xs: list[Tensor], y: Tensor) -> int:
    """Q, K, V and output projections of every position (4 T D^2), and each position's scores
    and mixing within its group of P (2 T P D)."""
    _, positions, d = xs[0].shape
    return 4 * numel(xs[0].shape[:2]) * d * d + 2 * numel(xs[0].shape[:2]) * positions * d


def relative_attention_module(p: RelativeAttentionParams, xs: list[Tensor]) -> str:
    _, positions, features = xs[0].shape
    return call("RelativeAttention", features, head_dim=p.head_dim, max_seq_len=positions)


def relative_attention_explain(p: RelativeAttentionParams, xs: list[Tensor], y: Tensor) -> Message:
    groups, positions, features = xs[0].shape
    side = window_side(positions)
    return msg(
        "{shape}: {groups} groups of {side} x {side} positions, {heads} heads of {head_dim}",
        shape=shape_text(xs[0].shape),
        groups=groups,
        side=side,
        heads=features // p.head_dim,
        head_dim=p.head_dim,
    )


def relative_attention_fitted(shape: Shape) -> dict[str, Any]:
    """A new relative attention: heads of up to 8 features that divide the last dim."""
    return {"head_dim": fitting_divisor(shape[-1], 8)}


RELATIVE_ATTENTION_SPEC = LayerSpec(
    name="RelativeAttention",
    category="Attention",
    description=N_(
        "MaxViT's self-attention: the positions of each group (a square window or a grid of"
        " the map) attend to each other, with a learned bias for each relative position."
    ),
    formula=N_(
        "per group: softmax(Q (K / sqrt(D))^T + B) V, per head, D the features, B a learned"
        " bias per relative position"
    ),
    params=RelativeAttentionParams,
    infer=relative_attention_infer,
    starter={"head_dim": 4},
    count_params=relative_attention_count,
    macs=relative_attention_macs,
    module=relative_attention_module,
    explain=relative_attention_explain,
    key_params=("head_dim",),
    helper=("RelativeAttention", RELATIVE_ATTENTION),
    fitted_starter=relative_attention_fitted,
    examples=(Example((3, 4, 8), {"head_dim": 4}),),
    shapes="[G, P, D] -> [G, P, D]; P a square (size x size), head_dim divides D",
)

ENTRIES = (
    MULTIHEAD_ATTENTION,
    TRANSFORMER_ENCODER_LAYER,
    POSITIONAL_ENCODING_SPEC,
    WINDOW_ATTENTION_SPEC,
    RELATIVE_ATTENTION_SPEC,
)
