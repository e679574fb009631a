"""Class folders of pictures (a .zip or a folder: cats/001.jpg, dogs/...), read lazily, augmented
on the fly. torch, numpy, Pillow and the standard library only.

The app trains on an uploaded zip with this module, and the export bundle carries it verbatim as
image_folder.py, so `python train.py --data photos.zip` reads, resizes, normalises and augments
the pictures exactly as the app does. Nothing holds the decoded pictures: `LazyImages` stands
where the training loop expects a tensor of samples and decodes each batch when it is asked for,
in DataLoader workers that read ahead along the epoch's batches (`plan`), so a folder larger than
memory trains in memory bounded by a few batches.

Every picture becomes the model Input's [C, H, W]: converted to L (C = 1) or RGB (C = 3), resized
to H x W, scaled to 0..1, augmented (training batches only), then normalised per channel with the
mean and standard deviation of the training split. Augmentation is seeded per sample by (seed,
epoch, sample), so the same seed gives the same batches whatever the number of workers.

Every refusal is an ImageFolderError carrying an English template and its values (the app renders
it in the reader's language, train.py prints its English), naming the file inside the zip.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


def N_(text: str) -> str:
    """Marks a sentence for translation where the app shows it (this file stays standalone)."""
    return text


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IGNORED_PARTS = ("__MACOSX",)  # what a Mac's zip adds beside the pictures
MAX_FILES = 200_000
MAX_UNPACKED_BYTES = 4_000_000_000  # all pictures together, as stored in the zip's directory
MAX_FILE_BYTES = 50_000_000  # one picture file
MAX_IMAGE_PIXELS = 40_000_000  # one picture, decoded (a 6000 x 6000 photo is 36 million)
MAX_CLASSES = 1_000
STATISTICS_SAMPLES = 2_000  # pictures of the training split the normalisation is measured on
PREVIEW_SEED = 0

NOT_A_ZIP = N_("{file} is not a zip archive; zip the class folders (cats/, dogs/, ...) into one")
TOO_MANY_FILES = N_("{file} holds {count} files; this server reads at most {cap} pictures")
TOO_LARGE = N_(
    "{file} unpacks to {size} MB of pictures; this server unpacks at most {cap} MB of a zip"
)
FILE_TOO_LARGE = N_("{path} in {file} is {size} MB; one picture may be at most {cap} MB")
NOT_AN_IMAGE = N_(
    "{path} in {file} is not a picture (its suffix is {suffix}); keep only pictures ({kinds}) in"
    " the class folders"
)
UNREADABLE = N_("{path} in {file} cannot be read as a picture ({detail})")
TOO_MANY_PIXELS = N_(
    "{path} in {file} is {width} x {height} pixels; this server decodes at most {cap} pixels a"
    " picture (a larger one may be a decompression bomb)"
)
OUTSIDE_FOLDERS = N_(
    "{path} in {file} is not inside a class folder; put each picture in the folder of its class"
    " (cats/001.jpg)"
)
EMPTY_CLASS = N_("the class folder {path} in {file} holds no pictures; add some or remove it")
TOO_FEW_CLASSES = N_(
    "{file} holds {count} class folder(s); a classifier needs at least 2 (cats/, dogs/, ...)"
)
TOO_MANY_CLASSES = N_("{file} holds {count} class folders; this server reads at most {cap}")
WRONG_INPUT = N_(
    "pictures train a model whose Input is [1, H, W] (grey) or [3, H, W] (colour), but this one"
    " is {shape}"
)


class ImageFolderError(ValueError):
    """Why a folder of pictures cannot be used: `template` (English) with its `values`."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template, self.values = template, values
        super().__init__(template.format(**values))


@dataclass(frozen=True)
class Augmentation:
    """What is done at random to each training picture; every part is off by default."""

    crop_padding: int = 0  # pad by this many pixels, then crop back to H x W at a random place
    flip: bool = False  # mirror left to right, half of the time
    rotation: float = 0.0  # turn by up to this many degrees either way
    jitter: float = 0.0  # brightness, contrast (and saturation) scaled by 1 +- this

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.rotation or self.jitter)


def augmentation_of(settings: Any) -> Augmentation:
    """The Augmentation a run's settings ask for (any object with TrainConfig's field names)."""
    return Augmentation(
        crop_padding=int(getattr(settings, "augment_crop", 0) or 0),
        flip=bool(getattr(settings, "augment_flip", False)),
        rotation=float(getattr(settings, "augment_rotation", 0.0) or 0.0),
        jitter=float(getattr(settings, "augment_jitter", 0.0) or 0.0),
    )


# -- the listing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """The pictures of a folder or zip: their paths (inside the zip), class ids, class names."""

    source: str | Path | bytes  # a zip's path or bytes, or a folder
    name: str  # what the person called it, for sentences
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        counted = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return dict(zip(self.classes, (int(n) for n in counted), strict=True))


def list_images(source: str | Path | bytes, name: str | None = None) -> Listing:
    """The class folders and pictures of a .zip (a path or its bytes) or a folder, refused with
    a sentence past the caps (file count, unpacked size, one file's size), for a file that is not
    a picture, one outside a class folder, and an empty class folder. Reads only the directory."""
    label = name or (Path(source).name if not isinstance(source, bytes) else "upload.zip")
    if isinstance(source, bytes) or not Path(source).is_dir():
        entries, folders = _zip_entries(source, label)
    else:
        entries, folders = _folder_entries(Path(source), label)
    if len(entries) > MAX_FILES:
        raise ImageFolderError(TOO_MANY_FILES, file=label, count=len(entries), cap=MAX_FILES)
    total = sum(size for _, size in entries)
    if total > MAX_UNPACKED_BYTES:
        raise ImageFolderError(
            TOO_LARGE, file=label, size=round(total / 1e6), cap=round(MAX_UNPACKED_BYTES / 1e6)
        )
    root = _common_root([path for path, _ in entries] + [f + "/" for f in folders])
    pictures: list[tuple[str, str]] = []
    for path, size in entries:
        parts = PurePosixPath(path).parts[len(root) :]
        suffix = PurePosixPath(path).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            kinds = ", ".join(IMAGE_SUFFIXES)
            raise ImageFolderError(
                NOT_AN_IMAGE, path=path, file=label, suffix=repr(suffix or path), kinds=kinds
            )
        if len(parts) < 2:
            raise ImageFolderError(OUTSIDE_FOLDERS, path=path, file=label)
        if size > MAX_FILE_BYTES:
            raise ImageFolderError(
                FILE_TOO_LARGE,
                path=path,
                file=label,
                size=round(size / 1e6, 1),
                cap=round(MAX_FILE_BYTES / 1e6),
            )
        pictures.append((parts[0], path))
    classes = sorted({cls for cls, _ in pictures})
    for folder in sorted(folders):
        parts = PurePosixPath(folder).parts[len(root) :]
        if len(parts) == 1 and parts[0] not in classes:
            raise ImageFolderError(EMPTY_CLASS, path=folder + "/", file=label)
    if len(classes) < 2:
        raise ImageFolderError(TOO_FEW_CLASSES, file=label, count=len(classes))
    if len(classes) > MAX_CLASSES:
        raise ImageFolderError(TOO_MANY_CLASSES, file=label, count=len(classes), cap=MAX_CLASSES)
    pictures.sort(key=lambda item: (item[0], item[1]))
    ids = {cls: index for index, cls in enumerate(classes)}
    return Listing(
        source,
        label,
        tuple(path for _, path in pictures),
        tuple(ids[cls] for cls, _ in pictures),
        tuple(classes),
    )


def _ignored(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return any(part in IGNORED_PARTS or part.startswith(".") for part in parts)


def _zip_entries(source: str | Path | bytes, label: str) -> tuple[list[tuple[str, int]], set[str]]:
    """(file path, unpacked size as the directory declares it) and the folders, of a zip; the
    declared size bounds what zipfile will ever unpack from a member."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ImageFolderError(NOT_A_ZIP, file=label) from None
    files = [
        (i.filename, i.file_size) for i in infos if not i.is_dir() and not _ignored(i.filename)
    ]
    folders = {i.filename.rstrip("/") for i in infos if i.is_dir() and not _ignored(i.filename)}
    for path, _ in files:  # a folder a file sits in, even where the zip lists no entry for it
        folders.update(str(parent) for parent in PurePosixPath(path).parents if str(parent) != ".")
    return files, folders


def _folder_entries(folder: Path, label: str) -> tuple[list[tuple[str, int]], set[str]]:
    files: list[tuple[str, int]] = []
    folders: set[str] = set()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if _ignored(relative):
            continue
        if path.is_dir():
            folders.add(relative)
        elif path.is_file():
            files.append((relative, path.stat().st_size))
        if len(files) > MAX_FILES:
            break
    return files, folders


def _common_root(paths: Sequence[str]) -> tuple[str, ...]:
    """The one folder every entry sits in (a zip of `photos/` holds photos/cats/...), as parts;
    () when the class folders are at the top."""
    split = [PurePosixPath(p.rstrip("/")).parts for p in paths]
    files = [parts for parts, p in zip(split, paths, strict=True) if not p.endswith("/")]
    if not files or any(len(parts) < 3 for parts in files):
        return ()
    first = files[0][0]
    return (first,) if all(parts[0] == first for parts in split) else ()


# -- reading one picture ---------------------------------------------------------------------


class _Opener:
    """Reads picture bytes from the zip or folder; a process opens its own handle (workers are
    forked, and a shared file offset would mix their reads)."""

    def __init__(self, source: str | Path | bytes) -> None:
        self.source = source
        self.pid = -1
        self.archive: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "pid": -1, "archive": None}

    def read(self, path: str) -> bytes:
        if not isinstance(self.source, bytes) and Path(self.source).is_dir():
            return (Path(self.source) / path).read_bytes()[: MAX_FILE_BYTES + 1]
        if self.archive is None or self.pid != os.getpid():
            source = self.source
            self.archive = zipfile.ZipFile(
                io.BytesIO(source) if isinstance(source, bytes) else source
            )
            self.pid = os.getpid()
        with self.archive.open(path) as member:
            return member.read(MAX_FILE_BYTES + 1)


def decode(data: bytes, path: str, label: str, mode: str) -> Image.Image:
    """A picture's bytes as a Pillow image in `mode` (L or RGB), refused past MAX_IMAGE_PIXELS
    before its pixels are unpacked (Pillow reads the size from the header first), and wherever
    Pillow's own decompression-bomb check (Image.MAX_IMAGE_PIXELS) warns or refuses."""
    too_large = {"path": path, "file": label, "cap": format(MAX_IMAGE_PIXELS, ",")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height <= MAX_IMAGE_PIXELS:
                image.load()
                return image.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFolderError(TOO_MANY_PIXELS, width="?", height="?", **too_large) from None
    except UnidentifiedImageError:
        raise ImageFolderError(
            UNREADABLE, path=path, file=label, detail="not a format Pillow reads"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ImageFolderError(UNREADABLE, path=path, file=label, detail=detail) from None
    raise ImageFolderError(TOO_MANY_PIXELS, width=width, height=height, **too_large)


def check_pictures(listing: Listing) -> None:
    """Decode every picture once (as the upload's checking child does), so an unreadable one or
    a decompression bomb is named before training, not halfway through it."""
    opener = _Opener(listing.source)
    for path in listing.paths:
        decode(opener.read(path), path, listing.name, "L").close()


def to_tensor(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """[C, H, W] in 0..1, resized with Pillow's bilinear filter (with its antialiasing)."""
    resized = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


# -- augmentation ----------------------------------------------------------------------------


def sample_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """The random numbers of one sample's augmentation in one epoch, whichever worker draws it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + row)


def augment(image: torch.Tensor, how: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """One picture [C, H, W] in 0..1, augmented as `how` asks, with `generator`'s numbers."""
    channels, height, width = image.shape
    draws = torch.rand(8, generator=generator).tolist()  # a fixed number, whatever is switched on
    if how.crop_padding:
        pad = how.crop_padding
        padded = F.pad(image, (pad, pad, pad, pad))
        top = min(int(draws[0] * (2 * pad + 1)), 2 * pad)
        left = min(int(draws[1] * (2 * pad + 1)), 2 * pad)
        image = padded[:, top : top + height, left : left + width]
    if how.flip and draws[2] < 0.5:
        image = image.flip(-1)
    if how.rotation:
        angle = math.radians((2 * draws[3] - 1) * how.rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]])
        grid = F.affine_grid(theta, [1, channels, height, width], align_corners=False)
        image = F.grid_sample(image.unsqueeze(0), grid, align_corners=False)[0]
    if how.jitter:
        brightness, contrast, saturation = (1 + (2 * d - 1) * how.jitter for d in draws[4:7])
        image = image * brightness
        image = (image - image.mean()) * contrast + image.mean()
        if channels == 3:
            grey = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
            image = (image - grey) * saturation + grey
        image = image.clamp(0, 1)
    return image.contiguous()


# -- the folder as samples -------------------------------------------------------------------


@dataclass
class ImageFolder:
    """A listing read as [C, H, W] samples: resized, augmented where asked, normalised."""

    listing: Listing
    shape: tuple[int, int, int]
    how: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    mean: torch.Tensor | None = None  # [C]; None: not normalised (a preview)
    std: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise ImageFolderError(WRONG_INPUT, shape=list(self.shape))
        self.opener = _Opener(self.listing.source)

    def __len__(self) -> int:
        return len(self.listing.paths)

    def picture(self, row: int) -> torch.Tensor:
        """Sample `row` as 0..1 [C, H, W], neither augmented nor normalised."""
        path = self.listing.paths[row]
        image = decode(
            self.opener.read(path), path, self.listing.name, "RGB" if self.shape[0] == 3 else "L"
        )
        return to_tensor(image, self.shape[1], self.shape[2])

    def sample(self, row: int, epoch: int | None = None) -> torch.Tensor:
        """Sample `row` as the model sees it: augmented in `epoch` (None: as it is), normalised."""
        image = self.picture(row)
        if epoch is not None and self.how.active:
            image = augment(image, self.how, sample_generator(self.seed, epoch, row))
        if self.mean is not None and self.std is not None:
            image = (image - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)
        return image

    def fit_statistics(self, rows: torch.Tensor) -> None:
        """The per-channel mean and standard deviation of the training split `rows` (up to
        STATISTICS_SAMPLES of them, chosen by the seed), unaugmented."""
        chosen = rows
        if len(rows) > STATISTICS_SAMPLES:
            pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed))
            chosen = rows[pick[:STATISTICS_SAMPLES]]
        sums = torch.zeros(self.shape[0], dtype=torch.float64)
        squares = torch.zeros(self.shape[0], dtype=torch.float64)
        for row in chosen.tolist():
            image = self.picture(int(row)).double()
            sums += image.mean(dim=(1, 2))
            squares += (image**2).mean(dim=(1, 2))
        mean = sums / max(1, len(chosen))
        variance = (squares / max(1, len(chosen)) - mean**2).clamp(min=0)
        self.mean = mean.float()
        self.std = variance.sqrt().clamp(min=1e-3).float()


class _Draws(torch.utils.data.Dataset):
    """One epoch's training samples for a DataLoader: sample(row, epoch) in a worker."""

    def __init__(self, folder: ImageFolder, epoch: int) -> None:
        self.folder, self.epoch = folder, epoch

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.folder.sample(row, self.epoch)


def worker_count() -> int:
    """DataLoader workers that decode ahead of training: a few, and no more than this process's
    share of the cores (the app gives each trainer torch threads for its share)."""
    return max(1, min(4, torch.get_num_threads(), (os.cpu_count() or 2) - 1))


class LazyImages:
    """Stands where the training loop keeps its samples x, and decodes only what it is asked.

    `index_select(0, index)` draws a training batch (augmented, as the loop's steps ask for it);
    a slice `x[a:b]` reads samples as they are (validation, previews); `x[rows]` with a tensor of
    rows is a lazy subset (the loop's split). `plan(batches, epoch)` starts DataLoader workers on
    the batches the loop will ask for next, in order; a batch asked out of plan is decoded here.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, folder: ImageFolder, rows: torch.Tensor | None = None) -> None:
        self.folder = folder
        self.rows = torch.arange(len(folder)) if rows is None else rows
        self.epoch = 0
        self._planned: deque[torch.Tensor] = deque()
        self._batches: Any = None
        self._last: tuple[int, torch.Tensor, torch.Tensor] | None = None  # epoch, index, batch

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.folder.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def numel(self) -> int:
        return math.prod(self.shape)

    def to(self, *args: Any, **kwargs: Any) -> LazyImages:
        """Decoded batches move to the device one by one; the subset itself stays here."""
        return self

    def float(self) -> LazyImages:
        return self

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            rows = self.rows[key].tolist()
            if not rows:
                return torch.empty((0, *self.folder.shape))
            return torch.stack([self.folder.sample(int(row)) for row in rows])
        if isinstance(key, int):
            return self.folder.sample(int(self.rows[key]))
        return LazyImages(self.folder, self.rows[torch.as_tensor(key)])

    def plan(self, batches: list[torch.Tensor], epoch: int) -> None:
        """The batches (positions in this subset) the loop asks for next, in this epoch."""
        self.epoch = epoch
        self._planned = deque(batches)
        workers = worker_count()
        if not batches or workers == 0:
            self._batches = None
            return
        loader = torch.utils.data.DataLoader(
            _Draws(self.folder, epoch),
            batch_sampler=[self.rows[batch.cpu()].tolist() for batch in batches],
            num_workers=workers,
        )
        self._batches = iter(loader)

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """A training batch: decoded and augmented, from the workers when it was planned."""
        index = index.cpu()
        last = self._last
        if last is not None and last[0] == self.epoch and torch.equal(last[1], index):
            return last[2]  # asked again for the same batch (x and y of an autoencoder)
        if self._planned and torch.equal(self._planned[0].cpu(), index) and self._batches:
            self._planned.popleft()
            batch = next(self._batches)
        else:
            self._planned.clear()
            self._batches = None
            rows = self.rows[index].tolist()
            batch = torch.stack([self.folder.sample(int(row), self.epoch) for row in rows])
        self._last = (self.epoch, index, batch)
        return batch


def preview(
    folder: ImageFolder, count: int, seed: int = PREVIEW_SEED
) -> list[tuple[np.ndarray, str]]:
    """`count` training pictures as augmentation makes them (H x W or H x W x 3, 0..255) with
    their class names: a few of every class, in turn."""
    by_class: dict[int, list[int]] = {}
    for row, label in enumerate(folder.listing.labels):
        by_class.setdefault(label, []).append(row)
    order = torch.Generator().manual_seed(seed)
    queues = [
        [rows[i] for i in torch.randperm(len(rows), generator=order).tolist()]
        for _, rows in sorted(by_class.items())
    ]
    picked: list[int] = []
    while len(picked) < min(count, len(folder)):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop())
    shown = []
    for row in picked:
        image = folder.picture(row)
        if folder.how.active:
            image = augment(image, folder.how, sample_generator(seed, 0, row))
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        shown.append(
            (
                pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                folder.listing.classes[folder.listing.labels[row]],
            )
        )
    return shown


def load_image_folder(
    source: str | Path | bytes,
    shape: Sequence[int],
    settings: Any,
    training_rows: Callable[[int], torch.Tensor],
    name: str | None = None,
) -> tuple[LazyImages, torch.Tensor, tuple[str, ...]]:
    """(x, y, class names) of a folder or zip for an Input of `shape`: x decodes lazily, y holds
    the class ids; normalised with the statistics of the training split, `training_rows(count)`
    (the loop's own split of that many samples, so the two cannot disagree)."""
    listing = list_images(source, name)
    folder = ImageFolder(listing, tuple(int(n) for n in shape), augmentation_of(settings))
    folder.seed = int(getattr(settings, "seed", 0))
    folder.fit_statistics(training_rows(len(listing.paths)))
    return LazyImages(folder), torch.tensor(listing.labels, dtype=torch.int64), listing.classes
