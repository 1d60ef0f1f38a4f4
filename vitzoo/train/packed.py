"""Image folders packed as decoded pixels (``dataset: packed``; ``vitzoo-pack`` writes them).

Decoding a JPEG costs a loader worker about 0.8 ms for a 256 px image (this project's CPU, ``data_pipeline/cpu.json``),
so a GPU that trains a tiny ViT at 10k+ img/s needs more cores than its host has, or the device's decoder, which adds
GPU work and a host wait to every batch. A packed store decodes every image once, ahead of training: each split is
one file of the images' uint8 RGB pixels (``<split>.pixels``; 3 x height x width each, channels first as the device
crops them, back to back) and an index (``<split>.index.npy``: offset, height, width and class of each image), beside
``store.json`` (format version, class names, how it was made). A worker then only copies an image out of the
memory-mapped file; with ``crop_on_device`` it draws the crop and the device cuts and resizes it. The price is disk:
3 bytes a pixel (ImageNet's 1.28 M training images at a shorter side of 256 px: about 335 GB; ``--max-size`` sets
that side).

The pixels are the image folder's, as :func:`vitzoo.train.data.load_image` reads them, and the images keep the
folder's order and class indices, so a run on the packed store draws the same crops as the same run on the folder
(with ``--max-size``, larger images are shrunk once, with Pillow's bicubic filter, before any augmentation).
Files that cannot be read are left out and named in ``store.json``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vitzoo.train.errors import DataError

STORE_FILE = "store.json"
STORE_FORMAT = "vitzoo-packed-images"
STORE_VERSION = 1
SPLITS = ("train", "val")


def read_store(folder: str | os.PathLike, splits: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest (``store.json``) of the packed store ``folder``, checked for its format and version and for
    holding ``splits`` (a split's files are checked when :class:`PackedImages` opens them).

    Raises:
        DataError: ``folder`` is not a packed store of this version, or lacks one of ``splits``.
    """
    folder = Path(folder)
    path = folder / STORE_FILE
    if not path.is_file():
        raise DataError(f"{folder} is not a packed image store (no {STORE_FILE}); make one with "
                        "`vitzoo-pack IMAGE_FOLDER STORE`, or use dataset=folder for an image folder")
    try:
        manifest = json.loads(path.read_text())
        format_, version, classes, table = (manifest["format"], manifest["version"], manifest["classes"],
                                            manifest["splits"])
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a packed store's manifest ({type(error).__name__}: {error}); pack the "
                        "image folder again") from None
    if format_ != STORE_FORMAT or version != STORE_VERSION:
        raise DataError(f"{path} is {format_!r} version {version!r}; this vitzoo reads {STORE_FORMAT!r} version "
                        f"{STORE_VERSION}: pack the image folder again")
    if not isinstance(classes, list) or not isinstance(table, dict):
        raise DataError(f"{path} has no class list or split table; pack the image folder again")
    for split in splits:
        if split not in table:
            raise DataError(f"the packed store {folder} has no {split} split; pack an image folder that has {split}/ "
                            f"(vitzoo-pack; this store has {', '.join(table) or 'none'})")
    return manifest


def channels_first(image: Image.Image) -> np.ndarray:
    """An RGB image's (3, height, width) uint8 pixels, the layout a store keeps and the device crops (numpy's
    transposing copy: torch's ``permute(...).contiguous()`` of uint8 took four times as long)."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def split_files(folder: Path, split: str) -> tuple[Path, Path]:
    """The pixel file and the index file of ``split`` in the store ``folder``."""
    return folder / f"{split}.pixels", folder / f"{split}.index.npy"


def _read_index(folder: Path, split: str, num_classes: int) -> np.ndarray:
    """The (n, 4) int64 index of ``split`` (offset, height, width, class), checked against itself, the number of
    classes and its pixel file."""
    pixels, index_path = split_files(folder, split)
    try:
        index = np.load(index_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {index_path} ({type(error).__name__}: {error}); pack the image folder "
                        "again") from None
    if index.ndim != 2 or index.shape[1] != 4 or index.dtype != np.int64 or not len(index):
        raise DataError(f"{index_path} is not an index of images (shape {index.shape}, {index.dtype}); pack the "
                        "image folder again")
    sizes = 3 * index[:, 1] * index[:, 2]
    if ((index[:, 1:3] < 1).any() or (index[:, 0] != np.cumsum(sizes) - sizes).any()
            or not (0 <= index[:, 3]).all() or not (index[:, 3] < num_classes).all()):
        raise DataError(f"{index_path} does not describe images back to back of {num_classes} classes: the store is "
                        "damaged; pack the image folder again")
    end = int(sizes.sum())
    size = pixels.stat().st_size if pixels.is_file() else None
    if size != end:
        raise DataError(f"{pixels} holds {size} bytes where its index needs {end}: the store is incomplete; pack the "
                        "image folder again")
    return index


class PackedImages(Dataset):
    """One split of a packed store as a map-style dataset: ``(transform(image), class)`` with ``image`` an RGB PIL
    image, like an image folder's, or its (3, H, W) uint8 array for a transform whose ``takes_arrays`` is true.
    ``classes``: the run's class names in index order (default: the store's); the store's classes are mapped onto
    them by name.

    Raises:
        DataError: see :func:`read_store` (also for a split the store lacks); the store has classes that
            ``classes`` lacks.
    """

    def __init__(self, folder: str | os.PathLike, split: str, transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.root = Path(folder)
        manifest = read_store(self.root, (split,))
        self.classes = list(classes) if classes is not None else list(manifest["classes"])
        foreign = sorted(set(manifest["classes"]) - set(self.classes))
        if foreign:
            raise DataError(f"the packed store {self.root} has class(es) {', '.join(foreign[:5])} that the run's class "
                            f"map ({len(self.classes)} classes) lacks")
        to_run = np.array([self.classes.index(name) for name in manifest["classes"]], dtype=np.int64)
        self.index = _read_index(self.root, split, len(manifest["classes"]))
        self.targets = to_run[self.index[:, 3]].tolist()
        self.split, self.transform = split, transform
        self._pixels: np.ndarray | None = None  # mapped on first use, in each process

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        # loader workers map the file themselves: a pickled memmap would be a copy of the whole split
        return {**self.__dict__, "_pixels": None}

    def pixels(self, index: int) -> np.ndarray:
        """Image ``index``'s (3, height, width) uint8 pixels, a view of the mapped file."""
        if self._pixels is None:
            self._pixels = np.memmap(split_files(self.root, self.split)[0], dtype=np.uint8, mode="r")
        offset, height, width, _ = self.index[index].tolist()
        return self._pixels[offset: offset + height * width * 3].reshape(3, height, width)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = self.pixels(index)
        if getattr(self.transform, "takes_arrays", False):  # crop_on_device's draws: no PIL image in between
            return self.transform(pixels), self.targets[index]
        image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")
        return (self.transform(image) if self.transform is not None else image), self.targets[index]
