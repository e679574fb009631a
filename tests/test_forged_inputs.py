"""Small hostile inputs that once escaped as tracebacks or hung a command: each ends in a named
sentence, or (a forged canvas event) changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder import edit
from builder.graph import NotARegularFile, read_file_bounded, read_graph_file
from pages.parts import canvas
from pages.parts.state import load_template

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text", ["[" * 100_000, "1" * 5000, "[" + "1" * 150 + "]" * 60], ids=["deep", "digits", "long"]
)
def test_a_parameter_text_no_layer_could_take_is_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(edit.ParamTextError) as refused:
        edit.parse_text_value(text)
    assert "parameter" in str(refused.value) or "not a value" in str(refused.value)


@pytest.mark.parametrize(
    "event",
    [
        {"kind": "select", "node": ["stem"]},
        {"kind": "select", "node": {"id": "stem"}},
        {"kind": "connect", "source": ["stem"], "target": "head"},
        {"kind": "connect", "source": {"a": 1}, "target": [1]},
        {"kind": "delete_nodes", "nodes": [["stem"], {"x": 1}, 3]},
        {"kind": "delete_edge", "edge": "²:stem->bn"},
        {"kind": "delete_edge", "edge": "1" * 5000 + ":a->b"},
        {"kind": "select_edge", "edge": ["0:stem->bn"]},
        {"kind": "move", "positions": {"stem": [10**400, 1]}},
        ["kind", "select"],
    ],
)
def test_a_forged_canvas_event_changes_nothing(event: object) -> None:
    graph = load_template("resnet")
    change = canvas.apply_event(graph, event)  # type: ignore[arg-type]
    assert change.graph == graph
    assert change.kind == "none"
    assert change.selected is None


def test_a_fifo_or_a_device_is_refused_as_a_graph_file_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "graph.json"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile):
        read_graph_file(fifo)  # no writer: a plain open() would block for good
    with pytest.raises(NotARegularFile):
        read_graph_file("/dev/zero")  # a plain read() would fill the memory


def test_a_file_is_read_no_further_than_its_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 10_000)
    assert len(read_file_bounded(big, 100)) == 101  # one more than the cap: enough to tell


@pytest.mark.parametrize("command", ["check", "export"])
@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_the_compiler_refuses_a_device_or_a_fifo_with_one_line(
    command: str, path: str, tmp_path: Path
) -> None:
    if path == "fifo":
        path = str(tmp_path / "g.json")
        os.mkfifo(path)
    extra = ["-o", str(tmp_path / "out")] if command == "export" else []
    done = subprocess.run(
        [sys.executable, "-m", "compiler", command, path, *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,  # a hang fails the test instead of the suite
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot read {path}: not a regular file (a pipe or a device cannot be read as one)"
    )


@pytest.mark.parametrize(
    "discriminator, words",
    [
        ({"nodes": [], "edges": []}, "the discriminator has an error"),
        ({}, "the discriminator: nodes"),
        ([], "'discriminator' must be an object"),
    ],
)
def test_a_pair_with_an_empty_discriminator_is_refused_by_check_and_export(
    discriminator: object, words: str, tmp_path: Path
) -> None:
    graph = json.loads((ROOT / "builder" / "templates" / "lenet5.json").read_text())
    path = tmp_path / "pair.json"
    path.write_text(json.dumps({**graph, "discriminator": discriminator}))
    for command in (["check", str(path)], ["export", str(path), "-o", str(tmp_path / "out")]):
        done = subprocess.run(
            [sys.executable, "-m", "compiler", *command], capture_output=True, text=True, cwd=ROOT
        )
        assert done.returncode in (1, 2), (command, done.stdout)
        said = done.stdout + done.stderr
        assert words in said, said
        assert "Traceback" not in said
    assert not (tmp_path / "out" / "model.py").exists()


def test_a_valid_pair_still_checks_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compiler", "check", "builder/templates/dcgan_digits.json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["ok"] is True
