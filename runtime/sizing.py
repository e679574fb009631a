"""Whether a model fits the memory it would live in, asked before anything is built.

create_run (the app and the command line) asks before a trainer is spawned, and the trainer asks
again first thing, since the device's free memory may have changed in between. A model that does
not fit ends in a sentence with both figures, never in the allocator's traceback.

The web server itself builds models too (the ONNX export, the live samples of a run): those are
sized against the operator's budget for one model in the server (NETBUILDER_MODEL_BUDGET_MB) and
the memory available now, and the models it keeps are kept in a cache bounded by bytes.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import psutil
import torch

from builder.graph import Graph, GraphFormatError
from compiler.analysis import Analysis, analyse
from compiler.gan import discriminator_graph
from compiler.memory import does_not_fit, estimate_memory, for_a_gan_step, format_bytes
from i18n import Message, msg

MODEL_BUDGET_ENV = "NETBUILDER_MODEL_BUDGET_MB"
DEFAULT_MODEL_BUDGET_MB = 2048

Value = TypeVar("Value")


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


# ---------------------------------------------------------------------------------------------
# Models the server process builds


class TooLargeForServer(ValueError):
    """A model this server will not build in its own process; `detail` says why, with figures."""

    def __init__(self, detail: Message) -> None:
        self.detail = detail
        super().__init__(str(detail))


def model_budget() -> int:
    """Bytes the server may spend on one model it builds: NETBUILDER_MODEL_BUDGET_MB (10^6
    bytes, read on every call), else 2048 MB."""
    setting = os.environ.get(MODEL_BUDGET_ENV, "").strip()
    try:
        megabytes = float(setting) if setting else DEFAULT_MODEL_BUDGET_MB
    except ValueError:
        megabytes = DEFAULT_MODEL_BUDGET_MB
    if not math.isfinite(megabytes) or megabytes <= 0:
        megabytes = DEFAULT_MODEL_BUDGET_MB
    return int(megabytes * 1e6)


def server_refusal(need: int, purpose: Message) -> Message | None:
    """None when `need` bytes fit both the model budget and the memory available now; else the
    sentence that refuses `purpose` (e.g. "building this model for ONNX")."""
    budget, available = model_budget(), available_bytes("cpu")
    if need <= min(budget, available):
        return None
    return msg(
        "{purpose} needs about {need}; this server allows {budget} for a model"
        " (NETBUILDER_MODEL_BUDGET_MB) and has {available} available; make the model smaller",
        purpose=purpose,
        need=format_bytes(need),
        budget=format_bytes(budget),
        available=format_bytes(available),
    )


def module_bytes(model: torch.nn.Module) -> int:
    """The bytes a built model holds in its parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class ByteBudgetCache(Generic[Value]):
    """The most recently used values, bounded by their total bytes rather than by their count
    (st.cache_resource bounds only the count, and one large model can be most of a budget).
    A value larger than the whole budget is not kept. Safe to share between sessions' threads."""

    def __init__(self, budget: Callable[[], int]) -> None:
        self.budget = budget
        self.entries: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self.lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.entries.values())

    def get(self, key: Hashable) -> Value | None:
        with self.lock:
            if key not in self.entries:
                return None
            self.entries.move_to_end(key)
            return self.entries[key][0]

    def put(self, key: Hashable, value: Value, size: int) -> None:
        """Keep `value` (of `size` bytes), dropping the least recently used until it fits."""
        with self.lock:
            self.entries.pop(key, None)
            budget = self.budget()
            if size > budget:
                return
            while self.entries and self.total_bytes + size > budget:
                self.entries.popitem(last=False)
            self.entries[key] = (value, size)
