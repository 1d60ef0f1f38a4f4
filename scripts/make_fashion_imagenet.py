"""Write Fashion-MNIST as an ImageNet-shaped image folder: ``<out>/{train,val}/<class>/<index>.jpg``.

Each 28x28 grey image is upscaled with Lanczos to ``--size`` pixels (default 256, the side ImageNet evaluation
resizes to before its 224 centre crop), its grey channel replicated to 3 channels (the pictures stay grey: RGB is the
format, not colour information), and saved as a baseline JPEG at quality 95 (no chroma subsampling, no metadata).
``train`` holds the 60000 training images, ``val`` the 10000 test images. Class folders are ``<label>_<name>``
(``0_T-shirt_top``, ``1_Trouser``, ... ``9_Ankle_boot``): sorted, they keep Fashion-MNIST's label order, and the ``/``
of "T-shirt/top" becomes ``_``. Files are named by the image's index in its idx file, so a subset (``--per-class N``:
the first N images of each class in file order, per split) names each image as the full set does.

Given the same arguments and the same Pillow/libjpeg, every run writes the same bytes, with or without ``--jobs``.
Bad paths, sizes or truncated idx files stop the script with one line on stderr and exit status 2 before anything is
written; a non-empty ``--out`` is refused unless ``--overwrite`` (which deletes its ``train/`` and ``val/``). Example::

    python scripts/make_fashion_imagenet.py --out data/fashion_imagenet --jobs 16
"""
from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitzoo.train.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, DataError, FashionMNIST  # noqa: E402

JPEG_QUALITY = 95
MIN_SIZE, MAX_SIZE = 28, 1024
SPLITS = ("train", "val")
CLASS_FOLDERS = tuple(f"{label}_{name.replace('/', '_').replace(' ', '_')}"
                      for label, name in enumerate(FASHION_MNIST_CLASSES))


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def select(targets: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class (all if None), in file order."""
    if per_class is None:
        return np.arange(len(targets))
    keep = np.concatenate([np.flatnonzero(targets == label)[:per_class] for label in range(len(CLASS_FOLDERS))])
    return np.sort(keep)


def encode(pixels: np.ndarray, size: int) -> bytes:
    """One 28x28 uint8 grey image as the JPEG bytes of a ``size`` x ``size`` RGB image."""
    image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.LANCZOS).convert("RGB")
    buffer = BytesIO()
    # Fixed encoder settings (no optimize/progressive, no EXIF) keep the bytes a function of the pixels alone.
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _write(job: tuple[Path, np.ndarray, int]) -> None:
    path, pixels, size = job
    path.write_bytes(encode(pixels, size))


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without ``overwrite``; with it, delete the splits a previous run wrote."""
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            _fail(f"--out {out} is not empty; pass --overwrite to replace its train/ and val/")
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)


def build(source: Path, out: Path, size: int = 256, per_class: int | None = None, jobs: int = 1,
          overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write the image folder; return the number of images written per split."""
    if not source.is_dir():
        _fail(f"--source {source} is not a folder; pass the folder holding the Fashion-MNIST idx .gz files")
    if not MIN_SIZE <= size <= MAX_SIZE:
        _fail(f"--size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {size}")
    if per_class is not None and per_class < 1:
        _fail(f"--per-class must be a positive integer, got {per_class}")
    if jobs < 1:
        _fail(f"--jobs must be a positive integer, got {jobs}")
    try:  # read (and so check) both splits before anything is written
        data = {split: FashionMNIST(source, split) for split in SPLITS}
    except DataError as error:
        _fail(str(error))
    check_output(out, overwrite)
    work = []
    counts = {}
    for split, dataset in data.items():
        images, targets = dataset.images[:, 0].numpy(), dataset.targets.numpy()
        chosen = select(targets, per_class)
        counts[split] = len(chosen)
        for folder in CLASS_FOLDERS:
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        work += [(out / split / CLASS_FOLDERS[targets[i]] / f"{i:05d}.jpg", images[i], size) for i in chosen]
    bar = tqdm(total=len(work), desc="writing JPEGs", unit="img", disable=not progress, mininterval=1.0)
    if jobs == 1:
        for job in work:
            _write(job)
            bar.update()
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for _ in pool.map(_write, work, chunksize=256):
                bar.update()
    bar.close()
    return counts


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and build the folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path(FASHION_MNIST_DIR),
                        help="folder holding the four Fashion-MNIST idx files (.gz or plain)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets train/ and val/)")
    parser.add_argument("--size", type=int, default=256, help=f"side in pixels, {MIN_SIZE}..{MAX_SIZE}")
    parser.add_argument("--per-class", type=int, help="at most this many images per class and split (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="encoder processes")
    parser.add_argument("--overwrite", action="store_true", help="replace train/ and val/ of a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    counts = build(args.source, args.out, args.size, args.per_class, args.jobs, args.overwrite, not args.no_progress)
    print(f"wrote {counts['train']} train and {counts['val']} val images of {args.size}x{args.size} to {args.out}")


if __name__ == "__main__":
    main()
