"""Embedding: a learned vector per token id (torch keeps it in torch/nn/modules/sparse.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from builder.layers.base import (
    TOKENS,
    MAX_SIZE,
    Example,
    LayerError,
    LayerSpec,
    NotMappable,
    Params,
    Tensor,
    call,
    changed,
    count,
)
from i18n import N_, msg


class EmbeddingParams(Params):
    num_embeddings: int = count(N_("a positive int (vocabulary size)"))
    embedding_dim: int = count()
    padding_idx: int | None = Field(
        None, ge=-MAX_SIZE, le=MAX_SIZE, description=N_("a token id or null")
    )


def embedding_infer(p: EmbeddingParams, xs: list[Tensor]) -> Tensor:
    if xs[0].dtype != "int64":
        raise LayerError(
            msg(
                "needs int64 token ids, got {dtype}; set the Input's dtype to int64",
                dtype=xs[0].dtype,
            )
        )
    if p.padding_idx is not None and not -p.num_embeddings <= p.padding_idx < p.num_embeddings:
        raise LayerError(
            msg(
                "padding_idx {index} is outside 0..{last}",
                index=p.padding_idx,
                last=p.num_embeddings - 1,
            )
        )
    return Tensor(xs[0].shape + (p.embedding_dim,))


def embedding_count(p: EmbeddingParams, xs: list[Tensor]) -> int:
    return p.num_embeddings * p.embedding_dim


def embedding_module(p: EmbeddingParams, xs: list[Tensor]) -> str:
    return call("nn.Embedding", p.num_embeddings, p.embedding_dim, **changed(p, "padding_idx"))


def embedding_from_module(m: Any) -> dict[str, Any]:
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        raise NotMappable(msg("max_norm, scale_grad_by_freq and sparse are not in the catalog"))
    return {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
    }


EMBEDDING = LayerSpec(
    name="Embedding",
    category="Recurrent",
    description=N_("Looks up a learned vector for each token id: int64 [T] -> [T, D]."),
    formula=N_("y[t] = W[token[t]]"),
    params=EmbeddingParams,
    infer=embedding_infer,
    torch_modules=("Embedding",),
    params_from_module=embedding_from_module,
    starter={"num_embeddings": 16, "embedding_dim": 32},
    count_params=embedding_count,
    module=embedding_module,
    key_params=("num_embeddings", "embedding_dim"),
    sequence_output=True,
    takes_token_ids=True,
    examples=(Example(TOKENS, {"num_embeddings": 10, "embedding_dim": 8}, "int64"),),
    shapes="int64 [T] -> [T, embedding_dim]",
)

ENTRIES = (EMBEDDING,)
