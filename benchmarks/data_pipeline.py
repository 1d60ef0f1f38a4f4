"""What the training data pipeline of an image-folder config costs on the CPU, stage by stage, and what a loader
delivers (no model; a GPU only for ``device_decode``).

For the config's training transform (``vitzoo.train.factories.build_transforms``: the loader workers' random-resized
crop, flip, RandAugment (unless ``augment_on_device``) and uint8 tensor conversion, then the training device's stage,
``vitzoo.train.data.DeviceAugment``: RandAugment with ``augment_on_device``, normalisation and random erasing; with
``decode_on_device`` the workers only read each file and draw its crop and flip, and the device decodes and crops
before the rest), on the first ``--images`` training images in shuffled order:

- ``stages_ms_per_image``: milliseconds per image of reading + decoding (``vitzoo.train.data.load_image``), of each
  worker transform and of the device stage on one image on the CPU, in one process; with ``decode_on_device``, of
  reading the file's bytes and checking its header (``vitzoo.train.data.load_encoded``) and of drawing the crop and
  flip (``EncodedRandomResizedCrop``), over all the images first, then of the device stage on each image's crop,
  decoded beforehand on the CPU untimed (decoding and cropping are timed in ``device_decode`` instead, outside this
  sum); ``img_per_s_per_core`` = 1000 / their sum;
- ``loaders``: images per second a ``DataLoader`` with ``--workers`` processes sustains at the config's batch size
  (timed once the batches its workers prepared during start-up are drawn), for normalised float32 tensors (the device
  stage run on each image in the workers) and the workers' uint8 tensors (what training hands to the device: a
  quarter of the bytes through the workers' shared memory), both with the workers decoding and cropping (also for a
  ``decode_on_device`` config); for a RandAugment policy the workers run, their uint8 tensors when RandAugment runs on
  the device instead (``augment_on_device``); and, for a RandAugment policy or a ``decode_on_device`` config, the
  workers' JPEG bytes and crop draws when decoding and cropping run there too (``decode_on_device``), and their
  decoded pixels and crop draws when only the crops do (``crop_on_device``); with ``--packed``, the same pixels and
  draws copied out of a packed store of the folder (``vitzoo-pack``, ``dataset=packed``) instead of decoded;
- ``device_decode``: for ``decode_on_device``, milliseconds per image of decoding and cropping whole batches
  (``vitzoo.train.device_decode.decode_crops``) on ``--device`` (default: CUDA when there is one, else the CPU).

    python benchmarks/data_pipeline.py --config configs/fashion_imagenet/softmax.yaml --data-dir data/fim \\
        --workers 1 2 --out benchmarks/results/data_pipeline/cpu.json

Mixup and CutMix run on whole batches in the training loop (on the training device), so they are not part of this.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torchvision.transforms import Compose

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.bench.common import git_revision, write_json  # noqa: E402
from vitzoo.train.config import load_config  # noqa: E402
from vitzoo.train.data import DeviceAugment, build_dataset, folder_classes, load_encoded, load_image  # noqa: E402
from vitzoo.train.device_decode import (  # noqa: E402
    EncodedCrop,
    EncodedRandomResizedCrop,
    PixelRandomResizedCrop,
    collate_encoded,
    decode_crops,
)
from vitzoo.train.factories import build_transforms, create_model_from_config  # noqa: E402

Step = tuple[str | None, Callable]  # a stage's name (None: run untimed) and function


def stage_costs(dataset, phases: list[list[Step]], images: int) -> dict[str, float]:
    """ms per image of each step of ``phases``: (name, function) pairs applied in order to each file's path, the first
    one loading it. A step named None runs untimed (it makes the next step's input without being part of the pipeline
    timed here); steps of one name add up. Each phase runs over every image before the next one starts, for steps
    that run in another process in training: the device stage's large tensors, interleaved, took the decode_on_device
    workers' small steps about 3x their time alone."""
    paths = [dataset.samples[i][0] for i in torch.randperm(len(dataset.samples), generator=torch.Generator()
                                                           .manual_seed(0))[:images].tolist()]
    totals: dict[str, float] = {}
    samples: list = paths
    for steps in phases:
        for index, sample in enumerate(samples):
            for name, step in steps:
                begin = time.perf_counter()
                sample = step(sample)
                if name is not None:
                    totals[name] = totals.get(name, 0.0) + time.perf_counter() - begin
            samples[index] = sample
    return {name: round(seconds * 1e3 / len(paths), 3) for name, seconds in totals.items()}


def pixel_phases(uint8_tf: Compose, device_tf: DeviceAugment) -> list[list[Step]]:
    """The stages of a pipeline whose workers decode: reading + decoding, each worker transform and the device stage,
    image by image (one phase, as this script has always timed them)."""
    return [[("read + decode", load_image), *[(type(step).__name__, step) for step in uint8_tf.transforms],
             (type(device_tf).__name__, device_tf)]]


def encoded_phases(draws_tf: EncodedRandomResizedCrop, device_tf: DeviceAugment) -> list[list[Step]]:
    """The stages of a ``decode_on_device`` pipeline (the workers read and draw the crop) or a ``crop_on_device`` one
    (they decode and draw it): the workers' steps over all the images, then the device stage on each image's crop
    after an untimed decoding and cropping on the CPU (``device_decode`` times those on whole batches on the
    device)."""
    cpu = torch.device("cpu")

    def decode(crop: EncodedCrop) -> torch.Tensor:
        return device_tf.decode(collate_encoded([(crop, 0)])[0], cpu)[0]

    load = ("read + decode", load_image) if isinstance(draws_tf, PixelRandomResizedCrop) else ("read + check",
                                                                                              load_encoded)
    return [[load, (type(draws_tf).__name__, draws_tf)],
            [(None, decode), (type(device_tf).__name__, device_tf)]]


PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready


def loader_rate(dataset, batch_size: int, workers: int, batches: int | None,
                collate: Callable | None = None) -> float:
    """Images per second a DataLoader sustains: timed over ``batches`` batches (default: 3 per worker, at least 8)
    after the batches its workers hold ready at start (workers x prefetch factor, made while the first one was) have
    been drawn, so the rate is what the workers produce rather than how fast a full queue empties. Fewer timed
    batches than workers would time batches the workers had mostly made before the clock started."""
    batches = batches or max(8, 3 * workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0),
                                         prefetch_factor=PREFETCH_FACTOR if workers else None, collate_fn=collate)
    warm = 1 + workers * PREFETCH_FACTOR
    if len(loader) < warm + batches:
        raise SystemExit(f"the folder holds {len(dataset)} images: {warm + batches} batches of {batch_size} are needed "
                         f"for {workers} worker(s) ({warm} drawn before timing, --batches {batches} timed); build a "
                         "larger folder or pass fewer --batches")
    iterator = iter(loader)
    for _ in range(warm):  # worker start-up and the prefetched queue
        next(iterator)
    begin = time.perf_counter()
    count = 0
    for _ in range(batches):
        images, _ = next(iterator)
        count += len(images)
    return count / (time.perf_counter() - begin)


def device_decode_cost(dataset, batch_size: int, device: torch.device, size: int, batches: int = 4) -> dict:
    """ms per image of decoding and cropping ``batches`` whole batches on ``device`` (after one untimed batch)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0), collate_fn=collate_encoded)
    iterator = iter(loader)
    decode_crops(next(iterator)[0], device, size)
    encoded = [next(iterator)[0] for _ in range(batches)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    for batch in encoded:
        decode_crops(batch, device, size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - begin
    return {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
            "batch_size": batch_size, "ms_per_image": round(elapsed * 1e3 / (batches * batch_size), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a training config of an image-folder dataset")
    parser.add_argument("--data-dir", required=True, help="the image folder (train/<class>/<image>)")
    parser.add_argument("--images", type=int, default=200, help="images timed stage by stage")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="loader worker counts to time")
    parser.add_argument("--batches", type=int,
                        help="batches timed per loader once its prefetched queue is drained (default: 3 x workers, at "
                             "least 8; the folder must hold 1 + 2 x workers more)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where decode_on_device's decoding and cropping is timed")
    parser.add_argument("--packed", type=Path,
                        help="a packed store of --data-dir (vitzoo-pack): also time its crop_on_device loader")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. augment_on_device=true (RandAugment in the device stage)")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides, data_dir=args.data_dir)
    if config.dataset != "folder":
        parser.error(f"--config trains on {config.dataset!r}; this benchmark measures image-folder pipelines")
    torch.set_num_threads(1)
    classes = folder_classes(Path(args.data_dir) / "train")
    model = create_model_from_config(config, num_classes=len(classes), in_chans=3)
    # The float32 and uint8 loaders' workers decode and crop, also for a decode_on_device config (whose own workers
    # hand over JPEG bytes: the last loader below), so the rows compare the placements of one recipe.
    uint8_tf, device_tf, _, _ = build_transforms(
        dataclasses.replace(config, decode_on_device=False, crop_on_device=False), model)
    # the whole training transform on each image in the workers: normalised float32 out of the loader
    float_tf = Compose([uint8_tf, device_tf])
    dataset = build_dataset("folder", args.data_dir, "train", float_tf, config.seed, classes=classes)
    uint8_dataset = build_dataset("folder", args.data_dir, "train", uint8_tf, config.seed, classes=classes)
    variants = [("float32", dataset, None), ("uint8", uint8_dataset, None)]
    rand_augment = str(config.auto_augment or "").startswith("rand")
    if rand_augment and not config.augment_on_device:
        # what the workers do when RandAugment runs on the training device (augment_on_device)
        crop_tf = build_transforms(dataclasses.replace(config, augment_on_device=True), model)[0]
        variants.append(("uint8, RandAugment on the device",
                         build_dataset("folder", args.data_dir, "train", crop_tf, config.seed, classes=classes), None))
    encoded = None
    if rand_augment or config.decode_on_device or config.crop_on_device:
        # what the workers do when decoding and cropping run there too (decode_on_device; RandAugment, if any, then
        # follows them on the device, and without one augment_on_device stays off, as the config check requires),
        # and when only the crops do (crop_on_device: the workers decode)
        draws_tf, draws_device_tf = build_transforms(dataclasses.replace(
            config, augment_on_device=rand_augment, decode_on_device=True, crop_on_device=False), model)[:2]
        encoded = build_dataset("folder", args.data_dir, "train", draws_tf, config.seed, classes=classes,
                                encoded=True)
        pixel_tf = build_transforms(dataclasses.replace(
            config, augment_on_device=rand_augment, decode_on_device=False, crop_on_device=True), model)[0]
        pixels = build_dataset("folder", args.data_dir, "train", pixel_tf, config.seed, classes=classes)
        variants += [("JPEG bytes and crop draws, decoded on the device", encoded, collate_encoded),
                     ("decoded pixels and crop draws, cropped on the device", pixels, collate_encoded)]
        if args.packed:
            packed = build_dataset("packed", args.packed, "train", pixel_tf, config.seed, classes=classes)
            variants.append(("packed pixels and crop draws, cropped on the device", packed, collate_encoded))
    folder = dataset.dataset  # the ImageFolder inside SkipUnreadable
    # the stages of the config's own pipeline
    if config.decode_on_device:
        phases = encoded_phases(draws_tf, draws_device_tf)
    elif config.crop_on_device:
        phases = encoded_phases(pixel_tf, draws_device_tf)
    else:
        phases = pixel_phases(uint8_tf, device_tf)
    stages = stage_costs(folder, phases, args.images)
    result = {
        "info": {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
            "torch": torch.__version__, "timm": timm.__version__,
            "pillow": __import__("PIL").__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(["python", *sys.argv]), "git_revision": git_revision(),
            "config": args.config, "batch_size": config.batch_size,
            **({"packed": str(args.packed)} if args.packed else {}),
            "augmentation": {key: getattr(config, key) for key in ("auto_augment", "re_prob", "re_mode",
                                                                   "train_interpolation", "hflip",
                                                                   "augment_on_device", "decode_on_device",
                                                                   "crop_on_device")},
        },
        "stages_ms_per_image": stages,
        "img_per_s_per_core": round(1e3 / sum(stages.values()), 1),
        "loaders": [],
    }
    print(result["stages_ms_per_image"], "->", result["img_per_s_per_core"], "img/s per core", flush=True)
    if encoded is not None:
        result["device_decode"] = device_decode_cost(encoded, config.batch_size, torch.device(args.device),
                                                     config.img_size or model.pretrained_cfg["input_size"][-1])
        print("decode_on_device:", result["device_decode"], flush=True)
    for workers in args.workers:
        for output, images, collate in variants:
            rate = loader_rate(images, config.batch_size, workers, args.batches, collate)
            result["loaders"].append({"workers": workers, "output": output, "img_per_s": round(rate, 1)})
            print(f"{workers} workers, {output}: {rate:.0f} img/s", flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
