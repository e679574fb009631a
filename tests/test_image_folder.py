"""Class folders of pictures: scikit-learn's 8x8 digits written as PNG files at test time, zipped,
trained from the zip as from the NPZ of the same digits; every refusal is a sentence naming the
file inside the zip; augmentation is seeded and reaches training batches only."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from builder.graph import Graph
from runtime import image_folder, runs
from runtime.datasets import (
    DatasetError,
    check_compatibility,
    dataset_from_path,
    dataset_from_upload,
    image_folder_bytes,
    training_rows,
)
from runtime.image_folder import Augmentation, ImageFolder, LazyImages, augment, list_images
from runtime.settings import TrainConfig
from runtime.trainer import dataset_for_run, train_run
from runtime.upload_job import read_upload
from tests.modelkit import chain_graph

SHAPE = (1, 8, 8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images, bunch.target


@pytest.fixture(scope="module")
def digits_zip(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """digits/<class>/<n>.png, grey, 0..16 scaled to 0..255 (as a person's folder would be)."""
    images, labels = digits
    path = tmp_path_factory.mktemp("pictures") / "digits.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for number, (image, label) in enumerate(zip(images, labels, strict=True)):
            archive.writestr(f"digits/{label}/{number:04d}.png", png(np.round(image * 255 / 16)))
    return path


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def refusal(files: dict[str, bytes], shape: tuple[int, ...] = SHAPE) -> str:
    with pytest.raises(DatasetError) as caught:
        dataset_from_upload("mine.zip", zipped(files), input_shape=shape)
    return str(caught.value)


DOT = png(np.full((4, 4), 200))


# -- the listing -----------------------------------------------------------------------------


def test_class_folders_become_classes_in_sorted_order_with_their_counts(digits_zip, digits):
    listing = list_images(digits_zip)
    assert listing.classes == tuple(str(n) for n in range(10))
    expected = np.bincount(digits[1], minlength=10)
    assert list(listing.counts().values()) == expected.tolist()
    assert listing.paths[0].startswith("digits/0/")  # the one folder around them is looked into


def test_a_folder_lists_as_its_zip_does(tmp_path, digits_zip):
    with zipfile.ZipFile(digits_zip) as archive:
        archive.extractall(tmp_path)
    folder, packed = list_images(tmp_path / "digits"), list_images(digits_zip)
    assert folder.classes == packed.classes
    assert [Path(p).name for p in folder.paths] == [Path(p).name for p in packed.paths]
    assert folder.labels == packed.labels


# -- refusals, each a sentence naming the file ------------------------------------------------


def test_a_file_that_is_not_a_picture_is_named():
    text = refusal({"cats/a.png": DOT, "dogs/b.png": DOT, "dogs/notes.txt": b"hello"})
    assert "dogs/notes.txt in mine.zip is not a picture" in text


def test_an_empty_class_folder_is_named():
    text = refusal({"cats/a.png": DOT, "dogs/b.png": DOT, "birds/": b""})
    assert "the class folder birds/ in mine.zip holds no pictures" in text


def test_a_picture_outside_the_class_folders_is_named():
    text = refusal({"cats/a.png": DOT, "dogs/b.png": DOT, "c.png": DOT})
    assert "c.png in mine.zip is not inside a class folder" in text


def test_one_class_is_not_a_classifier():
    assert "holds 1 class folder(s)" in refusal({"cats/a.png": DOT, "cats/b.png": DOT})


def test_something_that_is_not_a_zip_is_named():
    with pytest.raises(DatasetError, match="mine.zip is not a zip archive"):
        dataset_from_upload("mine.zip", b"PK not really", input_shape=SHAPE)


def test_an_input_that_is_not_an_image_shape_is_named():
    text = refusal({"cats/a.png": DOT, "dogs/b.png": DOT}, shape=(64,))
    assert "Input is [1, H, W] (grey) or [3, H, W] (colour), but this one is [64]" in text


def test_a_zip_over_the_caps_is_refused_from_its_directory(monkeypatch):
    files = {"cats/a.png": DOT, "dogs/b.png": DOT, "dogs/c.png": DOT}
    monkeypatch.setattr(image_folder, "MAX_FILES", 2)
    assert "holds 3 files; this server reads at most 2 pictures" in refusal(files)
    monkeypatch.setattr(image_folder, "MAX_FILES", 100)
    monkeypatch.setattr(image_folder, "MAX_UNPACKED_BYTES", 2 * len(DOT))
    assert "unpacks to" in refusal(files) and "this server unpacks at most" in refusal(files)


def test_an_unreadable_picture_and_a_decompression_bomb_are_named_by_the_upload_child(monkeypatch):
    """The upload's sandboxed child decodes every picture once; what it refuses comes back as
    the sentence, the picture's path inside the zip in it."""
    broken = {"cats/a.png": DOT, "dogs/b.png": b"\x89PNG garbage"}
    with pytest.raises(DatasetError, match=r"dogs/b.png in mine.zip cannot be read as a picture"):
        read_upload("mine.zip", zipped(broken), input_shape=SHAPE)
    monkeypatch.setattr(image_folder, "MAX_IMAGE_PIXELS", 15)  # the 4x4 dot is 16 pixels
    with pytest.raises(image_folder.ImageFolderError, match="decompression bomb"):
        image_folder.check_pictures(list_images(zipped({"a/1.png": DOT, "b/2.png": DOT})))


def test_pillows_own_bomb_check_is_a_sentence_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)  # Pillow refuses past twice this: 8 < 16
    monkeypatch.setattr(image_folder, "MAX_IMAGE_PIXELS", 10**9)
    with pytest.raises(image_folder.ImageFolderError, match="a/1.png in x is"):
        image_folder.decode(DOT, "a/1.png", "x", "L")


# -- pictures as samples ---------------------------------------------------------------------


def test_pictures_are_converted_resized_and_normalised_by_the_training_split(digits_zip, digits):
    config = TrainConfig(seed=3)
    dataset = dataset_from_path(digits_zip, input_shape=(3, 16, 12), settings=config)
    assert dataset.sample_shape == (3, 16, 12) and dataset.num_classes == 10
    x = dataset.x
    assert isinstance(x, LazyImages)
    first = x[:1]
    assert first.shape == (1, 3, 16, 12)
    assert torch.equal(first[0, 0], first[0, 1])  # grey made RGB: three equal channels
    folder = x.folder
    rows = training_rows(len(dataset), config)
    raw = torch.stack([folder.picture(int(r)) for r in rows])
    assert torch.allclose(folder.mean, raw.mean(dim=(0, 2, 3)), atol=1e-4)
    normalised = torch.stack([folder.sample(int(r)) for r in rows])
    assert torch.allclose(normalised.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(normalised.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_augmentation_is_seeded_and_differs_by_epoch(digits_zip):
    how = Augmentation(crop_padding=2, flip=True, rotation=15, jitter=0.3)
    folder = ImageFolder(list_images(digits_zip), SHAPE, how, seed=7)
    again = ImageFolder(list_images(digits_zip), SHAPE, how, seed=7)
    batch = torch.arange(32)
    first, second = LazyImages(folder), LazyImages(again)
    assert torch.equal(first.index_select(0, batch), second.index_select(0, batch))
    second.epoch = 1
    assert not torch.equal(first.index_select(0, batch), second.index_select(0, batch))
    plain = LazyImages(ImageFolder(list_images(digits_zip), SHAPE, Augmentation(), seed=7))
    assert not torch.equal(first.index_select(0, batch), plain.index_select(0, batch))


def test_augmentation_reaches_training_batches_only(digits_zip):
    """Validation (and previews) read slices, which are never augmented."""
    how = Augmentation(crop_padding=2, flip=True, rotation=15, jitter=0.3)
    augmented = LazyImages(ImageFolder(list_images(digits_zip), SHAPE, how))
    plain = LazyImages(ImageFolder(list_images(digits_zip), SHAPE))
    rows = torch.tensor([5, 9, 200])
    assert torch.equal(augmented[rows][0:3], plain[rows][0:3])


def test_planned_batches_come_from_workers_equal_to_those_read_here(digits_zip, monkeypatch):
    monkeypatch.setattr(image_folder, "worker_count", lambda: 2)
    how = Augmentation(flip=True, jitter=0.2)
    ahead = LazyImages(ImageFolder(list_images(digits_zip), SHAPE, how, seed=1))[torch.arange(300)]
    here = LazyImages(ImageFolder(list_images(digits_zip), SHAPE, how, seed=1))[torch.arange(300)]
    batches = [torch.arange(0, 64), torch.arange(64, 128), torch.arange(128, 150)]
    ahead.plan(batches, epoch=2)
    here.epoch = 2
    for batch in batches:
        assert torch.equal(ahead.index_select(0, batch), here.index_select(0, batch))


def test_each_augmentation_does_what_it_says():
    image = torch.zeros(1, 8, 8)
    image[0, :, :2] = 1.0  # a bright stripe on the left
    flips = [
        augment(image, Augmentation(flip=True), torch.Generator().manual_seed(s)) for s in range(20)
    ]
    assert any(torch.equal(f, image.flip(-1)) for f in flips)
    assert any(torch.equal(f, image) for f in flips)
    cropped = augment(image, Augmentation(crop_padding=2), torch.Generator().manual_seed(0))
    assert cropped.shape == image.shape and cropped.sum() <= image.sum()
    turned = augment(image, Augmentation(rotation=30), torch.Generator().manual_seed(0))
    assert turned.shape == image.shape and not torch.equal(turned, image)


# -- training from the zip -------------------------------------------------------------------


def _mlp() -> Graph:
    return chain_graph(
        list(SHAPE),
        ("Flatten", {}),
        ("Linear", {"out_features": 64}),
        ("ReLU", {}),
        ("Linear", {"out_features": 10}),
    )


def _accuracy(runs_dir: Path, data_file: Path) -> float:
    """The validation accuracy of the MLP trained by the app's trainer on `data_file`."""
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, seed=0, device="cpu", report_every=50)
    folder = runs.create_run(runs_dir, _mlp(), config, data_file)
    result = train_run(folder)
    assert result.status == "completed", result.message
    return float(result.val_accuracy or 0.0)


@pytest.fixture(scope="module")
def npz_accuracy(tmp_path_factory: pytest.TempPathFactory, digits) -> float:
    """The same digits as an NPZ (0..1 floats), trained by the app with the same model and seed."""
    images, labels = digits
    folder = tmp_path_factory.mktemp("npz")
    np.savez(folder / "digits.npz", X=(images / 16.0).astype(np.float32)[:, None], y=labels)
    return _accuracy(folder / "runs", folder / "digits.npz")


def test_the_zip_trains_to_the_accuracy_the_npz_gives(tmp_path, digits_zip, npz_accuracy):
    """The same model, seed and split on the same digits, once as PNG files in class folders,
    once as an NPZ (0..1 floats). The paths differ in two ways that change the optimisation a
    little (the zip is normalised with the training split's statistics; the PNG's 0..255 levels
    round the 17 original ones), so the accuracies are compared within 4 points: about three
    standard errors of an accuracy near 0.95 on 359 validation samples (sqrt(.95 * .05 / 359)
    = 1.2%)."""
    from_zip = _accuracy(tmp_path / "runs", digits_zip)
    assert npz_accuracy > 0.9 and from_zip > 0.9
    assert abs(from_zip - npz_accuracy) <= 0.04, (from_zip, npz_accuracy)
    run = sorted((tmp_path / "runs").iterdir())[-1]
    assert json.loads((run / "config.json").read_text())["dataset"] == "digits.zip"


def test_a_folder_named_on_the_command_line_is_read_where_it_lies(tmp_path, digits_zip):
    """`python -m runtime train GRAPH --dataset photos/` keeps the folder's absolute path as the
    run's dataset; the trainer reads the pictures from there, copying nothing into the run."""
    with zipfile.ZipFile(digits_zip) as archive:
        archive.extractall(tmp_path / "photos")
    config = TrainConfig(dataset=str((tmp_path / "photos").resolve()))
    dataset = dataset_for_run(tmp_path / "a-run", config, SHAPE)
    assert isinstance(dataset.x, LazyImages) and len(dataset) == 1797
    assert dataset.class_names == tuple(str(n) for n in range(10))


def test_the_data_budget_counts_the_listing_and_the_batches_read_ahead(monkeypatch, digits_zip):
    """A zip of pictures is never held decoded: what it costs is its listing and the batches
    its workers decode ahead, and that is what is held against NETBUILDER_DATA_BUDGET_MB."""
    need = image_folder_bytes(1797, (3, 224, 224), 64)
    assert need < 1797 * 3 * 224 * 224 * 4  # far less than the decoded pictures
    monkeypatch.setenv("NETBUILDER_DATA_BUDGET_MB", str(need / 2e6))
    with pytest.raises(DatasetError, match=r"reading digits.zip needs .* for a dataset"):
        dataset_from_path(digits_zip, input_shape=(3, 224, 224))


def test_reproducing_pictures_read_one_by_one_is_refused_in_a_sentence(digits_zip):
    from compiler.analysis import analyse
    from tests.modelkit import chain_graph as chain

    dataset = dataset_from_path(digits_zip, input_shape=SHAPE)
    autoencoder = analyse(chain(list(SHAPE), ("Conv2d", {"out_channels": 1, "kernel_size": 1})))
    problems = check_compatibility(autoencoder, dataset, target="input")
    assert "digits.zip is read picture by picture" in str(problems[0])


CHOSEN = {"augment_crop": 1, "augment_flip": True, "augment_rotation": 10.0, "augment_jitter": 0.2}


def settings_column(chosen: dict) -> None:
    """The Train page's settings column (its widgets at their first values) beside an upload of
    pictures whose augmentation controls chose `chosen`; AppTest runs it as a page."""
    from pages import train

    train._hyperparameters(None, train.Upload("digits.zip", b"", None, tuple(chosen.items())))


def train_py_arguments(files: dict[str, str], folder: Path) -> dict:
    """The exported train.py's own parse_args for `python train.py --data photos.zip`: the
    bundle written to `folder`, its parser run there."""
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    code = "import json, train; print(json.dumps(vars(train.parse_args(['--data', 'photos.zip'])), default=str))"  # noqa: E501
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pages_augmentation_reaches_the_run_and_the_exported_train_py(
    tmp_path, monkeypatch, digits_zip
):
    """The augmentation chosen on the Train page is part of the run's settings: the run's
    config.json holds it, the trainer reads its copy of the zip with it, and the Export page's
    train.py, written from the page's settings or from the run's, parses to it by default, so
    `python train.py --data photos.zip` augments as the app did."""
    from streamlit.testing.v1 import AppTest

    from compiler.analysis import analyse
    from export.bundle import bundle_files
    from pages import export
    from pages import train as page
    from pages.parts import state

    monkeypatch.setattr(runs, "_enqueue", lambda folder: None)  # no trainer process
    app = AppTest.from_function(settings_column, args=(CHOSEN,), default_timeout=30).run()
    assert not app.exception
    chosen_settings = app.session_state[state.TRAIN_SETTINGS]  # what the Export page reads
    config = TrainConfig.model_validate(chosen_settings)
    graph = chain_graph(list(SHAPE), ("Flatten", {}), ("Linear", {"out_features": 10}))
    upload = page.Upload("digits.zip", digits_zip.read_bytes(), None, tuple(CHOSEN.items()))
    run_id = page.start_training(tmp_path / "runs", graph, config, upload, None)
    stored = TrainConfig.model_validate_json(
        (tmp_path / "runs" / run_id / "config.json").read_text()
    )
    assert {name: getattr(stored, name) for name in CHOSEN} == CHOSEN
    dataset = dataset_for_run(tmp_path / "runs" / run_id, stored, SHAPE)
    assert dataset.x.folder.how == Augmentation(
        crop_padding=1, flip=True, rotation=10.0, jitter=0.2
    )
    [run] = runs.list_runs(tmp_path / "runs")
    for name, settings in (("page", chosen_settings), ("run", export.run_settings(run))):
        files = bundle_files(graph, analyse(graph), settings)
        arguments = train_py_arguments(files, tmp_path / name)
        assert {key: arguments[key] for key in CHOSEN} == CHOSEN, name


def test_the_exported_train_py_trains_on_the_same_zip(tmp_path, digits_zip, npz_accuracy):
    """The bundle carries image_folder.py; `python train.py --data digits.zip` reads the zip as
    the app does (the same loop, split and seed) and reaches the NPZ's accuracy in the app
    (the same tolerance as above)."""
    from compiler.analysis import analyse
    from export.bundle import bundle_files

    graph = _mlp()
    settings = {"epochs": 3, "batch_size": 64, "lr": 1e-2, "seed": 0, "device": "cpu"}
    files = bundle_files(graph, analyse(graph), settings)
    assert files["image_folder.py"] == Path(image_folder.__file__).read_text()
    for flag in ("--augment-crop", "--augment-flip", "--augment-rotation", "--augment-jitter"):
        assert f'"{flag}"' in files["train.py"]  # TrainConfig's fields, as for every setting
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "checkpoints"
    done = subprocess.run(
        [sys.executable, "train.py", "--data", str(digits_zip)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in done.stdout
    accuracy = json.loads((out / "metrics.jsonl").read_text().strip().splitlines()[-1])
    assert accuracy["val_accuracy"] > 0.9
    assert abs(accuracy["val_accuracy"] - npz_accuracy) <= 0.04, (accuracy, npz_accuracy)
