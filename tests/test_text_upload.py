"""Your own text for the next-character model: its own capped vocabulary, windows of the Input's
length, validation from the text's last part only, encodings other than UTF-8 named, and the
GPT-mini template fitted to it in one click."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builder import edit
from builder.graph import load_graph, parse_graph
from compiler.analysis import analyse
from pages.parts.own_data import vocabulary_fixes
from runtime import builtin_data, runs
from runtime.datasets import (
    DatasetError,
    check_compatibility,
    dataset_from_path,
    dataset_from_upload,
    run_alphabet,
    validation_rows,
)
from runtime.metrics import generate_text
from runtime.settings import TrainConfig
from runtime.trainer import train_run, trained_model
from tests.modelkit import token_model

TEMPLATES = Path(__file__).resolve().parents[1] / "builder" / "templates"
STORY = ("Once upon a time, a fox met a crow. The crow sang; the fox laughed!\n" * 60).encode()


def test_the_vocabulary_comes_from_the_file_and_is_capped():
    rare = "".join(chr(0x4E00 + n) for n in range(300))  # 300 characters seen once each
    text = "ab" * 1000 + rare
    alphabet = builtin_data.vocabulary(text)
    assert len(alphabet) == builtin_data.TEXT_VOCAB_CAP
    assert alphabet[0] == builtin_data.UNKNOWN_CHARACTER
    assert "a" in alphabet and "b" in alphabet
    ids = builtin_data.encode_text(text, alphabet)
    assert int((ids == 0).sum()) == 300 - (builtin_data.TEXT_VOCAB_CAP - 3)  # left out: id 0
    assert builtin_data.decode_text(ids[:4].tolist(), alphabet) == "abab"


def test_windows_are_the_inputs_length_and_their_targets_the_next_characters():
    dataset = dataset_from_upload("story.txt", STORY, input_shape=(32,))
    assert dataset.sample_shape == (32,) and dataset.dtype == "int64"
    assert dataset.num_classes == len(dataset.alphabet)
    assert torch.equal(dataset.x[:, 1:], dataset.y[:, :-1])
    assert dataset.alphabet[0] == builtin_data.UNKNOWN_CHARACTER


def test_validation_reads_only_the_last_part_of_the_text():
    """The split is by position: 'ab' fills the first 80 %, 'xy' the last 20 %, so every
    validation window is x and y only and no training window reaches them."""
    text = ("ab" * 800 + "xy" * 200).encode()
    config = TrainConfig(val_fraction=0.2, seed=4)
    dataset = dataset_from_upload("split.txt", text, input_shape=(16,), settings=config)
    held_out = validation_rows(len(dataset), config)
    alphabet = dataset.alphabet
    val_chars = {alphabet[i] for i in dataset.x[held_out].unique().tolist()}
    trained = torch.ones(len(dataset), dtype=torch.bool)
    trained[held_out] = False
    train_chars = {alphabet[i] for i in dataset.y[trained].unique().tolist()}
    assert val_chars <= {"x", "y"}
    assert train_chars <= {"a", "b"}


def test_text_in_another_encoding_is_named():
    latin = "Le café était très bon.".encode("latin-1") * 50
    with pytest.raises(DatasetError, match=r"not UTF-8 text: byte 0xE9 at position 6"):
        dataset_from_upload("café.txt", latin, input_shape=(16,))
    with pytest.raises(DatasetError, match="UTF-16"):
        dataset_from_upload("wide.txt", "hello".encode("utf-16"), input_shape=(16,))


def test_a_text_too_short_for_the_window_is_named():
    with pytest.raises(DatasetError, match=r"holds 40 characters; windows of 64 characters"):
        dataset_from_upload("short.txt", b"a" * 40, input_shape=(64,))


def test_a_model_that_does_not_take_characters_is_named():
    with pytest.raises(DatasetError, match=r"Input is \[T\]"):
        dataset_from_upload("story.txt", STORY, input_shape=(1, 8, 8))


def test_the_gpt_mini_template_fits_a_text_in_one_click():
    graph = load_graph((TEMPLATES / "gpt_mini.json").read_text())
    dataset = dataset_from_upload("story.txt", STORY, input_shape=(64,))
    analysis = analyse(graph)
    assert check_compatibility(analysis, dataset)  # 31 characters of the built-in grammar
    for fix in vocabulary_fixes(analysis, dataset):
        graph = edit.apply_fix(graph, fix)
    fitted = analyse(graph)
    assert check_compatibility(fitted, dataset) == []
    assert vocabulary_fixes(fitted, dataset) == []


def test_a_text_file_trains_and_generates_in_its_own_characters(tmp_path):
    story = tmp_path / "story.txt"
    story.write_bytes(STORY)
    dataset = dataset_from_path(story, input_shape=(16,))
    graph = token_model(16)
    vocab = len(dataset.alphabet)
    for node in graph["nodes"]:
        if node["id"] == "emb":
            node["params"]["num_embeddings"] = vocab
        if node["id"] == "head":
            node["params"]["out_features"] = vocab
    config = TrainConfig(epochs=1, lr=1e-2, batch_size=128, device="cpu", report_every=50)
    folder = runs.create_run(tmp_path / "runs", parse_graph(graph), config, story)
    result = train_run(folder)
    assert result.status == "completed", result.message
    assert result.val_accuracy is not None and result.val_accuracy > 0.3  # chance is 1 / 27
    alphabet = run_alphabet(folder)
    assert alphabet == dataset.alphabet
    written = generate_text(trained_model(folder), "the fox ", 40, 16, 0.8, alphabet=alphabet)
    assert len(written) == 40 and set(written) <= set(alphabet)


def test_the_exported_train_py_cuts_a_text_as_the_app_does(tmp_path, monkeypatch):
    """train.py --data story.txt: the same vocabulary, windows and split as the app's, from the
    bundle's own copies of the code (imported here from the written bundle, then forgotten)."""
    import importlib
    import sys

    from export.bundle import bundle_files

    graph = token_model(16)
    for node in graph["nodes"]:
        node.setdefault("params", {}).update(
            {"emb": {"num_embeddings": 40}, "head": {"out_features": 40}}.get(node["id"], {})
        )
    parsed = parse_graph(graph)
    for name, text in bundle_files(parsed, analyse(parsed), {"seed": 3}).items():
        (tmp_path / name).write_text(text)
    story = tmp_path / "story.txt"
    story.write_bytes(STORY)
    shipped = ("train", "model", "loop", "run", "builtin_data", "csv_table", "image_folder")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        script = importlib.import_module("train")
        args = script.parse_args(["--data", str(story)])
        x, y = script.load_data(args)
    finally:
        for name in shipped:
            sys.modules.pop(name, None)
    app = dataset_from_upload("story.txt", STORY, input_shape=(16,), settings=TrainConfig(seed=3))
    assert torch.equal(x, app.x) and torch.equal(y, app.y)
