"""runtime/run.py, the code around the loop: device choice, the one checkpoint format and its
refusals (each a sentence, never a KeyError), stop and divergence."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from runtime import loop, run
from runtime.settings import TrainConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")


def tiny_run(first_weights: int = 0, **settings: object) -> run.Run:
    """A Linear classifier on 64 random samples in the shared Loop and Run."""
    config = TrainConfig(**{"epochs": 2, "batch_size": 16, "optimizer": "momentum", **settings})
    generator = torch.Generator().manual_seed(7)
    x, y = torch.randn(64, 4, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    torch.manual_seed(first_weights)
    model = nn.Linear(4, 3)
    optimizer = loop.make_optimizer(config, list(model.parameters()))
    trainer = loop.Loop(model, optimizer, loop.split(x, y, config), config, "auto")
    return run.Run(trainer, {"model": model})


def saved(tmp_path: Path, state: object) -> Path:
    path = tmp_path / "last.pt"
    torch.save(state, path)
    return path


def refusal(tmp_path: Path, state: object) -> str:
    """The sentence a fresh run gives for a checkpoint holding `state`."""
    fresh = tiny_run()
    path = saved(tmp_path, state)
    with pytest.raises(run.CheckpointError) as raised:
        fresh.restore(run.load_checkpoint(path, torch.device("cpu")), path.name)
    return str(raised.value)


# -- the device ------------------------------------------------------------------------------


def test_auto_takes_the_best_device_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert run.pick_device("auto").type == expected
    assert run.pick_device("cpu") == torch.device("cpu")


@NO_CUDA
def test_asking_for_a_missing_cuda_gpu_is_refused_by_name() -> None:
    with pytest.raises(run.DeviceMissing, match="'cuda' is not available.*no CUDA GPU"):
        run.pick_device("cuda")


@NO_MPS
def test_asking_for_a_missing_mps_device_is_refused_by_name() -> None:
    with pytest.raises(run.DeviceMissing, match="'mps' is not available.*no Apple GPU"):
        run.pick_device("mps")


def test_under_torchrun_auto_leaves_mps_out() -> None:
    assert run.pick_device("auto", processes=2).type in ("cuda", "cpu")


def test_a_device_error_is_a_template_and_its_values_for_the_app_to_translate() -> None:
    error = run.CheckpointError(run.N_("checkpoint {file} is missing"), file="x.pt")
    assert (error.template, error.values, str(error)) == (
        "checkpoint {file} is missing",
        {"file": "x.pt"},
        "checkpoint x.pt is missing",
    )


# -- the checkpoint --------------------------------------------------------------------------


def test_a_checkpoint_holds_every_part_a_resume_needs() -> None:
    trained = tiny_run()
    assert trained.train() == "completed"
    state = trained.checkpoint()
    assert (state["format"], state["version"]) == (run.FORMAT, run.VERSION)
    assert set(state["models"]) == set(state["optimizers"]) == {"model"}
    assert (state["epoch"], state["step"]) == (2, trained.progress.step)
    assert state["schedule"]["total_steps"] == trained.loop.total_steps
    assert torch.equal(state["rng"]["cpu"], torch.get_rng_state())


def test_a_resumed_run_ends_with_the_weights_of_one_that_never_stopped(tmp_path: Path) -> None:
    straight = tiny_run()
    straight.train()
    first = tiny_run(epochs=1)
    first.train()
    path = saved(tmp_path, first.checkpoint())
    resumed = tiny_run(first_weights=5)  # the checkpoint replaces them
    resumed.restore(run.load_checkpoint(path, torch.device("cpu")), path.name)
    assert resumed.train() == "completed"
    ends = straight.models["model"].state_dict(), resumed.models["model"].state_dict()
    assert all(torch.equal(ends[0][key], ends[1][key]) for key in ends[0])


def test_a_foreign_file_is_refused_with_a_sentence(tmp_path: Path) -> None:
    assert refusal(tmp_path, {"weights": 1}) == (
        "checkpoint last.pt is not a NetBuilder training checkpoint"
    )


@pytest.mark.parametrize(
    "older",
    [
        {"format": "netbuilder.checkpoint/1", "model": {}, "optimizer": {}},  # the app's before
        {"model": {}, "optimizer": {}, "progress": {}, "rng": torch.zeros(3)},  # train.py's
        {"generator": {}, "discriminator": {}, "rng": torch.zeros(3)},  # the GAN's
    ],
)
def test_an_older_checkpoint_is_refused_with_a_sentence(tmp_path: Path, older: dict) -> None:
    assert "was written by an older NetBuilder" in refusal(tmp_path, older)


def test_another_format_version_is_refused_with_a_sentence(tmp_path: Path) -> None:
    state = tiny_run().checkpoint() | {"version": 1}
    assert "has format version 1; this NetBuilder reads version 2" in refusal(tmp_path, state)


@pytest.mark.parametrize("part", run.PARTS)
def test_a_checkpoint_without_a_part_names_it_never_a_key_error(tmp_path, part) -> None:
    state = {k: v for k, v in tiny_run().checkpoint().items() if k != part}
    assert refusal(tmp_path, state) == f"checkpoint last.pt has no {part}, which resuming needs"


def test_a_gan_checkpoint_is_refused_by_a_plain_run(tmp_path: Path) -> None:
    state = tiny_run().checkpoint()
    state["models"] = {"generator": {}, "discriminator": {}}
    assert refusal(tmp_path, state) == (
        "checkpoint last.pt holds discriminator, generator, but this run trains model"
    )


def test_a_checkpoint_of_another_graph_does_not_fit(tmp_path: Path) -> None:
    state = tiny_run().checkpoint()
    state["models"]["model"] = nn.Linear(5, 3).state_dict()
    assert refusal(tmp_path, state).startswith(
        "checkpoint last.pt does not fit this graph and config (Error(s) in loading state_dict"
    )


def test_an_unreadable_file_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(run.CheckpointError, match="is corrupt or not a NetBuilder checkpoint"):
        run.load_checkpoint(path, torch.device("cpu"))
    with pytest.raises(run.CheckpointError, match="holds no state dict"):
        run.load_checkpoint(saved(tmp_path, [1, 2]), torch.device("cpu"))


# -- stop and divergence ---------------------------------------------------------------------


class StopAfter(run.Run):
    def after_batch(self, progress: loop.Progress) -> None:
        self.stop_requested = progress.step >= 3
        super().after_batch(progress)


def test_a_stop_ends_the_run_after_the_batch_at_hand() -> None:
    tiny = tiny_run()
    stopping = StopAfter(tiny.loop, tiny.models)
    assert stopping.train() == "stopped" and stopping.progress.step == 3


def test_a_loss_that_is_not_finite_ends_the_run_as_diverged() -> None:
    exploding = tiny_run()
    exploding.loop.data.x_train[5] = float("nan")  # one sample that poisons its batch's loss
    assert exploding.train() == "diverged" and exploding.diverged_at == exploding.progress.step


def test_each_epoch_becomes_one_record_with_its_throughput() -> None:
    records: list[dict] = []
    recorded = tiny_run()
    recorded.record_epoch = lambda record, progress: records.append(record)  # type: ignore
    recorded.train()
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["kind"] == "epoch" and r["samples_per_s"] > 0 for r in records)
    assert recorded.last_record == records[-1]


def test_settings_reach_the_optimizer_through_make_optimizer_alone() -> None:
    settings = SimpleNamespace(optimizer="adamw", lr=0.25, weight_decay=0.5)
    optimizer = loop.make_optimizer(settings, [nn.Parameter(torch.zeros(1))], betas=(0.5, 0.9))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.25, 0.5, (0.5, 0.9))
    assert set(loop.OPTIMIZERS) == set(TrainConfig.model_fields["optimizer"].annotation.__args__)


def test_the_memory_estimate_knows_every_optimizer_a_run_can_choose() -> None:
    from compiler.memory import OPTIMIZER_COPIES  # compiler/ cannot import the runtime's table

    assert set(OPTIMIZER_COPIES) == set(loop.OPTIMIZERS)
