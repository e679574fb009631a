"""Running a stranger's code: a child process with an empty environment, its own folder and
session, limits on CPU, memory, address space, file size and processes, output read with a cap,
and no network where the OS can deny it.

Two layers, the first where it is installed:
- **bubblewrap** (`bwrap`, Debian's package bubblewrap): new user, pid, network, IPC and UTS
  namespaces; the file system is read-only and shows only the interpreter, the installed packages
  and NetBuilder's own code (no runs, no home, no other workspace); when its first process ends,
  the kernel ends every process in the namespace, a detached grandchild too.
- **Everywhere on Linux**: the child is started in its own session with `setrlimit` limits, in
  a new network namespace where the OS lets it make one. It runs a small supervisor that is the
  *subreaper* of everything the code starts, so a grandchild that detaches itself (double fork,
  setsid) is still its descendant and is killed at the end. Where the server runs as root the
  code runs as `nobody` (root is exempt from the process-count limit); a root server without
  bubblewrap where nobody cannot read this interpreter cannot confine code (`confines_code`),
  and the import refuses.

The caller gets a `Finished`: the exit code, at most `Limits.output_bytes` of stdout and stderr,
and whether the deadline ended it. Nothing here interprets the output.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal

import psutil

ROOT = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("builder", "compiler", "runtime", "i18n")
NOBODY = 65534
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
# The interpreter and torch map shared libraries: a CUDA build of torch maps several GB before it
# allocates anything, so the address-space limit is the memory limit plus this much.
LIBRARY_ADDRESS_SPACE = 8 * 1024**3


@dataclass(frozen=True)
class Limits:
    """What one child may use. `processes` counts threads too (that is what the kernel counts)."""

    cpu_seconds: int = 60
    memory_bytes: int = 4 * 1024**3
    file_bytes: int = 16 * 1024**2
    processes: int = 64
    output_bytes: int = 1024**2


@dataclass(frozen=True)
class Finished:
    """How a limited child ended: the code's exit code (128 + N where signal N ended it, as a
    shell says it; negative where the supervisor itself was killed, as in subprocess)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool

    def reply(self) -> dict[str, Any] | None:
        """The child's answer: its last line of output as a JSON object, if it gave one."""
        lines = self.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return None
        return answer if isinstance(answer, dict) else None

    def stopped_by(self) -> Literal["time", "memory"] | None:
        """Which limit ended a child that gave no answer: its deadline or CPU time (SIGKILL,
        SIGXCPU), or its memory (SIGSEGV, or a MemoryError it died of); None for neither."""
        if self.timed_out or self.returncode in (-9, -24, 128 + 9, 128 + 24):
            return "time"
        if self.returncode in (-11, 128 + 11) or "MemoryError" in self.last_error_line():
            return "memory"
        return None

    def last_error_line(self) -> str:
        """The last line the child wrote to stderr (a traceback's own sentence), cut short."""
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else ""


def run_limited(
    module: str,
    argument: str,
    files: dict[str, bytes],
    limits: Limits,
    deadline_s: float,
    preload: tuple[str, ...] = (),
    folder: Path | None = None,
) -> Finished:
    """Run `python -m module argument` in a limited child. Its working folder, the only place
    it may write, is a new temporary folder (removed afterwards) holding `files` (name ->
    content); `argument` may name them relative to it. `preload` names modules imported before
    the code starts (what the module needs from the interpreter's own files). A caller that
    wants the files the child wrote passes its own empty `folder` (and removes it later)."""
    with (
        tempfile.TemporaryDirectory(prefix="netbuilder-sandbox-") as work,
        tempfile.TemporaryDirectory(prefix="netbuilder-output-") as output,
    ):
        folder = folder or Path(work)
        for name, content in files.items():
            (folder / Path(name).name).write_bytes(content)
        as_nobody = drops_to_nobody()
        if as_nobody:  # the code runs as nobody, in a folder it may write to
            for path in [folder, *folder.iterdir()]:
                os.chown(path, NOBODY, NOBODY)
        spec = {
            "module": module,
            "argument": argument,
            "limits": asdict(limits),
            "deadline_s": deadline_s,
            "preload": list(preload),
            "as_nobody": as_nobody,
        }
        boot = [sys.executable, "-I", "-c", _BOOT.format(root=str(ROOT)), json.dumps(spec)]
        command = _bwrap_prefix(folder) + boot if bwrap_works() else boot
        out_path, err_path = Path(output) / "stdout", Path(output) / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            child = subprocess.Popen(
                command,
                cwd=folder,
                env=_environment(folder),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            timed_out = False
            try:
                # the supervisor's own deadline ends the code first; this one ends a stuck supervisor
                returncode = child.wait(timeout=deadline_s + 15)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(child.pid)
                returncode = child.wait()
            _kill_tree(child.pid)  # whatever is left in its session
        if returncode == SUPERVISOR_DEADLINE:
            timed_out = True
        return Finished(
            returncode=returncode,
            stdout=_head(out_path, limits.output_bytes),
            stderr=_tail(err_path, limits.output_bytes),
            timed_out=timed_out,
        )


SUPERVISOR_DEADLINE = 124  # the supervisor's exit code when the deadline ended the code


def confines_code() -> bool:
    """Whether a stranger's code can be confined here: under bubblewrap, or as a user the
    kernel holds to the process limit (not root: root is exempt from RLIMIT_NPROC and may
    write anywhere). A server run as root without bubblewrap confines it only where the user
    nobody can run this interpreter (a pyenv under /root cannot be read by nobody)."""
    return bwrap_works() or not _runs_as_root() or _nobody_runs_python()


def drops_to_nobody() -> bool:
    """Whether the child becomes nobody: where the server is root and nobody can run Python
    (under bubblewrap always, since it shows the interpreter's folders to nobody)."""
    return _runs_as_root() and (bwrap_works() or _nobody_runs_python())


@cache
def _nobody_runs_python() -> bool:
    """Whether nobody can read this interpreter's standard library (asked once per server)."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "import cProfile, fractions, statistics"],
            capture_output=True,
            timeout=60,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def sandbox_kind() -> str:
    """What this server gives an imported file, for the README and the operator's log."""
    kind = "bubblewrap" if bwrap_works() else "rlimits and a subreaper"
    return kind + (", as nobody" if drops_to_nobody() else "")


def _environment(folder: Path) -> dict[str, str]:
    """Empty but for what an interpreter needs: nothing of the server's environment leaks."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _bwrap_prefix(folder: Path) -> list[str]:
    """bwrap's arguments: only the interpreter, its packages and NetBuilder's code, read-only;
    the working folder writable; fresh /proc, /dev and /tmp; every namespace new."""
    # root keeps its own user namespace, so that the worker can become nobody (a new one would
    # map root alone); anyone else needs a new user namespace to make the others
    if _runs_as_root():
        namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    else:
        namespaces = ["--unshare-all"]
    command = ["bwrap", *namespaces, "--die-with-parent", "--new-session", "--clearenv"]
    paths = _read_only_paths()
    # the folders above a bound path are made by bwrap, readable by nobody too (0755)
    parents = sorted(
        {str(parent) for path in paths for parent in path.parents if parent != Path("/")}
    )
    # a fresh /tmp first: NetBuilder itself may live under /tmp (a CI clone), and a tmpfs
    # mounted after its binds would hide them
    command += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for parent in parents:
        command += ["--perms", "0755", "--dir", parent]
    for path in paths:
        command += ["--ro-bind", str(path), str(path)]
    command += ["--bind", str(folder), str(folder), "--chdir", str(folder)]
    for name, value in _environment(folder).items():
        command += ["--setenv", name, value]
    return command


def _read_only_paths() -> list[Path]:
    system = [
        Path(p) for p in ("/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/alternatives")
    ]
    python = {
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(os.path.realpath(sys.executable)).parent.parent,
    }
    code = [ROOT / name for name in CODE_PACKAGES]
    found = [p for p in [*system, *sorted(python), *code] if p.exists()]
    # a path inside another one on the list is bound already (and binding it again is harmless
    # but noisy): keep the outermost ones
    return [p for p in found if not any(o != p and o in p.parents for o in found)]


@cache
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and may make namespaces here (a container may forbid it);
    asked once per server."""
    if sys.platform != "linux" or shutil.which("bwrap") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="netbuilder-probe-") as work:
        folder = Path(work)
        command = _bwrap_prefix(folder) + [sys.executable, "-I", "-c", "import torch"]
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=120, cwd=folder, env=_environment(folder)
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def _runs_as_root() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0


def _kill_tree(pid: int) -> None:
    """SIGKILL the child's session and every descendant it still has (the supervisor's
    adopted orphans included), so nothing it started outlives it."""
    try:
        victims = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        victims = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass


def _head(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit)


def _tail(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read(limit)


# ---------------------------------------------------------------------------------------------
# Inside the child. The interpreter is started isolated (-I: no PYTHONPATH, no user site, not the
# current folder on sys.path), so NetBuilder's code is put on the path by hand.

_BOOT = (
    "import sys; sys.path.insert(0, {root!r}); from runtime.sandbox import supervise; supervise()"
)


def supervise() -> None:
    """The child's first process: set the limits, become the subreaper, start the code in a
    forked worker, wait for it until the deadline, then kill everything that is left."""
    spec: dict[str, Any] = json.loads(sys.argv[1])
    limits = Limits(**spec["limits"])
    for module in ["runpy", "traceback", "encodings.idna", *spec.get("preload", [])]:
        # imported here, before the worker becomes nobody: without bubblewrap, nobody may not
        # reach the interpreter's own files (a pyenv under /root)
        importlib.import_module(module)
    _without_network()
    _set_limits(limits)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    worker = os.fork()
    if worker == 0:
        if spec.get("as_nobody"):
            _become_nobody()
        _limit_processes(limits.processes)
        _run_module(spec["module"], spec["argument"])
    status = _wait_until(worker, time.monotonic() + float(spec["deadline_s"]))
    _end_every_descendant()
    if status is None:
        os._exit(SUPERVISOR_DEADLINE)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)  # as a shell says it: 128 + the signal


def _become_nobody() -> None:
    """Root is exempt from the process-count limit and may signal the supervisor: the code
    runs as nobody, with no supplementary groups."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _without_network() -> None:
    """A network namespace of its own, with only a loopback that is down: made directly by
    root, or inside a new user namespace by anyone where the kernel allows those. Where
    neither is allowed the network stays as it is (the README says so)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)


def _set_limits(limits: Limits) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    space = limits.memory_bytes + LIBRARY_ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _limit_processes(allowance: int) -> None:
    """RLIMIT_NPROC counts every process and thread of the user: what it runs already (that
    this process can see) plus the allowance."""
    import resource

    limit = _threads_of(os.getuid()) + allowance
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def _threads_of(uid: int) -> int:
    count = 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        uids = process.info.get("uids")
        if uids is not None and uids.real == uid:
            count += process.info.get("num_threads") or 1
    return count


def _run_module(module: str, argument: str) -> None:
    """In the forked worker: run `python -m module argument`, then leave without running the
    supervisor's cleanup (os._exit)."""
    import runpy

    code = 0
    try:
        sys.argv = [module, argument]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback goes to stderr, as python would print it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        _flush(sys.stdout)
        _flush(sys.stderr)
    os._exit(code)


def _flush(stream: IO[str]) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


def _wait_until(pid: int, deadline: float) -> int | None:
    """The worker's wait status, or None when the deadline passed first (it is then killed)."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return None


def _end_every_descendant(patience_s: float = 10.0) -> None:
    """Kill and reap whatever the code left, again and again until nothing is left: a process
    may fork between one look and the kill (a shell starting its command), and a blocking wait
    on one that was never killed would hang the supervisor."""
    deadline = time.monotonic() + patience_s
    while True:
        left = psutil.Process().children(recursive=True)
        for process in left:
            try:
                process.kill()
            except psutil.Error:
                pass
        while True:  # collect the dead without waiting for the living
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        if time.monotonic() > deadline:
            return  # the server's own deadline kills the session after this
        time.sleep(0.02)
