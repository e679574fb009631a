"""A newcomer on the Train page at 1280x720, in English and Chinese (issue 21).

Start brings the live view into sight and its first loss point is drawn; each kind of model
opens on the tab that shows what it makes; no tab, and no run picker, is cut. Runs other than
the one started here are written to the app's home beforehand, as a finished trainer leaves
them, so each test opens the page on exactly the run it looks at. Every wait is on a condition.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from builder.graph import parse_graph
from compiler.gan import discriminator_graph
from i18n import translate
from runtime import store
from runtime.runs import create_run
from runtime.settings import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "builder" / "templates"
ATTENTION_MODELS = ("gpt_mini", "transformer_encoder")
VIEWPORT = {"width": 1280, "height": 720}
IDLE = "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"
# Everything drawn: no placeholder left, no script running, two more frames painted.
SETTLED = """() => !document.querySelector('[data-testid=stSkeleton]')
    && !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"""
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
LIVE_VIEW = ".st-key-train-live-view"
TABS = f"{LIVE_VIEW} [data-testid=stButtonGroup] button"
# The new run's loss chart holds a point: its layout.meta names the run (pages/train.py).
FIRST_POINT = """run => [...document.querySelectorAll('.js-plotly-plot')].some(plot =>
    plot.layout && plot.layout.meta && plot.layout.meta.chart === 'loss'
    && plot.layout.meta.run === run
    && (plot._fullData || []).some(trace => trace.x && trace.x.length > 0))"""
IN_SIGHT = f"""() => {{
    const box = document.querySelector('{LIVE_VIEW}')?.getBoundingClientRect();
    return !!box && box.top >= -2 && box.top < window.innerHeight / 2;
}}"""
# Every element under `selector` whose text is wider than the box that shows it, or whose box
# pokes out of its button group.
CUT = """selector => [...document.querySelectorAll(selector)].flatMap(button => {
    const group = button.closest('[data-testid=stButtonGroup]').parentElement;
    const room = group.getBoundingClientRect(), box = button.getBoundingClientRect();
    const clipped = [button, ...button.querySelectorAll('*')]
        .filter(e => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0);
    return clipped.length || box.right > room.right + 1 || box.left < room.left - 1
        ? [button.innerText] : [];
})"""


def template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def tiny_graph() -> dict[str, Any]:
    """Digits [1, 8, 8] -> Flatten -> Linear(10): its first step comes at once."""
    return {
        "format": "netbuilder.graph/1",
        "name": "tiny",
        "nodes": [
            {"id": "image", "type": "Input", "params": {"shape": [1, 8, 8]}},
            {"id": "flat", "type": "Flatten"},
            {"id": "fc", "type": "Linear", "params": {"out_features": 10}},
            {"id": "out", "type": "Output"},
        ],
        "edges": [
            {"source": "image", "target": "flat"},
            {"source": "flat", "target": "fc"},
            {"source": "fc", "target": "out"},
        ],
    }


def workspace(home: Path, graph: dict[str, Any]) -> str:
    """A new workspace whose autosave holds `graph`."""
    wid = secrets.token_hex(16)
    (home / "autosave").mkdir(parents=True, exist_ok=True)
    (home / "autosave" / f"{wid}.json").write_text(json.dumps(graph))
    return wid


def finished_run(home: Path, wid: str, graph: dict[str, Any], config: TrainConfig) -> str:
    """A completed run of `graph` with a few loss steps, as a trainer leaves it."""
    folder = create_run(home / "runs" / wid, parse_graph(graph), config)
    log = store.MetricsLog(folder / store.METRICS_FILE)
    kind = "gan" if discriminator_graph(parse_graph(graph)) is not None else "step"
    figures = {"d_loss": 1.0, "g_loss": 1.0, "d_real": 0.6, "d_fake": 0.4, "epoch": 1}
    log.write(
        [
            {"kind": kind, "step": step, "loss": 1.0 / step, "lr": 1e-3, "time": float(step)}
            | (figures if kind == "gan" else {})
            for step in range(1, 6)
        ]
    )
    log.close()
    store.update_status(folder, status="completed", epoch=1, step=5)
    return folder.name


def open_train(page: Page, app_url: str, wid: str, lang: str) -> None:
    """The Train page of workspace `wid`, reached through the app's menu as a person would (the
    app's own script runs first: the language, the menu, the trainers' warm-up)."""
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{app_url}/?w={wid}&lang={lang}")
    menu = page.get_by_test_id("stSidebarNav")  # (before app.py has run it lists pages/ files)
    menu.get_by_text(translate("Train", lang), exact=True).click()
    page.locator(".st-key-train-start button").wait_for()
    page.wait_for_function(IDLE)


def test_start_brings_the_live_view_into_sight_and_draws_the_first_point(
    page: Page, app_url: str, app_home: Path
) -> None:
    wid = workspace(app_home, tiny_graph())
    open_train(page, app_url, wid, "en")
    page.locator(".st-key-train-start button").click()
    page.wait_for_function(IN_SIGHT)  # the live view, not the runs table, is what one sees
    run = next((app_home / "runs" / wid).iterdir()).name
    page.wait_for_function(FIRST_POINT, arg=run, timeout=120_000)
    page.wait_for_function(IN_SIGHT)
    page.wait_for_function(SETTLED)
    page.screenshot(path=str(_artifact("newcomer-start-en")))


def _artifact(name: str) -> Path:
    """A screenshot's path: the window as a person sees it (1280x720), not the whole page."""
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder / f"{name}.png"


CASES = [
    ("dcgan_digits", TrainConfig(dataset="digits"), "Samples"),
    ("gpt_mini", TrainConfig(dataset="text"), "Generated text"),
    ("conv_autoencoder", TrainConfig(target="input"), "Reconstructions"),
    ("lenet5", TrainConfig(dataset="digits-28"), "Loss"),
]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize(("name", "config", "first"), CASES, ids=[c[0] for c in CASES])
def test_a_run_opens_on_what_its_model_makes_with_no_tab_cut(
    page: Page, app_url: str, app_home: Path, name: str, config: TrainConfig, first: str, lang: str
) -> None:
    graph = template(name)
    wid = workspace(app_home, graph)
    finished_run(app_home, wid, graph, config)
    open_train(page, app_url, wid, lang)
    tabs = page.locator(TABS)
    expect(tabs.first).to_be_visible()
    selected = page.locator(f"{TABS}[aria-checked=true], {TABS}[kind=segmented_controlActive]")
    expect(selected).to_have_text(translate(first, lang))
    names = tabs.all_inner_texts()
    if name not in ATTENTION_MODELS:
        assert translate("Attention", lang) not in names  # no attention layer, no tab
    assert page.evaluate(CUT, TABS) == [], f"cut at 1280x720 ({lang}): {names}"
    picture(page, f"newcomer-tabs-{name}-{lang}")


def picture(page: Page, name: str) -> None:
    """The window with the live view at its top, once everything in it is drawn."""
    page.wait_for_function(SETTLED)
    page.locator(LIVE_VIEW).evaluate("view => view.scrollIntoView({block: 'start'})")
    page.evaluate(NEXT_FRAMES)
    page.screenshot(path=str(_artifact(name)))


# The closed run picker's shown value, wider than its box when cut.
PICKER_CUT = """() => [...document.querySelectorAll('[data-testid=stSelectbox] input')]
    .filter(input => input.value && input.scrollWidth > input.clientWidth + 1)
    .map(input => input.value)"""


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_export_run_picker_is_not_cut(
    page: Page, app_url: str, app_home: Path, lang: str
) -> None:
    graph = template("lenet5")
    wid = workspace(app_home, graph)
    run = finished_run(app_home, wid, graph, TrainConfig(dataset="digits-28", epochs=3))
    checkpoint = app_home / "runs" / wid / run / store.CHECKPOINT_DIR
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / store.WEIGHTS_FILE).write_bytes(b"weights")  # listed; not loaded here
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{app_url}/?w={wid}&lang={lang}")
    menu = page.get_by_test_id("stSidebarNav")
    menu.get_by_text(translate("Export", lang), exact=True).click()
    picker = page.get_by_role("combobox", name=translate("Run", lang))
    expect(picker).to_have_value(re.compile(run[-6:]))
    page.wait_for_function(SETTLED)
    assert page.evaluate(PICKER_CUT) == []
    page.evaluate(NEXT_FRAMES)
    page.screenshot(path=str(_artifact(f"newcomer-export-{lang}")))


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_rejected_epoch_count_is_explained_beside_it_and_holds_start(
    page: Page, app_url: str, app_home: Path, lang: str
) -> None:
    wid = workspace(app_home, tiny_graph())
    open_train(page, app_url, wid, lang)
    epochs = page.get_by_role("spinbutton", name=translate("Epochs", lang))
    epochs.fill("-3")
    epochs.press("Enter")
    reason = translate("must be at least {limit}", lang).format(limit=1)
    expect(page.locator(".st-key-train-start button")).to_be_disabled()
    expect(page.get_by_text(reason, exact=True)).to_be_visible()  # beside the field
    page.wait_for_function(SETTLED)
    page.screenshot(path=str(_artifact(f"newcomer-epochs-{lang}")))
    epochs.fill("3")
    epochs.press("Enter")
    expect(page.locator(".st-key-train-start button")).to_be_enabled()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_conv_stack_without_its_flatten_gets_the_flatten_in_one_click(
    page: Page, app_url: str, app_home: Path, lang: str
) -> None:
    lenet = template("lenet5")
    lenet["nodes"] = [n for n in lenet["nodes"] if n["id"] != "flatten"]
    lenet["edges"] = [e for e in lenet["edges"] if "flatten" not in (e["source"], e["target"])]
    lenet["edges"].append({"source": "s4", "target": "f5"})
    wid = workspace(app_home, lenet)
    open_train(page, app_url, wid, lang)
    page.get_by_role("combobox", name=translate("Dataset", lang)).click()
    page.get_by_role("option", name="digits-28", exact=True).click()
    fix = page.locator(".st-key-train-apply-fix button")
    expect(fix).to_be_visible()
    page.wait_for_function(SETTLED)
    page.screenshot(path=str(_artifact(f"newcomer-flatten-{lang}")))
    fix.click()
    expect(page.locator(".st-key-train-start button")).to_be_enabled()
