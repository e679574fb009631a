"""The step view in a real browser at 1280x720, in English and Chinese (issue 18).

A learner on the Train page with LeNet-5 on digits-28 opens the step view, picks the digit at
sample 7 and reads one training step stage by stage: Forward, Loss, Backward and Update. Every
number the test looks for is the one torch gives for the same sample and the same first weights,
computed here with runtime/step.py (whose numbers tests/test_step.py checks against torch). Next
goes on to sample 8 from the updated weights; Rewind brings back sample 7 and its loss. No text
of the view is cut, and no node's numbers wrap or lose their contrast on the canvas. Every
control is reached by its role and accessible name, every wait is on a condition, and each stage
leaves a screenshot (NN-step-<stage>-<lang>.png) in test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect
from test_newcomer_train import SETTLED, open_train, template, workspace

from builder.graph import parse_graph
from compiler.analysis import Analysis, analyse
from i18n import Message, render, translate
from pages.parts.flow_canvas import FRAME_TITLE
from pages.parts.step_view import statistics_text, step_settings
from runtime.datasets import Dataset, load_dataset
from runtime.settings import TrainConfig
from runtime.step import (
    Explanation,
    StepRecord,
    batch_from,
    explain_gradient,
    explain_loss,
    explain_output,
    explain_update,
    number,
    take_step,
)

DATASET = "digits-28"
SAMPLE = 7  # the digit the learner picks
VIEW = ".st-key-step-view"
CANVAS = f'{VIEW} iframe[title="{FRAME_TITLE}"]'
# Text wider than the box that shows it, among the step view's labels, buttons and stage names.
CUT = """selector => [...document.querySelectorAll(selector)]
    .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.innerText)"""
LABELS = f"{VIEW} label p, {VIEW} button p, {VIEW} [data-testid=stCaptionContainer]"
# The canvas's nodes whose line of numbers wraps (a taller face crowds the arrow below it).
WRAPPED = """body => [...body.querySelectorAll('.react-flow__node .nb-params')].filter(line => {
    const range = document.createRange();
    range.selectNodeContents(line);
    return new Set([...range.getClientRects()].map(box => Math.round(box.top))).size > 1;
}).map(line => line.innerText)"""
# Nodes filled with their gradient's colour that have a text not in the colour chosen to read on it.
OFF_INK = """body => [...body.querySelectorAll('.react-flow__node.nb-filled')].filter(node => {
    const ink = getComputedStyle(node.querySelector('.nb-title')).color;
    return [...node.querySelectorAll('.nb-params, .nb-shape code')]
        .some(text => getComputedStyle(text).color !== ink);
}).map(node => node.dataset.id)"""


@cache
def lenet5_on_digits() -> tuple[Analysis, Dataset]:
    analysis = analyse(parse_graph(template("lenet5")))
    shape = tuple(analysis.infos["image"].shape or ())
    return analysis, load_dataset(DATASET, input_shape=shape)


def expected_step(index: int, after: StepRecord | None = None) -> StepRecord:
    """The step the page takes on sample `index` with the Train page's default optimizer
    settings: from the seed's first weights, or going on from the step `after`."""
    analysis, dataset = lenet5_on_digits()
    x, y = batch_from(dataset, analysis, index, 1)
    settings = step_settings(TrainConfig(dataset=DATASET))
    if after is None:
        return take_step(analysis, x, y, settings)
    return take_step(analysis, x, y, settings, after.after, after.optimizer_saved)


def target_of(index: int) -> int:
    return int(lenet5_on_digits()[1].y[index])


def checked_text(explained: Explanation, lang: str) -> str:
    """The line under each formula: torch's value beside the formula's."""
    return translate("torch computed {value}; the formula gives {formula}", lang).format(
        value=number(explained.torch_value), formula=number(explained.value)
    )


def step_caption(step: int, index: int, lang: str) -> str:
    """The line above the stages (Adam at 0.001: the Train page's defaults)."""
    return translate(
        "Step {step}: samples {first} to {last} of {dataset}; {optimizer}, learning rate {lr};"
        " the model is in train mode.",
        lang,
    ).format(step=step, first=index, last=index, dataset=DATASET, optimizer="Adam", lr="0.001")


def sample_caption(index: int, target: int, lang: str) -> str:
    return translate("sample {n} · target {target}", lang).format(n=index, target=target)


def stage(page: Page, name: str, lang: str) -> Locator:
    return page.get_by_role("radio", name=translate(name, lang), exact=True)


def shows_check(view: Locator, text: str) -> None:
    """The formula's check line says `text` (while a stage's run is under way, the last stage's
    line can still stand beside it, marked stale: the one wanted is found by its words)."""
    expect(view.get_by_role("status").filter(has_text=text).first).to_be_visible()


def metrics(view: Locator, title: str) -> Locator:
    """The stage's metric values, once the stage titled `title` is drawn and its run has ended
    (until then the last stage's metrics can stand beside them, marked stale)."""
    expect(view).to_contain_text(title)
    expect(view.locator("[data-stale=true]")).to_have_count(0)
    return view.get_by_test_id("stMetricValue")


def canvas_node(page: Page, node_id: str) -> Locator:
    return page.frame_locator(CANVAS).locator(f'.react-flow__node[data-id="{node_id}"]')


def show_stage(page: Page, name: str, lang: str) -> None:
    stage(page, name, lang).click()
    expect(stage(page, name, lang)).to_be_checked()


def picked(page: Page, dimensions: tuple[str, ...], lang: str) -> tuple[int, ...]:
    """The element the page explains, read from its number inputs (channel, row, column...)."""
    page.wait_for_function(SETTLED)  # the stage's own inputs, none left from the one before
    inputs = [
        page.get_by_role("spinbutton", name=translate(d, lang), exact=True) for d in dimensions
    ]
    return tuple(int(i.input_value()) for i in inputs)


def assert_nothing_cut(page: Page, lang: str, where: str) -> None:
    cut = page.evaluate(CUT, LABELS)
    assert cut == [], f"text cut at 1280x720 ({lang}, {where}): {cut}"
    canvas = page.frame_locator(CANVAS).locator("body")
    assert canvas.evaluate(WRAPPED) == [], f"numbers wrap on the canvas ({where})"
    assert canvas.evaluate(OFF_INK) == [], f"a text on a filled node not in its ink ({where})"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_one_training_step_reads_forward_loss_backward_update_and_rewinds(
    page: Page, app_url: str, app_home: Path, shot: Callable[[Page, str], Path], lang: str
) -> None:
    first = expected_step(SAMPLE)
    target = target_of(SAMPLE)
    wid = workspace(app_home, template("lenet5"))
    open_train(page, app_url, wid, lang)
    page.get_by_role("combobox", name=translate("Dataset", lang)).click()
    page.get_by_role("option", name=DATASET, exact=True).click()

    opener = page.get_by_role(
        "switch", name=translate("Watch one training step, number by number", lang)
    )
    page.locator("label").filter(has=opener).click()  # the switch's label, as a hand clicks it
    expect(opener).to_be_checked()
    view = page.locator(VIEW)
    expect(view).to_contain_text(sample_caption(0, target_of(0), lang))
    pick = page.get_by_role("spinbutton", name=translate("First sample", lang), exact=True)
    pick.fill(str(SAMPLE))
    pick.press("Enter")
    expect(view).to_contain_text(sample_caption(SAMPLE, target, lang))
    expect(view).to_contain_text(step_caption(1, SAMPLE, lang))
    expect(stage(page, "Forward", lang)).to_be_checked()
    expect(page.locator(CANVAS)).to_have_accessible_name(
        translate(
            "Your network with this step's numbers (read-only): click a layer to explain it", lang
        )
    )
    expect(
        view.get_by_role(
            "img",
            name=translate("the picture of {caption}", lang).format(
                caption=sample_caption(SAMPLE, target, lang)
            ),
        )
    ).to_be_visible()

    # Forward: the first convolution's output, on its node and for the element picked.
    c1 = first.nodes["c1"].output[0]
    expect(page.get_by_role("combobox", name=translate("Layer", lang), exact=True)).to_have_value(
        "c1 (Conv2d)"
    )
    expect(canvas_node(page, "c1")).to_contain_text("y " + statistics_text(c1, 3))
    forward = explain_output(first, "c1", picked(page, ("channel", "row", "column"), lang))
    shows_check(view, checked_text(forward, lang))
    assert_nothing_cut(page, lang, "forward")
    shot(page, f"step-forward-{lang}")

    # Loss: cross-entropy written out, and the loss torch computed.
    show_stage(page, "Loss", lang)
    loss = explain_loss(first)
    expect(view).to_contain_text(render(loss.title, lang))
    shows_check(view, checked_text(loss, lang))
    expect(metrics(view, render(loss.title, lang))).to_have_text(number(first.loss_before))
    assert_nothing_cut(page, lang, "loss")
    shot(page, f"step-loss-{lang}")

    # Backward: every node's gradient on the canvas; the chain rule for a weight of the last
    # layer.
    show_stage(page, "Backward", lang)
    expect(canvas_node(page, "c1")).to_contain_text(
        "∇ " + statistics_text(first.nodes["c1"].grad[0], 2)
    )
    layer = page.get_by_role("combobox", name=translate("Layer (backward order)", lang))
    expect(layer).to_have_value("logits (Linear)")
    expect(page.get_by_role("combobox", name=translate("Weight", lang), exact=True)).to_have_value(
        "logits.weight"
    )
    name = "logits.weight"
    index = picked(page, ("row", "column"), lang)
    gradient = explain_gradient(first, name, index)
    expect(view).to_contain_text(render(gradient.title, lang))
    shows_check(view, checked_text(gradient, lang))
    assert_nothing_cut(page, lang, "backward")
    shot(page, f"step-backward-{lang}")

    # Update: Adam's rule for the same weight, before -> after, and the loss after the step.
    show_stage(page, "Update", lang)
    update = explain_update(first, name, index)
    before_after = update.lines[-1]
    assert isinstance(before_after, Message)
    expect(view).to_contain_text(render(before_after, lang))
    shows_check(view, checked_text(update, lang))
    expect(metrics(view, render(update.title, lang))).to_have_text(
        [number(first.loss_before), number(first.loss_after)]
    )
    assert first.loss_after < first.loss_before  # one step on this digit lowers its loss
    assert_nothing_cut(page, lang, "update")
    shot(page, f"step-update-{lang}")

    # Next: the following digit, from the updated weights and Adam's state; the stage starts
    # again at Forward.
    page.get_by_role("button", name=translate("Next", lang), exact=True).click()
    expect(view).to_contain_text(step_caption(2, SAMPLE + 1, lang))
    expect(view).to_contain_text(sample_caption(SAMPLE + 1, target_of(SAMPLE + 1), lang))
    expect(stage(page, "Forward", lang)).to_be_checked()
    show_stage(page, "Loss", lang)
    second = expected_step(SAMPLE + 1, after=first)
    expect(metrics(view, render(loss.title, lang))).to_have_text(number(second.loss_before))

    # Rewind: back to the picked digit and the first weights: the same loss again.
    page.get_by_role("button", name=translate("Rewind", lang), exact=True).click()
    expect(view).to_contain_text(step_caption(1, SAMPLE, lang))
    expect(view).to_contain_text(sample_caption(SAMPLE, target, lang))
    expect(stage(page, "Forward", lang)).to_be_checked()
    show_stage(page, "Loss", lang)
    expect(metrics(view, render(loss.title, lang))).to_have_text(number(first.loss_before))
    shot(page, f"step-rewound-{lang}")
