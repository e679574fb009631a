"""Every template trains from the Train page as a newcomer finds it: the page suggests data that
fits, shows no error, Start is enabled, and the run it starts records its first step (then it is
stopped: learning itself is tests/test_templates_classic.py's to judge)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime import store
from runtime.runs import list_runs, stop_run
from tests.test_train_page import WORKSPACE, open_page

TEMPLATES = sorted(
    Path(__file__).resolve().parents[1].joinpath("builder", "templates").glob("*.json")
)
FIRST_STEP_S = 120  # a generous deadline on a loaded machine; never a timing assertion


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def first_step(folder: Path) -> dict | None:
    """The run's first training record, once it has one."""
    records, _ = store.read_records(folder / store.METRICS_FILE)
    return next((r for r in records if r.get("kind") in ("step", "gan")), None)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.stem)
def test_each_template_starts_training_from_the_train_page(home: Path, template: Path) -> None:
    app = open_page(home, json.loads(template.read_text()))
    assert not app.exception
    assert not app.error, [e.value for e in app.error]
    start = app.button(key="train-start")
    assert not start.disabled, "Start is disabled for a template on its suggested data"
    start.click().run()
    assert not app.exception
    runs_dir = home / "runs" / WORKSPACE
    [run] = list_runs(runs_dir)
    folder = runs_dir / run.id
    deadline = time.monotonic() + FIRST_STEP_S
    try:
        while first_step(folder) is None:
            status = store.read_status(folder).get("status")
            assert status in ("queued", "running"), (status, (folder / store.LOG_FILE).read_text())
            assert time.monotonic() < deadline, f"no first step in {FIRST_STEP_S} s"
            time.sleep(0.2)
    finally:
        stop_run(runs_dir, run.id)
