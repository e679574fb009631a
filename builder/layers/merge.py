"""Merges of two or more inputs: Add and Multiply (element-wise, broadcasting where one side has
1s, as PyTorch does) and Concat (along one dim, in port order); and their one-input kin: Chunk
(one piece of torch.chunk, Concat's inverse) and Scale (times a constant)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from builder.layers.base import (
    SEQUENCE,
    MAX_SIZE,
    Example,
    Fix,
    LayerError,
    LayerSpec,
    NoParams,
    Params,
    Shape,
    Tensor,
    dim_field,
    fmt,
    full_dim,
    keep_shape,
    same_shape_explained,
    shape_text,
)
from i18n import N_, Message, msg


def broadcast(first: Shape, other: Shape) -> Shape | None:
    """PyTorch's broadcast of two shapes of one rank (each dim equal or 1), else None.

    Shapes of different ranks are refused even where torch would broadcast them: with the batch
    in front, torch aligns [E] with [T, E] from the right and would pair the batch with T."""
    if len(first) != len(other):
        return None
    if any(a != b and 1 not in (a, b) for a, b in zip(first, other, strict=True)):
        return None
    return tuple(max(a, b) for a, b in zip(first, other, strict=True))


def projection_fix(skip: Shape, main: Shape, index: int) -> Fix | None:
    """A 1x1 Conv2d on the skip path, the standard ResNet fix for a channel or stride change."""
    if len(skip) != 3 or len(main) != 3 or skip[1] % main[1] or skip[2] % main[2]:
        return None
    stride = skip[1] // main[1]
    if stride != skip[2] // main[2]:
        return None
    params: dict[str, Any] = {"out_channels": main[0], "kernel_size": 1}
    if stride > 1:
        params["stride"] = stride
    return Fix(
        msg("a 1x1 Conv2d projects {skip} to {main}", skip=shape_text(skip), main=shape_text(main)),
        "Conv2d",
        params,
        on_input=index,
    )


def elementwise_infer(p: NoParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    for index, x in enumerate(xs[1:], start=1):
        joined = broadcast(shape, x.shape)
        if joined is not None:
            shape = joined
            continue
        if len(shape) != len(x.shape):
            raise LayerError(
                msg(
                    "inputs {first} and {other} have different numbers of dims; with the batch"
                    " in front torch would align them from the right and mix the batch into"
                    " another dim, so Reshape one to the other's rank (1s where it repeats)",
                    first=shape_text(shape),
                    other=shape_text(x.shape),
                )
            )
        raise LayerError(
            msg(
                "inputs must have one shape, or 1 where one repeats along a dim; got {first} and"
                " {other}; project the skip input to match",
                first=shape_text(shape),
                other=shape_text(x.shape),
            ),
            projection_fix(x.shape, shape, index),
        )
    return Tensor(shape)


def add_call(p: NoParams, attr: str, args: list[str]) -> str:
    return " + ".join(args)


def multiply_call(p: NoParams, attr: str, args: list[str]) -> str:
    return " * ".join(args)


ADD = LayerSpec(
    name="Add",
    category="Merge",
    description=N_(
        "Adds its inputs element-wise: the residual connection of a ResNet. A dim of 1 repeats"
        " to match the other input ([1, E] with [T, E])."
    ),
    formula=N_("y = a + b + ..."),
    params=NoParams,
    infer=elementwise_infer,
    functional=("operator.add", "operator.iadd", "torch.add", "Tensor.add"),
    min_inputs=2,
    max_inputs=None,
    call=add_call,
    functional_reader="merge",
    examples=(Example(SEQUENCE),),
    shapes="2+ inputs of one rank; a dim of 1 repeats to match ([C, 1, 1] with [C, H, W], [1, E] with [T, E]); inputs of different ranks are refused (torch would pair the batch with another dim)",
)

MULTIPLY = LayerSpec(
    name="Multiply",
    category="Merge",
    description=N_(
        "Multiplies its inputs element-wise, e.g. a gate; [C, 1, 1] scales each channel of"
        " [C, H, W] (squeeze-and-excitation)."
    ),
    formula=N_("y = a * b * ..."),
    params=NoParams,
    infer=elementwise_infer,
    functional=("operator.mul", "operator.imul", "torch.mul", "Tensor.mul"),
    min_inputs=2,
    max_inputs=None,
    call=multiply_call,
    functional_reader="merge",
    examples=(Example(SEQUENCE),),
    shapes="2+ inputs of one rank; a dim of 1 repeats to match ([C, 1, 1] with [C, H, W], [1, E] with [T, E]); inputs of different ranks are refused (torch would pair the batch with another dim)",
)


class ConcatParams(Params):
    dim: int = dim_field(1)


def concat_infer(p: ConcatParams, xs: list[Tensor]) -> Tensor:
    first = xs[0].shape
    if any(len(x.shape) != len(first) for x in xs):
        raise LayerError(
            msg(
                "inputs must have the same number of dims, got {shapes}",
                shapes=" and ".join(shape_text(x.shape) for x in xs),
            )
        )
    dim = full_dim(p.dim, len(first))
    for x in xs[1:]:
        others = [i for i in range(len(first)) if i != dim - 1 and x.shape[i] != first[i]]
        if others:
            raise LayerError(
                msg(
                    "inputs must match except along dim {dim}, got {first} and {other}",
                    dim=p.dim,
                    first=shape_text(first),
                    other=shape_text(x.shape),
                )
            )
    joined = sum(x.shape[dim - 1] for x in xs)
    return Tensor(first[: dim - 1] + (joined,) + first[dim:])


def concat_call(p: ConcatParams, attr: str, args: list[str]) -> str:
    return f"torch.cat([{', '.join(args)}], dim={p.dim})"


CONCAT = LayerSpec(
    name="Concat",
    category="Merge",
    description=N_("Joins its inputs along one dim (channels by default), in port order."),
    formula=N_("y = cat([a, b, ...], dim)"),
    params=ConcatParams,
    infer=concat_infer,
    functional=("torch.cat", "torch.concat", "torch.concatenate"),
    min_inputs=2,
    max_inputs=None,
    call=concat_call,
    key_params=("dim",),
    functional_reader="concat",
    examples=(Example(SEQUENCE, {"dim": 2}),),
    shapes="2+ inputs equal except along dim, joined in port order",
)

# ---------------------------------------------------------------------------------------------
# Chunk: one piece of torch.chunk (ShuffleNet splits its channels in two this way)


class ChunkParams(Params):
    chunks: int = Field(2, ge=1, le=MAX_SIZE, description=N_("how many pieces torch.chunk cuts"))
    dim: int = dim_field(1)
    index: int = Field(
        0, ge=0, le=MAX_SIZE, description=N_("which piece this node passes on, 0 first")
    )


def chunk_piece(length: int, chunks: int, index: int) -> tuple[int, int, int]:
    """torch.chunk's rule, in constant time: pieces of ceil(length / chunks), the last one
    smaller, and fewer pieces than asked where they run out (5 in 4 pieces: 2, 2, 1).
    Returns (piece size, pieces made, the size of piece `index`, 0 where it does not exist)."""
    size = -(-length // chunks)
    made = -(-length // size)
    return size, made, max(0, min(size, length - index * size))


def chunk_infer(p: ChunkParams, xs: list[Tensor]) -> Tensor:
    shape = xs[0].shape
    dim = full_dim(p.dim, len(shape))
    _size, made, piece = chunk_piece(shape[dim - 1], p.chunks, p.index)
    if piece == 0:
        raise LayerError(
            msg(
                "piece {index} does not exist: chunk({chunks}) of {length} along dim {dim} makes"
                " {made} pieces (0 to {last})",
                index=p.index,
                chunks=p.chunks,
                length=shape[dim - 1],
                dim=p.dim,
                made=made,
                last=made - 1,
            ),
            Fix(msg("take the last piece"), set_params={"index": made - 1}),
        )
    return Tensor(shape[: dim - 1] + (piece,) + shape[dim:], xs[0].dtype)


def chunk_call(p: ChunkParams, attr: str, args: list[str]) -> str:
    return f"torch.chunk({args[0]}, {p.chunks}, dim={p.dim})[{p.index}]"


def chunk_explain(p: ChunkParams, xs: list[Tensor], y: Tensor) -> Message:
    shape = xs[0].shape
    length = shape[full_dim(p.dim, len(shape)) - 1]
    size, made, piece = chunk_piece(length, p.chunks, p.index)
    return msg(
        "ceil({length} / {chunks}) = {size} per piece, {made} pieces; piece {index} has {piece}",
        length=length,
        chunks=p.chunks,
        size=size,
        made=made,
        index=p.index,
        piece=piece,
    )


CHUNK = LayerSpec(
    name="Chunk",
    category="Merge",
    description=N_(
        "One piece of its input cut into equal pieces along a dim (torch.chunk); use one Chunk"
        " node per piece, e.g. index 0 and 1 to split the channels in two."
    ),
    formula=N_("y = chunk(x, chunks, dim)[index]"),
    params=ChunkParams,
    infer=chunk_infer,
    functional=("torch.chunk", "Tensor.chunk"),
    starter={"chunks": 2, "dim": 1, "index": 0},
    call=chunk_call,
    explain=chunk_explain,
    key_params=("chunks", "index"),
    functional_reader="chunk",
    examples=(Example(SEQUENCE, {"chunks": 2, "index": 1}),),
    shapes="piece `index` of `torch.chunk(x, chunks, dim)`: ceil(I / chunks) per piece, the last smaller; one node per piece (ShuffleNet's `x.chunk(2, dim=1)`)",
)


# ---------------------------------------------------------------------------------------------
# Scale: times a constant (a Transformer's embedding times sqrt(d_model))


class ScaleParams(Params):
    factor: float = Field(
        1.0, ge=-1e6, le=1e6, description=N_("the constant every value is multiplied by")
    )


def scale_call(p: ScaleParams, attr: str, args: list[str]) -> str:
    return f"{args[0]} * {fmt(float(p.factor))}"


SCALE = LayerSpec(
    name="Scale",
    category="Merge",
    description=N_(
        "Multiplies every value by a constant, e.g. a Transformer's embedding by sqrt(d_model);"
        " x / c is a Scale by 1 / c."
    ),
    formula=N_("y = x * factor"),
    params=ScaleParams,
    infer=keep_shape,
    functional=("operator.truediv", "torch.div", "Tensor.div"),
    starter={"factor": 2.0},
    call=scale_call,
    explain=same_shape_explained,
    key_params=("factor",),
    functional_reader="scale",
    examples=(Example(SEQUENCE, {"factor": 2.5}),),
    shapes="shape kept; `x * factor` (the importer reads `x * c`, `c * x` and `x / c`)",
)

ENTRIES = (ADD, MULTIPLY, CONCAT, CHUNK, SCALE)
