"""The Train page's step view (pages/parts/step_view.py), driven with AppTest: the four stages in
both languages, Rewind and Next, a start from a run's checkpoint, and what each layer sees.
The numbers themselves are judged against torch in tests/test_step.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from builder.graph import dump_graph, parse_graph
import i18n
from i18n import translate
from pages.parts.step_view import statistics_text
from runtime import store
from runtime.datasets import load_dataset
from runtime.runs import create_run
from runtime.trainer import TrainConfig, load_model_source
from tests.test_train_page import ROOT, WORKSPACE, figure, view_control

STAGE_WORDS = {  # what each stage shows, in each language
    "en": {
        "forward": ["the sum over its 9 window values", "torch computed"],
        "loss": ["the loss: cross-entropy", "minus the log of the probability"],
        "backward": ["the chain rule", "the gradient of weight"],
        "update": ["Adam updates", "bias correction at step t = 1", "before → after"],
    },
    "zh": {
        "forward": ["个窗口值", "torch 算得"],
        "loss": ["损失：交叉熵", "正确类别"],
        "backward": ["链式法则", "的梯度"],
        "update": ["Adam 更新", "偏差修正", "更新前 → 更新后"],
    },
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def conv_graph() -> dict:
    """Digits [1, 8, 8] -> Conv2d(3, 3x3) -> ReLU -> Flatten -> Linear(10)."""
    ids = ["image", "conv", "relu", "flat", "fc", "out"]
    return {
        "format": "netbuilder.graph/1",
        "name": "small",
        "nodes": [
            {"id": "image", "type": "Input", "params": {"shape": [1, 8, 8]}},
            {"id": "conv", "type": "Conv2d", "params": {"out_channels": 3, "kernel_size": 3}},
            {"id": "relu", "type": "ReLU"},
            {"id": "flat", "type": "Flatten"},
            {"id": "fc", "type": "Linear", "params": {"out_features": 10}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [{"source": a, "target": b} for a, b in zip(ids, ids[1:])],
    }


def opened(home: Path, lang: str = "en") -> AppTest:
    app = open_page_in(home, lang)
    app.toggle(key="step-open").set_value(True).run()
    assert not app.exception
    return app


def open_page_in(home: Path, lang: str) -> AppTest:
    """The Train page at ?w=WORKSPACE&lang=..., the workspace's graph being conv_graph()."""
    autosave = home / "autosave" / f"{WORKSPACE}.json"
    autosave.parent.mkdir(parents=True, exist_ok=True)
    autosave.write_text(dump_graph(parse_graph(conv_graph())))
    app = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=30)
    app.query_params["w"] = WORKSPACE
    app.query_params["lang"] = lang
    app.run()
    return app


def page_text(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.code]
    parts += [e.value for kind in ("success", "warning", "caption", "error") for e in app.get(kind)]
    return "\n".join(map(str, parts)).replace("\\", "")


def walk(app: AppTest):
    return app.session_state["step-walk"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_each_stage_is_written_out_in_the_readers_language(
    home: Path, lang: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(i18n, "_resolver", [lambda: lang])  # what app.py sets up for the page
    app = opened(home, lang)
    for stage, words in STAGE_WORDS[lang].items():
        app.button_group(key="step-stage").set_value(stage).run()
        assert not app.exception
        text = page_text(app)
        for word in words:
            assert word in text, (stage, word)
    assert translate("Forward", lang) in app.button_group(key="step-stage").options


def test_the_forward_stage_draws_the_picked_layers_output_and_the_window(home: Path) -> None:
    app = opened(home)
    app.number_input(key="step-first").set_value(5).run()
    assert figure(app, "conv: output for sample 5")  # as the sample's caption names it
    assert figure(app, "the window it reads on image")
    app.number_input(key="step-element-conv-0-3").set_value(2).run()  # channel 2
    record = walk(app).record
    assert record is not None and "output [2, " in page_text(app)
    assert walk(app).index == 5 and " of sample 5" in page_text(app)


def test_a_click_on_a_node_picks_the_layer_the_detail_explains(home: Path) -> None:
    app = opened(home)
    app.session_state["step-canvas"] = {"pick": "fc", "seq": 1}  # what the canvas sends
    app.run()
    assert app.selectbox(key="step-forward-node").value == "fc"
    assert figure(app, "fc: output for sample 0")  # the first sample, as its caption says
    app.selectbox(key="step-forward-node").set_value("relu").run()  # the same click: not again
    assert app.selectbox(key="step-forward-node").value == "relu"
    app.button_group(key="step-stage").set_value("backward").run()
    app.session_state["step-canvas"] = {"pick": "conv", "seq": 2}
    app.run()
    assert not app.exception
    assert app.selectbox(key="step-grad-node").value == "conv"
    assert app.selectbox(key="step-backward-node").value == "conv"


def test_next_takes_the_next_samples_from_the_updated_weights(home: Path) -> None:
    app = opened(home)
    first = walk(app).record
    app.button(key="step-next").click().run()
    after = walk(app)
    assert after.index == 1 and after.steps == 1
    for name, value in first.after.items():
        torch.testing.assert_close(after.record.before[name], value)
    torch.testing.assert_close(after.record.x, load_dataset("digits").x[1:2])
    assert "Step 2: samples 1 to 1" in page_text(app)


def test_rewind_returns_to_the_same_first_weights_and_samples(home: Path) -> None:
    app = opened(home)
    first = walk(app).record
    app.button(key="step-next").click().run()
    app.button(key="step-next").click().run()
    app.button(key="step-rewind").click().run()
    again = walk(app)
    assert again.index == 0 and again.steps == 0
    for name, value in first.before.items():
        torch.testing.assert_close(again.record.before[name], value)
    assert again.record.loss_before == pytest.approx(first.loss_before)


def test_a_walk_can_start_from_a_runs_checkpoint(home: Path) -> None:
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(conv_graph()), TrainConfig())
    torch.manual_seed(123)
    trained = load_model_source((folder / store.MODEL_FILE).read_text()).state_dict()
    (folder / store.CHECKPOINT_DIR).mkdir()
    torch.save(trained, folder / store.CHECKPOINT_DIR / store.WEIGHTS_FILE)
    app = opened(home)
    app.selectbox(key="step-start").set_value(folder.name).run()
    assert not app.exception
    for name, value in trained.items():
        torch.testing.assert_close(walk(app).record.before[name], value)
    app.button(key="step-next").click().run()
    app.button(key="step-rewind").click().run()
    for name, value in trained.items():  # Rewind goes back to the checkpoint, not the seed
        torch.testing.assert_close(walk(app).record.before[name], value)


def test_a_run_shows_what_its_convolution_sees(home: Path) -> None:
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(conv_graph()), TrainConfig())
    maps = [[[0.1 * (r + c) for c in range(6)] for r in range(6)] for _ in range(3)]
    log = store.MetricsLog(folder / store.METRICS_FILE)
    log.write([{"kind": "feature_maps", "step": s, "node": "conv", "maps": maps} for s in (1, 50)])
    log.close()
    store.update_status(folder, status="completed", epoch=1, step=50)
    app = open_page_in(home, "en")
    assert "What each layer sees" in view_control(app).options
    view_control(app).set_value("What each layer sees").run()
    assert not app.exception
    assert figure(app, "conv sees, step 50")


def test_a_run_that_recorded_no_feature_maps_shows_them_from_its_weights(home: Path) -> None:
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(conv_graph()), TrainConfig())
    torch.manual_seed(5)
    trained = load_model_source((folder / store.MODEL_FILE).read_text()).state_dict()
    (folder / store.CHECKPOINT_DIR).mkdir()
    torch.save(trained, folder / store.CHECKPOINT_DIR / store.WEIGHTS_FILE)
    store.update_status(folder, status="completed", epoch=1, step=20)
    app = open_page_in(home, "en")
    view_control(app).set_value("What each layer sees").run()
    assert not app.exception
    shown = figure(app, "conv sees (from the run's latest weights)")
    assert len([t for t in shown["data"] if t["type"] == "heatmap"]) == 3  # its 3 channels


def test_a_nodes_three_numbers_are_written_short() -> None:
    """min · mean · max in the shorter of the two notations, the exponent unpadded."""
    values = torch.tensor([-0.0014, -0.00012, 0.0015], dtype=torch.float64)
    assert statistics_text(values, 2) == "-0.0014 · -6.7e-6 · 0.0015"
    assert statistics_text(torch.tensor([2.98e-9, 0.5, 3e21]), 3) == "2.98e-9 · 1e+21 · 3e+21"
