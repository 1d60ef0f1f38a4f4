"""Datasets and loaders for training and evaluation: ImageNet-style folders and Fashion-MNIST.

Every sample is produced under its own seed, derived from (run seed, epoch, index), so augmentation does not depend on
the number of processes, the number of loader workers or on batches skipped when a run is resumed mid-epoch. Shuffling
is a function of (seed, epoch) too, and the same global order is sharded by accelerate across processes.

The training transform of an image folder ends in uint8 images; :class:`DeviceAugment` normalises and randomly erases
whole batches on the training device, as timm's prefetcher does, so the loader workers move a quarter of float32's
bytes (with ``augment_on_device`` it runs RandAugment there first). Its draws, like mixup's, follow the training
loop's per-batch seed (run seed, rank, epoch, batch).

A corrupt or unreadable image never stops an epoch: :class:`SkipUnreadable` substitutes the next readable sample and
marks the file in a shared-memory flag table that loader workers write and the main process reads at epoch end (see
:func:`report_unreadable`), so each file is named in exactly one warning. In evaluation the substitute carries the
target :data:`UNREADABLE_TARGET`, so it fills the batch but is never scored.

Every split of an image folder uses one class-to-index map, the train split's (:func:`folder_classes`, which skips
hidden folders); a val split may lack classes but never holds a class folder that train lacks. The train split needs two
classes or more, each with a readable image (:meth:`SkipUnreadable.check_readable`). Images are decoded to 8 bits per
channel whatever their bit depth (:func:`load_image`).
"""
from __future__ import annotations

import functools
import gzip
import io
import logging
import math
import multiprocessing
import os
import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.datasets import ImageFolder

from vitzoo.ops.normalize_erase import BatchMix, normalize_erase
from vitzoo.train.device_decode import (
    EncodedBatch,
    EncodedImage,
    EncodedRandomResizedCrop,
    PixelRandomResizedCrop,
    decode_crops,
)
from vitzoo.train.errors import DataError, UnreadableImage
from vitzoo.train.packed import PackedImages, read_store
from vitzoo.train.random_erasing import BatchRandomErasing

if TYPE_CHECKING:
    from accelerate import Accelerator
    from timm.data.mixup import Mixup

_logger = logging.getLogger(__name__)
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
# Where torchvision downloads Fashion-MNIST on machines without the Debian package.
FASHION_MNIST_CACHE = Path(os.environ.get("VITZOO_DATA", Path.home() / ".cache" / "vitzoo")) / "fashion-mnist"
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_MNIST_COUNTS = {"train": 60000, "val": 10000}
# idx magic numbers (0x0800 + the number of dimensions) of Fashion-MNIST's two kinds of file.
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
_IDX_KINDS = {_IDX_IMAGES_MAGIC: "images", _IDX_LABELS_MAGIC: "labels"}
# The target of an unreadable evaluation sample: the batch keeps its shape, the metrics skip the sample.
UNREADABLE_TARGET = -1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# The 32-bit mixing constants keep per-sample seeds of neighbouring (epoch, index) pairs far apart.
_SEED_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Return the seed of one sample draw: a fixed function of the run seed, the epoch and the dataset index."""
    return (seed * _SEED_MIX[0] + epoch * _SEED_MIX[1] + index * _SEED_MIX[2]) % (2**63 - 1)


def seed_everything(seed: int, devices: bool = True) -> None:
    """Seed python, numpy and torch from one integer (:func:`seed_host_draws` and :func:`seed_torch`)."""
    seed_host_draws(seed)
    seed_torch(seed, devices)


def seed_host_draws(seed: int) -> None:
    """Seed python's ``random`` and numpy's global generator: the draws of the training batches' device stage
    (RandAugment, erasing, mixup), which a thread of their own may make while the training thread runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


def seed_torch(seed: int, devices: bool = True) -> None:
    """Seed torch's CPU generator, and with ``devices`` the CUDA and MPS generators where those devices exist
    (per-sample seeding passes False: transforms draw from the CPU generator only).

    ``torch.manual_seed`` is not used: it also seeds every other backend, and for one that is never initialised
    (XPU and MTIA on a CUDA build) it queues the call with a formatted stack trace, about 1 ms a call and a list
    that grows with every call; the training loop seeds every batch.
    """
    torch.default_generator.manual_seed(seed)
    if devices:
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)  # queued once before CUDA starts, a direct call after
        if torch.backends.mps.is_available():
            torch.mps.manual_seed(seed)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(length)`` that depends only on (seed, epoch); sequential when ``shuffle`` is False.

    ``num_samples`` keeps only the first samples of each epoch's order (a training subset that changes per epoch, or a
    fixed leading subset when not shuffling).

    ``repeats`` > 1 is repeated augmentation: each image of the permutation ``repeats`` times in a row, copy ``c``
    of image ``i`` drawn as ``i + c * length`` so that :class:`SkipUnreadable` gives it a seed, and so an augmentation,
    of its own; the epoch keeps its number of samples (it sees ``1 / repeats`` of the images).

    accelerate shards the batches of this one global order across processes, so N processes with batch b see exactly
    the samples that one process with batch N*b sees (the copies of an image fall in the same global batch, as in
    DeiT's sampler, which deals them to different processes).
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, num_samples: int | None = None,
                 repeats: int = 1) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.repeats = max(repeats, 1)
        # A subset per epoch (a different one each epoch when shuffling): the first num_samples of the order.
        self.num_samples = min(num_samples or length, length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (called by accelerate's loader and by the training loop)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.length, generator=generator)
        if self.repeats > 1:
            order = (order[:, None] + self.length * torch.arange(self.repeats)).flatten()
        return iter(order[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


class SkipUnreadable(Dataset):
    """Wrap a map-style dataset: seed each sample, and replace unreadable samples by the next readable one.

    Args:
        dataset: the wrapped dataset; ``dataset[i]`` returns ``(image, target)``.
        seed: run seed; sample ``i`` of epoch ``e`` is transformed under :func:`sample_seed` ``(seed, e, i)``.
        limit: expose only the first ``limit`` samples. accelerate sizes the padding that ``gather_for_metrics``
            drops from ``len(dataset)``, so an eval subset must be cut here, not in the sampler.
        score_substitutes: False for evaluation: a substitute keeps the batch shape but carries
            :data:`UNREADABLE_TARGET`, so an unreadable file is never counted as a second copy of its neighbour.
        require_classes: :meth:`check_readable` also requires a readable image of every class (a training image
            folder: ``dataset`` is an :class:`ImageFolder`).
    """

    def __init__(self, dataset: Dataset, seed: int, limit: int | None = None, score_substitutes: bool = True,
                 require_classes: bool = False) -> None:
        self.dataset = dataset
        self.score_substitutes = score_substitutes
        self.require_classes = require_classes
        self.length = min(limit or len(dataset), len(dataset))
        self.seed = seed
        # Shared memory, so the flags written in loader worker processes are visible to the main process, and the
        # epoch set in the main process is seen by persistent workers (they keep their copy of the dataset).
        self.unreadable = torch.zeros(self.length, dtype=torch.bool).share_memory_()
        self.reported = torch.zeros(self.length, dtype=torch.bool)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose per-sample seeds :meth:`__getitem__` uses."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the per-sample seeds of ``epoch`` (in every loader worker too, persistent ones included)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        """A human-readable name of sample ``index`` for warnings: its file where the dataset has files."""
        samples = getattr(self.dataset, "samples", None)
        return samples[index][0] if samples is not None else f"sample {index}"

    def __getitem__(self, draw: int):
        # A draw past the dataset is a repeated-augmentation copy (EpochShuffleSampler): the same image, its own seed
        index = draw % self.length
        for offset in range(self.length):
            candidate = (index + offset) % self.length
            if self.unreadable[candidate]:
                continue
            # The seed follows the draw, not the candidate, so a substitute is drawn reproducibly.
            seed_everything(sample_seed(self.seed, self.epoch, draw), devices=False)
            try:
                image, target = self.dataset[candidate]
            except UnreadableImage as error:  # the file; a failing transform is a bug and propagates
                _logger.debug("unreadable sample %s: %s", self.describe(candidate), error)
                self.unreadable[candidate] = True
                continue
            if candidate != index and not self.score_substitutes:
                target = UNREADABLE_TARGET
            return image, target
        raise DataError(f"no readable image in {self.describe(0)} and the {self.length - 1} samples after it; "
                        "every file of the split failed to decode")

    def __getitems__(self, indices: list[int]) -> list:
        """A batch of samples, which the DataLoader asks for at once: in one go where the wrapped dataset has nothing
        to seed or skip (its ``raw_batch`` gives one: Fashion-MNIST without a sample transform), else one by one."""
        raw_batch = getattr(self.dataset, "raw_batch", None)
        batch = raw_batch([draw % self.length for draw in indices]) if raw_batch is not None else None
        return batch if batch is not None else [self[index] for index in indices]

    def check_readable(self) -> None:
        """Decode one sample (the first readable one) now, so a split of only unreadable files fails before a run
        writes anything; with ``require_classes`` also read each class's first readable file, so a class without
        any readable image does too. Raises :class:`DataError`.

        Files are otherwise found unreadable lazily, in the loader workers, when an epoch reaches them; this check
        reads one file a class where the files are fine (all of a class's files only when none is readable), not the
        whole split. The unreadable files it meets are flagged, and named at epoch end like the others.
        """
        if self.length:
            self[0]
        if self.require_classes:
            self._check_classes()

    def _check_classes(self) -> None:
        images = self.dataset
        targets = np.asarray(images.targets[: self.length], dtype=np.int64)
        order = np.argsort(targets, kind="stable")
        bounds = np.searchsorted(targets[order], np.arange(len(images.classes) + 1))
        for target, name in enumerate(images.classes):
            members = order[bounds[target]: bounds[target + 1]].tolist()
            folder = Path(images.root) / name
            if not members:
                raise DataError(f"class {name} has no training image: {folder} holds no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
            if not any(self._readable(index) for index in members):
                raise DataError(f"class {name} has no readable training image: all {len(members)} image files in "
                                f"{folder} are unreadable (cannot be opened or decoded); replace them or remove the "
                                "folder")

    def _readable(self, index: int) -> bool:
        """Whether the loader of the wrapped image folder reads sample ``index`` (no transform); flags it if not."""
        if self.unreadable[index]:
            return False
        try:
            self.dataset.loader(self.dataset.samples[index][0])
        except UnreadableImage as error:
            _logger.debug("unreadable sample %s: %s", self.describe(index), error)
            self.unreadable[index] = True
            return False
        return True

    def new_unreadable(self) -> list[int]:
        """Return indices flagged unreadable since the last call, and mark them reported."""
        fresh = (self.unreadable & ~self.reported).nonzero().flatten().tolist()
        self.reported |= self.unreadable
        return fresh


def report_unreadable(dataset: SkipUnreadable, accelerator: Accelerator) -> int:
    """Merge the unreadable-file flags of all processes, warn once per new file (main process) and return the count.

    Args:
        dataset: the wrapped dataset whose flags to report.
        accelerator: the ``accelerate.Accelerator`` of the run (its ``reduce`` merges the flags).

    Returns:
        The total number of unreadable files found so far, identical on every process.
    """
    flags = dataset.unreadable.to(accelerator.device, torch.int32)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    dataset.unreadable |= flags.cpu() > 0
    fresh = dataset.new_unreadable()
    if accelerator.is_main_process:
        for index in fresh:
            _logger.warning("skipped unreadable image %s (%s)", dataset.describe(index),
                            "replaced by the next readable sample" if dataset.score_substitutes else "not scored")
    return int(dataset.reported.sum())


class FashionMNIST(Dataset):
    """Fashion-MNIST read straight from its four idx files (``.gz`` or uncompressed), as uint8 tensors.

    Args:
        root: a folder holding the idx files, or a torchvision root holding ``FashionMNIST/raw/``.
        split: ``'train'`` (60k) or ``'val'`` (the 10k test set).
        transform: maps a (1, 28, 28) uint8 tensor to the model input.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        if split not in _FASHION_MNIST_FILES:
            raise ValueError(f"split must be one of {sorted(_FASHION_MNIST_FILES)}, got {split!r}")
        folder = _idx_folder(Path(root))
        images_name, labels_name = _FASHION_MNIST_FILES[split]
        images, images_path = _read_idx(folder, images_name, _IDX_IMAGES_MAGIC)
        labels, labels_path = _read_idx(folder, labels_name, _IDX_LABELS_MAGIC)
        _check_fashion_mnist(split, images, images_path, labels, labels_path)
        self.images = torch.from_numpy(images).unsqueeze(1)
        self.targets = torch.from_numpy(labels).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])

    def raw_batch(self, indices: list[int]) -> list[tuple[torch.Tensor, int]] | None:
        """The uint8 samples at ``indices`` in one indexing op, or None with a sample transform (which
        :class:`SkipUnreadable` must seed per sample). The per-sample path costs ~20 us an image, which held graphed
        training of a small model to one loader worker's pace (augment_on_device leaves the samples untransformed)."""
        if self.transform is not None:
            return None
        index = torch.as_tensor(indices)
        return list(zip(self.images[index].unbind(0), self.targets[index].tolist(), strict=True))


def _read_idx(folder: Path, name: str, magic: int) -> tuple[np.ndarray, Path]:
    """The array of idx file ``name`` (``.gz`` or plain) in ``folder`` and the file's path; raises :class:`DataError`
    for a missing, corrupt or truncated file, or one whose magic number is not ``magic`` (which tells the dimensions:
    2051 for images, 2049 for labels)."""
    for path, opener in ((folder / f"{name}.gz", gzip.open), (folder / name, open)):
        if path.is_file():
            try:
                with opener(path, "rb") as handle:
                    data = handle.read()
            except (OSError, EOFError) as error:  # gzip raises EOFError for a truncated stream
                raise DataError(f"Fashion-MNIST file {path} is corrupt or truncated ({error}); reinstall "
                                "dataset-fashion-mnist or replace the file") from None
            break
    else:
        raise DataError(f"Fashion-MNIST file {name}[.gz] not found in {folder}")
    # idx header: two zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then one big-endian int32 each.
    # The first four bytes read as one big-endian int32 are the magic number: 0x0800 + the number of dimensions.
    ndim = data[3] if len(data) > 3 else 0
    if data[:3] != b"\x00\x00\x08" or not ndim or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is not a uint8 idx file; reinstall dataset-fashion-mnist or replace the file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"Fashion-MNIST file {path} holds {_IDX_KINDS.get(found, f'{ndim}-d arrays')} (idx magic "
                        f"{found}), not {_IDX_KINDS[magic]} (magic {magic}); replace it with Fashion-MNIST's {name}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(data) != expected:
        raise DataError(f"Fashion-MNIST file {path} holds {len(data)} bytes, its header says {expected} (truncated?); "
                        "reinstall dataset-fashion-mnist or replace the file")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy(), path


def _check_fashion_mnist(split: str, images: np.ndarray, images_path: Path, labels: np.ndarray,
                         labels_path: Path) -> None:
    """Raise :class:`DataError` unless the images are 28x28, the labels 0-9, and the two files hold as many entries.
    A count mismatch names the file whose count is not the split's standard one (60000 train, 10000 test)."""
    if images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST file {images_path} holds {'x'.join(map(str, images.shape[1:]))} images; "
                        "Fashion-MNIST's are 28x28; replace the file")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST file {labels_path} holds label {int(labels.max())}; Fashion-MNIST's labels "
                        f"are 0-{len(FASHION_MNIST_CLASSES) - 1}; replace the file")
    if len(images) != len(labels):
        standard = _FASHION_MNIST_COUNTS[split]
        culprit = (labels_path if len(images) == standard else images_path if len(labels) == standard
                   else f"{labels_path} or {images_path}")
        raise DataError(f"Fashion-MNIST {split} labels ({len(labels)}) and images ({len(images)}) differ in count; "
                        f"replace {culprit}")


class GreyTransform:
    """Tensor transform for 28x28 grey images: optional pad-and-random-crop and horizontal flip, then normalise.

    Operates on uint8 tensors so that it costs microseconds per sample (the zoo trains on 2 CPU cores); randomness
    comes from torch's global generator, which :class:`SkipUnreadable` seeds per sample.
    """

    def __init__(self, is_training: bool, img_size: int = 28, pad: int = 2, hflip: float = 0.5) -> None:
        self.is_training = is_training
        self.img_size = img_size
        self.pad = pad
        self.hflip = hflip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().div_(255)
        if self.is_training and self.pad:
            x = F.pad(x, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = x[:, top: top + 28, left: left + 28]
        if self.is_training and self.hflip and torch.rand(()) < self.hflip:
            x = x.flip(-1)
        return _grey_model_input(x[None], self.img_size)[0]


def _grey_model_input(x: torch.Tensor, img_size: int) -> torch.Tensor:
    """(B, 1, 28, 28) grey images in [0, 1], resized to ``img_size`` (bilinear) and normalised: the common end of
    :class:`GreyTransform` and :class:`GreyBatchAugment`."""
    if img_size != 28:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


class GreyBatchAugment:
    """:class:`GreyTransform`'s training transform on whole uint8 batches where they are (the training device), for
    ``augment_on_device``: at a few tens of microseconds per sample, the loader workers' per-sample crop and flip
    cap a small model's graphed training at a few thousand steps' worth of images per second and core.

    Each image gets its own crop offsets in ``[0, 2 pad]`` and flip, drawn with the distribution of
    :class:`GreyTransform` from the device's torch generator, which the training loop seeds per batch (so a resumed
    run draws the same numbers). Takes a (B, 1, 28, 28) uint8 batch and returns normalised float32 on its device.
    """

    def __init__(self, img_size: int = 28, pad: int = 2, hflip: float = 0.5) -> None:
        self.img_size = img_size
        self.pad = pad
        self.hflip = hflip

    def __call__(self, images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (1, 28, 28):
            raise TypeError(f"GreyBatchAugment takes (B, 1, 28, 28) uint8 batches, got {tuple(images.shape)} "
                            f"{images.dtype}")
        batch = images.shape[0]
        x = images[:, 0].float().div_(255)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
            top, left = torch.randint(0, 2 * self.pad + 1, (2, batch, 1), device=x.device)
            span = torch.arange(28, device=x.device)
            rows, cols = (top + span)[:, :, None], (left + span)[:, None, :]
            x = x[torch.arange(batch, device=x.device)[:, None, None], rows, cols]
        if self.hflip:
            flip = torch.rand(batch, 1, 1, device=x.device) < self.hflip
            x = torch.where(flip, x.flip(-1), x)
        return _grey_model_input(x[:, None], self.img_size)


@dataclass
class AugmentConfig:
    """Training augmentation for image folders (timm ``create_transform`` arguments)."""

    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    color_jitter: float = 0.4
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    train_interpolation: str = "random"
    on_device: bool = False  # RandAugment on whole batches on the training device instead of in the workers
    decode_on_device: bool = False  # JPEG decoding and the crops too (vitzoo.train.device_decode); needs on_device
    crop_on_device: bool = False  # the crops only: the workers decode; needs on_device


class DeviceAugment:
    """The end of an image folder's training transform, run on whole batches where they are (the training device):
    RandAugment when the workers leave it to the device (:class:`~vitzoo.train.rand_augment.BatchRandAugment`),
    then uint8 to float32 (or ``dtype``), ``(x / 255 - mean) / std``, with timm's random erasing of the normalised
    images, in one pass (:func:`vitzoo.ops.normalize_erase.normalize_erase`, with
    :class:`~vitzoo.train.random_erasing.BatchRandomErasing`'s rectangles: timm's, for the whole batch at once).

    Takes a (B, C, H, W) batch or one (C, H, W) image of uint8 on any device and returns ``dtype`` on that device;
    with ``decode``, also an :class:`~vitzoo.train.device_decode.EncodedBatch` from the loader, which it first
    decodes and crops on ``device``. The erasing draws (rectangles and the fill's seed) come from python's ``random``,
    which the training loop seeds per batch. :meth:`mix` also does timm's batch-mode mixup or cutmix in the
    normalising pass.

    Args:
        mean: per-channel mean in [0, 1] units (the data config's).
        std: per-channel standard deviation in [0, 1] units.
        re_prob: probability of erasing a rectangle of each image (0: no erasing).
        re_mode: the erased pixels, timm's ``'pixel'`` (per-pixel normal noise), ``'rand'`` (per-channel) or
            ``'const'`` (zeros).
        rand_augment: RandAugment for uint8 batches, applied first (None: the workers applied it).
        decode: ``(encoded batch, device) -> uint8 batch`` for loaders that hand over JPEG bytes
            (:func:`~vitzoo.train.device_decode.decode_crops` at the input size).
        dtype: the output's dtype: float32, or the 16-bit dtype a mixed-precision model's autocast casts its input to
            before its first layer (the same single rounding, done in the normalising pass: the batch's later copies
            move half the bytes and the model skips the cast).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], re_prob: float = 0.0,
                 re_mode: str = "pixel", rand_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 decode: Callable[[EncodedBatch, torch.device], torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.rand_augment = rand_augment
        self.decode = decode
        self.dtype = dtype
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.erase = BatchRandomErasing(re_prob, re_mode) if re_prob > 0 else None

    def __call__(self, images: torch.Tensor | EncodedBatch, device: torch.device | None = None) -> torch.Tensor:
        single = isinstance(images, torch.Tensor) and images.dim() == 3
        batch = self._augmented(images, device)
        x = normalize_erase(batch, self.mean, self.std, *self._erasing(batch), dtype=self.dtype)
        return x[0] if single else x

    def mix(self, images: torch.Tensor | EncodedBatch, targets: torch.Tensor, mixup: Mixup,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This stage followed by timm's batch-mode ``mixup`` (mixup or cutmix of the batch with itself reversed, and
        its soft targets), with the mix done in the normalising pass: the same draws in the same order as calling
        the stage and then ``mixup``, and the same images up to a rounding where the kernel fuses timm's products
        and their sum."""
        from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

        if mixup.mode != "batch":
            raise ValueError(f"DeviceAugment.mix takes a batch-mode Mixup, got mode {mixup.mode!r}")
        batch = self._augmented(images, device)
        erasing = self._erasing(batch)
        lam, use_cutmix = mixup._params_per_batch()  # timm's own draws, as its Mixup.__call__ makes them
        mix = None
        if lam != 1.0:
            box = None
            if use_cutmix:
                box, lam = cutmix_bbox_and_lam(batch.shape, lam, ratio_minmax=mixup.cutmix_minmax,
                                               correct_lam=mixup.correct_lam)
            mix = BatchMix(lam, box)
        x = normalize_erase(batch, self.mean, self.std, *erasing, mix=mix, dtype=self.dtype)
        return x, mixup_target(targets, mixup.num_classes, lam, mixup.label_smoothing)

    def _augmented(self, images: torch.Tensor | EncodedBatch, device: torch.device | None) -> torch.Tensor:
        """The uint8 (B, C, H, W) batch, decoded and RandAugmented."""
        if isinstance(images, EncodedBatch):
            if self.decode is None or device is None:
                raise TypeError("an encoded batch needs DeviceAugment(decode=...) and the device to decode on")
            images = self.decode(images, device)
        if images.dtype != torch.uint8:
            raise TypeError(f"DeviceAugment takes uint8 images, got {images.dtype} (normalised twice?)")
        batch = images if images.dim() == 4 else images[None]
        return self.rand_augment(batch) if self.rand_augment is not None else batch

    def _erasing(self, batch: torch.Tensor) -> tuple[torch.Tensor | None, str, int]:
        """normalize_erase's rectangles, mode and seed for ``batch`` (drawn from python's ``random``)."""
        if self.erase is None:
            return None, "pixel", 0
        rectangles, seed = self.erase.draw(batch.shape[0], *batch.shape[2:])
        return rectangles, self.erase.mode, seed


class EvalTransform:
    """An image folder's eval transform in two halves: timm's (resize to ``size / crop_pct``, centre crop) up to uint8
    (C, H, W) in the loader workers, and :attr:`on_device` (a :class:`DeviceAugment` without augmentation: float32,
    ``(x / 255 - mean) / std``) for whole batches on the evaluating device, as timm's prefetcher splits it. A uint8
    batch is a quarter of float32's bytes through the workers' shared memory and the pinning."""

    def __init__(self, data_config: dict) -> None:
        from timm.data import create_transform

        self.workers = create_transform(
            data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
            mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
            crop_mode=data_config.get("crop_mode"), use_prefetcher=True,
        )
        self.on_device = DeviceAugment(data_config["mean"], data_config["std"])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.workers(image)


def folder_transforms(data_config: dict, augment: AugmentConfig, input_dtype: torch.dtype = torch.float32
                      ) -> tuple[Callable, DeviceAugment, EvalTransform]:
    """Build the transforms of RGB folder datasets from a ``resolve_data_config`` dict.

    Args:
        data_config: ``timm.data.resolve_data_config(model=...)`` output (input_size, interpolation, mean, std,
            crop_pct, crop_mode).
        augment: the training augmentation.
        input_dtype: the dtype of the training batches the device stage hands the model (:class:`DeviceAugment`'s
            ``dtype``).

    Returns:
        The training transform of the loader workers (random-resized crop, flip, RandAugment unless
        ``augment.on_device``, ending in a uint8 (C, H, W) tensor; with ``augment.decode_on_device`` only the crop
        and flip draws, for :func:`load_encoded` images; with ``augment.crop_on_device`` the decoded pixels and those
        draws), the rest of the training transform for whole batches on the training device (decoding and cropping
        with ``augment.decode_on_device``, cropping with ``augment.crop_on_device``, RandAugment with
        ``augment.on_device``, normalisation and random erasing), and the eval transform (:class:`EvalTransform`:
        uint8 crops, normalised on the device).
    """
    from timm.data import create_transform

    # timm's prefetcher variant: the same pipeline up to the tensor conversion, which keeps uint8 (mean still sets
    # RandAugment's fill colour).
    train_transform = create_transform(
        data_config["input_size"], is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
        color_jitter=augment.color_jitter, auto_augment=augment.auto_augment,
        interpolation=augment.train_interpolation, mean=data_config["mean"], std=data_config["std"],
        use_prefetcher=True,
    )
    _allow_zero_bit_posterize(train_transform)
    rand_augment = _move_rand_augment(train_transform) if augment.on_device else None
    decode = None
    if augment.decode_on_device or augment.crop_on_device:
        crop = EncodedRandomResizedCrop if augment.decode_on_device else PixelRandomResizedCrop
        train_transform = crop(tuple(augment.scale), hflip=augment.hflip)
        decode = functools.partial(decode_crops, size=data_config["input_size"][-1])
    on_device = DeviceAugment(data_config["mean"], data_config["std"], augment.re_prob, augment.re_mode,
                              rand_augment, decode, input_dtype)
    return train_transform, on_device, EvalTransform(data_config)


def _move_rand_augment(transform: Callable) -> Callable:
    """Take timm's RandAugment out of ``transform`` (a Compose) and return its batch version for the device."""
    from timm.data.auto_augment import RandAugment

    from vitzoo.train.rand_augment import BatchRandAugment

    steps = transform.transforms
    (policy,) = [step for step in steps if isinstance(step, RandAugment)]
    steps.remove(policy)
    return BatchRandAugment(policy)


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, also for 0 bits: a black image, what Pillow up to 12 returned. timm's increasing-magnitude
    posterize asks for 0 bits at the top of its range (m9 with a magnitude std reaches it), and Pillow 13 raises."""
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def _allow_zero_bit_posterize(transform: Callable) -> None:
    """Point the posterize ops of the AutoAugment / RandAugment / AugMix policies in ``transform`` (a Compose) at
    :func:`_posterize`."""
    from timm.data.auto_augment import posterize

    for step in getattr(transform, "transforms", ()):
        ops = list(getattr(step, "ops", ()))
        for sub_policy in getattr(step, "policy", ()):
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is posterize:
                op.aug_fn = _posterize


def _idx_folder(folder: Path) -> Path:
    """The folder holding the idx files: ``folder`` itself, or the ``FashionMNIST/raw`` of a torchvision root."""
    raw = folder / "FashionMNIST" / "raw"
    return raw if raw.is_dir() else folder


def _missing_idx_files(folder: Path, split: str) -> str | None:
    """The first idx file of ``split`` that ``folder`` lacks (plain or ``.gz``), or None."""
    for name in _FASHION_MNIST_FILES[split]:
        if not ((folder / name).is_file() or (folder / f"{name}.gz").is_file()):
            return name
    return None


def _download_fashion_mnist(cache: Path) -> Path:
    """Download Fashion-MNIST with torchvision into ``cache``; the folder appears whole or not at all."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
    _logger.warning("Fashion-MNIST not found in %s; downloading it with torchvision into %s", FASHION_MNIST_DIR, cache)
    try:
        for train in (True, False):
            TorchvisionFashionMNIST(str(tmp), train=train, download=True)
    except Exception as error:  # noqa: BLE001 - any network or file error means the same thing to the user
        raise DataError(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR} and the download failed "
                         f"({error}); install dataset-fashion-mnist or set data_dir to a folder holding the four idx "
                         "files") from None
    try:
        os.replace(tmp, cache)  # atomic; another process may have finished first, then its copy is kept
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def fashion_mnist_folder(data_dir: str | os.PathLike | None) -> Path:
    """The folder of Fashion-MNIST's idx files: ``data_dir`` if given, else the Debian path, else a download."""
    if data_dir is not None:
        return _idx_folder(Path(data_dir))
    for candidate in (Path(FASHION_MNIST_DIR), FASHION_MNIST_CACHE):
        if not any(_missing_idx_files(_idx_folder(candidate), split) for split in _FASHION_MNIST_FILES):
            return _idx_folder(candidate)
    FASHION_MNIST_CACHE.parent.mkdir(parents=True, exist_ok=True)
    return _idx_folder(_download_fashion_mnist(FASHION_MNIST_CACHE))


def check_dataset_path(dataset: str, data_dir: str | os.PathLike | None, splits: tuple[str, ...]) -> Path:
    """Return the dataset folder, or raise a one-line :class:`DataError` that says what is missing (or that an image
    folder's train split has a single class folder).

    Args:
        dataset: ``'folder'``, ``'packed'`` (a store written by ``vitzoo-pack``) or ``'fashion_mnist'``.
        data_dir: the folder (for ``'fashion_mnist'``, ``None`` means the Debian path, else a torchvision download).
        splits: the splits the caller will read (``'train'``, ``'val'``).
    """
    if dataset == "fashion_mnist":
        folder = fashion_mnist_folder(data_dir)
        for split in splits:
            missing = _missing_idx_files(folder, split)
            if missing:
                raise DataError(
                    f"Fashion-MNIST file {missing}.gz not found in {folder}; set data_dir to a folder holding the "
                    f"four idx files (apt install dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})"
                )
        return folder
    if dataset == "packed":
        if not data_dir:
            raise DataError("data_dir is not set; pass --data-dir pointing at a store written by vitzoo-pack")
        read_store(data_dir, splits)
        return Path(data_dir)
    if dataset != "folder":
        raise DataError(f"dataset must be 'folder', 'packed' or 'fashion_mnist', got {dataset!r}")
    if not data_dir:
        needed = " and ".join(f"{split}/" for split in splits)
        raise DataError(f"data_dir is not set; pass --data-dir pointing at a folder with {needed} class folders")
    folder = Path(data_dir)
    for split in splits:
        if not (folder / split).is_dir():
            raise DataError(f"dataset folder {folder / split} does not exist; data_dir needs {'/ and '.join(splits)}/ "
                             "sub-folders with one folder of images per class")
    if "train" in splits and len(folder_classes(folder / "train")) == 1:
        raise DataError(f"the train split of {folder} has 1 class folder; a classifier needs at least 2")
    return folder


def folder_classes(split_dir: str | os.PathLike) -> list[str]:
    """The class names of an image-folder split: its sub-folders, sorted (torchvision's order), except hidden ones
    (names starting with '.', such as Jupyter's ``.ipynb_checkpoints``, which torchvision would take for a class);
    raises :class:`DataError` when there are none."""
    split_dir = Path(split_dir)
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} holds no class folders; put each class's images in {split_dir}/<class>/")
    return classes


def split_classes(dataset: str, folder: Path, split: str) -> list[str]:
    """The class names of ``split`` of a dataset whose folder :func:`check_dataset_path` returned: Fashion-MNIST's,
    a packed store's, or the split's class folders."""
    if dataset == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if dataset == "packed":
        return list(read_store(folder)["classes"])
    return folder_classes(folder / split)


def load_image(path: str, raw: bytes | None = None) -> Image.Image:
    """Open an image as 8-bit RGB. 16- and 32-bit integer images (16-bit PNG or TIFF greyscale) are scaled from
    their full range, where PIL's ``convert`` would clip every value above 255 to white. ``raw``: the file's bytes,
    when the caller has read them already (``path`` then only names the file in errors).

    Raises:
        UnreadableImage: the file cannot be opened, decoded or converted.
    """
    try:
        return _read_rgb(path if raw is None else io.BytesIO(raw))
    except Exception as error:  # noqa: BLE001 - PIL's plugins raise many types for bad files; all mean "this file"
        raise UnreadableImage(f"{path}: {type(error).__name__}: {error}") from error


def _read_rgb(source: str | io.BytesIO) -> Image.Image:
    with open(source, "rb") if isinstance(source, str) else source as handle:
        image = Image.open(handle)
        image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Mode "I" is what PIL gives 16-bit PNGs on some versions; its values still span 0..65535.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64) * 255.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_encoded(path: str) -> EncodedImage:
    """Read an image file for decoding on the device: a complete baseline 8-bit RGB JPEG as it is; anything else
    Pillow can read (PNG, greyscale, CMYK or 16-bit images, progressive JPEGs) decoded here and re-encoded as a
    quality-95 baseline RGB JPEG, so the device decoder only meets the common case (ImageNet has a few hundred of
    the others).

    Raises:
        UnreadableImage: Pillow cannot read the file.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        with Image.open(io.BytesIO(raw)) as image:
            size, plain = image.size, (image.format == "JPEG" and image.mode == "RGB"
                                       and not image.info.get("progressive") and raw.startswith(_JPEG_START)
                                       and raw.rstrip(b"\x00").endswith(_JPEG_END))
    except Exception as error:  # noqa: BLE001 - PIL's plugins raise many types for bad files; all mean "this file"
        raise UnreadableImage(f"{path}: {type(error).__name__}: {error}") from error
    if not plain:
        buffer = io.BytesIO()
        load_image(path, raw).save(buffer, format="JPEG", quality=95)
        raw = buffer.getvalue()
    return EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), *size)


class ClassMapImageFolder(ImageFolder):
    """torchvision's ImageFolder with a given class-to-index map, so every split indexes classes the same way; a
    class of the map without a folder here simply has no samples."""

    def __init__(self, root: str, classes: list[str], transform: Callable | None = None,
                 loader: Callable[[str], Any] = load_image) -> None:
        self.fixed_classes = list(classes)
        super().__init__(root, transform=transform, loader=loader, is_valid_file=_is_image_file, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self.fixed_classes, {name: index for index, name in enumerate(self.fixed_classes)}


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def class_map_image_folder(split_dir: Path, classes: list[str], transform: Callable | None,
                           loader: Callable[[str], Any] = load_image) -> ClassMapImageFolder:
    """An image folder over ``split_dir`` indexed by ``classes`` (the run's map); raises :class:`DataError` for
    class folders outside the map or a split without images."""
    foreign = sorted(set(folder_classes(split_dir)) - set(classes))
    if foreign:
        raise DataError(f"{split_dir} has class folder(s) {', '.join(foreign[:5])} that the run's class map "
                        f"({len(classes)} classes, from the train split) lacks; remove them or train on them too")
    images = ClassMapImageFolder(str(split_dir), classes, transform, loader)
    if not images.samples:
        raise DataError(f"{split_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return images


def build_dataset(dataset: str, data_dir: str | os.PathLike | None, split: str, transform: Callable,
                  seed: int, limit: int | None = None, classes: list[str] | None = None,
                  score_substitutes: bool = True, encoded: bool = False) -> SkipUnreadable:
    """Build one split wrapped in :class:`SkipUnreadable`.

    Args:
        dataset: ``'folder'`` (``<data_dir>/<split>/<class>/<image>``), ``'packed'`` (a store of decoded pixels,
            :mod:`vitzoo.train.packed`) or ``'fashion_mnist'``.
        data_dir: the dataset folder (see :func:`check_dataset_path`).
        split: ``'train'`` or ``'val'``.
        transform: the sample transform.
        seed: run seed for per-sample augmentation.
        limit: keep only the first ``limit`` samples (an evaluation subset).
        classes: the class names in index order (image folders; default: the split's own class folders).
        score_substitutes: see :class:`SkipUnreadable` (False for evaluation).
        encoded: read image-folder files with :func:`load_encoded` (JPEG bytes, for ``decode_on_device``).

    Raises:
        DataError: a missing, empty or corrupt split, class folders outside ``classes``, a train split of one class,
            or Fashion-MNIST files that do not belong together. A train class without a readable image is found by
            the returned dataset's :meth:`SkipUnreadable.check_readable`.
    """
    folder = check_dataset_path(dataset, data_dir, (split,))
    if dataset == "fashion_mnist":
        return SkipUnreadable(FashionMNIST(folder, split, transform), seed, limit=limit,
                              score_substitutes=score_substitutes)
    if dataset == "packed":  # every image in the store was read when it was packed
        return SkipUnreadable(PackedImages(folder, split, transform, classes), seed, limit=limit,
                              score_substitutes=score_substitutes)
    images = class_map_image_folder(folder / split, classes or folder_classes(folder / split), transform,
                                    load_encoded if encoded else load_image)
    # Training needs a readable image of every class (checked by check_readable); val may lack classes.
    return SkipUnreadable(images, seed, limit=limit, score_substitutes=score_substitutes,
                          require_classes=split == "train" and not limit)


def worker_init(worker_id: int) -> None:
    """Loader worker init: seed numpy from torch's per-worker seed (torch only seeds python and torch itself)."""
    np.random.seed(torch.initial_seed() % 2**32)


# What a loader worker needs to unpickle its dataset and transforms, after the main script (multiprocessing's own
# default). The forkserver imports them once and every worker it forks inherits them; without them each worker imports
# torch, timm and vitzoo itself, and as the parent hands a dataset of more than a pipe's 64 KB to one worker only after
# that worker's imports, the workers start one after another (14 workers took about 120 s on a GPU host, for the
# training and again for the validation loader).
_WORKER_PRELOAD = ["__main__", "timm.data", __name__]


def loader_workers(workers: int, forkserver: bool | None = None) -> dict[str, Any]:
    """DataLoader arguments for ``workers`` worker processes, started by a forkserver that has imported what they
    need (``forkserver``; default: once this process has initialised CUDA). A forked worker inherits the parent's
    CUDA objects, and one that its garbage collector destroys (a finished training run's CUDA graphs, say) aborts it
    with "CUDA error: initialization error", failing the epoch."""
    if not workers:
        return {"num_workers": 0}
    context = None
    if torch.cuda.is_initialized() if forkserver is None else forkserver:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_WORKER_PRELOAD)  # no effect once the server runs: it has them already
    return {"num_workers": workers, "worker_init_fn": worker_init, "multiprocessing_context": context}
