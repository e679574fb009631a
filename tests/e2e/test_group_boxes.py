"""An imported ResNet-50 in a real browser at 1280x720 (issue 19 §3): it opens as eight readable
boxes, a double-click on layer2 opens it into its blocks, a block's button opens it into its
layers, a layer deleted inside is gone from its group and Undo brings it back there. Every step
waits on what the canvas shows, never on a fixed pause."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
import torch
from playwright.sync_api import Browser, expect

from builder.graph import dump_graph
from builder.layout import with_layout
from compiler.importer import import_model
from test_person_journey import IDLE, SELECTED_BLUE, canvas, node

models = pytest.importorskip("torchvision.models")


def select_inside_a_group(page, node_id: str) -> None:  # noqa: ANN001 - a Playwright Page
    """Click a layer inside an open group until it reads selected. Playwright's own click waits
    until the layer, not the frame round it, is what the pointer would hit (a frame still being
    laid out on a loaded machine takes the click otherwise)."""
    for _attempt in range(5):
        page.wait_for_function(IDLE)
        node(page, node_id).click()
        try:
            expect(node(page, node_id)).to_have_css(
                "border-top-color", SELECTED_BLUE, timeout=5_000
            )
            return
        except AssertionError:
            continue
    expect(node(page, node_id)).to_have_css("border-top-color", SELECTED_BLUE)


def test_an_imported_resnet50_opens_as_eight_boxes_that_open_into_its_layers(
    browser: Browser, app_url: str, app_home: Path, shot
):
    torch.manual_seed(0)
    result = import_model(models.get_model("resnet50", num_classes=10).eval(), (3, 32, 32))
    assert result.graph is not None
    workspace = f"e2egroups{secrets.token_hex(16)}"
    (app_home / "autosave").mkdir(exist_ok=True)
    (app_home / "autosave" / f"{workspace}.json").write_text(dump_graph(with_layout(result.graph)))
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        page.goto(f"{app_url}/?w={workspace}&lang=en")
        frame = canvas(page)
        expect(frame.locator(".nb-canvas")).to_have_attribute("data-nodes", "8", timeout=40_000)
        expect(frame.locator(".react-flow__node-box")).to_have_count(6)
        expect(node(page, "group:layer1")).to_contain_text("[64, 8, 8] → [256, 8, 8]")
        shot(page, "groups-resnet50-closed")
        node(page, "group:layer2").dblclick()
        expect(frame.locator('.react-flow__node-frame[data-id="group:layer2"]')).to_be_visible()
        expect(node(page, "group:layer2.3")).to_be_attached()
        frame.get_by_role("button", name="Open layer2.0").click()
        expect(node(page, "layer2_0_relu")).to_be_visible()
        shot(page, "groups-resnet50-layer2.0-open")
        select_inside_a_group(page, "layer2_0_relu")
        page.keyboard.press("Delete")
        expect(node(page, "layer2_0_relu")).to_have_count(0)
        expect(frame.locator(".nb-canvas")).to_have_attribute("data-pending", "0")
        block = node(page, "group:layer2.0").locator(".nb-frame-title")
        expect(block).to_have_attribute("title", re.compile("11 layers"))
        page.locator(".st-key-nb_undo button").first.click()
        expect(node(page, "layer2_0_relu")).to_be_visible()
        expect(block).to_have_attribute("title", re.compile("12 layers"))
        expect(node(page, "group:layer3")).to_have_class(re.compile("react-flow__node-box"))
    finally:
        context.close()
