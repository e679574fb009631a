"""Whether a model fits the memory it would live in, asked before anything is built.

create_run (the app and the command line) asks before a trainer is spawned, and the trainer asks
again first thing, since the device's free memory may have changed in between. A model that does
not fit ends in a sentence with both figures, never in the allocator's traceback.

The trainer pool (runtime/runs.py) admits runs by memory: each run is sized once when it is
queued (run_claim: its training step plus what its process costs besides), and admitted while
its claim fits what is free on its device less the headroom the operator keeps
(NETBUILDER_MEMORY_HEADROOM_MB, and NETBUILDER_SERVER_MEMORY_FRACTION of the RAM for the web
server). A run whose claim exceeds the device's whole capacity could never start and is refused.

The web server itself builds models too (the ONNX export, the live samples of a run): those are
sized against the operator's budget for one model in the server (NETBUILDER_MODEL_BUDGET_MB) and
the memory available now, and the models it keeps are kept in a cache bounded by bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import psutil
import torch

from builder.graph import Graph, GraphFormatError
from compiler.analysis import Analysis, analyse
from compiler.gan import discriminator_graph
from compiler.memory import (
    MemoryEstimate,
    does_not_fit,
    estimate_memory,
    for_a_gan_step,
    format_bytes,
)
from i18n import Message, msg
from runtime.settings import operator_setting

MODEL_BUDGET_ENV = "NETBUILDER_MODEL_BUDGET_MB"
DEFAULT_MODEL_BUDGET_MB = 2048
HEADROOM_ENV = "NETBUILDER_MEMORY_HEADROOM_MB"
DEFAULT_HEADROOM_MB = 512
SERVER_FRACTION_ENV = "NETBUILDER_SERVER_MEMORY_FRACTION"
DEFAULT_SERVER_FRACTION = 0.1  # of the RAM, kept for the web server and its pages' caches
# What a trainer costs besides its model's training step: a CUDA context on its GPU, and on the
# CPU its own copy of the data, torch's allocator and Python (what a forked trainer adds).
CUDA_CONTEXT_BYTES = 500 * 10**6
TRAINER_PROCESS_BYTES = 200 * 10**6

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


@dataclass(frozen=True)
class DeviceMemory:
    """A device's memory now: what is free (available RAM, free GPU memory) and its total."""

    free: int
    total: int


def device_memory(device: str) -> DeviceMemory:
    """The memory probe the pool asks (tests stand a fake in its place): a GPU by its index
    ("cuda:1"), else the RAM (cpu, and mps, whose memory is the RAM)."""
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return DeviceMemory(int(free), int(total))
    memory = psutil.virtual_memory()
    return DeviceMemory(int(memory.available), int(memory.total))


def gpu_count() -> int:
    return torch.cuda.device_count()


def headroom(device: str, total: int) -> int:
    """Bytes of a device that no run may claim: NETBUILDER_MEMORY_HEADROOM_MB (10^6 bytes, default
    512) on every device and, of the RAM, NETBUILDER_SERVER_MEMORY_FRACTION (default 0.1) for
    the web server, which builds models and keeps caches of its own."""
    megabytes = operator_setting(HEADROOM_ENV, DEFAULT_HEADROOM_MB, lambda value: value >= 0)
    kept = int(megabytes * 1e6)
    if not device.startswith("cuda"):
        fraction = operator_setting(
            SERVER_FRACTION_ENV, DEFAULT_SERVER_FRACTION, lambda v: 0 <= v < 1
        )
        kept += int(fraction * total)
    return kept


def claim_bytes(training_bytes: int, device: str) -> int:
    """What a run holds on its device: its training step plus its process's own cost."""
    overhead = CUDA_CONTEXT_BYTES if device.startswith("cuda") else TRAINER_PROCESS_BYTES
    return training_bytes + overhead


def capacity(device: str) -> int:
    """The most a run can ever claim on this kind of device: its total less the headroom (the
    largest GPU's, for cuda)."""
    if device == "cuda":
        totals = [device_memory(f"cuda:{index}").total for index in range(gpu_count())]
        return max((total - headroom(device, total) for total in totals), default=0)
    total = device_memory(device).total
    return total - headroom(device, total)


def training_estimate(
    graph: Graph, analysis: Analysis, batch_size: int, optimizer: str
) -> MemoryEstimate:
    """A training step's memory: the graph's, or for a GAN pair a step of both players."""
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
    return estimate


def check_fits(
    graph: Graph, analysis: Analysis, batch_size: int, optimizer: str, device: str
) -> Message | None:
    """None when a training step fits the device's memory available now, else the sentence that
    refuses the run (for a GAN pair, a step of both players). The trainer asks first thing.

    An unavailable device is left for the trainer to name (it says which one and what to pick).
    """
    resolved = resolve_device(device)
    if resolved is None:
        return None
    estimate = training_estimate(graph, analysis, batch_size, optimizer)
    return does_not_fit(estimate, resolved, available_bytes(resolved))


def check_could_ever_fit(
    graph: Graph, analysis: Analysis, batch_size: int, optimizer: str, device: str
) -> Message | None:
    """None when the run's claim fits the device's capacity (its total less the headroom), so
    that it starts once running runs give their memory back; else the sentence that refuses it
    at Start, since it would wait in the queue forever."""
    resolved = resolve_device(device)
    if resolved is None:
        return None
    return never_fits(training_estimate(graph, analysis, batch_size, optimizer), resolved)


def never_fits(estimate: MemoryEstimate, device: str) -> Message | None:
    """The refusal for a run whose claim on `device` exceeds its capacity; None when it fits."""
    need, most = claim_bytes(estimate.training_bytes, device), capacity(device)
    if need <= most:
        return None
    return msg(
        "the model needs {need} to train at batch size {batch} ({weights} of it for parameters,"
        " gradients and optimizer state, {process} for its process), but {device} has only"
        " {capacity} for training in all (its memory less the headroom the server keeps), so"
        " it could never start; make the model or the batch smaller",
        need=format_bytes(need),
        batch=estimate.batch_size,
        weights=format_bytes(estimate.weights_and_state_bytes),
        process=format_bytes(need - estimate.training_bytes),
        device=device,
        capacity=format_bytes(max(0, most)),
    )


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
    return int(operator_setting(MODEL_BUDGET_ENV, DEFAULT_MODEL_BUDGET_MB) * 1e6)


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
