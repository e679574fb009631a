"""One person's session in a real browser: build LeNet-5, edit it on the canvas, train, export.

One test runs the steps in order in its own tab (each step builds on the last; the test sets up
everything it needs from a fresh workspace), and each step saves a screenshot in test-artifacts/. The canvas is NetBuilder's React Flow component inside an iframe; it is used with the
mouse only (small moves, as a hand would), never by calling into the page's scripts.
"""

from __future__ import annotations

import io
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
from playwright.sync_api import FrameLocator, Locator, Page, expect

from builder.graph import load_graph
from compiler.analysis import analyse
from compiler.codegen import attribute_names, generate_source
from pages.parts.flow_canvas import FRAME_TITLE

ROOT = Path(__file__).resolve().parents[2]
# The canvas's frame, as drawn by the latest run: while Tidy, New or a template remounts it, the
# old frame may stay a moment beside the new one, marked stale.
CANVAS = "[data-testid=stElementContainer]:not([data-stale=true])" f' iframe[title="{FRAME_TITLE}"]'
LIVE_GRAPH = f'iframe[title="{FRAME_TITLE}"]'  # the Train page's graph: the same component
LENET = ROOT / "builder" / "templates" / "lenet5.json"
ERROR_RED = "rgb(220, 38, 38)"  # the canvas's error border (frontend/src/canvas.css), #dc2626
SELECTED_BLUE = "rgb(37, 99, 235)"  # its selected border, #2563eb
IDLE = "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"


def canvas(page: Page) -> FrameLocator:
    return page.frame_locator(CANVAS)


def node(page: Page, node_id: str) -> Locator:
    return canvas(page).locator(f'.react-flow__node[data-id="{node_id}"]')


def centre(locator: Locator) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not on screen"
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def connect_by_drag(page: Page, source: Locator, target: Locator, steps: int = 15) -> None:
    """Press on the source handle, move in small steps, release on the target handle, as a
    person does. Each end is found by Playwright's hover, which waits until the handle stands
    still and is the element under the pointer: after an edit or a screenshot's resize the
    page may still be moving the canvas, and a press beside the handle would pan it instead."""
    source.hover()
    page.mouse.down()
    start = centre(source)
    end = centre(target)
    for step in range(1, steps):
        page.mouse.move(
            start[0] + (end[0] - start[0]) * step / steps,
            start[1] + (end[1] - start[1]) * step / steps,
        )
    target.hover()
    page.mouse.up()


def drag(page: Page, start: tuple[float, float], end: tuple[float, float], steps: int = 15) -> None:
    """Press, move in small steps, release: what React Flow needs to see a drag."""
    page.mouse.move(*start)
    page.mouse.down()
    for step in range(1, steps + 1):
        page.mouse.move(
            start[0] + (end[0] - start[0]) * step / steps,
            start[1] + (end[1] - start[1]) * step / steps,
        )
    page.mouse.up()


def pan_to(page: Page, node_id: str) -> None:
    """Drag the empty canvas so that the node sits a third of the way down the view."""
    frame = page.locator(CANVAS).bounding_box()
    _, y = centre(node(page, node_id))
    grab = (frame["x"] + 120, frame["y"] + frame["height"] * 0.55)
    drag(page, grab, (grab[0], grab[1] - (y - (frame["y"] + frame["height"] / 3))))


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.2)


def torch_shapes() -> dict[str, list[int]]:
    """LeNet-5's per-layer output shapes as PyTorch itself computes them."""
    analysis = analyse(load_graph(LENET.read_text()))
    namespace = types.ModuleType("lenet")
    exec(compile(generate_source(analysis), "model.py", "exec"), namespace.__dict__)
    model = namespace.build_model()
    shapes: dict[str, list[int]] = {}
    for node_id, attribute in attribute_names(analysis).items():
        getattr(model, attribute).register_forward_hook(
            lambda module, args, output, node_id=node_id: shapes.update(
                {node_id: list(output.shape[1:])}
            )
        )
    model(torch.zeros(1, *namespace.INPUT_SHAPE))
    return shapes


def select(page: Page, node_id: str) -> None:
    """Click a node until the page and the canvas agree that it is selected.

    The canvas shows the click at once; a click aimed while a rerun moved the node (a layer
    added above it) can miss, so click again once the page is idle.
    """
    for _attempt in range(5):
        page.wait_for_function(IDLE)
        page.mouse.click(*centre(node(page, node_id)))
        try:
            expect(node(page, node_id)).to_have_css(
                "border-top-color", SELECTED_BLUE, timeout=5_000
            )
            break
        except AssertionError:
            continue
    expect(node(page, node_id)).to_have_css("border-top-color", SELECTED_BLUE)
    page.wait_for_function(IDLE)  # the page's run for the click has ended


def step_open_the_app_and_load_lenet5(page: Page, app_url: str, shot):
    page.goto(app_url)
    expect(canvas(page).locator(".react-flow__node").first).to_be_visible(timeout=30_000)
    page.locator(".st-key-nb_template button").first.click()
    page.get_by_text("LeNet-5 · 28×28 digits").click()
    expect(node(page, "c1")).to_be_visible()
    expect(page.get_by_text("61,706")).to_be_visible()
    shot(page, "lenet5-loaded")


def step_every_layer_shows_the_shape_pytorch_computes(page: Page, shot):
    for node_id, shape in torch_shapes().items():
        expect(node(page, node_id)).to_contain_text(str(shape))
    expect(node(page, "c1")).to_contain_text("156 params")
    shot(page, "shapes-on-nodes")


def step_a_new_layer_is_connected_by_dragging_an_edge(page: Page, shot):
    pan_to(page, "flatten")
    select(page, "flatten")
    expect(page.get_by_text("Flatten · flatten")).to_be_visible()
    page.get_by_test_id("stSidebar").get_by_text("Identity", exact=True).click()
    expect(node(page, "identity_1")).to_contain_text("[400]")
    edge = canvas(page).locator('.react-flow__edge[data-testid$="identity_1->f5"] path').first
    page.mouse.click(*centre(edge), button="right")
    canvas(page).get_by_text("Delete edge", exact=True).click()
    expect(node(page, "f5")).to_contain_text("has no input")
    expect(node(page, "f5")).to_have_css("border-top-color", ERROR_RED)
    shot(page, "edge-removed-f5-red")

    source = node(page, "identity_1").locator(".react-flow__handle.source")
    target = node(page, "f5").locator(".react-flow__handle.target")
    connect_by_drag(page, source, target)
    expect(node(page, "f5")).not_to_contain_text("has no input")
    expect(node(page, "f5")).to_contain_text("[120]")
    expect(page.get_by_text("No problems: every shape fits.")).to_be_visible()
    shot(page, "identity-connected-by-drag")


def step_an_impossible_kernel_turns_the_layer_red_with_its_message(page: Page, shot):
    pan_to(page, "c3")
    select(page, "c3")
    kernel = page.get_by_role("textbox", name="kernel_size")
    kernel.fill("30")
    kernel.press("Enter")
    expect(node(page, "c3")).to_contain_text("exceeds")
    expect(node(page, "c3")).to_have_css("border-top-color", ERROR_RED)
    shot(page, "kernel-too-large-c3-red")
    page.locator(".st-key-nb_undo button").first.click()
    expect(node(page, "c3")).to_contain_text("[16, 10, 10]")
    expect(page.get_by_text("No problems: every shape fits.")).to_be_visible()


def loss_line(page: Page) -> Locator:
    chart = page.locator(".js-plotly-plot").filter(has_text="Loss").first
    return chart.locator(".scatterlayer .trace path.js-line").nth(1)  # the smoothed loss


def step_training_on_digits_draws_the_loss_as_it_falls(page: Page, shot):
    page.get_by_test_id("stSidebarNav").get_by_text("Train").click()
    expect(page.get_by_text("Compatible: 1,797 samples of [1, 28, 28]")).to_be_visible()
    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("40")
    epochs.press("Enter")
    expect(epochs).to_have_value("40")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("running", exact=True).filter(visible=True).first).to_be_visible(
        timeout=30_000
    )
    expect(loss_line(page)).to_be_attached(timeout=30_000)
    drawn = len(loss_line(page).get_attribute("d"))
    wait_until(lambda: len(loss_line(page).get_attribute("d")) > drawn, "the loss line to grow")
    live_graph = page.frame_locator(LIVE_GRAPH)
    expect(live_graph.locator('.react-flow__node[data-id="c1"]')).to_contain_text(
        "‖grad‖", timeout=40_000
    )
    shot(page, "training-live")


def step_stop_ends_the_run_and_keeps_a_checkpoint(page: Page, shot):
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("stopped", exact=True).filter(visible=True).first).to_be_visible(
        timeout=30_000
    )
    expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    shot(page, "training-stopped")


def step_an_uploaded_csv_is_checked_against_the_graph_before_training(page: Page, shot, tmp_path):
    table = tmp_path / "measurements.csv"
    table.write_text(
        "width,height,depth,kind\n" + "".join(f"{i},{i + 1},{i + 2},{i % 3}\n" for i in range(30))
    )
    page.get_by_role("radio", name="Upload your own").click()
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(table))
    expect(page.get_by_role("combobox", name="Label column")).to_be_visible()
    expect(
        page.get_by_text("measurements.csv samples are [3] but Input 'image' is [1, 28, 28]")
    ).to_be_visible()
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    shot(page, "upload-checked")
    page.get_by_role("radio", name="Built-in").click()
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()


def step_export_downloads_code_weights_and_onnx_that_agree(page: Page, shot, tmp_path):
    page.get_by_test_id("stSidebarNav").get_by_text("Export").click()
    with page.expect_download() as code_download:
        page.get_by_role("button", name="Download the code (.zip)").click()
    archive = zipfile.ZipFile(io.BytesIO(open(code_download.value.path(), "rb").read()))
    names = sorted(name.split("/", 1)[1] for name in archive.namelist())
    assert names == [
        "README.md",
        "builtin_data.py",
        "csv_table.py",
        "graph.json",
        "image_folder.py",
        "loop.py",
        "model.py",
        "run.py",
        "train.py",
    ]
    folder = archive.namelist()[0].split("/")[0]
    namespace = types.ModuleType("exported")
    exec(compile(archive.read(f"{folder}/model.py"), "model.py", "exec"), namespace.__dict__)
    model = namespace.build_model()
    assert sum(p.numel() for p in model.parameters()) == 61_706

    with page.expect_download() as weights_download:
        page.get_by_role("button", name="Download weights (.pt)").click()
    weights = torch.load(weights_download.value.path(), weights_only=True)
    model.load_state_dict(weights)

    page.get_by_role("button", name="Build the ONNX file").click()
    with page.expect_download(timeout=60_000) as onnx_download:
        page.get_by_role("button", name="Download model.onnx").click(timeout=60_000)
    session = onnxruntime.InferenceSession(
        onnx_download.value.path().read_bytes(), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(2, 1, 28, 28)
    [from_onnx] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(from_onnx), model.eval()(x), atol=1e-4, rtol=1e-4)
    shot(page, "export")


def step_a_second_tab_is_another_person_and_a_reload_loses_nothing(
    page: Page, browser, app_url: str, shot
) -> None:
    workspace = page.url.split("?", 1)[1]
    stranger = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    stranger.goto(f"{app_url}/train")
    expect(stranger.get_by_text("No runs yet.")).to_be_visible()
    assert stranger.url.split("?", 1)[1] != workspace
    stranger.context.close()

    returning = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    returning.goto(f"{app_url}/train?{workspace}")
    expect(returning.get_by_text("stopped", exact=True).filter(visible=True).first).to_be_visible()
    expect(returning.get_by_text("Compatible: 1,797 samples of [1, 28, 28]")).to_be_visible()
    shot(returning, "same-workspace-after-reopening")
    returning.context.close()


def test_a_person_builds_edits_trains_and_exports_lenet5(
    page: Page, browser, app_url: str, shot, tmp_path: Path
):
    step_open_the_app_and_load_lenet5(page, app_url, shot)
    step_every_layer_shows_the_shape_pytorch_computes(page, shot)
    step_a_new_layer_is_connected_by_dragging_an_edge(page, shot)
    step_an_impossible_kernel_turns_the_layer_red_with_its_message(page, shot)
    step_training_on_digits_draws_the_loss_as_it_falls(page, shot)
    step_stop_ends_the_run_and_keeps_a_checkpoint(page, shot)
    step_an_uploaded_csv_is_checked_against_the_graph_before_training(page, shot, tmp_path)
    step_export_downloads_code_weights_and_onnx_that_agree(page, shot, tmp_path)
    step_a_second_tab_is_another_person_and_a_reload_loses_nothing(page, browser, app_url, shot)
