"""The trainer pool cannot leak or over-admit (issue 17): a run that cannot be started gives its
slot back, a dead forkserver's trainers still hold theirs, one run gets one trainer however fast
Resume is clicked, a workspace gets its share and no more, and a broken status.json or checkpoint
fails its own run with a sentence."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import psutil
import pytest
import torch

from builder.graph import load_graph
from runtime import runs as runs_module
from runtime import store
from runtime.__main__ import main as runtime_cli
from runtime.runs import (
    MAX_PER_WORKSPACE_ENV,
    MAX_TRAINERS_ENV,
    RunError,
    create_run,
    list_runs,
    read_run,
    resume_run,
    start_run,
    stop_run,
)
from tests.poolkit import (  # noqa: F401  (the fixture applies to every test here)
    CONFIG,
    DEADLINE,
    LONG,
    lstm,
    nothing_outlives_its_test,
    sleeping_trainer,
    status_of,
    wait_for,
)
from runtime.trainer import TrainConfig, train_run

# -- a run that cannot be started gives its slot back ----------------------------------------


class ForkserverGone:
    """A forkserver process whose start fails the way a dead forkserver's does."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def start(self) -> None:
        raise EOFError


def test_a_fork_that_fails_gives_its_slot_back_and_the_next_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    caplog.set_level(logging.WARNING, logger="runtime.runs")
    with monkeypatch.context() as patched:
        patched.setattr(runs_module.CONTEXT, "Process", ForkserverGone)
        failed = start_run(tmp_path, lstm(), LONG)
        wait_for(lambda: status_of(tmp_path, failed) != "queued")
    info = read_run(tmp_path, failed)
    assert info.status == "interrupted"
    assert info.message == "the trainer could not be started (EOFError()); resume to try again"
    assert any("could not start a trainer" in record.message for record in caplog.records)

    later = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, later) == "running")


def test_a_status_json_broken_while_queued_gives_its_slot_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    first = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, first) == "running")
    broken = start_run(tmp_path, lstm(), LONG)
    (tmp_path / broken / store.STATUS_FILE).write_text("[]")
    later = start_run(tmp_path, lstm(), LONG)

    stop_run(tmp_path, first)  # the slot goes to the broken run, which cannot take it
    wait_for(lambda: status_of(tmp_path, later) == "running")
    info = read_run(tmp_path, broken)
    assert info.status == "failed" and info.message == "status.json does not hold a JSON object"


# -- a dead forkserver ------------------------------------------------------------------------


def test_a_killed_forkserver_is_restarted_and_its_trainers_keep_their_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    orphan = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, orphan) == "running")
    trainer = store.read_status(tmp_path / orphan)
    forkserver = psutil.Process(trainer["pid"]).parent()
    assert forkserver is not None and forkserver.pid != os.getpid()
    forkserver.kill()
    wait_for(lambda: not runs_module._alive(forkserver.pid, forkserver.create_time()))

    waiting = start_run(tmp_path, lstm(), LONG)
    runs_module._fill_slots()  # the pool has looked at the queue since the forkserver died
    assert status_of(tmp_path, waiting) == "queued", "the cap was exceeded"
    assert store.read_status(tmp_path / waiting)["pid"] is None
    assert runs_module._alive(trainer["pid"], trainer["pid_started"])
    assert status_of(tmp_path, orphan) == "running"

    stop_run(tmp_path, orphan)
    wait_for(lambda: status_of(tmp_path, waiting) == "running")
    assert status_of(tmp_path, orphan) == "stopped"
    new_forkserver = psutil.Process(store.read_status(tmp_path / waiting)["pid"]).parent()
    assert new_forkserver is not None and new_forkserver.pid != forkserver.pid


# -- one run, one trainer ---------------------------------------------------------------------


def test_two_resumes_at_once_start_exactly_one_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The first Resume is held between its check and its start until the second has had its
    answer: without a lock both would find the run stopped and both would start a trainer."""
    monkeypatch.setenv(MAX_TRAINERS_ENV, "2")
    folder = create_run(tmp_path, lstm(), LONG)
    store.update_status(folder, status="stopped")
    first_checked, second_answered = threading.Event(), threading.Event()
    real_info = runs_module._info

    def first_waits_after_its_check(run: Path) -> runs_module.RunInfo:
        info = real_info(run)
        if threading.current_thread().name == "first" and not first_checked.is_set():
            first_checked.set()
            second_answered.wait(DEADLINE)
        return info

    launches: list[Path] = []
    real_launch = runs_module._launch
    monkeypatch.setattr(runs_module, "_info", first_waits_after_its_check)
    monkeypatch.setattr(
        runs_module, "_launch", lambda run: launches.append(run) or real_launch(run)
    )
    answers: dict[str, str] = {}

    def resume(name: str) -> None:
        try:
            answers[name] = resume_run(tmp_path, folder.name).status
        except RunError as exc:
            answers[name] = str(exc.detail)

    first = threading.Thread(target=resume, args=("first",), name="first")
    first.start()
    wait_for(first_checked.is_set)
    resume("second")
    second_answered.set()
    first.join()

    assert answers["first"] in ("queued", "running")
    assert answers["second"] == (
        f"run {folder.name!r} is busy: another start, resume, stop or delete of it is under way"
    )
    wait_for(lambda: status_of(tmp_path, folder.name) == "running")
    assert launches == [folder.resolve()]
    with pytest.raises(RunError, match="only a stopped or interrupted run resumes"):
        resume_run(tmp_path, folder.name)


def test_a_stop_while_another_action_holds_the_run_is_refused_with_a_sentence(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    with runs_module._locked(tmp_path, folder.name):
        with pytest.raises(RunError, match="is busy: another start, resume, stop or delete"):
            stop_run(tmp_path, folder.name)


# -- each workspace its share -----------------------------------------------------------------


def test_a_workspace_over_its_share_waits_while_another_workspaces_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "2")
    monkeypatch.delenv(MAX_PER_WORKSPACE_ENV, raising=False)
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    first, second, third = (start_run(mine, lstm(), CONFIG) for _ in range(3))
    wait_for(lambda: status_of(mine, first) == status_of(mine, second) == "running")
    other = start_run(theirs, lstm(), CONFIG)  # alone, "mine" took both slots; now it shares

    stop_run(mine, first, grace=0)
    wait_for(lambda: status_of(theirs, other) == "running")
    assert status_of(mine, third) == "queued", "the older run waits: its workspace has its share"


def test_the_share_of_a_workspace_can_be_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "3")
    monkeypatch.setenv(MAX_PER_WORKSPACE_ENV, "1")
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    first, second = start_run(mine, lstm(), CONFIG), start_run(mine, lstm(), CONFIG)
    other = start_run(theirs, lstm(), CONFIG)
    wait_for(lambda: status_of(mine, first) == status_of(theirs, other) == "running")
    assert status_of(mine, second) == "queued", "a free slot, but not for this workspace"


# -- a broken status.json or checkpoint fails its own run -------------------------------------


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (b"[]", "status.json does not hold a JSON object"),
        (b"{ torn", "status.json is unreadable (Expecting property name enclosed in double"),
        (b"\xff\xfe\x00garbage", "status.json is unreadable ("),
        (b'{"status": "running", "epochs": "many"}', 'status.json has an invalid epochs: "many"'),
        (b'{"status": "banana"}', 'status.json has an invalid status: "banana"'),
        (b'{"status": "running", "pid": true}', "status.json has an invalid pid: true"),
        (b'{"status": "stopped", "created": NaN}', "status.json has an invalid created: NaN"),
    ],
    ids=["list", "not-json", "not-utf8", "text-epochs", "unknown-status", "bool-pid", "nan"],
)
def test_a_malformed_status_json_fails_only_its_own_run(
    tmp_path: Path, content: bytes, sentence: str, capsys: pytest.CaptureFixture[str]
):
    good = create_run(tmp_path, lstm(), CONFIG)
    bad = create_run(tmp_path, lstm(), CONFIG)
    (bad / store.STATUS_FILE).write_bytes(content)

    listed = {run.id: run for run in list_runs(tmp_path)}
    assert listed.keys() == {good.name, bad.name}
    assert listed[good.name].status == "queued"
    assert listed[bad.name].status == "failed" and listed[bad.name].message.startswith(sentence)
    assert read_run(tmp_path, bad.name).message == listed[bad.name].message
    with pytest.raises(RunError, match="only a stopped or interrupted run resumes"):
        resume_run(tmp_path, bad.name)

    assert runtime_cli(["runs", "--runs", str(tmp_path)]) == 0  # (conftest resets its language)
    out = capsys.readouterr().out
    assert good.name in out and bad.name in out and sentence in out and "unexpected" not in out


def resumed_without_its_random_state(folder: Path):
    """Train the run to its first checkpoint, take `rng` out of it, and resume."""
    (folder / store.STOP_FILE).touch()
    assert train_run(folder).status == "stopped"
    (folder / store.STOP_FILE).unlink()
    state_file = folder / store.CHECKPOINT_DIR / store.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    del state["rng"]
    torch.save(state, state_file)
    store.update_status(folder, status="stopped")
    return train_run(folder)


def test_a_checkpoint_without_its_random_state_fails_with_a_sentence(tmp_path: Path):
    folder = create_run(tmp_path, lstm(), CONFIG)
    result = resumed_without_its_random_state(folder)
    assert result.status == "failed"
    assert result.message == "checkpoint state.pt has no rng, which resuming needs"
    assert read_run(tmp_path, folder.name).message == result.message


def test_a_gan_checkpoint_without_its_random_state_fails_with_a_sentence(tmp_path: Path):
    pair = load_graph((Path(__file__).parent / "data" / "mlp_gan.json").read_text())
    folder = create_run(tmp_path, pair, TrainConfig(dataset="digits", epochs=3, batch_size=64))
    result = resumed_without_its_random_state(folder)
    assert result.status == "failed"
    assert result.message == "checkpoint state.pt has no rng, which resuming needs"


def test_trainers_run_below_the_web_servers_priority(tmp_path: Path, monkeypatch):
    """The page answers while models train: the forkserver and its trainers are niced."""
    from runtime.launcher import TRAINER_NICENESS

    monkeypatch.setenv(MAX_TRAINERS_ENV, "1")
    run = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, run) == "running")
    trainer = psutil.Process(store.read_status(tmp_path / run)["pid"])
    assert trainer.nice() == min(19, psutil.Process().nice() + TRAINER_NICENESS)
    stop_run(tmp_path, run)
    wait_for(lambda: status_of(tmp_path, run) == "stopped")
