"""JPEG decoding and random-resized crops on the training device (``decode_on_device``).

On a GPU machine whose cores cannot decode and crop JPEGs as fast as the GPU trains, the loader workers only read
each file, check it and draw its crop and flip (:func:`vitzoo.train.data.load_encoded`,
:class:`EncodedRandomResizedCrop`), and pack a batch's files into one byte tensor (:func:`collate_encoded`). The
training process then decodes the whole batch at once with ``torchvision.io.decode_jpeg`` on the device (nvJPEG on
CUDA) and cuts, resizes and flips the crops in one pass per image size (:func:`decode_crops`), before the rest of
the device stage (RandAugment, normalisation, erasing).

What differs from the workers' path: every crop is resampled bilinearly with ``roi_align``'s adaptive sampling
(each output pixel averages ``ceil(crop / size)``-squared bilinear samples, an area filter when shrinking) instead
of timm's random choice of Pillow's bilinear or bicubic filter; the pixels differ from Pillow's bilinear resize by
about half a grey level on average (most by at most a few; more on sharp edges). Files that are not baseline 8-bit
RGB JPEGs (PNGs, greyscale, CMYK, 16-bit or progressive images) are decoded in the worker and re-encoded as
quality-95 baseline JPEGs, so the device only ever sees the common case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.profiler import record_function

from vitzoo.ops.resized_crop import resized_crops
from vitzoo.ops.utils import to_device
from vitzoo.train import staging
from vitzoo.train.packed import channels_first

_logger = logging.getLogger(__name__)

# torch.profiler ranges around the stages of a training step (benchmarks/profile_training.py reads them): the
# device stage with mixup, the decoding of JPEG batches, and the forward, backward and optimizer step; for JPEG
# batches the loader's batch and the decoding run in one thread and the device stage in another (vitzoo.train.loop).
PROFILE_RANGES = {"load": "vitzoo.load", "decode": "vitzoo.decode", "augment": "vitzoo.augment",
                  "step": "vitzoo.step"}


@dataclass
class EncodedImage:
    """A JPEG file's bytes and its size in pixels."""

    data: torch.Tensor  # uint8, 1-D
    width: int
    height: int


@dataclass
class EncodedCrop:
    """A JPEG file's bytes, or with ``shape`` (C, H, W) an image's decoded uint8 pixels, with the crop box (x0, y0,
    x1, y1 in pixels) and flip drawn for it."""

    data: torch.Tensor
    box: tuple[float, float, float, float]
    flip: bool
    shape: tuple[int, int, int] | None = None


@dataclass
class EncodedBatch:
    """A batch of :class:`EncodedCrop` packed for the loader: one byte tensor (``offsets[i]:offsets[i + 1]`` is file
    ``i``, or with ``shapes`` (B, 3) image ``i``'s pixels), ``boxes`` (B, 4) and ``flips`` (B,). A plain dataclass,
    not a tensor container: accelerate leaves it on the CPU, where ``decode_jpeg`` wants its input. Only the bytes are
    a tensor, in shared memory (decoded pixels in one of the worker's reused slots, ``slot``: see
    :mod:`vitzoo.train.staging`), pinned by the loader's pin thread (:meth:`pin_memory`), so they reach the device in
    one copy that does not wait; the per-image fields are NumPy arrays, which travel inside the worker's message, where
    every tensor would cost that thread a shared-memory handshake (about a millisecond each on a 16-core host)."""

    data: torch.Tensor
    offsets: np.ndarray
    boxes: np.ndarray
    flips: np.ndarray
    shapes: np.ndarray | None = None
    slot: staging.SlotRef | None = None  # pixels a worker wrote into one of its slots (vitzoo.train.staging)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_hand_back", None)
        if self.slot is not None:  # the bytes stay in the slot
            state["data"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.slot is not None:
            self.data, flags = staging.receive(self.slot)
            # handed back once the copy to the device is made (hand_back), or when the batch is dropped unread
            self._hand_back = weakref.finalize(self, staging.hand_back, flags, self.slot.index)

    def hand_back(self) -> None:
        """Give the batch's slot back to its worker (the bytes are then no longer this batch's); no-op without one."""
        release = self.__dict__.get("_hand_back")
        if release is not None:
            release()

    def pin_memory(self) -> EncodedBatch:
        """The batch with its bytes in pinned memory (what the DataLoader's pin thread calls): a slot's memory is
        registered as pinned once and used in place."""
        if self.slot is not None and staging.pin(self.slot):
            return self
        pinned = dataclasses.replace(self, data=self.data.pin_memory(), slot=None)
        self.hand_back()
        return pinned

    def files(self) -> list[torch.Tensor]:
        """The files' bytes, one 1-D uint8 tensor (a view) each."""
        bounds = self.offsets.tolist()
        return [self.data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


class EncodedRandomResizedCrop:
    """The workers' part of a random-resized crop and flip: draws the crop box (torchvision's algorithm: 10 tries of
    a random area in ``scale`` and log-uniform aspect ratio in ``ratio``, else the centre crop of the clamped ratio)
    and the flip from torch's generator, which the loader seeds per sample."""

    def __init__(self, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5) -> None:
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def __call__(self, image: EncodedImage) -> EncodedCrop:
        x0, y0, w, h = self.box(image.width, image.height)
        flip = bool(torch.rand(1) < self.hflip) if self.hflip > 0 else False
        return EncodedCrop(image.data, (float(x0), float(y0), float(x0 + w), float(y0 + h)), flip)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) of a crop of a ``width`` x ``height`` image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                y0 = int(torch.randint(0, height - h + 1, (1,)))
                x0 = int(torch.randint(0, width - w + 1, (1,)))
                return x0, y0, w, h
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h


class PixelRandomResizedCrop(EncodedRandomResizedCrop):
    """The workers' part of a random-resized crop and flip when they decode (``crop_on_device``): the image's uint8
    pixels with the crop box and flip drawn as :class:`EncodedRandomResizedCrop` draws them. Takes an RGB image or
    its (3, H, W) uint8 array (what a packed store's dataset hands it: :attr:`takes_arrays`)."""

    takes_arrays = True

    def __call__(self, image: Image.Image | np.ndarray) -> EncodedCrop:
        if isinstance(image, np.ndarray):
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # a copy: the array may be a mapped file's
        else:
            pixels = torch.from_numpy(channels_first(image))
        x0, y0, w, h = self.box(pixels.shape[2], pixels.shape[1])
        flip = bool(torch.rand(1) < self.hflip) if self.hflip > 0 else False
        return EncodedCrop(pixels.flatten(), (float(x0), float(y0), float(x0 + w), float(y0 + h)), flip,
                           tuple(pixels.shape))


def collate_encoded(samples: list[tuple[EncodedCrop, int]]) -> tuple[EncodedBatch, torch.Tensor]:
    """Pack (crop, target) samples into an :class:`EncodedBatch` and a target tensor (one shared-memory tensor for
    all the bytes, not one per file; the images' shapes where the workers decoded them)."""
    crops = [crop for crop, _ in samples]
    offsets = np.cumsum([0] + [len(crop.data) for crop in crops], dtype=np.int64)
    shapes = np.array([crop.shape for crop in crops], dtype=np.int64) if crops[0].shape is not None else None
    data = slot = None
    worker = torch.utils.data.get_worker_info()
    if worker is not None and shapes is not None:  # decoded pixels: into one of the worker's reused slots
        slot, data = staging.worker_slots(worker.id).claim(int(offsets[-1]))
    elif worker is not None:
        # in a loader worker, straight into shared memory (as torch's default_collate does): sending the batch to the
        # training process would otherwise copy its bytes there first
        data = staging.shared_bytes(int(offsets[-1]))
    batch = EncodedBatch(torch.cat([crop.data for crop in crops], out=data), offsets,
                         np.array([crop.box for crop in crops], dtype=np.float32),
                         np.array([crop.flip for crop in crops], dtype=bool), shapes, slot)
    return batch, torch.tensor([target for _, target in samples], dtype=torch.int64)


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream of ``device`` that only decodes JPEGs or copies the workers' pixels (see
    :func:`_on_decode_stream`), made once per device."""
    return torch.cuda.Stream(device)


def _on_decode_stream(device: torch.device,
                      produce: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
    """The tensors ``produce()`` makes on ``device``, made on its decoding stream (:func:`_decode_stream`) and handed
    to the current stream: it waits for them, and the allocator keeps their memory until its uses of them have run
    (``record_stream``), so the host never waits for the GPU's queue. Off CUDA, just ``produce()``."""
    if device.type != "cuda":
        return produce()
    consumer, stream = torch.cuda.current_stream(device), _decode_stream(device)
    with torch.cuda.stream(stream):
        outputs = produce()
    consumer.wait_stream(stream)
    for output in outputs:
        output.record_stream(consumer)
    return outputs


def _decode_or_substitute(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """The batch's images decoded on ``device``, (3, H, W) uint8 each, ready for the current stream. A file the
    workers' header check passed but the decoder rejects (a damaged body) becomes a mid-grey image covering its crop
    box, with a warning, so one file does not stop the run (without ``decode_on_device`` the loader names such files
    and skips them). Out of memory, or every file failing alone too, is not a file's fault and is raised."""
    # torchvision's CUDA decoder fills its outputs from a stream of its own without waiting for the stream they were
    # allocated on, so memory that queued kernels still read could be written before they ran. Allocated on a stream
    # that does nothing but decode, the outputs come from blocks the allocator frees only once the training stream's
    # uses of them have run.
    return _on_decode_stream(device, lambda: _decode_files(batch, device))


def _decode_files(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """:func:`_decode_or_substitute` on the current stream."""
    from torchvision.io import ImageReadMode, decode_jpeg

    files = batch.files()
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        batch_error = error
    images, failed = [], 0
    for data, box in zip(files, batch.boxes.tolist(), strict=True):
        try:
            images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            failed += 1
            images.append(torch.full((3, math.ceil(box[3]), math.ceil(box[2])), 128, dtype=torch.uint8,
                                     device=device))
    if failed == len(files):
        raise batch_error
    if failed:
        _logger.warning("%d JPEG file(s) of a training batch failed to decode on %s and were replaced by grey images; "
                        "train once with decode_on_device=false to have the loader name and skip them", failed,
                        device)
    return images


def _pixels(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor] | torch.Tensor:
    """The images of a batch the workers decoded, on ``device`` in one copy: (C, H, W) uint8 views of it, or, when
    they all have one size, the (B, C, H, W) batch that the copy already is."""
    # Pinned (a worker's slot registered once, or copied by the loader), so the host does not wait; on the decoding
    # stream the transfer overlaps the training kernels instead of queueing between them. (Left unpinned, the 50 MB a
    # batch of 256 px images took 12 ms from pageable memory, and other threads' small copies waited behind it.)
    def copy() -> list[torch.Tensor]:
        data = batch.data.to(device, non_blocking=True)
        if batch.slot is not None:  # the worker may overwrite its slot once it has it back: copy it first
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()  # the decoding stream: only this copy waits
            elif data.data_ptr() == batch.data.data_ptr():
                data = data.clone()
            batch.hand_back()
        return [data]

    (data,) = _on_decode_stream(device, copy)
    shapes = batch.shapes.tolist()
    if shapes and all(shape == shapes[0] for shape in shapes):  # the images lie back to back
        return data.view(len(shapes), *shapes[0])
    bounds = batch.offsets.tolist()
    return [data[start:end].view(shape) for start, end, shape in zip(bounds[:-1], bounds[1:], shapes, strict=True)]


# elements (bytes) of one stacked crop input (1 GiB): images of one size are cropped in chunks of at most this much
_CROP_CHUNK_ELEMENTS = 2**30


def decode_crops(batch: EncodedBatch, device: torch.device, size: int) -> torch.Tensor:
    """Decode ``batch`` on ``device`` (or copy the pixels the workers decoded there) and return its crops resized to
    ``size`` x ``size`` and flipped as drawn: a (B, 3, size, size) uint8 tensor on ``device``. Images of one size
    are stacked and cropped in one call (:func:`vitzoo.ops.resized_crop.resized_crops`: one Triton launch on CUDA;
    ImageNet's few common sizes cover most of a batch); no image is padded to another's size, so one large image
    costs only its own memory."""
    images = _pixels(batch, device) if batch.shapes is not None else _decode_or_substitute(batch, device)
    boxes, flips = torch.from_numpy(batch.boxes), torch.from_numpy(batch.flips)
    if isinstance(images, torch.Tensor):  # one size, already stacked
        if images.numel() <= _CROP_CHUNK_ELEMENTS:
            return resized_crops(images, boxes, flips, size)
        images = list(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(index)
    crops = None
    for shape, indices in by_shape.items():
        per_call = max(1, _CROP_CHUNK_ELEMENTS // math.prod(shape))
        for start in range(0, len(indices), per_call):
            chunk = indices[start:start + per_call]
            cut = resized_crops(torch.stack([images[i] for i in chunk]), boxes[chunk], flips[chunk], size)
            if len(chunk) == len(images):  # one size, one chunk: the common case needs no scatter
                return cut
            if crops is None:
                crops = torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=device)
            crops[to_device(torch.tensor(chunk), device)] = cut
    return crops


@functools.cache
def stage_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream of ``device`` that the training loop's device stage (decoding, cropping, RandAugment,
    normalisation, erasing, mixup) queues its work on, made once per device: see :func:`prepared_ahead`."""
    return torch.cuda.Stream(device)


def _cuda_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The CUDA tensors in ``value`` (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _cuda_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _cuda_tensors(item)


def prepared_ahead(batches: Iterable[tuple[Any, torch.Tensor]],
                   prepare: Callable[[int, Any, torch.Tensor], tuple[Any, torch.Tensor]],
                   device: torch.device, name: str = "prepare-ahead",
                   fetch_range: str | None = PROFILE_RANGES["load"],
                   stream: torch.cuda.Stream | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
    """``batches`` (a training loader's (images, targets)), each replaced by ``prepare(index, images, targets)``
    (``index``: 0, 1, ... in the loader's order), the next batch fetched and prepared by a background thread (named
    ``name``) while the caller works on the current one. Most of the training loop's device stage is C++ that
    releases the GIL (nvJPEG's decoding, operator dispatch, kernel launches), so a stage in a thread of its own
    overlaps the training step's host work instead of adding to it; chained, each stage gets its own thread.
    ``prepare`` must draw its random numbers from state it seeds itself: the caller's thread runs at the same time.
    Batches keep their order, an error in fetching or preparing is raised where its batch would have been, and the
    thread ends with the iteration (also when the caller stops early). ``fetch_range``: the profiler range around
    each fetch from ``batches`` (None: none, for a stage that fetches from another stage rather than a loader).

    ``stream`` (CUDA): the stream the thread queues its copies and kernels on; None, the caller's current stream,
    where they run between the caller's kernels in the order the two threads queued them. On a stream of its own the
    stage's kernels for the next batch can run beside the caller's (the training step), and the stream that takes
    a batch waits for that batch's work alone (an event recorded after it), not for the batches queued since; the
    allocator keeps a batch's memory until that stream's uses of it have run (``record_stream``)."""
    # a batch is handed over by an event only from a stream of its own (on the caller's, the order of the queue does)
    hand_over = device.type == "cuda" and stream is not None
    if device.type != "cuda":
        stream = None
    elif stream is None:
        stream = torch.cuda.current_stream(device)

    def fetch(iterator: Iterator[tuple[Any, torch.Tensor]],
              index: int) -> tuple[tuple[Any, torch.Tensor], torch.cuda.Event | None] | None:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            try:
                with record_function(fetch_range) if fetch_range else contextlib.nullcontext():
                    images, targets = next(iterator)
            except StopIteration:
                return None
            prepared = prepare(index, images, targets)
            if not hand_over:
                return prepared, None
            done = torch.cuda.Event()
            done.record(stream)
            return prepared, done

    def handed_over(fetched: tuple[tuple[Any, torch.Tensor], torch.cuda.Event | None]) -> tuple[Any, torch.Tensor]:
        # runs in the thread that takes the batch, on its current stream
        prepared, done = fetched
        if done is not None:
            consumer = torch.cuda.current_stream(device)
            if consumer != stream:
                consumer.wait_event(done)
                for tensor in _cuda_tensors(prepared):
                    tensor.record_stream(consumer)
        return prepared

    iterator = iter(batches)
    # The first batch in the caller's thread: a loader starts its worker processes on its first batch, and workers
    # started from the background thread failed at their exit.
    fetched = fetch(iterator, 0)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as thread:
        index = 0
        while fetched is not None:
            index += 1
            pending = thread.submit(fetch, iterator, index)
            yield handed_over(fetched)
            fetched = pending.result()
