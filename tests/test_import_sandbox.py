"""An imported .py file is a stranger's code: it runs in runtime.sandbox's child, which the
server's environment, files, network and process table do not reach, and which leaves nothing
behind. Each test runs under bubblewrap where it works here, and under the fallback every Linux
server has (rlimits, its own session, a subreaper, `nobody` where the server is root)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import psutil
import pytest

from runtime import import_job, sandbox
from runtime.import_job import import_python_file

GOOD_FILE = """
import torch
from torch import nn

INPUT_SHAPE = (8,)


def build_model():
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU())
"""

KINDS = ["fallback"] + (["bubblewrap"] if sandbox.bwrap_works() else [])


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fallback":
        monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    yield request.param


def failure(body: str, **limits: int) -> str:
    """The error an import of GOOD_FILE plus `body` (run at import) ends with."""
    outcome = import_python_file((GOOD_FILE + body).encode(), None, "float32", **limits)
    assert outcome.graph is None, "the hostile file was imported as a graph"
    return str(outcome.error)


def test_the_server_environment_does_not_reach_the_child(kind, monkeypatch) -> None:
    monkeypatch.setenv("NETBUILDER_TEST_SECRET", "hunter2")
    error = failure("import os\nraise RuntimeError(sorted(os.environ))\n")
    assert "RuntimeError" in error
    assert "NETBUILDER_TEST_SECRET" not in error
    assert "OMP_NUM_THREADS" in error  # the few names the sandbox sets itself


def test_the_child_works_in_its_own_folder_not_the_repository(kind) -> None:
    error = failure("import os\nraise RuntimeError(os.getcwd())\n")
    cwd = error.rsplit("RuntimeError: ", 1)[1]
    assert "netbuilder-sandbox-" in cwd
    assert not str(sandbox.ROOT).startswith(cwd)


@pytest.mark.skipif(
    os.geteuid() != 0 and not sandbox.bwrap_works(), reason="a non-root server's own files"
)
def test_the_child_cannot_write_into_the_repository(kind) -> None:
    target = sandbox.ROOT / f"written-by-import-{uuid.uuid4().hex}"
    error = failure(f"open({str(target)!r}, 'w').write('x')\n")
    assert not target.exists()
    assert "Error" in error


def test_under_bubblewrap_the_child_sees_no_runs_no_readme_and_no_home() -> None:
    if not sandbox.bwrap_works():
        pytest.skip("bubblewrap is not installed or may not make namespaces here")
    readme = sandbox.ROOT / "README.md"
    assert readme.is_file()
    error = failure(f"open({str(readme)!r}).read()\n")
    assert "FileNotFoundError" in error


def test_the_child_has_no_network(kind) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        error = failure(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 5)\n")
    assert "running model.py failed" in error
    assert any(name in error for name in ("ConnectionRefused", "OSError", "unreachable")), error


def test_a_process_flood_is_stopped_by_the_process_limit(kind) -> None:
    marker = f"netbuilder-flood-{uuid.uuid4().hex}"
    body = (
        "import os, sys\n"
        "for _ in range(2000):\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 600', {marker!r}])\n"
    )
    error = failure(body)
    assert "BlockingIOError" in error or "Resource temporarily unavailable" in error
    assert not _processes_with(marker)


def test_a_detached_grandchild_does_not_outlive_the_import(kind) -> None:
    marker = f"netbuilder-daemon-{uuid.uuid4().hex}"
    body = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 600', {marker!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "raise RuntimeError('the daemon is started')\n"
    )
    assert "the daemon is started" in failure(body)
    assert not _processes_with(marker)


def test_a_file_too_large_for_the_file_size_limit_is_refused(kind) -> None:
    error = failure("open('big.bin', 'wb').write(b'0' * (64 * 1024**2))\n")
    assert "File too large" in error


def test_what_the_child_prints_is_read_with_a_cap(kind) -> None:
    limits = sandbox.Limits(cpu_seconds=30, output_bytes=64 * 1024)
    source = GOOD_FILE + "import sys\nfor _ in range(2000): sys.stderr.write('x' * 4096)\n"
    done = sandbox.run_limited(
        "runtime.import_job",
        '{"path": "model.py", "shape": null, "dtype": "float32", "name": "m", "bytes": 1e9}',
        {"model.py": source.encode()},
        limits,
        30,
        preload=import_job.PRELOAD,
    )
    assert len(done.stderr) == limits.output_bytes  # 8 MB were printed
    assert done.stdout.strip().startswith(b"{")  # the reply is still read


def test_importing_is_off_unless_the_operator_turned_it_on() -> None:
    assert not import_job.import_allowed(None)
    assert import_job.import_allowed("1")


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info.get("cmdline") or []):
            found.append(process)
    return found
