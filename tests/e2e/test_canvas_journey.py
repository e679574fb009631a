"""A learner's first minutes on the Build page, in a real browser at the two common window sizes:
LeNet-5 from a blank canvas by palette clicks and handle drags, keyboard deletes and undo, and
the same page in Chinese, training a template. Screenshots land in test-artifacts/ (look at them).

Every step waits on what the page shows, never on a fixed pause.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import Error as PlaywrightError

import i18n
from builder.graph import FORMAT, Edge, Graph, Node, dump_graph
from test_person_journey import (
    CANVAS,
    SELECTED_BLUE,
    canvas,
    centre,
    connect_by_drag,
    node,
    select,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LENET_PARAMS = "61,706"  # builder/templates/lenet5.json, counted by PyTorch in test_templates.py


def open_page(browser: Browser, app_url: str, width: int, height: int, lang: str) -> Page:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(f"{app_url}/?w=e2e{secrets.token_hex(16)}&lang={lang}")
    expect(canvas(page).locator(".react-flow__node").first).to_be_visible(timeout=40_000)
    return page


@pytest.fixture
def small(browser: Browser, app_url: str) -> Iterator[Page]:
    page = open_page(browser, app_url, 1280, 720, "en")
    yield page
    page.context.close()


def tool(page: Page, key: str) -> Locator:
    """A toolbar button by its key (the icons carry tooltips, not words)."""
    return page.locator(f".st-key-{key} button").first


def nodes(page: Page) -> Locator:
    return canvas(page).locator(".react-flow__node")


def settled(page: Page) -> None:
    """Streamlit has finished the run in progress (the canvas then shows its result)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"
    )


def add(page: Page, layer: str, expected_id: str) -> None:
    """Click the layer's pill in the palette (the one pill: a rerun may briefly show a stale copy
    of the palette beside the new one, so wait until only one is left).

    The canvas draws the layer at once; the test waits for the page's answer, the layer under
    its own id. A click that the page never took (the page drew nothing, and the canvas dropped
    its drawing) is clicked again, as a person would: once, and never while a layer is drawn.
    """
    pill = page.get_by_test_id("stSidebar").get_by_role("radio", name=layer, exact=True)
    before = canvas(page).locator(".nb-canvas").get_attribute("data-nodes")
    for _attempt in range(2):
        expect(pill).to_have_count(1)
        pill.click()
        try:
            expect(node(page, expected_id)).to_be_visible(timeout=20_000)
            break
        except AssertionError:
            settled(page)
            box = canvas(page).locator(".nb-canvas")
            expect(box).to_have_attribute("data-pending", "0", timeout=15_000)
            assert (
                box.get_attribute("data-nodes") == before
            ), f"{layer} was added, not as {expected_id}"
            print(f"\nthe page did not take the click on {layer}: clicked again")
    expect(node(page, expected_id)).to_have_css("border-top-color", SELECTED_BLUE)
    settled(page)


SHOWN = {
    "out_channels": "out {}",
    "out_features": "out {}",
    "kernel_size": "k {}",
    "padding": "pad {}",
}


def param_field(page: Page, node_id: str, name: str) -> Locator:
    """The form's field for a node's param, as drawn by the latest run: a field's key holds the
    graph version, and while a rerun draws the form the last form's copy may still be there."""
    prefix, suffix = "st-key-nb_param_", f"_{node_id}_{name}"
    newest = f"""() => {{
        const versions = [...document.querySelectorAll('[class*="{prefix}"]')]
            .flatMap(e => [...e.classList])
            .filter(c => c.startsWith("{prefix}") && c.endsWith("{suffix}"))
            .map(c => Number(c.slice({len(prefix)}, -{len(suffix)})))
            .filter(Number.isInteger);
        return versions.length ? Math.max(...versions) : null;
    }}"""
    version = page.wait_for_function(newest).json_value()
    return page.locator(f".{prefix}{version}{suffix} input")


def set_field(page: Page, node_id: str, name: str, value: str) -> None:
    """Type a value and wait until the node shows it (the form is redrawn after each edit).

    A value typed into a form that a rerun was replacing at that moment is dropped by the page
    (a field drawn for an older graph is stale): as a person would, type it once more into the
    form now shown, once the page is idle, and never when the first one was taken."""
    for attempt in range(2):
        settled(page)
        field = param_field(page, node_id, name)
        field.fill(value)
        field.press("Enter")
        if name not in SHOWN:
            break
        shown = expect(node(page, node_id))
        text = SHOWN[name].format(value)
        try:
            if value == "0":  # a default is left off the node
                shown.not_to_contain_text(
                    text.replace(" 0", " "), timeout=15_000 + 15_000 * attempt
                )
            else:
                shown.to_contain_text(text, timeout=15_000 + 15_000 * attempt)
            break
        except AssertionError:
            if attempt:
                raise
            print(f"\nthe page did not take {name}={value} on {node_id}: typed again")
    settled(page)


def pick_in_the_layer_list(page: Page, node_id: str) -> None:
    """Choose a node in the form's layer list, again if a rerun redrew the list meanwhile (the
    element the click was aimed at is then gone)."""
    picker = page.get_by_test_id("stSelectbox").filter(has_text="Layer").locator("input")
    for _attempt in range(3):
        settled(page)
        try:
            picker.scroll_into_view_if_needed()
            picker.click()
            page.get_by_role("option", name=node_id, exact=True).click(timeout=10_000)
            break
        except PlaywrightError:
            continue
    expect(node(page, node_id)).to_have_css("border-top-color", SELECTED_BLUE)


def uncut(page: Page, locator: Locator) -> None:
    """The element is inside the window and shows all its text (no ellipsis)."""
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= size["width"], box
    clipped = locator.evaluate("e => e.scrollWidth > e.clientWidth + 1")
    assert not clipped, f"{locator} is cut"


def test_lenet5_from_a_blank_canvas_by_palette_clicks_and_handle_drags(small: Page, shot):
    page = small
    started = time.monotonic()
    tool(page, "nb_new").click()
    expect(nodes(page)).to_have_count(2)
    expect(node(page, "output")).to_be_in_viewport()
    select(page, "input")
    set_field(page, "input", "shape", "1, 28, 28")
    expect(node(page, "input")).to_contain_text("[1, 28, 28]")

    chain = [
        ("Conv2d", "conv2d_1", {"out_channels": "6", "kernel_size": "5", "padding": "2"}),
        ("ReLU", "relu_1", {}),
        ("MaxPool2d", "max_pool2d_1", {}),
        ("Conv2d", "conv2d_2", {"out_channels": "16", "kernel_size": "5", "padding": "0"}),
        ("ReLU", "relu_2", {}),
        ("MaxPool2d", "max_pool2d_2", {}),
        ("Flatten", "flatten_1", {}),
        ("Linear", "linear_1", {"out_features": "120"}),
        ("ReLU", "relu_3", {}),
        ("Linear", "linear_2", {"out_features": "84"}),
        ("ReLU", "relu_4", {}),
        ("Linear", "linear_3", {}),  # feeds the Output: 10 outputs for the digits, by itself
    ]
    for layer, node_id, params in chain:
        add(page, layer, node_id)
        for name, value in params.items():
            set_field(page, node_id, name, value)
    expect(page.get_by_text("linear_3 gets 10 outputs")).to_be_visible()
    expect(node(page, "linear_3")).to_contain_text("[10]")

    # Pick the Input in the layer list: the canvas pans to it. Delete the edge below it, and draw
    # it again from handle to handle.
    pick_in_the_layer_list(page, "input")
    page.locator(CANVAS).scroll_into_view_if_needed()  # the form below may have scrolled the page
    expect(node(page, "input")).to_be_in_viewport()
    settled(page)
    edge = canvas(page).locator('.react-flow__edge[data-testid$="input->conv2d_1"]')
    page.mouse.click(*centre(edge.locator("path").first))  # a left click selects the edge
    expect(edge).to_have_class(re.compile(r"\bnb-edge-selected\b"))
    page.keyboard.press("Delete")
    expect(node(page, "conv2d_1")).to_contain_text("has no input")
    expect(node(page, "input")).to_be_visible()
    source = node(page, "input").locator(".react-flow__handle.source")
    target = node(page, "conv2d_1").locator(".react-flow__handle.target")
    connect_by_drag(page, source, target)
    expect(page.get_by_text("No problems: every shape fits.")).to_be_visible()
    expect(page.get_by_test_id("stMetricValue").first).to_have_text(LENET_PARAMS)
    print(f"\nLeNet-5 from a blank canvas took {time.monotonic() - started:.1f} s of test time")
    shot(page, "lenet5-from-blank-1280x720")


def test_keys_delete_the_last_node_and_undo_redo_bring_it_back(small: Page, shot):
    page = small
    tool(page, "nb_new").click()
    expect(nodes(page)).to_have_count(2)
    for node_id, left in (("output", 1), ("input", 0)):
        select(page, node_id)
        page.keyboard.press("Backspace")
        expect(nodes(page)).to_have_count(left)
    settled(page)
    shot(page, "empty-canvas")
    page.keyboard.press("Control+z")
    expect(nodes(page)).to_have_count(1)
    settled(page)
    page.keyboard.press("Control+Shift+z")
    expect(nodes(page)).to_have_count(0)
    page.keyboard.press("Control+z")
    expect(nodes(page)).to_have_count(1)
    settled(page)
    expect(tool(page, "nb_redo")).to_be_enabled()  # the page has drawn the undo's result
    page.keyboard.press("Control+z")
    expect(nodes(page)).to_have_count(2)


def test_a_pane_click_deselects(small: Page):
    page = small
    select(page, "stem")  # near the top of the default graph, in view
    expect(page.get_by_text("Conv2d · stem")).to_be_visible()
    frame = page.locator(CANVAS).bounding_box()
    page.mouse.click(frame["x"] + frame["width"] - 30, frame["y"] + 30)
    expect(node(page, "stem")).not_to_have_css("border-top-color", SELECTED_BLUE)
    expect(page.get_by_text("Select a layer to edit its parameters.", exact=False)).to_be_visible()


@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080)])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_toolbar_and_summary_are_uncut(browser: Browser, app_url: str, width, height, lang):
    page = open_page(browser, app_url, width, height, lang)
    try:
        settled(page)
        for key in ("nb_new", "nb_undo", "nb_redo", "nb_delete", "nb_tidy", "nb_template"):
            uncut(page, tool(page, key))
        for metric in page.get_by_test_id("stMetric").all():
            uncut(page, metric)
        # A graph too tall for the view at the smallest zoom shows its top: the Input.
        expect(node(page, "image")).to_be_in_viewport()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"build-{lang}-{width}x{height}.png"))
    finally:
        page.context.close()


TOOLBAR_NAMES = {
    "nb_new": "New graph",
    "nb_undo": "Undo",
    "nb_redo": "Redo",
    "nb_delete": "Delete the selection",
    "nb_tidy": "Tidy the layout",
    "nb_template": "Templates",
    "nb_open_popover": "Open a file",
    "nb_save": "Save the graph",
}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_button_has_a_name_a_screen_reader_says_in_the_readers_language(
    browser: Browser, app_url: str, lang: str
):
    """The toolbar's icons show no words, yet the accessibility tree names each one by what it
    does, in the reader's language (not by its glyph: 'note_add', 'undo'); no button of the
    page is nameless."""
    page = open_page(browser, app_url, 1280, 720, lang)
    try:
        settled(page)
        for key, english in TOOLBAR_NAMES.items():
            expect(tool(page, key)).to_have_accessible_name(i18n.translate(english, lang))
            uncut(page, tool(page, key))
        expect(page.locator(CANVAS)).to_have_accessible_name(  # not its title, a module path
            i18n.translate(
                "Network canvas: drag a layer to move it, drag from a handle to connect two"
                " layers",
                lang,
            )
        )
        tree = page.locator("body").aria_snapshot()
        buttons = [
            line.strip() for line in tree.splitlines() if line.strip().startswith("- button")
        ]
        assert buttons, tree
        nameless = [line for line in buttons if not line.startswith('- button "')]
        assert not nameless, nameless
        glyphs = [line for line in buttons if re.fullmatch(r'- button "[a-z_]+"( \[.*\])?:?', line)]
        assert not glyphs, glyphs
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"toolbar-names-{lang}.png"))
    finally:
        page.context.close()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_no_control_on_the_train_and_export_pages_is_nameless(
    browser: Browser, app_url: str, lang: str
):
    page = open_page(browser, app_url, 1280, 720, lang)
    try:
        for index, drawn in (
            (1, ".st-key-train-start button"),
            (2, "[data-testid=stDownloadButton]"),
        ):
            page.get_by_test_id("stSidebarNav").get_by_role("link").nth(index).click()
            expect(page.locator(drawn).first).to_be_visible(timeout=30_000)
            expect(
                page.get_by_test_id("stSidebarNav").get_by_role("link").nth(index)
            ).to_have_attribute("aria-current", "page")
            settled(page)
            tree = page.locator("body").aria_snapshot()
            controls = [
                line.strip()
                for line in tree.splitlines()
                if re.match(
                    r"- (button|combobox|spinbutton|textbox|checkbox|radio|slider)\b", line.strip()
                )
            ]
            assert controls, tree
            nameless = [c for c in controls if not re.match(r'- \w+ "[^"]+"', c)]
            assert not nameless, nameless
    finally:
        page.context.close()


def test_in_chinese_a_template_is_built_and_trained(browser: Browser, app_url: str):
    """中文: the sidebar switch, a template from the toolbar, a run on the Train page; the
    screenshots show Chinese text drawn with a CJK font (look at them: no tofu boxes)."""
    page = open_page(browser, app_url, 1280, 720, "en")
    try:
        page.get_by_test_id("stSidebar").get_by_text("中文", exact=True).click()
        expect(page.get_by_test_id("stSidebar").get_by_text("卷积", exact=True)).to_be_visible()
        tool(page, "nb_template").click()
        page.get_by_text("LeNet-5 · ", exact=False).click()
        expect(node(page, "c1")).to_be_visible()
        expect(page.get_by_text("没有问题：所有形状都匹配。")).to_be_visible()
        settled(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "zh-build-lenet5.png"))
        page.get_by_test_id("stSidebarNav").get_by_role("link").nth(1).click()
        start = page.locator(".st-key-train-start button").first
        expect(start).to_be_enabled(timeout=30_000)
        start.click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        settled(page)
        page.screenshot(path=str(ARTIFACTS / "zh-train-lenet5.png"))
    finally:
        page.context.close()


def wide_tall_graph() -> Graph:
    """A DenseNet-like shape: a 320-layer chain whose branches reach far to the left, so the
    middle of the whole graph is empty canvas (issue 10 §4: a big import must open legibly)."""
    nodes = [Node(id="x", type="Input", params={"shape": [64]}, position=(0.0, 0.0))]
    for index in range(320):
        nodes.append(
            Node(id=f"n{index}", type="ReLU", params={}, position=(0.0, 110.0 * (index + 1)))
        )
    nodes.append(Node(id="y", type="Output", params={}, position=(0.0, 110.0 * 321)))
    chain = [node.id for node in nodes]
    edges = [Edge(source=a, target=b) for a, b in zip(chain, chain[1:], strict=False)]
    for index in range(0, 320, 40):  # side branches, 4000 px to the left, that end nowhere
        branch = f"side{index}"
        nodes.append(Node(id=branch, type="ReLU", params={}, position=(-4000.0, 110.0 * index)))
        edges.append(Edge(source=f"n{index}", target=branch))
    return Graph(format=FORMAT, name="wide", nodes=nodes, edges=edges)


def test_a_big_wide_graph_opens_at_its_input_and_still_answers_edits(
    browser: Browser, app_url: str, app_home: Path
):
    workspace = f"e2ebig{secrets.token_hex(16)}"
    (app_home / "autosave").mkdir(exist_ok=True)
    (app_home / "autosave" / f"{workspace}.json").write_text(dump_graph(wide_tall_graph()))
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        page.goto(f"{app_url}/?w={workspace}&lang=en")
        expect(node(page, "x")).to_be_in_viewport(timeout=40_000)
        expect(node(page, "x")).to_contain_text("[64]")
        drawn = nodes(page).count()
        assert 0 < drawn < 100, drawn  # only what is in view is drawn, of 330 nodes
        select(page, "n1")
        page.keyboard.press("Delete")
        expect(node(page, "n1")).to_have_count(0)
        expect(canvas(page).locator(".nb-canvas")).to_have_attribute("data-nodes", "329")
        expect(canvas(page).locator(".nb-canvas")).to_have_attribute("data-pending", "0")
        expect(node(page, "n2")).to_contain_text("[64]")  # bridged: n0 -> n2, shapes known
    finally:
        context.close()


VIEWPORT = ".react-flow__viewport"


def test_the_wheel_over_the_canvas_scrolls_the_page_and_ctrl_wheel_zooms(small: Page):
    page = small
    settled(page)
    main = page.get_by_test_id("stMain")
    viewport = canvas(page).locator(VIEWPORT)

    def over_the_canvas() -> None:
        box = page.locator(CANVAS).bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + min(box["height"] / 2, 200))

    transform = viewport.evaluate("e => e.style.transform")
    over_the_canvas()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    page.wait_for_function(
        "([frame, before]) => frame.contentDocument.querySelector('.react-flow__viewport')"
        ".style.transform !== before",
        arg=[page.locator(CANVAS).element_handle(), transform],
        timeout=10_000,
    )
    assert main.evaluate("e => e.scrollTop") == 0  # the zoom did not scroll the page
    zoomed = viewport.evaluate("e => e.style.transform")
    over_the_canvas()
    page.mouse.wheel(0, 300)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stMain]').scrollTop > 0", timeout=10_000
    )
    assert viewport.evaluate("e => e.style.transform") == zoomed  # the scroll did not zoom


def test_a_long_note_stays_within_its_node(small: Page):
    """A node's note shows two lines at most (all of it on hover), so it never grows over the
    node below."""
    page = small
    select(page, "stem")
    field = page.get_by_role("textbox", name="kernel_size", exact=True)
    field.fill("20")
    field.press("Enter")
    note = canvas(page).locator('[data-id="stem"] .nb-note')
    expect(note).to_be_visible()
    assert note.get_attribute("title")
    lines = note.evaluate(
        "e => Math.round(e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight))"
    )
    assert lines <= 2
    assert note.evaluate("e => getComputedStyle(e).webkitLineClamp") == "2"
    stem = node(page, "stem").bounding_box()
    below = node(page, "stem_bn").bounding_box()
    assert stem["y"] + stem["height"] <= below["y"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_no_palette_name_is_cut(browser: Browser, app_url: str, lang: str):
    """'ConvTranspose1d 一维转置卷积层' is wider than the sidebar: it wraps, not '一维转置...'."""
    page = open_page(browser, app_url, 1280, 720, lang)
    try:
        settled(page)
        pills = page.locator('[class*="st-key-nb_palette_"] button')
        expect(pills.first).to_be_visible()
        sidebar = page.get_by_test_id("stSidebar").bounding_box()
        cut = pills.evaluate_all("""pills => pills.filter(p => [p, ...p.querySelectorAll('*')].some(
                   e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1))
               .map(p => p.innerText)""")
        assert not cut, cut
        for box in pills.evaluate_all("ps => ps.map(p => p.getBoundingClientRect().right)"):
            assert box <= sidebar["x"] + sidebar["width"]
        page.get_by_test_id("stSidebar").get_by_text(
            "ConvTranspose1d", exact=False
        ).first.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"palette-{lang}.png"))
    finally:
        page.context.close()


def test_the_uploader_speaks_chinese(browser: Browser, app_url: str):
    """Streamlit writes "Upload" and "2MB per file • JSON, PY" in English only: in Chinese the
    page shows its own words there, to the eye and to a screen reader."""
    page = open_page(browser, app_url, 1280, 720, "zh")
    try:
        settled(page)
        tool(page, "nb_open_popover").click()
        zone = page.get_by_test_id("stFileUploaderDropzone")
        expect(zone).to_be_visible()
        expect(zone.locator("button")).to_have_accessible_name("上传")
        shown = zone.evaluate(
            """z => [...z.querySelectorAll('*')].filter(e => e.offsetParent !== null)
                 .map(e => e.childNodes.length && [...e.childNodes]
                   .filter(n => n.nodeType === 3).map(n => n.textContent).join('')
                   + getComputedStyle(e, '::after').content.replace(/^"|"$/g, ''))
                 .join(' ')"""
        )
        assert "上传" in shown and "每个文件最多 2 MB" in shown, shown
        assert "Upload" not in shown and "per file" not in shown, shown
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "uploader-zh.png"))
    finally:
        page.context.close()
