"""The training settings: one pydantic model for the app's runs and the exported train.py.

config.json holds exactly a TrainConfig; the export writes train.py's command line from these
fields (names, types, choices, defaults and help), so the two cannot drift apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.loop import OPTIMIZERS

# Fields that only the app's trainer reads (uploads, live instruments, its launcher); train.py
# has no flag
# for them (train.py runs on several devices under torchrun instead of a `processes` flag).
APP_ONLY = ("label_column", "report_every", "health_every", "attention_every", "processes")


class TrainConfig(BaseModel):
    """Everything a person chooses about a run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str = Field("digits", description="a built-in dataset")
    label_column: str | None = None
    target: Literal["label", "input"] = Field(
        "label", description="label: learn the dataset's targets; input: reproduce the input"
    )
    epochs: int = Field(5, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=1_000_000, description="global batch")
    lr: float = Field(1e-3, gt=0, le=1e6, description="peak learning rate")
    optimizer: Literal[tuple(OPTIMIZERS)] = "adam"  # type: ignore[valid-type]
    weight_decay: float = Field(0.0, ge=0, le=100)
    schedule: Literal["constant", "step", "cosine"] = Field(
        "constant",
        description="after warm-up: constant, x0.1 at 50% and 75% of the steps, or cosine",
    )
    warmup_steps: int = Field(0, ge=0, le=100_000_000)
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="max gradient norm")
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = Field(False, description="mixed precision (bfloat16 or float16), CUDA only")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1_000_000, description="stop after this many epochs without a lower loss"
    )
    val_fraction: float = Field(0.2, ge=0, le=0.9)
    report_every: int = Field(10, ge=1)
    health_every: int | None = Field(None, ge=1)  # None: every report_every steps
    attention_every: int = Field(50, ge=1)
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="more than 1: torchrun starts one process per GPU (DistributedDataParallel)",
    )
    # Augmentation of training pictures (a zip or folder of class folders), each off by default.
    augment_crop: int = Field(0, ge=0, le=64, description="random crop after this much padding")
    augment_flip: bool = Field(False, description="mirror half the training pictures")
    augment_rotation: float = Field(0.0, ge=0, le=45, description="turn by up to this many degrees")
    augment_jitter: float = Field(
        0.0, ge=0, le=0.9, description="brightness, contrast, saturation x (1 +- this)"
    )


# Fields that do not apply to a GAN pair: it holds no samples out (it has no labels to check
# against), always learns to imitate the data (arrays in memory, not pictures read and augmented
# one by one), and trains in one process. The Train page does not show them for a pair; its
# train.py has no flag for them.
GAN_UNUSED = (
    "target",
    "val_fraction",
    "processes",
    *(name for name in TrainConfig.model_fields if name.startswith("augment_")),
)


def operator_setting(
    name: str, default: float, valid: Callable[[float], bool] = lambda value: value > 0
) -> float:
    """A number the operator sets in the environment (read on every call, so a change needs no
    restart of anything that imported it); the default where it is unset, not a number, or not
    `valid`."""
    try:
        value = float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and valid(value) else default
