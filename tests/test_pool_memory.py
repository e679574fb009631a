"""Runs share the machine by memory, not by count (issue 20): small runs train side by side where
they fit and split the cores, a big run waits while at most MAX_OVERTAKES smaller ones pass it,
a waiting run says why in the reader's language, a run that could never fit is refused at Start,
and several runs share a GPU where its memory allows (a fake device probe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.graph import Graph
from compiler.memory import format_bytes
from runtime import runs as runs_module
from runtime import sizing, store
from runtime.runs import (
    MAX_PER_WORKSPACE_ENV,
    MAX_TRAINERS_ENV,
    RunError,
    list_runs,
    read_run,
    resume_run,
    start_run,
    status_text,
    stop_run,
)
from runtime.sizing import DeviceMemory
from tests.poolkit import (  # noqa: F401  (the fixture applies to every test here)
    LONG,
    lstm,
    nothing_outlives_its_test,
    sleeping_trainer,
    status_of,
    stopped_and_let_go,
    wait_for,
)
from tests.modelkit import chain_graph

GB = 10**9


@pytest.fixture
def no_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sizing.HEADROOM_ENV, "0")
    monkeypatch.setenv(sizing.SERVER_FRACTION_ENV, "0")


def fake_memory(monkeypatch: pytest.MonkeyPatch, **devices: int) -> None:
    """The pool's memory probe answers these free (and total) bytes; no trainer's resident
    memory is counted, so that the figures are exact."""
    probe = {name.replace("_", ":"): DeviceMemory(free, free) for name, free in devices.items()}
    monkeypatch.setattr(sizing, "device_memory", lambda device: probe[device])
    monkeypatch.setattr(runs_module, "_resident_bytes", lambda run: 0)


def big() -> Graph:
    """106 million parameters: with Adam about 1.7 GB to train (never built here)."""
    return chain_graph([10_000], ("Linear", {"out_features": 10_600}))


def claim(runs_dir: Path, run_id: str) -> int:
    return store.read_status(runs_dir / run_id)["memory"]["bytes"]


def message_of(runs_dir: Path, run_id: str, lang: str = "en") -> str:
    return status_text(read_run(runs_dir, run_id), lang)


# -- small runs side by side --------------------------------------------------------------------


def test_three_small_runs_train_at_once_each_on_its_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "3")
    started = [start_run(tmp_path, lstm(), LONG) for _ in range(3)]
    wait_for(lambda: all(status_of(tmp_path, run) == "running" for run in started))
    wait_for(lambda: all("threads" in store.read_status(tmp_path / run) for run in started))

    statuses = sorted(
        (store.read_status(tmp_path / run) for run in started), key=lambda s: s["admitted_at"]
    )
    assert [status["cpu_runs"] for status in statuses] == [1, 2, 3]
    cores = statuses[0]["threads"]  # the first trained alone: every core torch uses
    assert [status["threads"] for status in statuses] == [
        cores,
        max(1, cores // 2),
        max(1, cores // 3),
    ]
    assert len({status["pid"] for status in statuses}) == 3


# -- who goes next ------------------------------------------------------------------------------


def test_a_big_run_waits_while_at_most_three_smaller_runs_pass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_headroom: None
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "10")
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    fake_memory(monkeypatch, cpu=2 * GB)
    first = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, first) == "running")
    large = start_run(tmp_path, big(), LONG)
    small = claim(tmp_path, first)
    assert claim(tmp_path, large) + small > 2 * GB, "the big run cannot start beside the first"
    passing = [start_run(tmp_path, lstm(), LONG) for _ in range(runs_module.MAX_OVERTAKES)]
    wait_for(lambda: all(status_of(tmp_path, run) == "running" for run in passing))
    behind = start_run(tmp_path, lstm(), LONG)

    expected = "waiting, number 2 in line: an earlier run that needs more memory goes first"
    wait_for(lambda: message_of(tmp_path, behind) == expected)
    assert status_of(tmp_path, large) == "queued"
    free = format_bytes(2 * GB - 4 * small)
    assert message_of(tmp_path, large) == (
        f"waiting, number 1 in line: needs {format_bytes(claim(tmp_path, large))}, {free} free"
    )

    for run in [first, *passing]:
        stop_run(tmp_path, run, grace=0)
    wait_for(lambda: status_of(tmp_path, large) == "running")
    left = format_bytes(2 * GB - claim(tmp_path, large))
    wait_for(
        lambda: message_of(tmp_path, behind)
        == f"waiting, number 1 in line: needs {format_bytes(small)}, {left} free"
    )


def test_a_waiting_run_says_why_in_the_readers_language(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "2")
    monkeypatch.setenv(MAX_PER_WORKSPACE_ENV, "1")
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    running, shared = start_run(mine, lstm(), LONG), start_run(mine, lstm(), LONG)
    other = start_run(theirs, lstm(), LONG)
    wait_for(lambda: status_of(mine, running) == status_of(theirs, other) == "running")
    busy = start_run(theirs, lstm(), LONG)

    wait_for(lambda: message_of(theirs, busy) == "waiting, number 2 in line: 2 of 2 trainers busy")
    assert message_of(mine, shared) == "waiting, number 1 in line: 2 of 2 trainers busy"
    assert message_of(mine, shared, "zh") == "排队中，第 1 位：2 个训练进程中 2 个在忙"

    monkeypatch.setenv(MAX_TRAINERS_ENV, "3")  # a free slot, but each workspace has its share
    runs_module._fill_slots(tmp_path)
    assert message_of(mine, shared) == "waiting, number 1 in line: this workspace has its share (1)"
    assert message_of(mine, shared, "zh") == "排队中，第 1 位：这个工作区已用满它的份额（1 个）"
    table = {run.id: status_text(run) for run in list_runs(theirs)}
    assert table[busy] == "waiting, number 2 in line: this workspace has its share (1)"


def test_a_run_that_could_never_fit_is_refused_at_start_and_at_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_headroom: None
):
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    fake_memory(monkeypatch, cpu=1 * GB)
    with pytest.raises(RunError) as refused:
        start_run(tmp_path, big(), LONG)
    text = str(refused.value)
    assert text.startswith("the model needs 1.9 GB to train at batch size 64")
    assert "but cpu has only 1.0 GB for training in all" in text and "could never start" in text
    assert "永远无法开始" in refused.value.detail.render("zh") and list_runs(tmp_path) == []

    run = start_run(tmp_path, lstm(), LONG)
    wait_for(lambda: status_of(tmp_path, run) == "running")
    stop_run(tmp_path, run, grace=0)
    wait_for(lambda: stopped_and_let_go(tmp_path, run))
    fake_memory(monkeypatch, cpu=claim(tmp_path, run) - 1)  # the machine has shrunk since
    with pytest.raises(RunError, match="could never start"):
        resume_run(tmp_path, run)
    # not started again (the fake trainer, killed without its own stop, may read as interrupted)
    assert status_of(tmp_path, run) in ("stopped", "interrupted")


# -- GPUs (a fake probe: two GPUs of 1 GB and 3 GB) ---------------------------------------------


def test_several_runs_share_a_gpu_where_its_memory_allows_each_with_its_cuda_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_headroom: None
):
    monkeypatch.setenv(MAX_TRAINERS_ENV, "10")
    monkeypatch.setattr(runs_module, "_launch", sleeping_trainer)
    monkeypatch.setattr(sizing, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(sizing, "gpu_count", lambda: 2)
    fake_memory(monkeypatch, cpu=8 * GB, cuda_0=1 * GB, cuda_1=3 * GB)
    config = LONG.model_copy(update={"device": "cuda"})
    started = [start_run(tmp_path, lstm(), config) for _ in range(7)]
    wait_for(lambda: sum(status_of(tmp_path, run) == "running" for run in started) == 6)

    each = claim(tmp_path, started[0])
    memory = store.read_status(tmp_path / started[0])["memory"]
    assert memory["device"] == "cuda" and each > sizing.CUDA_CONTEXT_BYTES
    assert [store.read_status(tmp_path / run)["gpu"] for run in started[:6]] == [1, 1, 1, 1, 0, 1]
    room = format_bytes(max(1 * GB - each, 3 * GB - 5 * each))
    wait_for(
        lambda: message_of(tmp_path, started[6])
        == f"waiting, number 1 in line: needs {format_bytes(each)}, {room} free"
    )
