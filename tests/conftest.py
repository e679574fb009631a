"""Shared pytest setup: hypothesis profiles (CI runs at least 300 examples per property), and the
torchvision operators its import needs where the installed wheel's C++ ops are not loadable."""

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

import i18n

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _declare_torchvision_ops() -> torch.library.Library | None:
    """torchvision registers fake kernels for nms/qnms at import; declare the two ops first so
    its models can be imported in tests (test setup only: torchvision is never a runtime need)."""
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU")
        return None  # already defined (a working torchvision build, or declared before)
    except RuntimeError:
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return library


TORCHVISION_OPS = _declare_torchvision_ops()

TRAINER_THREADS = torch.get_num_threads()  # what a fresh process (a trainer) starts with

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each, or they oversubscribe.
    # (Only this process: trainers and other children keep their own thread settings.)
    torch.set_num_threads(1)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def as_in_a_trainer() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Torch's thread count as in a trainer process, for weights compared bit for bit with a
    run's (a float sum can round differently when split over another number of threads)."""
    return lambda: _torch_threads(TRAINER_THREADS)


@pytest.fixture(autouse=True)
def _no_language_left_set() -> Iterator[None]:
    """A command run in-process (`runtime.__main__.main([...])`) sets this thread's language, as
    it should for a command; each test starts and ends with none set here, so a page test after
    it reads its reader's language (a Chinese selectbox read in English failed otherwise)."""
    i18n.set_language(None)
    yield
    i18n.set_language(None)
