"""An imported .py file is a stranger's code: it runs in runtime.sandbox's child, which the
server's environment, files, network and process table do not reach, and which leaves nothing
behind. Each test runs under bubblewrap where it works here, and under the fallback every Linux
server has (rlimits, its own session, a subreaper, `nobody` where the server is root)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

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

# Without bubblewrap a server run as root confines code only as nobody, where nobody can read
# this interpreter (a pyenv under /root cannot be): elsewhere it refuses to import.
FALLBACK_CONFINES = os.geteuid() != 0 or sandbox._nobody_runs_python()
KINDS = (["fallback"] if FALLBACK_CONFINES else []) + (
    ["bubblewrap"] if sandbox.bwrap_works() else []
)


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


@pytest.fixture(scope="module", params=KINDS)
def seen(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What one hostile file saw and could do inside the sandbox, once per kind: the
    environment, its folder, a write into the repository, a read of the README, a connection
    to a server listening on this machine's loopback."""
    patch = pytest.MonkeyPatch()
    if request.param == "fallback":
        patch.setattr(sandbox, "bwrap_works", lambda: False)
    patch.setenv("NETBUILDER_TEST_SECRET", "hunter2")
    target = sandbox.ROOT / f"written-by-import-{uuid.uuid4().hex}"
    readme = sandbox.ROOT / "README.md"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        body = f"""
import json, os, socket
seen = {{"env": sorted(os.environ), "cwd": os.getcwd()}}
for name, attempt in (
    ("write", lambda: open({str(target)!r}, "w").write("x")),
    ("readme", lambda: open({str(readme)!r}).read()),
    ("network", lambda: socket.create_connection(("127.0.0.1", {port}), 5)),
):
    try:
        attempt()
        seen[name] = "done"
    except OSError as error:
        seen[name] = type(error).__name__
raise RuntimeError(json.dumps(seen))
"""
        error = failure(body)
    patch.undo()
    yield {
        "kind": request.param,
        "target": target,
        **json.loads(error.split("RuntimeError: ", 1)[1]),
    }
    target.unlink(missing_ok=True)


def test_the_server_environment_does_not_reach_the_child(seen) -> None:
    assert "NETBUILDER_TEST_SECRET" not in seen["env"]
    assert "OMP_NUM_THREADS" in seen["env"]  # the few names the sandbox sets itself


def test_the_child_works_in_its_own_folder_not_the_repository(seen) -> None:
    assert "netbuilder-sandbox-" in seen["cwd"]
    assert not str(sandbox.ROOT).startswith(seen["cwd"])


def test_the_child_cannot_write_into_the_repository(seen) -> None:
    if os.geteuid() != 0 and seen["kind"] == "fallback":
        pytest.skip("without bubblewrap a non-root server's child runs as the server's user")
    assert seen["write"] != "done" and not seen["target"].exists()


def test_under_bubblewrap_the_child_sees_no_readme(seen) -> None:
    if seen["kind"] != "bubblewrap":
        pytest.skip("only bubblewrap hides the server's files")
    assert seen["readme"] == "FileNotFoundError"


def test_the_child_has_no_network(seen) -> None:
    assert seen["network"] != "done"


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


def test_a_root_server_that_cannot_confine_code_refuses_to_import(monkeypatch) -> None:
    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    monkeypatch.setattr(sandbox, "_runs_as_root", lambda: True)
    monkeypatch.setattr(sandbox, "_nobody_runs_python", lambda: False)
    marker = sandbox.ROOT / f"ran-{uuid.uuid4().hex}"
    outcome = import_python_file(
        (GOOD_FILE + f"open({str(marker)!r}, 'w').close()\n").encode(), None, "float32"
    )
    assert outcome.graph is None
    assert "cannot run an imported file in a sandbox" in str(outcome.error)
    assert not marker.exists()  # the file never ran


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info.get("cmdline") or []):
            found.append(process)
    return found
