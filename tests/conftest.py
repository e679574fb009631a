"""Shared pytest setup: hypothesis profiles (CI runs at least 300 examples per property), and the
torchvision operators its import needs where the installed wheel's C++ ops are not loadable."""

import os

import torch
from hypothesis import HealthCheck, settings

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
