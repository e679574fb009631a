"""A newcomer's first hour on the Build page, in Chinese at 1280x720, as a person clicks: a small
CNN from a blank canvas, broken by deleting its Flatten, fixed with one click, trained on the
Train page and taken home from the Export page. Each step leaves a screenshot in
test-artifacts/ (look at them)."""

from __future__ import annotations

import io
import types
import zipfile
from pathlib import Path

import torch
from playwright.sync_api import Browser, Page, expect

import i18n
from test_canvas_journey import add, open_page, settled, tool
from test_person_journey import canvas, node, select

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
GLOSS = {  # the primer's terms the palette shows beside PyTorch's names (pages/build.py)
    "Conv2d": "convolution layer",
    "ReLU": "rectified linear unit",
    "MaxPool2d": "max pooling",
    "Flatten": "flatten",
    "Linear": "fully connected layer",
}


def zh(text: str, **values: object) -> str:
    return i18n.translate(text, "zh").format(**values) if values else i18n.translate(text, "zh")


def pill(layer: str) -> str:
    return f"{layer} {zh(GLOSS[layer])}"


def picture(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    settled(page)
    page.screenshot(path=str(ARTIFACTS / f"newcomer-zh-{name}.png"))


def test_in_chinese_a_small_cnn_is_built_from_blank_broken_fixed_trained_and_exported(
    browser: Browser, app_url: str
):
    page = open_page(browser, app_url, 1280, 720, "zh")
    try:
        # a blank canvas: an Input wired to the Output
        tool(page, "nb_new").click()
        expect(node(page, "output")).to_be_visible()
        expect(canvas(page).locator(".react-flow__node")).to_have_count(2)
        for layer, node_id in [
            ("Conv2d", "conv2d_1"),
            ("ReLU", "relu_1"),
            ("MaxPool2d", "max_pool2d_1"),
            ("Flatten", "flatten_1"),
            ("Linear", "linear_1"),
        ]:
            add(page, pill(layer), node_id)
        no_problems = page.get_by_text(zh("No problems: every shape fits."))
        expect(no_problems).to_be_visible()
        expect(node(page, "linear_1")).to_contain_text("[10]")
        picture(page, "1-built")

        # broken: without its Flatten the Linear acts on the last dim only
        select(page, "flatten_1")
        tool(page, "nb_delete").click()
        expect(node(page, "flatten_1")).to_have_count(0)
        prefix = zh("Fix: {fix}").split("{fix}")[0]
        fix = page.get_by_role("button").filter(has_text=prefix).first
        expect(fix).to_be_visible()
        picture(page, "2-broken")

        # fixed with one click: the Flatten is back, nothing overlaps
        fix.click()
        expect(node(page, "flatten_1")).to_be_visible()
        expect(page.get_by_text(zh("No problems: every shape fits."))).to_be_visible()
        boxes = [node(page, n).bounding_box() for n in ("max_pool2d_1", "flatten_1", "linear_1")]
        assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"]
        assert boxes[1]["y"] + boxes[1]["height"] <= boxes[2]["y"]
        picture(page, "3-fixed")

        # trained: the Train page starts it, and the loss is drawn
        page.get_by_test_id("stSidebarNav").get_by_role("link").nth(1).click()
        start = page.locator(".st-key-train-start button").first
        expect(start).to_be_enabled(timeout=30_000)
        start.click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=90_000)
        picture(page, "4-training")

        # exported: the code's model has the parameter count the Build page showed
        page.get_by_test_id("stSidebarNav").get_by_role("link").nth(2).click()
        with page.expect_download(timeout=60_000) as code:
            page.get_by_role("button", name=zh("Download the code (.zip)")).click()
        archive = zipfile.ZipFile(io.BytesIO(Path(code.value.path()).read_bytes()))
        source = next(name for name in archive.namelist() if name.endswith("/model.py"))
        namespace = types.ModuleType("exported")
        exec(compile(archive.read(source), "model.py", "exec"), namespace.__dict__)
        model = namespace.build_model()
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        picture(page, "5-export")
    finally:
        page.context.close()
