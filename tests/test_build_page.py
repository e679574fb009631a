"""The Build page's logic through Streamlit's AppTest (no browser).

AppTest does not render the canvas component; a canvas edit is simulated by putting the value
the browser would send (its queue of events) into the component's session-state key, exactly
where the page reads it, and what the canvas would draw is read from the component's arguments.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import i18n
from builder.graph import MAX_FILE_BYTES, MAX_NODES, dump_graph, load_graph
from compiler.analysis import analyse
from compiler.gan import discriminator_graph
from compiler.codegen import generate_source
from compiler.memory import estimate_memory, format_bytes
from pages.parts.state import load_template
from tests.modelkit import chain_graph

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
TEMPLATES = ROOT / "builder" / "templates"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def open_app(workspace: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    if workspace is not None:
        at.query_params["w"] = workspace
    return at.run()


def open_dialog(at: AppTest) -> AppTest:
    """The Open popover as a click opens it: its uploader is drawn only while it is open."""
    at.session_state["nb_open_popover"] = True
    return at.run()


def shown(at: AppTest) -> dict:
    """What the canvas draws: the state the page sent it (AppTest does not render it)."""
    return json.loads(at.get("component_instance")[0].proto.json_args)["state"]


def shown_ids(at: AppTest) -> set[str]:
    return {n["id"] for n in shown(at)["nodes"]}


def send(at: AppTest, *events: dict) -> AppTest:
    """What the browser does on canvas events: it sends every event not acknowledged yet."""
    ack = at.session_state["nb_canvas_ack"] if "nb_canvas_ack" in at.session_state else 0
    at.session_state["nb_canvas"] = {
        "events": [{"seq": ack + i + 1, **event} for i, event in enumerate(events)]
    }
    return at.run()


def palette(at: AppTest, category: str):
    """The palette's pills for a category (their key changes after every click)."""
    return next(b for b in at.button_group if (b.key or "").startswith(f"nb_palette_{category}_"))


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


def toolbar(at: AppTest, key: str):
    """A toolbar icon button by key: nb_new, nb_undo, nb_redo, nb_delete, nb_tidy."""
    return at.button(key=key)


def errors(at: AppTest) -> list[str]:
    return [e.value.replace("\\", "") for e in at.error]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_the_app_opens_on_the_residual_template_with_the_torch_parameter_count(home):
    at = open_app()
    no_exception(at)
    expected = torch_param_count((TEMPLATES / "resnet.json").read_text())
    assert metric(at, "Parameters") == f"{expected:,}"
    assert metric(at, "Size") == format_bytes(expected * 4)
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


@pytest.mark.parametrize("typed", ["[" * 100_000, "1" * 5000], ids=["deep", "digits"])
def test_a_hostile_param_text_is_named_beside_the_field_and_changes_nothing(home, typed):
    at = select(open_app(), "stem")
    before = _current_graph(at)
    text_field(at, "kernel_size").input(typed).run()
    no_exception(at)
    assert any("a parameter value is at most 200 characters" in e for e in errors(at))
    assert _current_graph(at) == before


def test_an_input_shape_of_one_number_is_taken_like_the_list_of_it(home):
    at = select(open_app(), "image")
    text_field(at, "shape").input("64").run()
    no_exception(at)
    assert _current_graph(at).node("image").params["shape"] == [64]


@pytest.mark.parametrize("shape", ["²,28,28", "1, 0, 28", "one"])
def test_an_import_shape_that_is_no_shape_is_named_and_nothing_is_imported(
    home, monkeypatch, shape
):
    monkeypatch.setenv("NETBUILDER_ALLOW_IMPORT", "1")
    at = open_app()
    before = _current_graph(at)
    at.session_state["nb_import_shape"] = shape
    open_dialog(at).file_uploader[0].set_value(("model.py", MODEL_PY, "text/x-python")).run()
    no_exception(at)
    assert any("is not a list of positive whole numbers" in e for e in errors(at)), errors(at)
    assert _current_graph(at) == before


@pytest.mark.parametrize("lang, words", [("en", "must be"), ("zh", "必须")])
def test_a_number_out_of_range_is_refused_beside_the_field_in_the_readers_language(
    home, lang, words
):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["lang"] = lang
    at = at.run()
    layer = next(s for s in at.selectbox if s.label == i18n.translate("Layer", lang))
    at = layer.set_value("head").run()
    before = _current_graph(at)
    number_field(at, "out_features").set_value(-5).run()
    no_exception(at)
    assert any(words in e and "out_features" in e for e in errors(at)), errors(at)
    assert _current_graph(at) == before
    refused = i18n.translate(
        "A value you typed was not applied (the reason is beside its field); the graph keeps"
        " the previous value.",
        lang,
    )
    assert [w.value for w in at.warning] == [refused]
    assert not at.success  # never "No problems" beside a refused value


def test_an_impossible_shape_turns_the_node_red_with_the_compiler_message(home):
    at = select(open_app(), "stem")
    text_field(at, "kernel_size").input("20").run()
    no_exception(at)
    message = "kernel 20x20 (dilated 20x20) exceeds padded input 10x10"
    assert any(message in e for e in errors(at))
    stem = next(n for n in shown(at)["nodes"] if n["id"] == "stem")
    assert stem["status"] == "error" and message in stem["note"]


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
    toolbar(at, "nb_undo").click().run()
    assert metric(at, "Parameters") == original
    toolbar(at, "nb_redo").click().run()
    assert metric(at, "Parameters") == changed
    no_exception(at)


def test_a_reload_keeps_the_undo_and_redo_steps(home):
    at = select(open_app(), "stem")
    original = metric(at, "Parameters")
    number_field(at, "out_channels").set_value(32).run()
    number_field(at, "out_channels").set_value(8).run()
    last = metric(at, "Parameters")
    toolbar(at, "nb_undo").click().run()
    middle = metric(at, "Parameters")
    reloaded = open_app(at.query_params["w"])  # a new browser session on the same workspace
    assert metric(reloaded, "Parameters") == middle
    toolbar(reloaded, "nb_redo").click().run()
    assert metric(reloaded, "Parameters") == last
    toolbar(reloaded, "nb_undo").click().run()
    toolbar(reloaded, "nb_undo").click().run()
    assert metric(reloaded, "Parameters") == original
    no_exception(reloaded)


def test_a_history_file_of_another_graph_is_ignored(home):
    at = select(open_app(), "stem")
    number_field(at, "out_channels").set_value(32).run()
    workspace = at.query_params["w"]
    (home / "autosave" / f"{workspace}.json").write_text(dump_graph(load_template("lenet5")))
    reloaded = open_app(workspace)
    assert toolbar(reloaded, "nb_undo").disabled  # no steps that lead elsewhere
    no_exception(reloaded)


def test_opening_a_malformed_file_shows_a_message_and_keeps_the_graph(home):
    at = open_app()
    before = metric(at, "Parameters")
    open_dialog(at).file_uploader[0].set_value(("broken.json", b"{not json", "application/json")).run()
    no_exception(at)
    assert any(
        e.startswith("broken.json is not a NetBuilder graph: not valid JSON") for e in errors(at)
    )
    assert metric(at, "Parameters") == before


def test_opening_a_file_of_the_wrong_format_names_the_problem(home):
    at = open_app()
    text = json.dumps({"format": "netbuilder.graph/1", "nodes": [{"id": "a", "type": "Conv9d"}]})
    open_dialog(at).file_uploader[0].set_value(("odd.json", text.encode(), "application/json")).run()
    assert any("unknown layer type 'Conv9d'" in e for e in errors(at))


def test_opening_a_file_over_the_size_cap_is_refused(home):
    at = open_app()
    open_dialog(at).file_uploader[0].set_value(
        ("huge.json", b" " * (MAX_FILE_BYTES + 1), "application/json")
    ).run()
    assert any("may be at most" in e for e in errors(at))


def test_opening_a_valid_file_lays_it_out_and_undo_brings_the_old_graph_back(home):
    at = open_app()
    before = metric(at, "Parameters")
    text = (TEMPLATES / "lstm_classifier.json").read_bytes()
    open_dialog(at).file_uploader[0].set_value(("lstm.json", text, "application/json")).run()
    no_exception(at)
    assert metric(at, "Parameters") == f"{torch_param_count(text.decode()):,}"
    assert all(n.position is not None for n in _current_graph(at).nodes)
    toolbar(at, "nb_undo").click().run()
    assert metric(at, "Parameters") == before


def test_an_edge_drawn_on_the_canvas_reaches_the_analysis(home):
    at = send(open_app(), {"kind": "connect", "source": "image", "target": "b1_bn1"})
    no_exception(at)
    assert any("BatchNorm2d 'b1_bn1': takes exactly 1 input, has 2" in e for e in errors(at))
    assert toolbar(at, "nb_undo").disabled is False
    assert ("image", "b1_bn1") in {(e["source"], e["target"]) for e in shown(at)["edges"]}


def test_a_node_clicked_on_the_canvas_opens_its_form(home):
    at = send(open_app(), {"kind": "select", "node": "head"})
    assert any(m.value == "#### Linear · head" for m in at.markdown)
    assert number_field(at, "out_features").value == 10
    assert [n["id"] for n in shown(at)["nodes"] if n["selected"]] == ["head"]


def test_a_node_dragged_on_the_canvas_moves_without_an_undo_step(home):
    at = open_app()
    first = _current_graph(at).nodes[0].id
    send(at, {"kind": "move", "positions": {first: [1234.0, 56.0]}})
    assert _current_graph(at).nodes[0].position == (1234.0, 56.0)
    assert toolbar(at, "nb_undo").disabled


def test_a_dragged_node_is_not_analysed_again_but_an_edit_is(home, monkeypatch):
    import pages.parts.state

    calls = []
    monkeypatch.setattr(pages.parts.state, "analyse", lambda graph: calls.append(graph) or analyse(graph))
    at = open_app()
    first = _current_graph(at).nodes[0].id
    before = len(calls)
    send(at, {"kind": "move", "positions": {first: [1234.0, 56.0]}})
    assert len(calls) == before  # positions change no shape
    assert metric(at, "Parameters") == f"{analyse(_current_graph(at)).total_params:,}"
    select(at, "stem")
    number_field(at, "out_channels").set_value(32).run()
    assert len(calls) > before  # a parameter does


def test_a_palette_click_adds_the_layer_after_the_selected_one(home):
    at = select(open_app(), "flatten")
    palette(at, "Regularisation").set_value("Dropout").run()
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
    assert re.fullmatch(r"[0-9a-f]{32}", workspace)  # 128 bits from secrets
    assert (home / "autosave" / f"{workspace}.json").is_file()
    reloaded = open_app(workspace)
    assert metric(reloaded, "Parameters") == metric(at, "Parameters")
    other_tab = open_app()
    assert other_tab.query_params["w"] != workspace
    assert metric(other_tab, "Parameters") != metric(at, "Parameters")


def test_a_workspace_id_that_could_name_another_path_is_replaced(home):
    at = open_app("../../etc/passwd")
    assert re.fullmatch(r"[0-9a-f]{32}", at.query_params["w"])
    no_exception(at)


@pytest.mark.parametrize("typed", ["alice1", "class2026", "0123456789abcdef"])
def test_a_short_or_typed_workspace_id_is_refused_with_a_sentence(home, typed):
    at = open_app(typed)
    no_exception(at)
    assert at.query_params["w"] != typed
    assert re.fullmatch(r"[0-9a-f]{32}", at.query_params["w"])
    assert any("could be guessed; this is a new workspace" in w.value for w in at.warning)


def test_an_earlier_16_digit_id_still_opens_its_existing_workspace(home):
    earlier = "0123456789abcdef"
    (home / "autosave").mkdir()
    (home / "autosave" / f"{earlier}.json").write_text(dump_graph(load_template("lenet5")))
    at = open_app(earlier)
    assert at.query_params["w"] == earlier
    assert not at.warning
    assert metric(at, "Parameters") == f"{torch_param_count(dump_graph(load_template('lenet5'))):,}"


def test_an_unreadable_autosave_is_kept_aside_and_reported(home):
    (home / "autosave").mkdir()
    (home / "autosave" / "broken-workspace-000001.json").write_text("{oops")
    at = open_app("broken-workspace-000001")
    no_exception(at)
    assert (home / "autosave" / "broken-workspace-000001.bad.json").read_text() == "{oops"
    assert any("could not be read" in w.value for w in at.warning)


def test_interlocked_cycles_drawn_on_the_canvas_are_reported_not_raised(home):
    at = send(
        open_app(),
        *(
            {"kind": "connect", "source": source, "target": target}
            for source, target in [
                ("b1_bn1", "b1_conv1"),
                ("b1_conv2", "b1_relu1"),
                ("b1_relu1", "b1_bn1"),
            ]
        ),
    )
    no_exception(at)
    assert any("cycle" in e for e in errors(at))


def test_events_the_browser_sends_again_are_applied_once_and_in_order(home):
    """The canvas resends its queue until the page acknowledges it: a value that reaches a busy
    page late carries events applied already, which must not be applied twice."""
    at = open_app()
    edges = len(_current_graph(at).edges)
    first = {"seq": 101, "kind": "connect", "source": "image", "target": "b1_bn1"}
    at.session_state["nb_canvas"] = {"events": [first]}
    at.run()
    assert len(_current_graph(at).edges) == edges + 1
    assert shown(at)["ack"] == 101
    second = {"seq": 102, "kind": "select", "node": "head"}
    at.session_state["nb_canvas"] = {"events": [second, first]}  # the first, not yet seen acked
    at.run()
    assert len(_current_graph(at).edges) == edges + 1
    assert any(m.value == "#### Linear · head" for m in at.markdown)
    toolbar(at, "nb_undo").click().run()  # the value stays in the page: nothing is re-applied
    assert len(_current_graph(at).edges) == edges
    assert shown(at)["ack"] == 102


def test_a_loaded_template_is_fitted_to_the_view_and_an_edit_keeps_the_zoom(home):
    """The canvas fits the graph when the page's fit token grows, and keeps the zoom otherwise."""
    at = open_app()
    first = shown(at)["fit"]
    palette(at, "Regularisation").set_value("Dropout").run()
    assert shown(at)["fit"] == first  # the zoom is kept
    at.menu_button(key="nb_template").set_value("lenet5").run()
    templated = shown(at)["fit"]
    assert templated > first
    toolbar(at, "nb_tidy").click().run()
    assert shown(at)["fit"] > templated


def test_a_clicked_edge_is_shown_selected_and_the_form_is_closed(home):
    at = send(open_app(), {"kind": "select", "node": "head"})
    edge = shown(at)["edges"][0]
    send(at, {"kind": "select_edge", "edge": edge["id"]})
    assert [e["id"] for e in shown(at)["edges"] if e["selected"]] == [edge["id"]]
    assert not any(n["selected"] for n in shown(at)["nodes"])
    assert not any(m.value.startswith("#### Linear") for m in at.markdown)
    assert toolbar(at, "nb_undo").disabled


def test_new_gives_a_blank_canvas_and_undo_brings_the_graph_back(home):
    at = open_app()
    before = metric(at, "Parameters")
    toolbar(at, "nb_new").click().run()
    no_exception(at)
    assert [(n.type) for n in _current_graph(at).nodes] == ["Input", "Output"]
    assert metric(at, "Parameters") == "0"
    toolbar(at, "nb_undo").click().run()
    assert metric(at, "Parameters") == before


def test_every_node_can_be_deleted_down_to_an_empty_canvas(home):
    at = open_app()
    toolbar(at, "nb_new").click().run()
    for node_id in ("output", "input"):
        at = select(at, node_id)
        toolbar(at, "nb_delete").click().run()
        no_exception(at)
    assert _current_graph(at).nodes == []
    assert toolbar(at, "nb_delete").disabled  # nothing selected, nothing to delete


def test_a_clicked_edge_is_deleted_by_the_delete_button(home):
    at = open_app()
    edge = shown(at)["edges"][0]
    send(at, {"kind": "select_edge", "edge": edge["id"]})
    toolbar(at, "nb_delete").click().run()
    no_exception(at)
    pairs = [(e.source, e.target) for e in _current_graph(at).edges]
    assert len(pairs) == len(shown(at)["edges"]) and (edge["source"], edge["target"]) not in pairs


def test_a_click_on_the_empty_pane_clears_the_selection(home):
    at = send(open_app(), {"kind": "select", "node": "head"})
    assert any(m.value == "#### Linear · head" for m in at.markdown)
    send(at, {"kind": "deselect"})
    assert not any(m.value.startswith("#### Linear") for m in at.markdown)
    assert not any(n["selected"] for n in shown(at)["nodes"])


def test_a_linear_added_before_the_output_of_a_digits_model_gets_ten_outputs_and_says_so(home):
    at = open_app()
    toolbar(at, "nb_new").click().run()
    palette(at, "Core").set_value("Flatten").run()
    palette(at, "Core").set_value("Linear").run()
    no_exception(at)
    graph = _current_graph(at)
    linear = next(n for n in graph.nodes if n.type == "Linear")
    assert linear.params["out_features"] == 10
    assert ("linear_1", "output") in {(e.source, e.target) for e in graph.edges}
    assert any("10 classes" in t.body for t in at.toast)
    assert metric(at, "Parameters") == f"{torch_param_count(dump_graph(graph)):,}"


def test_one_palette_click_adds_one_layer_even_when_the_page_runs_again(home):
    at = open_app()
    count = len(_current_graph(at).nodes)
    palette(at, "Regularisation").set_value("Dropout").run()
    at.run()  # an echo or any rerun: the click is not applied a second time
    assert len(_current_graph(at).nodes) == count + 1
    assert palette(at, "Regularisation").value in (None, [])


def test_a_failed_open_is_shown_once_not_again_on_return(home):
    at = open_app()
    open_dialog(at).file_uploader[0].set_value(("broken.json", b"{not json", "application/json")).run()
    assert any(e.startswith("broken.json is not a NetBuilder graph") for e in errors(at))
    at.run()  # the next run of the page (back from another page)
    assert not any("broken.json" in e for e in errors(at))


def test_the_formula_names_each_axis(home):
    at = open_app()
    conv = next(n.id for n in _current_graph(at).nodes if n.type == "Conv2d")
    code = "\n".join(t.value for t in select(at, conv).text)
    assert "H: O = " in code and "W: O = " in code


MODEL_PY = b"""
import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)


def build_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def test_a_python_file_is_refused_where_importing_is_off_and_the_page_says_how(home, monkeypatch):
    monkeypatch.delenv("NETBUILDER_ALLOW_IMPORT", raising=False)
    at = open_app()
    before = metric(at, "Parameters")
    open_dialog(at).file_uploader[0].set_value(("model.py", MODEL_PY, "text/x-python")).run()
    no_exception(at)
    assert any("python -m compiler import model.py" in e for e in errors(at))
    assert metric(at, "Parameters") == before


def test_a_python_file_is_imported_where_allowed_with_the_torch_parameter_count(home, monkeypatch):
    monkeypatch.setenv("NETBUILDER_ALLOW_IMPORT", "1")
    at = open_app()
    open_dialog(at).file_uploader[0].set_value(("model.py", MODEL_PY, "text/x-python")).run(timeout=120)
    no_exception(at)
    assert not errors(at), errors(at)
    namespace = types.ModuleType("uploaded")
    exec(compile(MODEL_PY, "model.py", "exec"), namespace.__dict__)
    expected = sum(p.numel() for p in namespace.build_model().parameters())
    assert metric(at, "Parameters") == f"{expected:,}"
    toolbar(at, "nb_undo").click().run()
    assert metric(at, "Parameters") != f"{expected:,}"


def test_problems_and_fixes_read_in_chinese(home):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["lang"] = "zh"
    at = at.run()
    layer = next(s for s in at.selectbox if s.label == i18n.translate("Layer", "zh"))
    at = layer.set_value("stem").run()
    text_field(at, "kernel_size").input("20").run()
    error = analyse(_current_graph(at)).errors[0]
    shown = [e.value for e in at.error]
    assert any(error.text.render("zh") in value for value in shown), shown
    assert error.text.render("zh") != error.message, "the message has a Chinese translation"
    fix = next(b for b in at.button if b.label.startswith(i18n.translate("Fix: {fix}", "zh")[:3]))
    assert fix.label == i18n.translate("Fix: {fix}", "zh").format(fix=error.why.render("zh"))
    no_exception(at)


def test_the_summary_shows_the_memory_a_training_step_needs(home):
    at = open_app()
    graph = _current_graph(at)
    analysis = analyse(graph)
    memory = estimate_memory(graph, analysis)
    caption = " ".join(c.value for c in at.caption)
    assert format_bytes(memory.training_bytes) in caption
    assert format_bytes(memory.activation_bytes_per_sample) in caption
    assert metric(at, "Size") == format_bytes(analysis.total_params * 4)


def test_the_canvas_deletes_down_to_an_empty_canvas_and_undo_brings_the_last_node_back(home):
    at = open_app()
    toolbar(at, "nb_new").click().run()
    send(at, {"kind": "delete_nodes", "nodes": ["output"]})
    send(at, {"kind": "delete_nodes", "nodes": ["input"]})
    no_exception(at)
    assert _current_graph(at).nodes == [] and shown(at)["nodes"] == []
    toolbar(at, "nb_undo").click().run()
    assert [n.id for n in _current_graph(at).nodes] == ["input"]
    assert not toolbar(at, "nb_redo").disabled
    no_exception(at)


def test_a_palette_click_comes_with_where_the_canvas_draws_it_before_the_answer(home):
    """The canvas draws a palette click at once from the page's plan (edit.placement): the plan
    is where the page then puts the layer, and what it moves down to make room."""
    at = send(open_app(), {"kind": "select", "node": "flatten"})
    plan = shown(at)["add_plans"]["layer"]
    round_before = shown(at)["palette_round"]
    before = {n.id: n.position for n in _current_graph(at).nodes}
    palette(at, "Regularisation").set_value("Dropout").run()
    graph = _current_graph(at)
    assert plan["anchor"] == "flatten" and graph.node("dropout_1").position == (
        plan["x"],
        plan["y"],
    )
    assert plan["splice"].endswith(":flatten->head")
    assert "head" in plan["shifted"] and "flatten" not in plan["shifted"]
    for node in graph.nodes:
        if node.id in before:
            dy = plan["row"] if node.id in plan["shifted"] else 0
            assert node.position == (before[node.id][0], before[node.id][1] + dy), node.id
    assert shown(at)["palette_round"] == round_before + 1  # the canvas drops its drawing


def test_a_gan_pair_shows_one_graph_at_a_time_and_edits_the_chosen_one(home):
    """The switch shows the generator or the discriminator on the one canvas; an edit changes
    the graph shown, inside the pair; Save writes both; a mismatch between the two is named."""
    at = open_app()
    at.menu_button(key="nb_template").set_value("dcgan_digits").run()
    no_exception(at)
    part = next(b for b in at.button_group if b.key == "nb_part_choice")
    assert part.value == "generator"
    assert "pixels" in shown_ids(at)
    assert not errors(at)  # the pair plays together
    generator = _current_graph(at).model_copy()

    part.set_value("discriminator").run()
    no_exception(at)
    assert {"image", "down1", "score"} <= shown_ids(at) and "pixels" not in shown_ids(at)
    at = select(at, "score")
    palette(at, "Regularisation").set_value("Dropout").run()
    pair = _current_graph(at)
    judge = discriminator_graph(pair)
    assert "dropout_1" in {n.id for n in judge.nodes}
    assert pair.nodes == generator.nodes and pair.edges == generator.edges  # untouched

    at = select(at, "image")
    text_field(at, "shape").set_value("1, 28, 28").run()  # the generator makes [1, 8, 8]
    assert any(
        "the discriminator takes [1, 28, 28] but the generator outputs" in e for e in errors(at)
    )
    toolbar(at, "nb_undo").click().run()
    assert not any("the discriminator takes" in e for e in errors(at))
    assert discriminator_graph(_current_graph(at)).nodes == judge.nodes
    assert json.loads(at.session_state["nb_history"].present.model_dump_json())["discriminator"]


def test_every_template_has_a_title_and_a_line_in_the_menu(home):
    """The menu shows each template by its title and what it trains on, never its file name."""
    at = open_app()
    names = sorted(p.stem for p in TEMPLATES.glob("*.json"))
    options = list(at.menu_button(key="nb_template").proto.options)
    assert len(options) == len(names)
    assert all(" · " in option and option not in names for option in options), options


def test_a_count_of_millions_is_shown_in_three_figures_and_in_full_on_hover(home):
    """resnet18's 11,181,642 would be cut at 1280 px: '11.18 M', the exact count in the help."""
    at = open_app()
    select(at, "stem")
    number_field(at, "out_channels").set_value(8192).run()  # 16 -> 8192 channels: millions
    count = analyse(_current_graph(at)).total_params
    assert count >= 1_000_000
    shown = next(m for m in at.metric if m.label == "Parameters")
    assert shown.value == f"{count / 1e6:.2f} M"
    assert f"{count:,}" in shown.help


def test_a_palette_click_on_a_graph_at_the_layer_cap_is_refused_with_a_reason(home):
    """A graph file holds at most MAX_NODES layers: one more could not be opened again."""
    graph = chain_graph([4], *[("ReLU", {})] * (MAX_NODES - 2))
    (home / "autosave").mkdir()
    (home / "autosave" / "full-workspace-0000000001.json").write_text(dump_graph(graph))
    at = open_app("full-workspace-0000000001")
    assert len(_current_graph(at).nodes) == MAX_NODES
    palette(at, "Regularisation").set_value("Dropout").run()
    no_exception(at)
    assert len(_current_graph(at).nodes) == MAX_NODES
    assert any(f"{MAX_NODES:,} layers, the most a graph file holds" in e for e in errors(at))
