"""The Export page (AppTest) and what it hands out: the code bundle and a run's trained weights."""

from __future__ import annotations

import io
import types
import zipfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from builder.graph import dump_graph, load_graph, parse_graph
from compiler.analysis import analyse
from export.bundle import bundle_files, bundle_zip
from compiler.codegen import generate_source
from pages import export
from runtime import store
from runtime.runs import create_run
from tests.modelkit import huge_graph
from runtime.trainer import TrainConfig, load_model_source

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = "exportpage-workspace-0001"
LENET = ROOT / "builder" / "templates" / "lenet5.json"


def open_page(home: Path, graph_text: str) -> AppTest:
    autosave = home / "autosave" / f"{WORKSPACE}.json"
    autosave.parent.mkdir(parents=True, exist_ok=True)
    autosave.write_text(graph_text)
    app = AppTest.from_file(str(ROOT / "pages" / "export.py"), default_timeout=30)
    app.query_params["w"] = WORKSPACE
    app.run()
    return app


def finished_run(home: Path, graph_text: str) -> Path:
    """A completed run of `graph_text` whose checkpoint holds the weights of a fresh model."""
    graph = load_graph(graph_text)
    folder = create_run(home / "runs" / WORKSPACE, graph, TrainConfig(epochs=1))
    model = load_model_source((folder / store.MODEL_FILE).read_text())
    (folder / store.CHECKPOINT_DIR).mkdir()
    torch.save(model.state_dict(), folder / store.CHECKPOINT_DIR / store.WEIGHTS_FILE)
    store.update_status(folder, status="completed", epoch=1)
    return folder


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def test_the_page_shows_the_generated_model_source_highlighted(home):
    text = LENET.read_text()
    app = open_page(home, text)
    assert not app.exception
    model_tab = app.tabs[0]
    assert model_tab.label == "model.py"
    [code] = model_tab.code
    expected = generate_source(analyse(load_graph(text)))
    assert code.language == "python" and code.value.rstrip() == expected.rstrip()
    assert "61,706 parameters" in app.caption[0].value


def test_every_bundle_file_gets_a_tab(home):
    app = open_page(home, LENET.read_text())
    assert [tab.label for tab in app.tabs] == [
        "model.py",
        "train.py",
        "loop.py",
        "run.py",
        "builtin_data.py",
        "csv_table.py",
        "image_folder.py",
        "graph.json",
        "README.md",
    ]


def test_the_zip_holds_the_bundle_in_one_folder_and_reopens_as_the_same_graph():
    graph = load_graph(LENET.read_text())
    files = bundle_files(graph, analyse(graph))
    archive = zipfile.ZipFile(io.BytesIO(bundle_zip(files, "lenet5")))
    assert sorted(archive.namelist()) == sorted(f"lenet5/{name}" for name in files)
    assert load_graph(archive.read("lenet5/graph.json")) == graph
    namespace = types.ModuleType("exported")
    exec(compile(archive.read("lenet5/model.py"), "model.py", "exec"), namespace.__dict__)
    model = namespace.build_model()
    assert sum(p.numel() for p in model.parameters()) == 61_706


def test_a_graph_with_errors_explains_and_still_lets_the_work_be_saved(home):
    broken = parse_graph(
        {
            "format": "netbuilder.graph/1",
            "name": "broken",
            "nodes": [
                {"id": "in", "type": "Input", "params": {"shape": [3]}},
                {"id": "out", "type": "Output"},
            ],
        }
    )
    app = open_page(home, dump_graph(broken))
    assert not app.exception
    assert "no model code to export yet" in app.error[0].value and "'out'" in app.error[0].value
    assert not app.code


def test_without_runs_the_page_says_where_weights_come_from(home):
    app = open_page(home, LENET.read_text())
    assert any("No trained weights yet" in caption.value for caption in app.caption)


def test_weights_of_a_run_of_this_graph_load_into_the_exported_model(home):
    text = LENET.read_text()
    run = finished_run(home, text)
    app = open_page(home, text)
    assert not app.exception and not app.warning
    assert any("load_state_dict" in caption.value for caption in app.caption)
    [(info, path)] = export.runs_with_weights(home / "runs" / WORKSPACE)
    assert info.id == run.name
    files = bundle_files(load_graph(text), analyse(load_graph(text)))
    namespace = types.ModuleType("exported")
    exec(compile(files["model.py"], "model.py", "exec"), namespace.__dict__)
    model = namespace.build_model()
    weights = torch.load(path, weights_only=True)
    model.load_state_dict(weights)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_weights_of_an_earlier_graph_come_with_a_warning_and_that_runs_model(home):
    finished_run(home, LENET.read_text())
    edited = load_graph(LENET.read_text())
    edited.nodes[1].params["out_channels"] = 8
    app = open_page(home, dump_graph(edited))
    assert not app.exception
    assert "earlier version of the graph" in app.warning[0].value


def test_weights_match_compares_the_exact_source(tmp_path):
    (tmp_path / "model.py").write_text("source")
    assert export.weights_match(tmp_path, "source")
    assert not export.weights_match(tmp_path, "other")
    assert not export.weights_match(tmp_path / "missing", "source")


def test_the_onnx_file_holds_the_runs_weights_and_matches_pytorch(home):
    import numpy as np
    import onnxruntime

    text = LENET.read_text()
    run = finished_run(home, text)
    weights_path = run / store.CHECKPOINT_DIR / store.WEIGHTS_FILE
    data, error = export.onnx_file(analyse(load_graph(text)), weights_path)
    assert error is None
    model = load_model_source((run / store.MODEL_FILE).read_text()).eval()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    x = torch.randn(3, 1, 28, 28)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    [onnx_out] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, model(x).detach().numpy(), atol=1e-4)


def test_unreadable_weights_give_a_reason_not_a_traceback(tmp_path):
    broken = tmp_path / "weights.pt"
    broken.write_bytes(b"not a checkpoint")
    data, error = export.onnx_file(analyse(load_graph(LENET.read_text())), broken)
    assert data is None and "could not be read" in error


def test_the_onnx_file_is_built_on_request_and_offered_for_download(home):
    app = open_page(home, LENET.read_text())
    assert "freshly initialised weights" in app.caption[-1].value
    assert not [b for b in app.get("download_button") if "onnx" in b.proto.label]
    app.button(key="export-onnx-build").click().run(timeout=120)
    assert not app.exception and not app.error
    assert [b.proto.label for b in app.get("download_button")][-1] == "Download model.onnx"


def test_the_run_picker_defaults_to_the_newest_run_of_the_graph_shown(home):
    text = LENET.read_text()
    mine = finished_run(home, text)
    other = load_graph(text)
    other.nodes[1].params["out_channels"] = 8
    other.name = "another-graph"
    newer = finished_run(home, dump_graph(other))
    listed = export.runs_with_weights(home / "runs" / WORKSPACE)
    assert listed[0][0].id == newer.name  # the other graph's run is the newest
    app = open_page(home, text)
    assert not app.exception and not app.warning
    assert app.selectbox[0].value == mine.name
    assert any("load_state_dict" in caption.value for caption in app.caption)


def test_building_onnx_shows_its_progress_and_ends_complete(home):
    app = open_page(home, LENET.read_text())
    app.button(key="export-onnx-build").click().run(timeout=120)
    assert not app.exception and not app.error
    assert [s.label for s in app.status][-1].startswith("The ONNX file is ready (")


def test_a_model_too_big_for_this_server_is_never_built_for_onnx(home, monkeypatch):
    huge = parse_graph(huge_graph())

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(export, "export_graph_onnx", must_not_build)
    data, error = export.onnx_file(analyse(huge), None)
    assert data is None
    assert (
        "1.6 PB" in error and "ONNX" in error and "allows 2.0 GB" in error and "available" in error
    )


def test_the_onnx_size_is_written_in_the_project_s_units(home):
    app = open_page(home, LENET.read_text())
    app.button(key="export-onnx-build").click().run(timeout=120)
    label = [s.label for s in app.status][-1]
    assert "0.0 MB" not in label and label.endswith(" kB)"), label  # LeNet-5 is about 250 kB


def test_the_exported_readme_and_train_py_carry_the_chosen_run_s_settings(home):
    text = LENET.read_text()
    folder = finished_run(home, text)
    config = TrainConfig(dataset="digits-28", epochs=3, lr=0.01)
    (folder / store.CONFIG_FILE).write_text(config.model_dump_json())
    app = open_page(home, text)
    assert not app.exception
    codes = {c.value.split("\n", 1)[0]: c.value for c in app.code}
    readme = next(v for k, v in codes.items() if k.startswith("# "))
    assert "epochs 3, adam, lr 0.01" in readme
    train_py = next(v for v in codes.values() if '"--epochs"' in v)
    assert 'add("--epochs", type=int, default=3' in train_py


def test_the_run_picker_names_a_run_briefly_enough_for_its_column(home):
    folder = finished_run(home, LENET.read_text())
    app = open_page(home, LENET.read_text())
    shown = app.selectbox[0].format_func(app.selectbox[0].value)
    assert shown.startswith(f"#{folder.name[-6:]} · digits") and len(shown) <= 30
