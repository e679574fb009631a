"""Whether a model fits the memory of the device it would train on, asked before anything is built.

create_run (the app and the command line) asks before a trainer is spawned, and the trainer asks
again first thing, since the device's free memory may have changed in between. A model that does
not fit ends in a sentence with both figures, never in the allocator's traceback.
"""

from __future__ import annotations

import psutil
import torch

from builder.graph import Graph, GraphFormatError
from compiler.analysis import Analysis, analyse
from compiler.gan import discriminator_graph
from compiler.memory import does_not_fit, estimate_memory, for_a_gan_step
from i18n import Message


def resolve_device(requested: str) -> str | None:
    """The device a run would use (auto prefers cuda, then mps); None when it is unavailable."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(name for name, ok in available.items() if ok)
    return requested if available.get(requested) else None


def available_bytes(device: str) -> int:
    """Memory a run can still take on the device: free GPU memory, else available RAM."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(psutil.virtual_memory().available)  # cpu, and mps (unified memory)


def check_fits(
    graph: Graph, analysis: Analysis, batch_size: int, optimizer: str, device: str
) -> Message | None:
    """None when a training step fits the device, else the sentence that refuses the run (for
    a GAN pair, a step of both players).

    An unavailable device is left for the trainer to name (it says which one and what to pick).
    """
    resolved = resolve_device(device)
    if resolved is None:
        return None
    estimate = estimate_memory(graph, analysis, batch_size=batch_size, optimizer=optimizer)
    try:
        judge = discriminator_graph(graph)
    except GraphFormatError:
        judge = None  # the trainer names what is wrong with it
    if judge is not None:
        judged = analyse(judge)
        if judged.ok:
            also = estimate_memory(judge, judged, batch_size=batch_size, optimizer=optimizer)
            estimate = for_a_gan_step(estimate, also)
    return does_not_fit(estimate, resolved, available_bytes(resolved))
