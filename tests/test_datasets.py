"""Datasets: built-ins match their sources, uploads are checked, compatibility says what to fix."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from builder.edit import apply_fix, delete_nodes
from builder.graph import load_graph
from tests.modelkit import chain_graph, vae_graph
from compiler import analyse
from runtime import builtin_data, datasets
from runtime.datasets import (
    DatasetError,
    check_compatibility,
    compatibility_fix,
    dataset_from_upload,
    load_dataset,
)

TEMPLATES = Path(__file__).parents[1] / "builder" / "templates"


def template_analysis(name: str):
    return analyse(load_graph((TEMPLATES / f"{name}.json").read_text()))


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# -- built-ins -------------------------------------------------------------------------------


def test_digits_are_sklearn_digits_as_images_scaled_to_unit_range():
    source = load_digits()
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.sample_shape == (1, 8, 8)
    assert torch.equal(data.x.flatten(1), torch.tensor(source.data, dtype=torch.float32) / 16)
    assert torch.equal(data.y, torch.tensor(source.target))
    assert (data.task, data.num_classes, data.dtype) == ("classification", 10, "float32")


def test_digits_rows_are_the_same_images_as_sequences():
    images, rows = load_dataset("digits"), load_dataset("digits-rows")
    assert rows.sample_shape == (8, 8)
    assert torch.equal(rows.x, images.x.squeeze(1)) and torch.equal(rows.y, images.y)


def test_digits_28_is_a_bilinear_resize_that_keeps_the_labels():
    small, big = load_dataset("digits"), load_dataset("digits-28")
    assert big.sample_shape == (1, 28, 28) and torch.equal(big.y, small.y)
    back = torch.nn.functional.interpolate(big.x, size=(8, 8), mode="area")
    assert float((back - small.x).abs().mean()) < 0.1
    assert float(torch.corrcoef(torch.stack([back.flatten(), small.x.flatten()]))[0, 1]) > 0.95


def test_tokens_label_is_the_token_after_the_single_marker():
    data = load_dataset("tokens", seed=3)
    assert data.x.dtype == torch.int64 and data.sample_shape == (16,) and data.dtype == "int64"
    markers = data.x == builtin_data.MARKER
    assert torch.all(markers.sum(dim=1) == 1)
    position = markers.int().argmax(dim=1)
    assert int(position.max()) <= 14
    assert torch.equal(data.y, data.x[torch.arange(len(data.x)), position + 1])
    assert int(data.x.max()) < data.num_classes == 16


def test_generated_tasks_repeat_for_a_seed_and_change_with_it():
    for name in ("tokens", "sine"):
        assert torch.equal(load_dataset(name, seed=1).x, load_dataset(name, seed=1).x)
        assert not torch.equal(load_dataset(name, seed=1).x, load_dataset(name, seed=2).x)


def test_sine_target_continues_the_noisy_wave():
    data = load_dataset("sine")
    assert (data.task, data.num_classes, data.sample_shape) == ("regression", None, (32, 1))
    assert data.y.shape == (len(data.x), 1)
    # The next value of a slow sine lies near a linear extrapolation of the last two values.
    guess = 2 * data.x[:, -1, 0] - data.x[:, -2, 0]
    assert float((guess - data.y[:, 0]).abs().median()) < 0.15


def test_unknown_dataset_names_the_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*digits"):
        load_dataset("nope")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="has torchvision")
def test_torchvision_datasets_explain_what_is_missing():
    with pytest.raises(DatasetError, match="needs torchvision"):
        load_dataset("mnist")


# -- uploads ---------------------------------------------------------------------------------


def test_csv_upload_uses_the_last_column_as_labels_by_default():
    data = dataset_from_upload("iris.csv", b"a,b,label\n1,2,0\n3,4,1\n5,6,2\n")
    assert (data.task, data.num_classes, data.sample_shape) == ("classification", 3, (2,))
    assert torch.equal(data.x, torch.tensor([[1.0, 2], [3, 4], [5, 6]]))
    assert data.y.tolist() == [0, 1, 2]


def test_csv_upload_with_a_chosen_fractional_label_is_regression():
    data = dataset_from_upload("houses.csv", b"price,rooms,area\n1.5,2,30\n2.25,3,45\n", "price")
    assert data.task == "regression" and data.num_classes is None
    assert data.y.tolist() == [[1.5], [2.25]] and data.sample_shape == (2,)


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        (b"a,b,c\n1,x,0\n2,y,1\n", None, "'b' are not numeric"),
        (b"a,b\n1,\n2,1\n", None, "NaN cells in 'b' \\(rows affected: 1\\)"),
        (b"a,b\n1,0\n2,1\n", "c", "no column 'c'.*a, b"),
        (b"a\n1\n2\n", None, "feature column"),
        (b"a,b\n1,-1\n2,3\n", None, "renumber"),
    ],
)
def test_bad_csv_is_explained(text: bytes, label: str | None, message: str):
    with pytest.raises(DatasetError, match=message):
        dataset_from_upload("data.csv", text, label)


def test_csv_word_labels_become_sorted_class_ids_with_their_names():
    data = dataset_from_upload("pets.csv", b"weight,legs,kind\n4,4,dog\n3,4,cat\n5,4,dog\n")
    assert (data.task, data.num_classes, data.class_names) == ("classification", 2, ("cat", "dog"))
    assert data.y.tolist() == [1, 0, 1] and "cat, dog" in str(data.description)


def test_a_csv_refusal_names_the_file_once_and_ends_with_its_reason():
    with pytest.raises(DatasetError) as caught:
        dataset_from_upload("x.csv", b"a,b\n1,\n")
    text = str(caught.value)
    assert text.count("x.csv") == 1 and not text.rstrip().endswith(":")


def test_uploads_over_the_cap_are_refused(monkeypatch):
    monkeypatch.setattr(datasets, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(DatasetError, match="capped"):
        dataset_from_upload("big.csv", b"a,b\n" + b"1,0\n" * 10)


def test_npz_upload_keeps_sample_shape_and_integer_inputs_become_tokens():
    images = dataset_from_upload(
        "x.npz", npz_bytes(X=np.zeros((4, 3, 5, 5), np.float32), y=np.array([0, 1, 0, 1]))
    )
    assert images.sample_shape == (3, 5, 5) and images.dtype == "float32"
    tokens = dataset_from_upload("t.npz", npz_bytes(X=np.ones((4, 6), np.int32), y=np.arange(4)))
    assert tokens.dtype == "int64" and tokens.x.dtype == torch.int64 and tokens.num_classes == 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((3, 2))}, "named 'X'.*named 'y'"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(4)}, "y has shape \\[4\\] but X has 3"),
        ({"X": np.zeros(3), "y": np.zeros(3)}, "one row per sample"),
        ({"X": np.array([[np.nan, 1], [1, 1]]), "y": np.zeros(2)}, "1 sample.*NaN"),
        ({"X": np.array([["a"], ["b"]]), "y": np.zeros(2)}, "numeric"),
    ],
)
def test_bad_npz_is_explained(arrays: dict[str, np.ndarray], message: str):
    with pytest.raises(DatasetError, match=message):
        dataset_from_upload("data.npz", npz_bytes(**arrays))


def test_npz_with_pickled_objects_is_refused_without_unpickling():
    payload = npz_bytes(X=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.zeros(2))
    with pytest.raises(DatasetError, match="X holds Python objects, which are never unpickled"):
        dataset_from_upload("evil.npz", payload)


def test_npz_over_the_data_budget_is_refused_with_both_figures(monkeypatch):
    monkeypatch.setenv(datasets.DATA_BUDGET_ENV, "0.01")  # 10 kB
    payload = npz_bytes(X=np.zeros((100, 10)), y=np.zeros(100))
    with pytest.raises(datasets.DatasetTooLarge, match="needs 17.6 kB .*allows 10.0 kB"):
        dataset_from_upload("bomb.npz", payload)


def test_other_files_and_garbage_are_refused():
    with pytest.raises(
        DatasetError, match=r"upload a .csv, .npz, .zip \(class folders of pictures\) or .txt"
    ):
        dataset_from_upload("data.json", json.dumps({"X": []}).encode())
    with pytest.raises(DatasetError, match="not an .npz archive"):
        dataset_from_upload("data.npz", b"not a zip")


# -- compatibility ---------------------------------------------------------------------------


def test_a_conv_stack_without_its_flatten_is_told_to_insert_one_not_to_resize_the_head():
    graph = load_graph((TEMPLATES / "lenet5.json").read_text())
    analysis = analyse(delete_nodes(graph, {"flatten"}))
    digits = load_dataset("digits-28")
    (problem,) = check_compatibility(analysis, digits)
    assert "insert a Flatten between 's4' and 'f5'" in str(problem)
    assert "out_features" not in str(problem)
    fix = compatibility_fix(analysis, digits)
    assert fix is not None and fix.fix["between"] == ["s4", "f5"]
    mended = analyse(apply_fix(analysis.graph, fix.fix))
    assert check_compatibility(mended, digits) == []


def test_a_head_of_the_wrong_width_offers_no_flatten():
    analysis = template_analysis("lstm_classifier")
    upload = dataset_from_upload("d.npz", npz_bytes(X=np.zeros((3, 8, 8)), y=np.array([0, 1, 2])))
    assert check_compatibility(analysis, upload) and compatibility_fix(analysis, upload) is None


def test_lenet5_fits_digits_28():
    assert check_compatibility(template_analysis("lenet5"), load_dataset("digits-28")) == []


def test_wrong_sample_shape_says_what_to_set():
    problems = check_compatibility(template_analysis("lenet5"), load_dataset("digits"))
    assert len(problems) == 1
    assert "[1, 8, 8]" in str(problems[0]) and "Input 'image'" in str(problems[0])


def test_wrong_class_count_names_the_linear_to_change():
    analysis = template_analysis("lstm_classifier")
    upload = dataset_from_upload("d.npz", npz_bytes(X=np.zeros((3, 8, 8)), y=np.array([0, 1, 2])))
    (problem,) = map(str, check_compatibility(analysis, upload))
    assert "3 classes" in problem and "out_features of Linear 'head' to 3" in problem


def test_float_data_into_a_token_model_is_refused():
    found = check_compatibility(template_analysis("transformer_encoder"), load_dataset("sine"))
    problems = list(map(str, found))
    assert any("int64 token ids" in p for p in problems)
    assert any("regression" in p and "[1]" in p for p in problems)


def test_regression_output_width_must_match_the_targets():
    found = check_compatibility(template_analysis("lstm_classifier"), load_dataset("sine"))
    assert any("regression task" in str(p) and "to 1" in str(p) for p in found)


def test_problems_are_messages_that_render_in_chinese_too():
    (problem,) = check_compatibility(template_analysis("lenet5"), load_dataset("digits"))
    assert isinstance(problem, datasets.Message) and "{dataset}" in problem.text
    assert problem.render("en") == str(problem)


def test_token_ids_beyond_the_embedding_are_named_before_training():
    graph = chain_graph(
        [16],
        ("Embedding", {"num_embeddings": 8, "embedding_dim": 8}),
        ("SequencePool", {"mode": "mean"}),
        ("Linear", {"out_features": 16}),
        dtype="int64",
    )
    (problem,) = check_compatibility(analyse(graph), load_dataset("tokens"))
    assert str(problem) == (
        "the data holds token ids up to 15 but Embedding 'n1' has num_embeddings=8;"
        " set num_embeddings to at least 16"
    )


def test_text_gives_the_next_character_at_every_position():
    data = load_dataset("text", seed=1, input_shape=(32,))
    assert data.x.shape == data.y.shape == (builtin_data.TEXT_SAMPLES, 32)
    assert data.x.dtype == data.y.dtype == torch.int64 and data.dtype == "int64"
    assert torch.equal(data.y[:, :-1], data.x[:, 1:])
    assert data.num_classes == len(builtin_data.TEXT_ALPHABET) > int(data.x.max())
    assert load_dataset("text", seed=1, input_shape=(8,)).sample_shape == (8,)


def test_text_is_english_from_the_grammar_and_repeats_for_a_seed():
    assert builtin_data.corpus(3, 500) == builtin_data.corpus(3, 500)
    words = set(builtin_data.corpus(3, 5000).replace(".", " ").replace(",", " ").split())
    assert {"the", "cat", "dog", "sees", "likes"} <= words
    ids = builtin_data.encode("the cat.")
    assert builtin_data.decode(ids.tolist()) == "the cat."


def test_a_model_with_scores_per_position_fits_the_text_task():
    vocab = len(builtin_data.TEXT_ALPHABET)
    graph = chain_graph(
        [32],
        ("Embedding", {"num_embeddings": vocab, "embedding_dim": 16}),
        ("Linear", {"out_features": vocab}),
        dtype="int64",
    )
    assert check_compatibility(analyse(graph), load_dataset("text", input_shape=(32,))) == []
    pooled = chain_graph(
        [32],
        ("Embedding", {"num_embeddings": vocab, "embedding_dim": 16}),
        ("SequencePool", {"mode": "mean"}),
        ("Linear", {"out_features": vocab}),
        dtype="int64",
    )
    (problem,) = check_compatibility(analyse(pooled), load_dataset("text", input_shape=(32,)))
    assert f"must output [32, {vocab}] scores" in str(problem)


def test_reproducing_the_input_needs_the_output_to_have_the_samples_shape():
    same = chain_graph([1, 8, 8], ("Conv2d", {"out_channels": 1, "kernel_size": 3, "padding": 1}))
    digits = load_dataset("digits")
    assert check_compatibility(analyse(same), digits, target="input") == []
    (problem,) = check_compatibility(analyse(same), digits)  # as a classifier it is not
    assert "10 classes" in str(problem)
    smaller = chain_graph([1, 8, 8], ("Conv2d", {"out_channels": 1, "kernel_size": 3}))
    (problem,) = check_compatibility(analyse(smaller), digits, target="input")
    assert str(problem) == (
        "to reproduce its input the model must output [1, 8, 8], the shape of a sample,"
        " but it outputs [1, 6, 6]"
    )


def test_reproducing_token_ids_is_refused_by_name():
    graph = chain_graph(
        [16], ("Embedding", {"num_embeddings": 16, "embedding_dim": 4}), dtype="int64"
    )
    problems = check_compatibility(analyse(graph), load_dataset("tokens"), target="input")
    assert any("needs float samples" in str(p) for p in problems)


def test_the_vae_loss_on_data_outside_0_1_is_refused_in_a_sentence_in_each_language():
    """The loss vae takes binary cross-entropy against the input, which torch refuses for values
    outside [0, 1]: the check names the data's range before training, whatever the target."""
    vae = analyse(load_graph(json.dumps(vae_graph([32, 1]))))
    sine = load_dataset("sine")  # about -1.16 to 1.17
    for target in ("input", "label"):
        (problem,) = check_compatibility(vae, sine, target=target)
        assert str(problem).startswith(
            "the loss vae rebuilds the input by binary cross-entropy, which needs values in"
            " [0, 1], but sine holds values from -1.1"
        )
        assert "scale the data to [0, 1]" in str(problem)
        assert "[0, 1]" in problem.render("zh") and "sine" in problem.render("zh")
        assert problem.render("zh") != problem.render("en")


def test_the_vae_loss_fits_data_in_0_1_and_ignores_its_labels():
    vae = analyse(load_graph(json.dumps(vae_graph([1, 8, 8]))))
    digits = load_dataset("digits")  # 0 to 1, with 10 classes the VAE does not predict
    assert check_compatibility(vae, digits, target="input") == []
    assert check_compatibility(vae, digits, target="label") == []
    pixels = dataset_from_upload(  # an NPZ of pictures in 0..255
        "faces.npz", npz_bytes(X=np.full((4, 1, 8, 8), 255, np.float32), y=np.zeros(4, np.int64))
    )
    (problem,) = check_compatibility(vae, pixels, target="input")
    assert "faces.npz holds values from 255 to 255" in str(problem)


def test_the_command_line_refuses_a_vae_on_data_outside_0_1_in_one_line(tmp_path, capsys):
    from runtime.__main__ import main

    path = tmp_path / "vae.json"
    path.write_text(json.dumps(vae_graph([32, 1])))
    runs = str(tmp_path / "runs")
    for lang, words in (("zh", "要求数值都在 [0, 1] 内"), ("en", "needs values in [0, 1]")):
        arguments = ["train", str(path), "--dataset", "sine", "--target", "input"]
        assert main([*arguments, "--runs", runs, "--lang", lang]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
        step = ["step", str(path), "--dataset", "sine", "--out", str(tmp_path / "o")]
        assert main([*step, "--lang", lang]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_torchvision_datasets_are_offered_only_with_their_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NETBUILDER_DATA", str(tmp_path))
    offered = datasets.available_datasets()
    assert "digits" in offered and "text" in offered
    assert not {"mnist", "fashion-mnist", "cifar10"} & set(offered)
    if importlib.util.find_spec("torchvision") is not None:
        (tmp_path / "MNIST").mkdir()
        (tmp_path / "MNIST" / "raw").mkdir()
        assert "mnist" in datasets.available_datasets()


def test_missing_torchvision_files_are_named_and_nothing_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("NETBUILDER_DATA", str(tmp_path))
    # tests/conftest.py declares torchvision's compiled ops, so it imports on this torch build
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(DatasetError, match="needs torchvision"):
            load_dataset("mnist")
        return
    with pytest.raises(DatasetError, match="nothing is downloaded"):
        load_dataset("mnist")
    assert list(tmp_path.iterdir()) == []


def test_pandas_which_reads_csv_uploads_is_a_declared_requirement():
    requirements = (Path(__file__).parents[1] / "requirements.txt").read_text().splitlines()
    assert any(line.split(">")[0].split("=")[0].strip() == "pandas" for line in requirements)


def test_the_text_description_states_the_real_vocabulary():
    assert f"vocabulary {len(builtin_data.TEXT_ALPHABET)};" in builtin_data.DESCRIPTIONS["text"]
