"""A GAN pair in one graph file, and the checks that the two graphs can play together. Pure.

The format: a graph file whose own nodes and edges are the generator may carry an optional
`discriminator` object with its own `name`, `nodes` and `edges` (the same schema as a graph).
Every earlier file still opens, and a reader that knows nothing of GANs sees the generator.
The generator's Input is the noise (float32 [Z]); its output must be a sample of the dataset;
the discriminator takes such a sample and outputs one score (a logit) per sample.
"""

from __future__ import annotations

import json

from builder.graph import FORMAT, Graph, GraphFormatError, dump_graph, parse_graph
from compiler.analysis import Analysis, analyse
from i18n import N_, Message, msg

DISCRIMINATOR = "discriminator"


def discriminator_graph(graph: Graph) -> Graph | None:
    """The pair's discriminator, or None for a plain graph; GraphFormatError if it is malformed."""
    extra = graph.model_extra or {}
    if DISCRIMINATOR not in extra:
        return None
    part = extra[DISCRIMINATOR]
    if not isinstance(part, dict):
        raise GraphFormatError(msg("'discriminator' must be an object with nodes and edges"))
    try:
        return parse_graph({"format": FORMAT, "name": f"{graph.name} discriminator", **part})
    except GraphFormatError as exc:
        raise GraphFormatError(msg("the discriminator: {problem}", problem=exc.text)) from None


def with_discriminator(graph: Graph, discriminator: Graph) -> Graph:
    """The pair with `discriminator` in place of its own (stored as the file stores it)."""
    part = json.loads(dump_graph(discriminator))
    part.pop("format", None)
    return graph.model_copy(update={DISCRIMINATOR: part})


def check_pair(
    generator: Analysis, discriminator: Analysis, sample_shape: tuple[int, ...]
) -> list[Message]:
    """Why these two graphs cannot play against each other on samples of `sample_shape`."""
    problems: list[Message] = []
    for role, analysis in ((N_("generator"), generator), (N_("discriminator"), discriminator)):
        for error in analysis.errors:
            problems.append(
                msg("the {role} has an error: {error}", role=msg(role), error=error.text)
            )
    if problems:
        return problems
    noise = end_node(generator, "Input")
    fake = end_node(generator, "Output")
    judged = end_node(discriminator, "Input")
    verdict = end_node(discriminator, "Output")
    if generator.infos[noise].dtype == "int64":
        problems.append(msg("the generator's Input is the noise: make its dtype float32"))
    if generator.infos[fake].shape != sample_shape:
        problems.append(
            msg(
                "the generator outputs {shape} but the data's samples are {samples}; its last"
                " layer must produce a sample",
                shape=list(generator.infos[fake].shape or ()),
                samples=list(sample_shape),
            )
        )
    if discriminator.infos[judged].shape != generator.infos[fake].shape:
        problems.append(
            msg(
                "the discriminator takes {shape} but the generator outputs {fake}; set the"
                " discriminator's Input shape to {fake}",
                shape=list(discriminator.infos[judged].shape or ()),
                fake=list(generator.infos[fake].shape or ()),
            )
        )
    if discriminator.infos[verdict].shape != (1,):
        problems.append(
            msg(
                "the discriminator outputs {shape}; it must output one score [1] per sample"
                " (end it with a Linear of out_features=1, no Sigmoid)",
                shape=list(discriminator.infos[verdict].shape or ()),
            )
        )
    return problems


def pair_problems(graph: Graph, generator: Analysis) -> list[Message]:
    """Why a file's GAN pair cannot train, as far as the two graphs tell (the data's sample is
    taken to be what the generator outputs): none for a plain graph. GraphFormatError where the
    discriminator is no graph at all."""
    judge = discriminator_graph(graph)
    if judge is None:
        return []
    fake = next((n.id for n in graph.nodes if n.type == "Output"), None)
    shape = generator.infos[fake].shape if fake in generator.infos else None
    return check_pair(generator, analyse(judge), tuple(shape or ()))


def end_node(analysis: Analysis, kind: str) -> str:
    return next(n.id for n in analysis.graph.nodes if n.type == kind)
