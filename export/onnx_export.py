"""ONNX export of a compiled model, for running it outside PyTorch.

Uses torch.onnx.export with dynamo=True: the torch.export-based exporter (it needs the onnx and
onnxscript packages and works offline), the default since torch 2.9; the TorchScript exporter
is deprecated. The batch dimension stays dynamic, so one file serves any batch size.
tests/test_onnx.py exports every template and every catalog entry's examples (graphs built from
the catalog) and checks the outputs with onnxruntime against PyTorch within 1e-4; a layer that
cannot export some of its uses says so in its entry's `onnx_limit`.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import nn

from builder.catalog import CATALOG, Tensor
from compiler.analysis import Analysis
from compiler.codegen import generate_source, generated_module
from compiler.memory import estimate_memory, format_bytes
from i18n import Message, msg

INPUT_NAME = "x"
OUTPUT_NAME = "y"
# Copies of the weights an export holds at once: the model, its frozen copy, the ONNX graph and
# the file's bytes.
EXPORT_WEIGHT_COPIES = 4
EXAMPLE_BATCH = 2


class OnnxExportError(Exception):
    """The model could not be exported; the message says why in one line. `detail` is it as a
    Message, rendered in the reader's language; str() is its English."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


def unexportable_layers(analysis: Analysis) -> list[Message]:
    """One sentence per node that cannot export, as its catalog entry's `onnx_limit` says for
    its params and shapes (an empty list: the graph exports)."""
    found = []
    for node in analysis.graph.nodes:
        reason = _onnx_limit(analysis, node.id) if node.id in analysis.live else None
        if reason:
            found.append(
                msg("{layer} {node}: {reason}", layer=node.type, node=repr(node.id), reason=reason)
            )
    return found


def _onnx_limit(analysis: Analysis, node_id: str) -> Message | None:
    spec = CATALOG[analysis.node_type(node_id)]
    shapes = [analysis.infos[source].shape for source in analysis.inputs[node_id]]
    out = analysis.infos[node_id].shape
    if out is None or any(shape is None for shape in shapes):
        return None
    tensors = [Tensor(shape) for shape in shapes if shape is not None]
    return spec.onnx_limit(analysis.typed[node_id], tensors, Tensor(out))


def export_bytes(analysis: Analysis) -> int:
    """The memory an export of this graph's model needs, from its analysis (nothing is built):
    the copies of its weights it holds at once, and the activations of the traced example."""
    memory = estimate_memory(analysis.graph, analysis, batch_size=EXAMPLE_BATCH)
    return EXPORT_WEIGHT_COPIES * memory.parameter_bytes + memory.activation_bytes


def export_graph_onnx(
    analysis: Analysis,
    weights: dict[str, torch.Tensor] | None = None,
    max_bytes: int | None = None,
) -> bytes:
    """The ONNX file of a valid graph's model.py, with a run's trained weights (its state_dict)
    or, without them, freshly initialised ones. A model whose export needs more than `max_bytes`
    is refused before it is built (the caller knows its memory; this module does not)."""
    need = export_bytes(analysis)
    if max_bytes is not None and need > max_bytes:
        raise OnnxExportError(
            msg(
                "exporting this model to ONNX needs about {need}, over the {budget} allowed;"
                " make the model smaller",
                need=format_bytes(need),
                budget=format_bytes(max_bytes),
            )
        )
    blocked = unexportable_layers(analysis)
    if blocked:
        # one sentence per node, joined: "{r0}; {r1}" has no words of its own to translate
        joined = Message("; ".join(f"{{r{i}}}" for i in range(len(blocked))))
        reasons = Message(joined.text, {f"r{i}": reason for i, reason in enumerate(blocked)})
        raise OnnxExportError(msg("cannot export to ONNX: {reasons}", reasons=reasons))
    generated = generated_module(generate_source(analysis))
    model = generated.build_model()
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise OnnxExportError(
                msg("the weights do not fit this graph: {detail}", detail=first)
            ) from None
    shape, dtype = generated.INPUT_SHAPE, generated.INPUT_DTYPE
    return export_onnx(model, torch.zeros((2, *shape), dtype=dtype))


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX file of `model` in eval mode (the model itself is left as it is), for inputs
    shaped like `example` with any batch size."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so plainly if missing)
    except ImportError:
        raise OnnxExportError(msg("ONNX export needs the onnx and onnxscript packages")) from None
    frozen = copy.deepcopy(model).eval()
    if len(example) < 2:  # a batch of 1 would be specialised into the graph
        example = torch.cat([example, example])
    logger = logging.getLogger("torch.onnx")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # its notes about torchvision and onnxscript are noise here
    try:
        program = torch.onnx.export(
            frozen,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    except Exception as exc:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter's colours
        first = (plain.splitlines() or [""])[0]
        raise OnnxExportError(
            msg(
                "torch.onnx.export failed: {error}: {detail}",
                error=type(exc).__name__,
                detail=first,
            )
        ) from None
    finally:
        logger.setLevel(previous)
    return program.model_proto.SerializeToString()
