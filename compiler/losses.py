"""The Output node's loss, read from a graph. Pure (no torch): the trainer and the export ask it.

`auto`, the default, keeps the behaviour of files written before losses could be chosen:
cross-entropy for integer class targets, mean squared error for float targets.
"""

from __future__ import annotations

from compiler.analysis import Analysis


def output_loss(analysis: Analysis) -> tuple[str, float]:
    """The Output node's loss and label smoothing ("auto" and 0 where the file names none)."""
    output = next(n for n in analysis.graph.nodes if n.type == "Output")
    typed = analysis.typed.get(output.id)
    loss = getattr(typed, "loss", None) or output.params.get("loss", "auto")
    smoothing = getattr(typed, "label_smoothing", None)
    if smoothing is None:
        smoothing = output.params.get("label_smoothing", 0.0)
    return str(loss), float(smoothing)
