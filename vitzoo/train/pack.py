"""``vitzoo-pack``: an image folder decoded once into a packed store (:mod:`vitzoo.train.packed`)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitzoo.train.data import class_map_image_folder, folder_classes, load_image
from vitzoo.train.errors import DataError, UnreadableImage
from vitzoo.train.packed import SPLITS, STORE_FILE, STORE_FORMAT, STORE_VERSION, channels_first, split_files

_logger = logging.getLogger(__name__)

# names of the unreadable files kept in store.json (the count is always there)
_SKIPPED_NAMED = 100
# the default decoding processes: one per CPU, but no more than one per this many files
_FILES_PER_WORKER = 500


def _decode(job: tuple[str, int | None]) -> np.ndarray | str:
    """A file's (3, H, W) uint8 pixels, shrunk to a shorter side of ``max_size`` if larger; or why it is unreadable."""
    path, max_size = job
    try:
        image = load_image(path)
    except UnreadableImage as error:
        return str(error)
    if max_size is not None and min(image.size) > max_size:
        scale = max_size / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return channels_first(image)


def pack_image_folder(source: str | os.PathLike, out: str | os.PathLike, max_size: int | None = None,
                      workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Pack the image folder ``source`` (``train/`` and/or ``val/``, one folder of images per class) into a new
    store ``out``; return its manifest. The store is written beside ``out`` and renamed into place when complete,
    so an interrupted pack leaves no store behind. ``max_size``: shrink images whose shorter side is larger to that
    size. ``workers``: decoding processes (0: decode in this process; default: one per CPU this process may use, at
    most one per 500 files).

    Raises:
        DataError: ``out`` exists, ``source`` has neither split, a split has no readable image, a train class has
            none, or the store cannot be written (a full disk).
    """
    from tqdm.auto import tqdm

    source, out = Path(source), Path(out)
    if out.exists():
        raise DataError(f"{out} exists; give a new folder for the store (nothing is overwritten)")
    if max_size is not None and max_size < 1:
        raise DataError(f"max_size must be a positive number of pixels, got {max_size}")
    splits = [split for split in SPLITS if (source / split).is_dir()]
    if not splits:
        raise DataError(f"{source} has no train/ or val/ folder; an image folder holds <split>/<class>/<image>")
    classes = folder_classes(source / splits[0])
    samples = {split: class_map_image_folder(source / split, classes, None).samples for split in splits}
    if workers is None:  # starting a process costs more than decoding a few hundred files
        workers = min(len(os.sched_getaffinity(0)), sum(map(len, samples.values())) // _FILES_PER_WORKER)
    if workers < 0:
        raise DataError(f"workers must be 0 (decode in this process) or more, got {workers}")
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    manifest: dict[str, Any] = {"format": STORE_FORMAT, "version": STORE_VERSION, "classes": classes,
                                "source": str(source.resolve()), "max_size": max_size, "splits": {}}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        # spawned, not forked: the caller may hold threads (a forked copy of a lock they hold would never open)
        with get_context("spawn").Pool(workers) if workers else contextlib.nullcontext() as pool:
            for split in splits:
                jobs = ((path, max_size) for path, _ in samples[split])
                images = pool.imap(_decode, jobs, chunksize=16) if pool is not None else map(_decode, jobs)
                bar = tqdm(total=len(samples[split]), desc=f"packing {split}", disable=not progress)
                manifest["splits"][split] = _pack_split(samples[split], images, source, partial, split, classes,
                                                        bar)
        (partial / STORE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        os.rename(partial, out)
    except OSError as error:  # the disk, not the images: unreadable files were left out above
        raise DataError(f"cannot write the store {out} ({error.strerror or error}); free space or pick another "
                        "folder, then pack again") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return manifest


def _pack_split(samples: list[tuple[str, int]], images: Iterator[np.ndarray | str], source: Path, folder: Path,
                split: str, classes: list[str], bar: Any) -> dict[str, Any]:
    """Write the decoded ``images`` of ``samples`` as ``split``'s pixel and index files into ``folder``; return its
    entry of the manifest (counts, bytes, the unreadable files relative to ``source``)."""
    pixels_path, index_path = split_files(folder, split)
    rows, skipped, offset = [], [], 0
    with bar, open(pixels_path, "wb") as pixels:
        for (path, target), image in zip(samples, images, strict=True):
            bar.update(1)
            if isinstance(image, str):
                skipped.append(os.path.relpath(path, source))
                _logger.warning("left out unreadable %s", image)
                continue
            pixels.write(image.tobytes())
            rows.append((offset, image.shape[1], image.shape[2], target))
            offset += image.size
    if not rows:
        raise DataError(f"no readable image in the {split} split ({len(samples)} files)")
    index = np.array(rows, dtype=np.int64)
    missing = sorted(set(range(len(classes))) - set(index[:, 3].tolist()))
    if split == "train" and missing:
        raise DataError(f"{len(missing)} class(es) have no readable training image ({source / 'train'}/"
                        f"{classes[missing[0]]} first); replace their files or remove their folders")
    np.save(index_path, index)
    return {"images": len(rows), "bytes": offset, "unreadable": len(skipped),
            "unreadable_files": skipped[:_SKIPPED_NAMED]}


def main(argv: Sequence[str] | None = None) -> int:
    """``vitzoo-pack``: pack an image folder into a store of decoded pixels for ``dataset=packed`` runs."""
    parser = argparse.ArgumentParser(
        prog="vitzoo-pack", description="Decode an image folder (train/ and val/, one folder per class) once into a "
        "packed store that training reads with dataset=packed (loader workers then decode nothing).")
    parser.add_argument("source", help="the image folder: <source>/<split>/<class>/<image>")
    parser.add_argument("out", help="the new store's folder (must not exist)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="shrink images whose shorter side is larger to this many pixels (default: keep sizes)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (0: decode in this process; default: one per CPU, at most one per "
                             "500 files)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        manifest = pack_image_folder(args.source, args.out, args.max_size, args.workers, not args.no_progress)
    except DataError as error:
        print(f"vitzoo-pack: {error}", file=sys.stderr)
        return 2
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['images']} images, {entry['bytes'] / 2**30:.2f} GiB of pixels, "
              f"{entry['unreadable']} unreadable file(s) left out")
    print(f"wrote {args.out}; train on it with dataset=packed data_dir={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
