"""The Train page, driven with Streamlit's AppTest against the real runtime (one short real run).

Each test opens the page for a workspace whose autosaved graph it wrote, in a temporary
NETBUILDER_HOME, exactly as a browser with `?w=<workspace>` would.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import runtime.runs
from builder.graph import dump_graph, parse_graph
from pages import train
from pages.parts import charts
from runtime import store
from runtime.datasets import dataset_from_upload
from runtime.runs import create_run, list_runs, read_run, stop_run
from runtime.builtin_data import TEXT_ALPHABET
from tests.modelkit import token_model
from runtime.trainer import TrainConfig, dataset_for_run

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = "trainpage-workspace-00001"
RUN_TIMEOUT_S = 90


def tiny_graph(name: str = "tiny", width: int = 10) -> dict:
    """Digits [1, 8, 8] -> Flatten -> Linear(width): trains in a second."""
    return {
        "format": "netbuilder.graph/1",
        "name": name,
        "nodes": [
            {"id": "image", "type": "Input", "params": {"shape": [1, 8, 8]}},
            {"id": "flat", "type": "Flatten"},
            {"id": "fc", "type": "Linear", "params": {"out_features": width}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [
            {"source": "image", "target": "flat"},
            {"source": "flat", "target": "fc"},
            {"source": "fc", "target": "out"},
        ],
    }


def open_page(home: Path, graph: dict, page: str = "pages/train.py") -> AppTest:
    """The page as a browser at ?w=WORKSPACE sees it, with `graph` as the workspace's graph."""
    autosave = home / "autosave" / f"{WORKSPACE}.json"
    autosave.parent.mkdir(parents=True, exist_ok=True)
    autosave.write_text(dump_graph(parse_graph(graph)))
    app = AppTest.from_file(str(ROOT / page), default_timeout=30)
    app.query_params["w"] = WORKSPACE
    app.run()
    return app


def wait_until_done(runs_dir: Path, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while read_run(runs_dir, run_id).status in train.ACTIVE:
        assert time.monotonic() < deadline, f"run {run_id} did not end in {RUN_TIMEOUT_S} s"
        time.sleep(0.3)


def shown(app: AppTest) -> str:
    """Every message the page shows, as one plain text (errors, warnings, successes, captions)."""
    parts = [
        e.value
        for kind in ("error", "warning", "success", "info", "caption")
        for e in app.get(kind)
    ]
    return re.sub(r"\\(.)", r"\1", "\n".join(str(p) for p in parts))  # Markdown escapes undone


def view_control(app: AppTest):
    """The live view's tabs (keyed per run)."""
    return next(b for b in app.button_group if str(b.key).startswith("train-view-"))


def figure(app: AppTest, title: str) -> dict:
    specs = [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]
    return next(s for s in specs if s["layout"].get("title", {}).get("text", "").startswith(title))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AppTest, str]:
    """One real run started from the page: tiny graph, digits, 2 epochs, lr 0.01."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETBUILDER_HOME", str(home))
        app = open_page(home, tiny_graph())
        app.number_input(key="train-epochs").set_value(2)
        app.number_input(key="train-lr").set_value(0.01)
        app.button(key="train-start").click().run()
        runs_dir = home / "runs" / WORKSPACE
        [run] = list_runs(runs_dir)
        wait_until_done(runs_dir, run.id)
        app.run()
    return home, app, run.id


def test_the_page_suggests_data_that_fits_the_graph_and_says_it_is_compatible(home):
    app = open_page(home, tiny_graph())
    assert not app.exception
    assert app.selectbox(key="train-dataset").value == "digits"
    assert "Compatible: 1,797 samples of [1, 8, 8]" in shown(app)
    assert not app.button(key="train-start").disabled


def test_incompatible_data_says_what_to_change_and_start_stays_disabled(home):
    app = open_page(home, tiny_graph(width=7))
    app.selectbox(key="train-dataset").set_value("digits").run()
    assert "10 classes" in shown(app) and "set out_features of Linear 'fc' to 10" in shown(app)
    assert app.button(key="train-start").disabled


def test_a_graph_with_errors_is_named_and_cannot_start(home):
    broken = tiny_graph()
    broken["edges"] = broken["edges"][1:]  # 'flat' loses its input
    app = open_page(home, broken)
    assert not app.exception
    assert "cannot train yet" in shown(app) and "'flat'" in shown(app)
    assert app.button(key="train-start").disabled


def test_start_trains_with_the_chosen_settings(trained):
    home, _, run_id = trained
    runs_dir = home / "runs" / WORKSPACE
    config = TrainConfig.model_validate_json((runs_dir / run_id / store.CONFIG_FILE).read_text())
    assert (config.epochs, config.lr, config.dataset) == (2, 0.01, "digits")
    info = read_run(runs_dir, run_id)
    assert info.status == "completed" and info.epoch == 2


def test_charts_show_every_step_and_epoch_the_run_wrote(trained):
    home, app, run_id = trained
    assert not app.exception
    records, _ = runtime.runs.read_metrics(home / "runs" / WORKSPACE, run_id)
    series = charts.series_from(records)
    loss = figure(app, "Loss")
    steps = next(t for t in loss["data"] if t["name"] == "step loss")
    assert len(series.steps) > 0 and _length(steps["x"]) == len(series.steps)
    accuracy = figure(app, "Accuracy")
    validation = next(t for t in accuracy["data"] if t["name"] == "validation")
    assert _length(validation["x"]) == 2


def _length(values: list | dict) -> int:
    """A trace's point count: plotly writes numpy arrays as {'dtype', 'bdata'}."""
    if isinstance(values, dict):
        import base64

        import numpy as np

        return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


def test_a_finished_run_shows_full_progress_and_offers_only_what_applies(trained):
    _, app, _ = trained
    progress = app.get("progress")[0]
    assert progress.proto.value == 100 and progress.proto.text.startswith("epoch 2/2")
    assert any("completed" in m.value and "badge" in m.value for m in app.markdown)
    assert app.dataframe[0].value["Status"].tolist() == ["completed"]
    assert app.button(key="train-stop").disabled and app.button(key="train-resume").disabled
    assert not app.button(key="train-branch").disabled


def test_stop_asks_a_running_trainer_to_stop(home):
    runs_dir = home / "runs" / WORKSPACE
    folder = create_run(runs_dir, parse_graph(tiny_graph()), TrainConfig())
    store.update_status(folder, status="running", pid=os.getpid())  # this process plays the trainer
    app = open_page(home, tiny_graph())
    assert not app.button(key="train-stop").disabled
    app.button(key="train-stop").click().run()
    assert (folder / store.STOP_FILE).exists()
    assert read_run(runs_dir, folder.name).status == "stopping"


def test_continue_from_a_run_warm_starts_the_edited_graph_and_compares_both(trained, monkeypatch):
    home, _, parent = trained
    monkeypatch.setenv("NETBUILDER_HOME", str(home))
    runs_dir = home / "runs" / WORKSPACE
    edited = tiny_graph(name="tiny-wider")
    app = open_page(home, edited)
    app.selectbox(key="train-run").set_value(parent).run()
    app.button(key="train-branch").click().run()
    assert not app.exception, app.exception
    child = next(r for r in list_runs(runs_dir) if r.id != parent)
    try:
        assert store.read_status(child.path)["warm_start_from"] == parent
        assert app.selectbox(key="train-run").value == child.id
        assert set(app.multiselect(key="train-compare-pick").value) == {parent, child.id}
        names = [t["name"] for t in figure(app, "Compare runs")["data"]]
        assert names[0] == f"tiny-wider #{child.id[-6:]} train"
        assert f"tiny #{parent[-6:]} train" in names
    finally:
        stop_run(runs_dir, child.id)
        wait_until_done(runs_dir, child.id)


def test_an_unexpected_runtime_failure_is_a_sentence_not_a_traceback(home, monkeypatch):
    def broken_start(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runtime.runs, "start_run", broken_start)
    app = open_page(home, tiny_graph())
    app.button(key="train-start").click().run()
    assert not app.exception
    assert "Could not start the run: RuntimeError: disk on fire" in shown(app)


def test_progress_and_time_left_come_from_the_steps_per_epoch():
    info = runtime.runs.RunInfo("r", "r", "running", "", 0.0, "digits", 4, 1, 30, "cpu", Path("."))
    series = charts.series_from(
        [{"kind": "step", "step": s, "time": float(s)} for s in range(1, 31)]
        + [{"kind": "epoch", "epoch": 1, "step": 20, "time": 20.0}]
    )
    done = train.progress(info, series)
    assert done.fraction == pytest.approx(30 / 80)
    assert done.seconds_left == pytest.approx(50.0)  # 50 steps left at 1 step/s


def test_progress_before_the_first_epoch_ends_shows_no_guess():
    info = runtime.runs.RunInfo("r", "r", "running", "", 0.0, "digits", 4, 0, 5, "cpu", Path("."))
    series = charts.series_from(
        [{"kind": "step", "step": s, "time": float(s)} for s in range(1, 6)]
    )
    assert train.progress(info, series) == train.Progress(0.0, None)


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.4, "4 s"), (200, "3 min 20 s"), (7500, "2 h 05 min"), (-3, "0 s")]
)
def test_time_left_reads_naturally(seconds, text):
    assert train.duration_text(seconds) == text


def test_uploaded_file_names_are_reduced_to_safe_characters():
    assert train.safe_file_name("../../etc/pass wd.CSV") == "pass_wd.csv"
    assert train.safe_file_name("données.npz") == "donn_es.npz"
    assert train.safe_file_name("###.csv") == "upload.csv"


def test_csv_header_gives_the_label_choices():
    assert train.csv_columns(b"a,b,label\n1,2,0\n") == ["a", "b", "label"]
    assert train.csv_columns(b"") == []


def test_coming_back_from_an_upload_keeps_the_built_in_dataset_that_fits(home):
    lenet = json.loads((ROOT / "builder" / "templates" / "lenet5.json").read_text())
    app = open_page(home, lenet)
    assert app.selectbox(key="train-dataset").value == "digits-28"
    app.button_group(key="train-source").set_value("upload").run()
    assert not [s for s in app.selectbox if s.key == "train-dataset"]
    app.button_group(key="train-source").set_value("builtin").run()
    assert app.selectbox(key="train-dataset").value == "digits-28"
    assert not app.button(key="train-start").disabled


def test_an_upload_reaches_the_trainer_exactly_as_the_page_checked_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.runs, "_enqueue", lambda folder: None)  # no trainer process
    rows = "".join(f"{i},{i * 0.5},{i % 4},{-i}\n" for i in range(40))
    upload = train.Upload("my data.csv", f"a,b,target,c\n{rows}".encode(), "target")
    checked = dataset_from_upload(upload.name, upload.data, upload.label_column)
    graph = {
        "format": "netbuilder.graph/1",
        "nodes": [
            {"id": "x", "type": "Input", "params": {"shape": [3]}},
            {"id": "fc", "type": "Linear", "params": {"out_features": 4}},
            {"id": "y", "type": "Output"},
        ],
        "edges": [{"source": "x", "target": "fc"}, {"source": "fc", "target": "y"}],
    }
    config = TrainConfig(dataset=checked.name, label_column="target")
    run_id = train.start_training(tmp_path, parse_graph(graph), config, upload, None)
    folder = tmp_path / run_id
    stored = TrainConfig.model_validate_json((folder / store.CONFIG_FILE).read_text())
    trained_on = dataset_for_run(folder, stored)
    assert torch.equal(trained_on.x, checked.x) and torch.equal(trained_on.y, checked.y)
    assert trained_on.num_classes == checked.num_classes == 4


def recorded_run(
    home: Path, records: list[dict], status: str = "completed", message: str = ""
) -> str:
    """A run folder holding the given metric records, as a finished trainer leaves it."""
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(tiny_graph()), TrainConfig())
    log = store.MetricsLog(folder / store.METRICS_FILE)
    log.write(records)
    log.close()
    store.update_status(folder, status=status, message=message, epoch=1, step=20)
    return folder.name


def test_alarms_from_the_health_reports_are_named_under_the_live_graph(home):
    recorded_run(
        home,
        [
            {"kind": "grad_norms", "step": 10, "norms": {"fc": 3e-9}},
            {"kind": "health", "step": 11, "dead_fraction": {}, "nonfinite_node": "fc"},
        ],
        status="diverged",
        message="diverged at step 11; lower the learning rate (first non-finite output: 'fc')",
    )
    app = open_page(home, tiny_graph())
    assert not app.exception
    errors = [re.sub(r"\\(.)", r"\1", e.value) for e in app.error]
    assert "fc: vanishing gradient (3.0e-09 < 1e-7)" in errors
    assert "fc: first non-finite output" in errors
    assert any("diverged at step 11" in e for e in errors)


def test_every_detail_view_draws_its_charts(home):
    attention = [[[0.5, 0.5], [0.25, 0.75]]]
    recorded_run(
        home,
        [
            {
                "kind": "step",
                "step": s,
                "epoch": 1,
                "loss": 1.0 / s,
                "lr": 0.01,
                "samples_per_s": 9.0,
                "time": s,
            }
            for s in range(1, 21)
        ]
        + [
            {"kind": "grad_norms", "step": 10, "norms": {"fc": 0.1}},
            {"kind": "attention", "step": 10, "node": "fc", "weights": attention},
            {"kind": "attention", "step": 20, "node": "fc", "weights": attention},
        ],
    )
    app = open_page(home, tiny_graph())
    assert view_control(app).options == ["Loss", "Gradients", "Learning rate", "Confusion"]
    assert view_control(app).value == "Loss" and figure(app, "Loss")
    titles = {
        "Gradients": ["Gradient norms", "Gradient norms by layer"],
        "Learning rate": ["Learning rate", "Throughput"],
        "Confusion": ["Confusion matrix"],
    }
    for view, expected in titles.items():
        view_control(app).set_value(view).run()
        assert not app.exception
        for title in expected:
            figure(app, title)


def test_attention_is_a_tab_only_for_a_model_with_an_attention_layer(home):
    attention = [[[0.5, 0.5], [0.25, 0.75]]]
    graph = json.loads((ROOT / "builder" / "templates" / "transformer_encoder.json").read_text())
    folder = create_run(
        home / "runs" / WORKSPACE, parse_graph(graph), TrainConfig(dataset="tokens")
    )
    log = store.MetricsLog(folder / store.METRICS_FILE)
    log.write(
        [
            {"kind": "attention", "step": step, "node": "attn", "weights": attention}
            for step in (10, 20)
        ]
    )
    log.close()
    store.update_status(folder, status="completed", epoch=1, step=20)
    app = open_page(home, graph)
    assert "Attention" in view_control(app).options
    view_control(app).set_value("Attention").run()
    assert not app.exception
    app.select_slider(key=next(s.key for s in app.select_slider)).set_value(10).run()
    assert figure(app, "Attention: attn, step 10")


def test_node_ids_in_messages_are_shown_as_text_not_markup(home):
    graph = tiny_graph(width=7)
    link = "[click](https://example.com)"
    graph["nodes"][2]["id"] = link
    graph["edges"] = [
        {"source": "image", "target": "flat"},
        {"source": "flat", "target": link},
        {"source": link, "target": "out"},
    ]
    app = open_page(home, graph)
    raw = "\n".join(w.value for w in app.warning)
    assert link in shown(app) and link not in raw and r"\[click\]\(https://example\.com\)" in raw


def test_resume_hands_a_stopped_run_back_to_a_trainer(home, monkeypatch):
    spawned: list[Path] = []
    said: list[str] = []

    def enqueue(folder: Path, message: object = "") -> None:  # record instead of starting
        spawned.append(folder)
        said.append(str(message))

    monkeypatch.setattr(runtime.runs, "_enqueue", enqueue)
    run_id = recorded_run(home, [], status="stopped", message="stopped at step 20")
    app = open_page(home, tiny_graph())
    assert app.button(key="train-stop").disabled and not app.button(key="train-resume").disabled
    app.button(key="train-resume").click().run()
    assert not app.exception
    assert [folder.name for folder in spawned] == [run_id] and said == ["resuming"]


def autoencoder_graph() -> dict:
    """Digits [1, 8, 8] -> Conv2d(1 channel, same size) -> Sigmoid: reproduces its input."""
    return {
        "format": "netbuilder.graph/1",
        "name": "ae",
        "nodes": [
            {"id": "image", "type": "Input", "params": {"shape": [1, 8, 8]}},
            {
                "id": "conv",
                "type": "Conv2d",
                "params": {"out_channels": 1, "kernel_size": 3, "padding": 1},
            },
            {"id": "squash", "type": "Sigmoid"},
            {"id": "out", "type": "Output"},
        ],
        "edges": [
            {"source": "image", "target": "conv"},
            {"source": "conv", "target": "squash"},
            {"source": "squash", "target": "out"},
        ],
    }


def test_the_picker_offers_only_datasets_that_load_here(home, monkeypatch):
    monkeypatch.setenv("NETBUILDER_DATA", str(home / "no-data"))
    app = open_page(home, tiny_graph())
    options = app.selectbox(key="train-dataset").options
    assert "digits" in options and "text" in options
    assert not {"mnist", "fashion-mnist", "cifar10"} & set(options)


def test_an_autoencoder_starts_out_reproducing_its_input_and_can_be_switched(home):
    """A graph whose output is shaped like its input is an autoencoder: "Reproduce the input"
    is chosen for it; predicting labels is one click away, and then named as impossible."""
    app = open_page(home, autoencoder_graph())
    assert app.button_group(key="train-target").value == "input"
    assert "Compatible: 1,797 samples of [1, 8, 8] → the sample itself." in shown(app)
    assert not app.button(key="train-start").disabled
    assert app.session_state["train-config"]["target"] == "input"
    app.button_group(key="train-target").set_value("label").run()
    assert not app.exception
    assert "10 classes" in shown(app) and app.button(key="train-start").disabled
    assert app.session_state["train-target-used"] == "label"


def test_a_classifier_starts_out_predicting_labels(home):
    app = open_page(home, tiny_graph())
    assert app.button_group(key="train-target").value == "label"
    assert "→ 10 classes." in shown(app)


@pytest.mark.parametrize(
    "template,target",
    [
        ("conv_autoencoder", "input"),
        ("unet_digits", "input"),
        ("transformer_encoder", "label"),  # tokens in, [16] out: a classifier, not a copy
        ("lenet5", "label"),
    ],
)
def test_each_template_starts_out_learning_what_it_is_built_for(home, template, target):
    graph = json.loads((ROOT / "builder" / "templates" / f"{template}.json").read_text())
    app = open_page(home, graph)
    assert app.button_group(key="train-target").value == target
    assert not app.button(key="train-start").disabled, shown(app)


def trained_weights(folder: Path) -> None:
    """Weights for the run's model.py, as a first checkpoint would leave them."""
    from runtime.trainer import load_model_source

    torch.manual_seed(0)
    model = load_model_source((folder / store.MODEL_FILE).read_text())
    (folder / store.CHECKPOINT_DIR).mkdir(exist_ok=True)
    torch.save(model.state_dict(), folder / store.CHECKPOINT_DIR / store.WEIGHTS_FILE)


def test_samples_show_text_the_model_writes_after_the_prompt(home):
    lm = token_model(16)
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(lm), TrainConfig(dataset="text"))
    store.update_status(folder, status="completed", epoch=1, step=20)
    trained_weights(folder)
    app = open_page(home, lm)
    assert view_control(app).value == "Generated text"  # what a language model makes, first
    assert not app.exception
    app.text_input(key=f"sample-prompt-{folder.name}").set_value("the dog ").run()
    app.slider(key=f"sample-temperature-{folder.name}").set_value(0.0).run()
    (code,) = app.code
    assert code.value.startswith("the dog ") and len(code.value) == len("the dog ") + 200
    assert set(code.value) <= set(TEXT_ALPHABET)


def test_samples_show_inputs_beside_reconstructions(home):
    graph = parse_graph(autoencoder_graph())
    folder = create_run(home / "runs" / WORKSPACE, graph, TrainConfig(target="input"))
    store.update_status(folder, status="completed", epoch=1, step=20)
    trained_weights(folder)
    app = open_page(home, autoencoder_graph())
    assert view_control(app).value == "Reconstructions"
    assert "Confusion" not in view_control(app).options
    assert not app.exception
    spec = figure(app, "Inputs and reconstructions")
    assert len(spec["data"]) == 2 * train.SAMPLE_COUNT


def test_an_autoencoder_run_is_scored_by_mae_before_its_first_epoch(home):
    graph = parse_graph(autoencoder_graph())
    folder = create_run(home / "runs" / WORKSPACE, graph, TrainConfig(target="input"))
    store.update_status(folder, status="running", epoch=0, step=3)
    app = open_page(home, autoencoder_graph())
    assert not app.exception
    labels = [m.label for m in app.metric]
    assert "Val MAE" in labels and "Val accuracy" not in labels


def test_a_gan_pair_is_checked_as_a_pair_and_can_start(home):
    pair = json.loads((ROOT / "builder" / "templates" / "dcgan_digits.json").read_text())
    app = open_page(home, pair)
    assert not app.exception
    assert "Compatible: 1,797 samples of [1, 8, 8] → new samples like these." in shown(app)
    assert "A GAN pair learns to make new samples like the data." in shown(app)
    assert not any(g.key == "train-target" for g in app.button_group)  # no labels to predict
    assert not app.button(key="train-start").disabled
    pair["discriminator"]["nodes"][0]["params"]["shape"] = [1, 4, 4]
    app = open_page(home, pair)
    assert "the discriminator takes [1, 4, 4] but the generator outputs [1, 8, 8]" in shown(app)
    assert app.button(key="train-start").disabled


def test_a_gan_run_shows_both_losses_the_verdicts_and_the_samples(home):
    images = [[[[0.5] * 8] * 8]] * 4
    recorded_run(
        home,
        [
            {"kind": "gan", "step": s, "d_loss": 1.3, "g_loss": 0.8, "d_real": 0.6, "d_fake": 0.4}
            for s in range(1, 11)
        ]
        + [{"kind": "samples", "step": 10, "images": images}],
    )
    app = open_page(home, tiny_graph())
    assert not app.exception
    assert view_control(app).options == ["Samples", "Losses"]  # no empty views
    assert figure(app, "Generated samples, step 10")
    shown_metrics = {m.label: m.value for m in app.metric}
    assert shown_metrics["D loss"] == "1.3000" and shown_metrics["G loss"] == "0.8000"
    assert shown_metrics["D(x) / D(G(z))"] == "0.60 / 0.40"
    assert "Val accuracy" not in shown_metrics  # nothing that does not apply to a GAN
    view_control(app).set_value("Losses").run()
    assert figure(app, "GAN losses") and figure(app, "Discriminator's verdicts")


def test_a_gan_run_s_tiles_state_the_figures_its_summary_states(home):
    steps = [
        {"kind": "gan", "step": s, "epoch": 1, "d_loss": 1.0, "g_loss": 1.0, "d_real": real,
         "d_fake": 0.3}
        for s, real in ((1, 0.9), (2, 0.5))
    ]  # fmt: skip
    epoch = {"kind": "epoch", "epoch": 1, "step": 2, "d_loss": 1.0, "g_loss": 1.0,
             "d_real": 0.63, "d_fake": 0.3}  # fmt: skip
    summary = "completed 1 epochs; D(x) 0.63, D(G(z)) 0.30"
    recorded_run(home, [*steps, epoch], message=summary)
    app = open_page(home, tiny_graph())
    assert {m.label: m.value for m in app.metric}["D(x) / D(G(z))"] == "0.63 / 0.30"
    assert summary in shown(app)


def test_a_stopped_run_s_epoch_agrees_with_its_message(home):
    folder = create_run(
        home / "runs" / WORKSPACE, parse_graph(tiny_graph()), TrainConfig(epochs=20)
    )
    store.update_status(
        folder, status="stopped", epoch=0, step=29,
        message="stopped at step 29 (epoch 1); resume to continue",
    )  # fmt: skip
    app = open_page(home, tiny_graph())
    assert app.get("progress")[0].proto.text.startswith("epoch 1/20 · step 29")
    assert app.dataframe[0].value["Epoch"].tolist() == ["1/20"]


def test_the_runs_table_reads_in_chinese(tmp_path: Path) -> None:
    import i18n
    from pages.train import runs_table
    from runtime.runs import RunInfo

    from builder.graph import load_graph

    lenet = load_graph((ROOT / "builder" / "templates" / "lenet5.json").read_text())
    folder = create_run(tmp_path, lenet, TrainConfig(dataset="digits-28", epochs=1))
    info = read_run(tmp_path, folder.name)
    assert isinstance(info, RunInfo)
    i18n.set_language("zh")
    try:
        (row,) = runs_table([info])
    finally:
        i18n.set_language(None)
    assert row["状态"] == i18n.translate(runtime.runs.STATUS_LABELS[info.status], "zh")
    assert row["状态"] != info.status
    assert "运行" in row and "进度" in row


def test_all_gpus_is_offered_where_there_are_several_and_sets_one_process_each(home, monkeypatch):
    """ "All GPUs" appears only where torch sees more than one; chosen, the run's settings ask
    for one process per GPU, which runtime.runs starts with torchrun (tested there on CPU)."""
    app = open_page(home, tiny_graph())
    assert not [t for t in app.toggle if t.key == "train-all_gpus"]
    assert app.session_state["train-config"]["processes"] == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    app.run()
    every_gpu = app.toggle(key="train-all_gpus")
    assert every_gpu.label == "All 4 GPUs" and every_gpu.value is False
    every_gpu.set_value(True).run()
    assert not app.exception
    assert app.session_state["train-config"]["processes"] == 4
    app.selectbox(key="train-device").set_value("cpu").run()  # CPU processes: not offered
    assert app.session_state["train-config"]["processes"] == 1


def test_a_conv_stack_without_its_flatten_is_offered_the_flatten_in_one_click(home):
    lenet = json.loads((ROOT / "builder" / "templates" / "lenet5.json").read_text())
    lenet["nodes"] = [n for n in lenet["nodes"] if n["id"] != "flatten"]
    lenet["edges"] = [e for e in lenet["edges"] if "flatten" not in (e["source"], e["target"])]
    lenet["edges"].append({"source": "s4", "target": "f5"})
    app = open_page(home, lenet)
    app.selectbox(key="train-dataset").set_value("digits-28").run()
    assert "insert a Flatten between 's4' and 'f5'" in shown(app)
    assert "out_features" not in shown(app) and app.button(key="train-start").disabled
    app.button(key="train-apply-fix").click().run()
    assert not app.exception
    assert "Compatible: 1,797 samples of [1, 28, 28]" in shown(app)
    assert not app.button(key="train-start").disabled


def test_a_rejected_setting_is_explained_beside_it_and_start_waits(home):
    reason = "Epochs must be at least 1"
    app = open_page(home, tiny_graph())
    app.number_input(key="train-epochs").set_value(-3).run()
    assert not app.exception
    markdown = " ".join(re.sub(r"\\(.)", r"\1", m.value) for m in app.markdown)
    assert reason.split(" ", 1)[1] in markdown  # beside the field: its reason alone
    assert reason in shown(app) and app.button(key="train-start").disabled
    app.number_input(key="train-epochs").set_value(3).run()
    assert not app.button(key="train-start").disabled


def test_a_setting_s_reason_comes_from_trainconfig_s_own_bounds():
    assert train.setting_problem("epochs", -3).render("en") == "must be at least 1"
    assert train.setting_problem("lr", 0.0).render("en") == "must be more than 0"
    assert train.setting_problem("seed", 2**31).render("en") == "must be less than 2147483648"
    assert (
        train.setting_problem("grad_clip", -1.0, off=True).render("en") == "must be 0 (off) or more"
    )
    assert train.setting_problem("epochs", 3) is None
    assert train.setting_problem("epochs", -3).render("zh") == "必须至少为 1"


def test_the_log_counts_its_events_in_words():
    assert train.log_title(1) == "Log · 1 event" and train.log_title(3) == "Log · 3 events"


def test_start_watches_the_new_run_in_the_same_page_run_and_asks_to_scroll_to_it(home, monkeypatch):
    started = []

    def fake_start(*args, **kwargs) -> str:
        folder = create_run(home / "runs" / WORKSPACE, parse_graph(tiny_graph()), TrainConfig())
        started.append(folder.name)
        return folder.name

    monkeypatch.setattr(runtime.runs, "start_run", fake_start)
    app = open_page(home, tiny_graph())
    app.button(key="train-start").click().run()
    assert not app.exception and started
    assert app.selectbox(key="train-run").value == started[0]
    scripts = [h for h in app.get("html") if "scrollIntoView" in str(h.proto)]
    assert scripts and train.LIVE_VIEW_KEY in str(scripts[0].proto)
    assert "waiting for the first step" in shown(app)


def test_before_the_first_run_the_page_shows_where_its_loss_will_be_drawn(home):
    app = open_page(home, tiny_graph())
    assert figure(app, "Loss")["layout"]["annotations"][0]["text"] == (
        "your first run's loss is drawn here"
    )


def test_a_failure_names_the_file_once_and_never_ends_in_a_colon():
    assert train.failure_text("read the uploaded file", "x.csv:") == (
        "Could not read the uploaded file."
    )
    assert train.failure_text("read the uploaded file", "x.csv holds 1 × 2") == (
        "Could not read the uploaded file: x.csv holds 1 × 2"
    )


def test_a_csv_with_word_labels_is_shown_with_its_class_names(home):
    data = b"weight,legs,kind\n4,4,dog\n3,4,cat\n5,4,dog\n"
    dataset = dataset_from_upload("pets.csv", data)
    assert dataset.class_names == ("cat", "dog") and "(cat, dog)" in str(dataset.description)


def test_a_gan_run_draws_both_players_uncoloured_and_says_why(home):
    pair = json.loads((ROOT / "builder" / "templates" / "dcgan_digits.json").read_text())
    folder = create_run(home / "runs" / WORKSPACE, parse_graph(pair), TrainConfig())
    log = store.MetricsLog(folder / store.METRICS_FILE)
    log.write([{"kind": "gan", "step": 1, "d_loss": 1.0, "g_loss": 1.0, "d_real": 0.6,
                "d_fake": 0.4}])  # fmt: skip
    log.close()
    store.update_status(folder, status="completed", epoch=1, step=1)
    app = open_page(home, pair)
    assert not app.exception
    headings = [m.value for m in app.markdown]
    assert "**Generator**" in headings and "**Discriminator**" in headings
    assert "not coloured" in shown(app) and "coloured by its gradient norm" not in shown(app)
