"""Runs on a Ray cluster (issue 20): with NETBUILDER_RAY_ADDRESS set, a run goes to Ray as one
actor that asks for what its sizing claims, streams its metrics into the run folder for the
page's reader, stops and resumes from its checkpoint, and reads as interrupted when its worker
process is killed. The cluster is a local Ray instance this module starts (CPU only, two CPUs,
in a temporary folder) and shares between its tests; if it cannot start, the tests fail saying
why."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runtime import cluster, store
from runtime.runs import (
    RunError,
    read_metrics,
    read_run,
    resume_run,
    start_run,
    status_text,
    stop_run,
)
from runtime.trainer import TrainConfig
from tests.modelkit import chain_graph
from tests.poolkit import nothing_outlives_its_test, status_of, wait_for  # noqa: F401

# A small model on the digits (8x8 images): a step takes milliseconds, so a run reports at once.
GRAPH = chain_graph([1, 8, 8], ("Flatten", {}), ("Linear", {"out_features": 10}))
LONG = TrainConfig(dataset="digits", epochs=10_000, lr=1e-2, report_every=2)
DEADLINE = 240.0  # a worker's first run imports torch and the trainer: slow on a loaded machine


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray instance of this process (two CPUs, no dashboard), its files in a short temporary
    folder (Ray's socket paths must stay short); shut down after the module's tests."""
    import ray  # requirements-dev.txt; the app imports it only where a cluster is configured

    folder = tempfile.mkdtemp(prefix="nbray", dir="/tmp")
    try:
        ray.init(
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            namespace=cluster.NAMESPACE,
            object_store_memory=100 * 10**6,
            log_to_driver=False,
            runtime_env=cluster.job_runtime_env(),
            _temp_dir=folder,
        )
    except Exception as exc:  # noqa: BLE001  (fail, naming why, rather than skip)
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"a local Ray instance could not start: {exc!r}")
    yield
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def on_cluster(local_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cluster.ADDRESS_ENV, "auto")  # this process is connected already


def reported_steps(runs_dir: Path, run_id: str) -> list[int]:
    """The steps of the training records the page's reader finds in the run folder, read as the
    page reads them: from offset to offset (one read returns at most store.MAX_READ_BYTES, and a
    fast run on the digits writes that many in well under a minute)."""
    records, offset, previous = [], 0, -1
    while offset != previous:
        previous = offset
        more, offset = read_metrics(runs_dir, run_id, offset)
        records += more
    return [record["step"] for record in records if "train_loss" in record]


def stop_on_the_cluster(runs_dir: Path, run_id: str) -> None:
    """Stop the run and wait until it reads stopped and Ray has its actor gone (so that nothing
    of it asks the cluster after the module's Ray instance shuts down)."""
    entry = actor_of(runs_dir, run_id)
    stop_run(runs_dir, run_id)
    wait_for(lambda: status_of(runs_dir, run_id) == "stopped", DEADLINE)
    wait_for(lambda: not cluster.alive(entry), DEADLINE)


def actor_of(runs_dir: Path, run_id: str) -> dict:
    entry = cluster.record(store.read_status(runs_dir / run_id))
    assert entry is not None, "the run is not recorded as on the cluster"
    return entry


def test_a_run_on_the_cluster_streams_its_loss_and_survives_stop_and_resume(
    on_cluster: None, tmp_path: Path
) -> None:
    runs_dir = tmp_path / "workspace"
    run_id = start_run(runs_dir, GRAPH, LONG)
    wait_for(lambda: len(reported_steps(runs_dir, run_id)) >= 3, DEADLINE)
    first = actor_of(runs_dir, run_id)
    assert status_of(runs_dir, run_id) == "running"
    assert first["asks"]["num_gpus"] == 0 and first["asks"]["num_cpus"] >= 1
    assert read_run(runs_dir, run_id).device == f"cpu @ {first['node']}"  # where it runs
    records, _ = read_metrics(runs_dir, run_id)
    assert all(record["train_loss"] > 0 for record in records if "train_loss" in record)

    stop_run(runs_dir, run_id)
    wait_for(lambda: status_of(runs_dir, run_id) == "stopped", DEADLINE)
    wait_for(lambda: not cluster.alive(first), DEADLINE)  # its actor ends with the run
    said = status_text(read_run(runs_dir, run_id), "en")
    assert "did not stop in time" not in said, "the trainer stopped by itself, at the flag"
    stopped_at = read_run(runs_dir, run_id).step
    assert (runs_dir / run_id / store.CHECKPOINT_DIR / store.STATE_FILE).exists()

    resume_run(runs_dir, run_id)
    wait_for(lambda: max(reported_steps(runs_dir, run_id)) > stopped_at + 2, DEADLINE)
    second = actor_of(runs_dir, run_id)
    assert second["actor"] != first["actor"] and cluster.alive(second)
    assert status_of(runs_dir, run_id) == "running"
    stop_on_the_cluster(runs_dir, run_id)


def test_a_killed_worker_reads_as_interrupted_and_resumes(on_cluster: None, tmp_path: Path) -> None:
    runs_dir = tmp_path / "workspace"
    run_id = start_run(runs_dir, GRAPH, LONG)
    wait_for(lambda: len(reported_steps(runs_dir, run_id)) >= 2, DEADLINE)
    worker = psutil.Process(store.read_status(runs_dir / run_id)["pid"])  # Ray's worker process
    assert worker.pid != psutil.Process().pid
    worker.kill()

    wait_for(lambda: status_of(runs_dir, run_id) == "interrupted", DEADLINE)
    assert "Ray cluster ended unexpectedly" in status_text(read_run(runs_dir, run_id), "en")
    # the killed worker's last metrics can run ahead of its last status: wait past both
    resumed_from = max(read_run(runs_dir, run_id).step, *reported_steps(runs_dir, run_id))
    resume_run(runs_dir, run_id)
    wait_for(lambda: max(reported_steps(runs_dir, run_id)) > resumed_from + 2, DEADLINE)
    wait_for(lambda: status_of(runs_dir, run_id) == "running", DEADLINE)
    stop_on_the_cluster(runs_dir, run_id)


def test_a_run_waiting_for_a_node_says_so_and_stops_at_once(
    on_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = cluster.resources

    def needing_a_node_that_is_not_there(memory: dict) -> dict:
        return asked(memory) | {"resources": {"a-node-not-in-this-cluster": 1}}

    monkeypatch.setattr(cluster, "resources", needing_a_node_that_is_not_there)
    runs_dir = tmp_path / "workspace"
    run_id = start_run(runs_dir, GRAPH, LONG)
    wait_for(lambda: cluster.record(store.read_status(runs_dir / run_id)) is not None, DEADLINE)
    waiting = read_run(runs_dir, run_id)
    assert waiting.status == "queued"
    assert "waiting for a node with 1 CPU, 0 GPU" in status_text(waiting, "en")
    entry = actor_of(runs_dir, run_id)

    stop_run(runs_dir, run_id)
    wait_for(lambda: not cluster.alive(entry), DEADLINE)
    wait_for(lambda: store.read_status(runs_dir / run_id)["status"] == "stopped", DEADLINE)
    assert status_text(read_run(runs_dir, run_id), "en") == "stopped before it started"


def test_an_actor_whose_trainer_cannot_even_start_ends_and_frees_what_it_held(
    on_cluster: None, tmp_path: Path
) -> None:
    entry = {"actor": f"netbuilder-test-{tmp_path.name}"}
    options = {"name": entry["actor"], "namespace": cluster.NAMESPACE, "lifetime": "detached"}
    actor = cluster._actor_class().options(**options).remote()
    assert cluster.alive(entry)
    actor.train.remote(str(tmp_path / "no-such-run"), 1, 1)  # its trainer.log cannot be opened
    wait_for(lambda: not cluster.alive(entry), DEADLINE)


def test_a_run_no_node_could_ever_hold_is_refused_at_start_saying_why(
    on_cluster: None, tmp_path: Path
) -> None:
    with pytest.raises(RunError, match="the Ray cluster has no GPU"):
        start_run(tmp_path / "workspace", GRAPH, LONG.model_copy(update={"device": "cuda"}))
    with pytest.raises(RunError, match="no node of the Ray cluster has 3 CPU"):
        start_run(tmp_path / "workspace", GRAPH, LONG.model_copy(update={"processes": 3}))


def test_a_small_gpu_run_asks_for_a_fraction_of_a_gpu_and_a_big_one_for_whole_gpus() -> None:
    one_gpu = cluster.DEFAULT_GPU_MEMORY_MB * 10**6
    small = cluster.resources({"device": "cuda", "bytes": one_gpu // 20 + 1, "processes": 1})
    assert 0 < small["num_gpus"] < 1
    assert small["num_gpus"] * one_gpu >= one_gpu // 20 + 1  # never less than its claim
    huge = cluster.resources({"device": "cuda", "bytes": 3 * one_gpu, "processes": 1})
    assert huge["num_gpus"] == 1
    several = cluster.resources({"device": "cuda", "bytes": 10**9, "processes": 4})
    assert several["num_gpus"] == 4 and several["num_cpus"] == 4 * cluster.DEFAULT_CPUS
    on_cpu = cluster.resources({"device": "cpu", "bytes": 10**9, "processes": 1})
    assert on_cpu == {"num_cpus": cluster.DEFAULT_CPUS, "num_gpus": 0, "memory": 10**9}


def test_a_cluster_set_without_ray_installed_says_so_when_a_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cluster.ADDRESS_ENV, "ray://nowhere:10001")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is missing
    runs_dir = tmp_path / "workspace"
    run_id = start_run(runs_dir, GRAPH, LONG)
    wait_for(lambda: status_of(runs_dir, run_id) == "interrupted", DEADLINE)
    assert "ray is not installed" in status_text(read_run(runs_dir, run_id), "en")


def test_an_unreachable_cluster_is_named_when_a_run_starts_and_not_waited_for(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port that nothing listens on once it is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv(cluster.ADDRESS_ENV, f"127.0.0.1:{port}")
    monkeypatch.setattr("ray.is_initialized", lambda: False)  # as in a server not yet connected
    monkeypatch.setattr(cluster, "_failed", None)
    runs_dir = tmp_path / "workspace"
    run_id = start_run(runs_dir, GRAPH, LONG)
    wait_for(lambda: status_of(runs_dir, run_id) == "interrupted", DEADLINE)
    said = status_text(read_run(runs_dir, run_id), "en")
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in said
