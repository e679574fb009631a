"""The Train page's view of a person's own pictures and text: the augmentation they choose, a
grid of training pictures as augmented with their labels, the class counts, and for a text its
vocabulary and the one-click fit of a next-character model to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from compiler.analysis import Analysis
from i18n import _
from pages.parts.live_graph import markdown_literal
from runtime.datasets import Dataset
from runtime.image_folder import Augmentation, ImageFolder, LazyImages, preview

PREVIEW_COUNT = 12
PREVIEW_COLUMNS = 4
PREVIEW_PIXELS = 96  # small pictures are shown at least this wide, their pixels kept sharp
_SHUFFLE = "train-augment-shuffle"


def augmentation_settings() -> dict[str, Any]:
    """The augmentation chosen on the page, as TrainConfig fields (each off by default)."""
    st.caption(_("Augmentation of the training pictures (validation pictures stay as they are)"))
    left, right = st.columns(2)
    with left:
        flip = st.checkbox(
            _("Flip"), key="train-augment-flip", help=_("Mirror half the pictures left to right")
        )
        crop = st.number_input(
            _("Crop padding"),
            min_value=0,
            max_value=16,
            value=0,
            step=1,
            key="train-augment-crop",
            help=_("Pad by this many pixels, then crop back to the Input's size at random"),
        )
    with right:
        rotation = st.slider(_("Rotation ±°"), 0, 45, 0, step=5, key="train-augment-rotation")
        jitter = st.slider(
            _("Colour jitter ±"),
            0.0,
            0.5,
            0.0,
            step=0.05,
            key="train-augment-jitter",
            help=_("Brightness, contrast and saturation scaled by 1 ± this"),
        )
    return {
        "augment_crop": int(crop),
        "augment_flip": bool(flip),
        "augment_rotation": float(rotation),
        "augment_jitter": float(jitter),
    }


def picture_overview(dataset: Dataset, settings: dict[str, Any]) -> None:
    """The class counts and a grid of training pictures as the chosen augmentation makes them."""
    if not isinstance(dataset.x, LazyImages):
        return
    folder = dataset.x.folder
    counts = folder.listing.counts()
    st.caption(
        _("Pictures per class:")
        + " "
        + markdown_literal(" · ".join(f"{name}: {count}" for name, count in counts.items()))
    )
    how = Augmentation(
        crop_padding=settings["augment_crop"],
        flip=settings["augment_flip"],
        rotation=settings["augment_rotation"],
        jitter=settings["augment_jitter"],
    )
    shown = ImageFolder(folder.listing, folder.shape, how)
    seed = st.session_state.get(_SHUFFLE, 0)
    pictures = preview(shown, PREVIEW_COUNT, seed)
    heading, button = st.columns([3, 1], vertical_alignment="center")
    heading.caption(
        _(
            "Training pictures as the model sees them, {h} × {w}:",
            h=folder.shape[1],
            w=folder.shape[2],
        )
    )
    if button.button(
        "", key="train-augment-other", icon=":material/shuffle:", help=_("Other pictures")
    ):
        st.session_state[_SHUFFLE] = seed + 1
        st.rerun()
    for start in range(0, len(pictures), PREVIEW_COLUMNS):
        row = pictures[start : start + PREVIEW_COLUMNS]
        for column, (pixels, label) in zip(st.columns(PREVIEW_COLUMNS), row):
            column.image(_enlarged(pixels), caption=label, width="stretch")


def _enlarged(pixels: np.ndarray) -> np.ndarray:
    """A small picture scaled up by whole pixels, so the browser does not blur it."""
    height, width = pixels.shape[:2]
    factor = max(1, PREVIEW_PIXELS // max(1, min(height, width)))
    if factor == 1:
        return pixels
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((width * factor, height * factor), Image.NEAREST))


def text_overview(dataset: Dataset) -> None:
    """The vocabulary of an uploaded text and one training window, as characters."""
    if dataset.alphabet is None:
        return
    shown = "".join({"\n": "⏎", " ": "␣", "\t": "⇥"}.get(c, c) for c in dataset.alphabet[1:])
    st.caption(
        _("Vocabulary ({count}, id 0 for any other character):", count=len(dataset.alphabet))
        + " "
        + markdown_literal(shown[:160])
    )
    window = "".join(dataset.alphabet[i] for i in dataset.x[0].tolist())
    st.code(window, language=None, wrap_lines=True)


def vocabulary_fixes(analysis: Analysis, dataset: Dataset) -> list[dict[str, Any]]:
    """The edits that make a next-character model fit a text's vocabulary: each Embedding that
    reads the Input gets a row per character, and the Linear before the Output a score per
    character. Empty when there is nothing to change (or no such layers)."""
    if dataset.alphabet is None or not analysis.ok:
        return []
    vocab = len(dataset.alphabet)
    graph = analysis.graph
    input_id = next(n.id for n in graph.nodes if n.type == "Input")
    output_id = next(n.id for n in graph.nodes if n.type == "Output")
    fixes = []
    for node in graph.nodes:
        reads_input = input_id in analysis.inputs.get(node.id, [])
        if node.type == "Embedding" and reads_input and node.params.get("num_embeddings") != vocab:
            fixes.append({"set": {"node": node.id, "params": {"num_embeddings": vocab}}})
    last = analysis.inputs[output_id][0]
    if analysis.node_type(last) == "Linear":
        if analysis.typed[last].out_features != vocab:
            fixes.append({"set": {"node": last, "params": {"out_features": vocab}}})
    return fixes
