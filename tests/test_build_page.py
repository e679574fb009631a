"""The Build page's logic through Streamlit's AppTest (no browser).

AppTest does not render the canvas component; a canvas edit is simulated by putting the value
the browser would send into the component's session-state key, exactly where the page reads it.
"""

from __future__ import annotations

import copy
import json
import re
import types
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from builder.graph import MAX_FILE_BYTES, dump_graph, load_graph
from compiler.analysis import analyse
from compiler.codegen import generate_source

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
TEMPLATES = ROOT / "builder" / "templates"
CANVAS = "nb_canvas"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def open_app(workspace: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    if workspace is not None:
        at.query_params["w"] = workspace
    return at.run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def torch_param_count(graph_text: str) -> int:
    """Build the generated model.py with PyTorch and count its parameters."""
    module = types.ModuleType("generated_model")
    exec(
        compile(generate_source(analyse(load_graph(graph_text))), "model.py", "exec"),
        module.__dict__,
    )
    return sum(p.numel() for p in module.build_model().parameters())


def select(at: AppTest, node_id: str) -> AppTest:
    return next(s for s in at.selectbox if s.label == "Layer").set_value(node_id).run()


def text_field(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def number_field(at: AppTest, label: str):
    return next(n for n in at.number_input if n.label == label)


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def errors(at: AppTest) -> list[str]:
    return [e.value.replace("\\", "") for e in at.error]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_the_app_opens_on_the_residual_template_with_the_torch_parameter_count(home):
    at = open_app()
    no_exception(at)
    expected = torch_param_count((TEMPLATES / "resnet.json").read_text())
    assert metric(at, "Parameters") == f"{expected:,}"
    assert metric(at, "Size (float32)") == f"{expected * 4 / 1e6:.2f} MB"
    assert at.success[0].value.startswith("No problems")


def test_loading_a_template_shows_its_total_params(home):
    at = open_app()
    at.menu_button(key="nb_template").set_value("lenet5").run()
    no_exception(at)
    assert (
        metric(at, "Parameters")
        == f"{torch_param_count((TEMPLATES / 'lenet5.json').read_text()):,}"
    )
    assert metric(at, "Parameters") == "61,706"


def test_a_badly_typed_param_shows_why_and_changes_nothing(home):
    at = select(open_app(), "stem")
    before = metric(at, "Parameters")
    text_field(at, "kernel_size").input("abc").run()
    no_exception(at)
    assert "kernel_size must be a positive int or list of 2, got 'abc'" in errors(at)
    assert metric(at, "Parameters") == before


def test_an_impossible_shape_turns_the_node_red_with_the_compiler_message(home):
    at = select(open_app(), "stem")
    text_field(at, "kernel_size").input("20").run()
    no_exception(at)
    message = "kernel 20x20 (dilated 20x20) exceeds padded input 10x10"
    assert any(message in e for e in errors(at))
    flow = at.session_state["nb_pushed"][1]
    stem = next(n for n in flow.nodes if n.id == "stem")
    assert "#dc2626" in stem.style["border"] and message in stem.data["content"]


def test_a_fix_button_applies_the_compilers_fix(home):
    at = select(open_app(), "stem")
    text_field(at, "kernel_size").input("20").run()
    fix = next(b for b in at.button if b.label.startswith("Fix:"))
    assert fix.label == "Fix: 'same' padding keeps the input size"
    fix.click().run()
    no_exception(at)
    assert at.success and at.success[0].value.startswith("No problems")
    graph = _current_graph(at)
    assert graph.node("stem").params["padding"] == "same"
    assert metric(at, "Parameters") == f"{torch_param_count(dump_graph(graph)):,}"


def _current_graph(at: AppTest):
    return at.session_state["nb_history"].present


def test_undo_and_redo_a_param_change(home):
    at = select(open_app(), "stem")
    original = metric(at, "Parameters")
    number_field(at, "out_channels").set_value(32).run()
    changed = metric(at, "Parameters")
    assert changed != original
    button(at, "Undo").click().run()
    assert metric(at, "Parameters") == original
    button(at, "Redo").click().run()
    assert metric(at, "Parameters") == changed
    no_exception(at)


def test_opening_a_malformed_file_shows_a_message_and_keeps_the_graph(home):
    at = open_app()
    before = metric(at, "Parameters")
    at.file_uploader[0].set_value(("broken.json", b"{not json", "application/json")).run()
    no_exception(at)
    assert any(
        e.startswith("broken.json is not a NetBuilder graph: not valid JSON") for e in errors(at)
    )
    assert metric(at, "Parameters") == before


def test_opening_a_file_of_the_wrong_format_names_the_problem(home):
    at = open_app()
    text = json.dumps({"format": "netbuilder.graph/1", "nodes": [{"id": "a", "type": "Conv9d"}]})
    at.file_uploader[0].set_value(("odd.json", text.encode(), "application/json")).run()
    assert any("unknown layer type 'Conv9d'" in e for e in errors(at))


def test_opening_a_file_over_the_size_cap_is_refused(home):
    at = open_app()
    at.file_uploader[0].set_value(
        ("huge.json", b" " * (MAX_FILE_BYTES + 1), "application/json")
    ).run()
    assert any("may be at most" in e for e in errors(at))


def test_opening_a_valid_file_lays_it_out_and_undo_brings_the_old_graph_back(home):
    at = open_app()
    before = metric(at, "Parameters")
    text = (TEMPLATES / "lstm_classifier.json").read_bytes()
    at.file_uploader[0].set_value(("lstm.json", text, "application/json")).run()
    no_exception(at)
    assert metric(at, "Parameters") == f"{torch_param_count(text.decode()):,}"
    assert all(n.position is not None for n in _current_graph(at).nodes)
    button(at, "Undo").click().run()
    assert metric(at, "Parameters") == before


def test_an_edge_drawn_on_the_canvas_reaches_the_analysis(home):
    at = open_app()
    flow = at.session_state["nb_pushed"][1]
    value = copy.deepcopy(flow.asdict())
    value["edges"].append(
        {"id": "st-flow-edge_image-b1_bn1", "source": "image", "target": "b1_bn1"}
    )
    at.session_state[CANVAS] = {
        "nodes": value["nodes"],
        "edges": value["edges"],
        "selectedId": None,
        "timestamp": 7,
    }
    at.run()
    no_exception(at)
    assert any("BatchNorm2d 'b1_bn1': takes exactly 1 input, has 2" in e for e in errors(at))
    assert button(at, "Undo").disabled is False


def test_a_node_clicked_on_the_canvas_opens_its_form(home):
    at = open_app()
    value = copy.deepcopy(at.session_state["nb_pushed"][1].asdict())
    at.session_state[CANVAS] = {
        "nodes": value["nodes"],
        "edges": value["edges"],
        "selectedId": "head",
        "timestamp": 8,
    }
    at.run()
    assert any(m.value == "#### Linear · head" for m in at.markdown)
    assert number_field(at, "out_features").value == 10


def test_a_node_dragged_on_the_canvas_moves_without_an_undo_step(home):
    at = open_app()
    value = copy.deepcopy(at.session_state["nb_pushed"][1].asdict())
    value["nodes"][0]["position"] = {"x": 1234.0, "y": 56.0}
    at.session_state[CANVAS] = {
        "nodes": value["nodes"],
        "edges": value["edges"],
        "selectedId": None,
        "timestamp": 9,
    }
    at.run()
    assert _current_graph(at).nodes[0].position == (1234.0, 56.0)
    assert button(at, "Undo").disabled


def test_a_palette_click_adds_the_layer_after_the_selected_one(home):
    at = select(open_app(), "flatten")
    at.button_group(key="nb_palette_Regularisation").set_value("Dropout").run()
    no_exception(at)
    graph = _current_graph(at)
    assert {("flatten", "dropout_1"), ("dropout_1", "head")} <= {
        (e.source, e.target) for e in graph.edges
    }
    assert any(m.value == "#### Dropout · dropout\\_1" for m in at.markdown)


def test_a_reload_with_the_workspace_id_restores_the_graph(home):
    at = select(open_app(), "head")
    number_field(at, "out_features").set_value(7).run()
    workspace = at.query_params["w"]
    assert re.fullmatch(r"[0-9a-f]{16}", workspace)
    assert (home / "autosave" / f"{workspace}.json").is_file()
    reloaded = open_app(workspace)
    assert metric(reloaded, "Parameters") == metric(at, "Parameters")
    other_tab = open_app()
    assert other_tab.query_params["w"] != workspace
    assert metric(other_tab, "Parameters") != metric(at, "Parameters")


def test_a_workspace_id_that_could_name_another_path_is_replaced(home):
    at = open_app("../../etc/passwd")
    assert re.fullmatch(r"[0-9a-f]{16}", at.query_params["w"])
    no_exception(at)


def test_an_unreadable_autosave_is_kept_aside_and_reported(home):
    (home / "autosave").mkdir()
    (home / "autosave" / "broken-workspace.json").write_text("{oops")
    at = open_app("broken-workspace")
    no_exception(at)
    assert (home / "autosave" / "broken-workspace.bad.json").read_text() == "{oops"
    assert any("could not be read" in w.value for w in at.warning)


def test_interlocked_cycles_drawn_on_the_canvas_are_reported_not_raised(home):
    at = open_app()
    value = copy.deepcopy(at.session_state["nb_pushed"][1].asdict())
    for source, target in [
        ("b1_bn1", "b1_conv1"),
        ("b1_conv2", "b1_relu1"),
        ("b1_relu1", "b1_bn1"),
    ]:
        value["edges"].append({"id": f"{source}-{target}", "source": source, "target": target})
    at.session_state[CANVAS] = {
        "nodes": value["nodes"],
        "edges": value["edges"],
        "selectedId": None,
        "timestamp": 11,
    }
    at.run()
    no_exception(at)
    assert any("cycle" in e for e in errors(at))


def _canvas_value(flow, selected: str | None, timestamp: int) -> dict:
    value = copy.deepcopy(flow.asdict())
    return {
        "nodes": value["nodes"],
        "edges": value["edges"],
        "selectedId": selected,
        "timestamp": timestamp,
    }


def test_a_late_echo_of_an_older_state_does_not_undo_a_palette_click(home):
    at = open_app()
    at.session_state[CANVAS] = _canvas_value(at.session_state["nb_pushed"][1], "flatten", 20)
    at.run()
    sent_with_selection = at.session_state["nb_pushed"][1]  # the state the browser will echo late
    at.button_group(key="nb_palette_Regularisation").set_value("Dropout").run()
    assert "dropout_1" in {n.id for n in _current_graph(at).nodes}
    at.session_state[CANVAS] = _canvas_value(sent_with_selection, None, 21)
    at.run()
    no_exception(at)
    assert "dropout_1" in {n.id for n in _current_graph(at).nodes}
    resent = at.session_state["nb_pushed"][1]
    assert resent.timestamp > 21 and "dropout_1" in {n.id for n in resent.nodes}


def _canvas_args(at: AppTest) -> dict:
    """The arguments the page sent to the canvas component (AppTest does not render it)."""
    return json.loads(at.get("component_instance")[0].proto.json_args)


def test_a_loaded_template_is_fitted_to_the_view_until_the_next_edit(home):
    at = open_app()
    assert _canvas_args(at)["fitView"] is True  # a new session shows the whole graph
    at.button_group(key="nb_palette_Regularisation").set_value("Dropout").run()
    assert _canvas_args(at)["fitView"] is False  # an edit keeps the person's zoom
    at.menu_button(key="nb_template").set_value("lenet5").run()
    assert _canvas_args(at)["fitView"] is True


def test_a_clicked_edge_makes_the_page_send_its_state_again(home):
    """React Flow would let Backspace delete the selected edge unreported; a new state clears it."""
    at = open_app()
    sent = at.session_state["nb_pushed"][1]
    at.session_state[CANVAS] = _canvas_value(sent, sent.edges[0].id, 30)
    at.run()
    resent = at.session_state["nb_pushed"][1]
    assert resent.timestamp > 30 and resent.timestamp != sent.timestamp
    assert [(e.source, e.target) for e in resent.edges] == [
        (e.source, e.target) for e in sent.edges
    ]
    assert button(at, "Undo").disabled
