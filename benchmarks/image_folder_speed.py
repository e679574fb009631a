"""One epoch of training batches from a zip of pictures: decoded here, one batch at a time, against
DataLoader workers reading the planned batches ahead, and the in-memory tensor of the same
pictures (what an NPZ gives) as the baseline. Medians of --repeats epochs and the ratios.

The pictures are made here: --count colour pictures of --size x --size pixels as PNG files in
four class folders, zipped in memory, read as an Input of [3, --input, --input] with a flip and
colour jitter (the work a training epoch does on every picture).
Run: .venv/bin/python benchmarks/image_folder_speed.py [--count 2000 --size 64 --input 32]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import image_folder  # noqa: E402
from runtime.image_folder import Augmentation, ImageFolder, LazyImages, list_images  # noqa: E402

BATCH = 64


def pictures_zip(count: int, size: int) -> bytes:
    generator = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(count):
            pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, "PNG")
            archive.writestr(f"class{number % 4}/{number:05d}.png", png.getvalue())
    return buffer.getvalue()


def epoch_seconds(samples: LazyImages | torch.Tensor, ahead: bool) -> float:
    order = torch.randperm(len(samples))
    batches = [order[start : start + BATCH] for start in range(0, len(order), BATCH)]
    began = time.perf_counter()
    if ahead and isinstance(samples, LazyImages):
        samples.plan(batches, epoch=0)
    for batch in batches:
        samples.index_select(0, batch)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    listing = list_images(pictures_zip(args.count, args.size), "bench.zip")
    shape = (3, args.input, args.input)
    folder = ImageFolder(listing, shape, Augmentation(flip=True, jitter=0.2))
    in_memory = torch.stack([folder.sample(row) for row in range(len(folder))])
    workers = image_folder.worker_count()
    times: dict[str, list[float]] = {"in memory": [], "decoded here": [], "workers": []}
    for _ in range(args.repeats):
        times["in memory"].append(epoch_seconds(in_memory, ahead=False))
        times["decoded here"].append(epoch_seconds(LazyImages(folder), ahead=False))
        times["workers"].append(epoch_seconds(LazyImages(folder), ahead=True))
    base = statistics.median(times["in memory"])
    print(f"{args.count} pictures {args.size}x{args.size} -> {list(shape)}, batch {BATCH},")
    print(f"{workers} DataLoader workers, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        median = statistics.median(values)
        rate = args.count / median
        print(f"{name:>13}: {median:7.3f} s an epoch, {rate:8.0f} pictures/s, x{median / base:.0f}")


if __name__ == "__main__":
    main()
