"""pages/parts/runs_panel.py in Streamlit's AppTest: the runs table with disk usage, Delete confirmed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from builder.graph import dump_graph, load_graph, parse_graph
from compiler.memory import format_bytes
from runtime import runs, store
from runtime.runs import create_run, list_runs
from runtime.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LSTM = ROOT / "builder" / "templates" / "lstm_classifier.json"


def panel(runs_dir: str, lang: str = "en") -> None:
    from pathlib import Path  # AppTest runs this function's source on its own

    import i18n
    from pages.parts import runs_panel

    i18n.set_language(lang)
    runs_panel.render(Path(runs_dir))


def open_panel(runs_dir: Path, lang: str = "en") -> AppTest:
    app = AppTest.from_function(panel, args=(str(runs_dir), lang), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def two_runs(runs_dir: Path) -> list[str]:
    graph = load_graph(LSTM.read_text())
    config = TrainConfig(dataset="digits-rows", epochs=1)
    return [create_run(runs_dir, graph, config).name for _ in range(2)]


def test_the_table_lists_each_run_with_its_disk_usage(tmp_path: Path):
    two_runs(tmp_path)
    app = open_panel(tmp_path)
    table = app.dataframe[0].value
    runs = list_runs(tmp_path)
    assert list(table["Disk"]) == [format_bytes(run.disk_bytes) for run in runs]
    assert list(table["Status"]) == ["queued", "queued"]
    total = format_bytes(sum(run.disk_bytes for run in runs))
    assert any(f"2 runs take {total} on disk." in c.value for c in app.caption)


def test_the_table_speaks_the_readers_language(tmp_path: Path):
    two_runs(tmp_path)
    table = open_panel(tmp_path, lang="zh").dataframe[0].value
    assert "磁盘占用" in table.columns and list(table["磁盘占用"]) == [
        format_bytes(run.disk_bytes) for run in list_runs(tmp_path)
    ]


def test_delete_asks_first_and_cancel_keeps_the_run(tmp_path: Path):
    two_runs(tmp_path)
    newest = list_runs(tmp_path)[0].id
    app = open_panel(tmp_path)
    app.button(key="runs-panel-delete").click().run()
    assert "cannot be undone" in app.warning[0].value
    assert (tmp_path / newest).exists(), "nothing is deleted before it is confirmed"
    app.button(key="runs-panel-cancel").click().run()
    assert not app.warning and len(list_runs(tmp_path)) == 2


def test_a_confirmed_delete_removes_the_run_and_its_folder(tmp_path: Path):
    two_runs(tmp_path)
    chosen = list_runs(tmp_path)[1]
    app = open_panel(tmp_path)
    app.selectbox(key="runs-panel-choice").select(chosen.id).run()
    app.button(key="runs-panel-delete").click().run()
    app.button(key="runs-panel-yes").click().run()
    assert not chosen.path.exists()
    assert [run.id for run in list_runs(tmp_path)] == [list_runs(tmp_path)[0].id] != [chosen.id]
    assert any("Deleted run" in s.value for s in app.success)


def test_an_empty_workspace_says_so(tmp_path: Path):
    app = open_panel(tmp_path)
    assert [c.value for c in app.caption] == ["No runs yet."]


def test_the_train_page_names_a_model_too_big_instead_of_building_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Digits -> Linear(10M) -> Linear(10M) -> 10 classes: 400 TB, refused with both figures."""
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    wide = {"type": "Linear", "params": {"out_features": 10_000_000}}
    graph = {
        "format": "netbuilder.graph/1",
        "name": "too-big",
        "nodes": [
            {"id": "image", "type": "Input", "params": {"shape": [1, 8, 8]}},
            {"id": "flat", "type": "Flatten"},
            {"id": "a", **wide},
            {"id": "b", **wide},
            {"id": "logits", "type": "Linear", "params": {"out_features": 10}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [
            {"source": s, "target": t}
            for s, t in [
                ("image", "flat"),
                ("flat", "a"),
                ("a", "b"),
                ("b", "logits"),
                ("logits", "out"),
            ]
        ],
    }
    autosave = tmp_path / "autosave" / "runspanel-workspace-0001.json"
    autosave.parent.mkdir(parents=True)
    autosave.write_text(dump_graph(parse_graph(graph)))
    app = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60)
    app.query_params["w"] = "runspanel-workspace-0001"
    app.run()
    app.selectbox(key="train-dataset").set_value("digits").run()
    app.button(key="train-start").click().run()
    assert not app.exception
    errors = " ".join(e.value for e in app.error).replace("\\", "")  # markdown escapes
    assert "the model needs 1.6 PB to train at batch size 64" in errors
    assert " has only " in errors and "Traceback" not in errors
    assert not list(tmp_path.rglob("status.json")), "no run was created"


def test_a_queued_run_shows_its_place_in_line_and_why_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The second run waits behind the first (one trainer allowed, the first holds it)."""
    monkeypatch.setenv(runs.MAX_TRAINERS_ENV, "1")
    monkeypatch.setattr(runs, "_launch", sleeping_trainer)
    graph = load_graph(LSTM.read_text())
    config = TrainConfig(dataset="digits-rows", epochs=1)
    first, second = runs.start_run(tmp_path, graph, config), runs.start_run(tmp_path, graph, config)
    try:
        line = "waiting, number 1 in line: 1 of 1 trainers busy"
        deadline = time.monotonic() + 60
        while runs.read_run(tmp_path, second).message != line:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
        for lang, expected in (("en", line), ("zh", "排队中，第 1 位：1 个训练进程中 1 个在忙")):
            table = open_panel(tmp_path, lang).dataframe[0].value
            message = table.columns[-1]
            assert list(table[message]) == [expected, ""]  # newest first
    finally:
        for run_id in (first, second):
            (tmp_path / run_id / "stop-requested").touch()
        psutil.Process(_pid(tmp_path / first)).kill()


def sleeping_trainer(folder: Path) -> runs._Trainer:
    """Stands in for a forked trainer: a process that sleeps, recorded as running."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = runs.process_start_time(process.pid)
    store.update_status(folder, status="running", pid=process.pid, pid_started=started)
    return runs._Trainer(process.pid, started, process)


def _pid(folder: Path) -> int:
    return store.read_status(folder)["pid"]
