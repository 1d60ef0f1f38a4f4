"""The image-folder training transform split between the loader workers (uint8) and the training device
(normalisation, random erasing and, with ``augment_on_device``, RandAugment on whole batches,
:class:`vitzoo.train.data.DeviceAugment`)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitzoo.train import data as vdata

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.9,
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Random RGB images of odd sizes, as JPEG and PNG."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width, suffix) in enumerate([(37, 53, "jpg"), (61, 29, "png"), (45, 45, "jpg"),
                                                     (33, 71, "png")]):
        path = folder / f"{index}.{suffix}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_uint8_pipeline_then_device_stage_equals_timms_float_pipeline(image_paths: list[Path]) -> None:
    """Without erasing, the workers' uint8 transform followed by the device stage gives timm's normalised float
    pipeline built from the same arguments, under the same seeds for the PIL operations."""
    from timm.data import create_transform

    augment = vdata.AugmentConfig(re_prob=0.0)
    uint8_tf, device_tf, _ = vdata.folder_transforms(DATA_CONFIG, augment)
    float_tf = create_transform(
        DATA_CONFIG["input_size"], is_training=True, scale=augment.scale, hflip=augment.hflip,
        color_jitter=augment.color_jitter, auto_augment=augment.auto_augment,
        interpolation=augment.train_interpolation, mean=DATA_CONFIG["mean"], std=DATA_CONFIG["std"], re_prob=0.0,
    )
    for seed, path in enumerate(image_paths):
        image = vdata.load_image(str(path))
        vdata.seed_everything(seed, devices=False)
        small = uint8_tf(image)
        vdata.seed_everything(seed, devices=False)
        expected = float_tf(image)
        assert small.dtype == torch.uint8 and small.shape == (3, 32, 32)
        batch = device_tf(small[None])
        assert batch.dtype == torch.float32
        torch.testing.assert_close(batch[0], expected, atol=1e-5, rtol=0)


def test_eval_transform_halves_equal_timms_float_eval_transform(image_paths: list[Path]) -> None:
    """The eval transform's uint8 crops (what the workers send), normalised by its device half, give timm's float32
    eval transform built from the same data config."""
    from timm.data import create_transform

    _, _, eval_tf = vdata.folder_transforms(DATA_CONFIG, vdata.AugmentConfig())
    float_tf = create_transform(DATA_CONFIG["input_size"], is_training=False,
                                interpolation=DATA_CONFIG["interpolation"], mean=DATA_CONFIG["mean"],
                                std=DATA_CONFIG["std"], crop_pct=DATA_CONFIG["crop_pct"])
    for path in image_paths:
        image = vdata.load_image(str(path))
        small = eval_tf(image)
        assert small.dtype == torch.uint8 and small.shape == (3, 32, 32)
        batch = eval_tf.on_device(small[None])
        assert batch.dtype == torch.float32
        torch.testing.assert_close(batch[0], float_tf(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 4, 6, 13])
def test_device_stage_with_mixup_equals_the_stage_then_timms_mixup(seed: int) -> None:
    """DeviceAugment.mix (RandAugment, erasing, and mixup or cutmix in the normalising pass) gives the images and
    soft targets of the stage followed by timm's batch-mode Mixup, from the same draws in the same order (the
    generators end in the same states). Timm's draws for these seeds: cutmix, no mix, mixup, mixup."""
    from timm.data.mixup import Mixup

    _, stage, _ = vdata.folder_transforms(DATA_CONFIG, vdata.AugmentConfig(on_device=True, re_prob=0.5))
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    targets = torch.arange(6) % 4
    results = []
    for fused in (True, False):
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.5, mode="batch",
                      label_smoothing=0.1, num_classes=4)
        vdata.seed_everything(seed, devices=False)
        if fused:
            out = stage.mix(images, targets, mixup)
        else:
            out = mixup(stage(images), targets)
        results.append((*out, random.random(), float(np.random.rand())))
    (fused_x, fused_y, *fused_after), (x, y, *after) = results
    torch.testing.assert_close(fused_x, x, rtol=0, atol=0)
    torch.testing.assert_close(fused_y, y, rtol=0, atol=0)
    assert fused_after == after


def test_random_erasing_replaces_one_rectangle_and_keeps_the_rest() -> None:
    """With re_prob=1 every image of the batch has one erased rectangle (fresh noise); every other pixel is the
    normalised input."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    normalised = vdata.DeviceAugment(DATA_CONFIG["mean"], DATA_CONFIG["std"])(images)
    vdata.seed_everything(0)
    erased = vdata.DeviceAugment(DATA_CONFIG["mean"], DATA_CONFIG["std"], re_prob=1.0, re_mode="pixel")(images)
    mean = torch.tensor(DATA_CONFIG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, (images / 255 - mean) / std, atol=1e-6, rtol=0)
    for before, after in zip(normalised, erased, strict=True):
        changed = (before != after).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "an image was not erased"
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        assert changed[box].all(), "the erased pixels do not form one rectangle"
        outside = torch.ones_like(changed)
        outside[box] = False
        assert torch.equal(after[:, outside], before[:, outside])
        assert changed.sum() <= 32 * 32 / 3 + 2 * 32  # timm's largest rectangle: a third of the image, rounded


class _RandomDraws(torch.utils.data.Dataset):
    """Each sample is a draw from the CPU generator, so it shows the seed its worker used."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return torch.rand(3), index


def _epoch_batches(dataset: vdata.SkipUnreadable, loader, epochs: int) -> list[torch.Tensor]:
    batches = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        batches.append(torch.cat([images for images, _ in loader]))
    return batches


@pytest.mark.parametrize("num_samples", [None, 5])
def test_repeated_augmentation_draws_each_image_in_a_row_with_its_own_seed(num_samples: int | None) -> None:
    """aug_repeats=3: each image of the epoch's permutation three times in a row, as draws whose seeds differ; the
    epoch keeps its length; without repeats the order is the plain permutation."""
    plain = list(vdata.EpochShuffleSampler(6, seed=5, num_samples=num_samples))
    for off in (0, 1):
        assert list(vdata.EpochShuffleSampler(6, seed=5, num_samples=num_samples, repeats=off)) == plain
    sampler = vdata.EpochShuffleSampler(6, seed=5, num_samples=num_samples, repeats=3)
    draws = list(sampler)
    assert len(draws) == len(sampler) == (num_samples or 6) and len(set(draws)) == len(draws)
    images = [draw % 6 for draw in draws]
    assert images == [index for index in plain for _ in range(3)][: len(draws)]
    sampler.set_epoch(1)
    assert [draw % 6 for draw in sampler] != images  # a new permutation each epoch

    dataset = vdata.SkipUnreadable(_RandomDraws(), seed=3)
    samples = [dataset[draw] for draw in draws[:3]]
    assert [target for _, target in samples] == [images[0]] * 3  # one image ...
    assert not torch.equal(samples[0][0], samples[1][0]) and not torch.equal(samples[1][0], samples[2][0])  # ...
    assert torch.equal(dataset[draws[1]][0], samples[1][0])  # three augmentations, each reproducible


def test_persistent_workers_follow_the_epoch_set_in_the_main_process() -> None:
    """Loader workers that live across epochs keep their copy of the dataset; the epoch that selects the per-sample
    seeds must still reach them, or every epoch would repeat the first epoch's augmentation."""
    from torch.utils.data import DataLoader

    in_process = vdata.SkipUnreadable(_RandomDraws(), seed=3)
    expected = _epoch_batches(in_process, DataLoader(in_process, batch_size=3), epochs=3)
    persistent = vdata.SkipUnreadable(_RandomDraws(), seed=3)
    loader = DataLoader(persistent, batch_size=3, num_workers=1, persistent_workers=True,
                        worker_init_fn=vdata.worker_init)
    got = _epoch_batches(persistent, loader, epochs=3)
    assert not torch.equal(expected[0], expected[1])
    for epoch, (want, seen) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(seen, want, rtol=0, atol=0, msg=f"epoch {epoch}")


def test_workers_start_by_forkserver_once_cuda_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vdata.loader_workers(0) == {"num_workers": 0}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert vdata.loader_workers(2)["multiprocessing_context"] is None  # fork: the cheapest start
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert vdata.loader_workers(2)["multiprocessing_context"].get_start_method() == "forkserver"


class _ParentPids(torch.utils.data.Dataset):
    """Each item is the process id of its worker's parent, and the dataset pickles to more than a pipe's 64 KB (a
    folder dataset's list of files), which the parent hands to a worker only once that worker has read it."""

    def __init__(self) -> None:
        self.files = [f"train/class{i % 10}/image_{i:08d}.JPEG" for i in range(20000)]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        import os

        return os.getppid()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a process's memory map under /proc (Linux)")
def test_forkserver_workers_are_forked_from_a_server_that_has_imported_torch() -> None:
    """The forkserver imports what the workers need once (torch among it) and every worker it forks inherits it;
    otherwise each worker imports torch itself after it is forked, and since a worker reads its dataset only after
    its imports, the workers of a large dataset start one after another (minutes for 14 workers on a GPU host)."""
    from torch.utils.data import DataLoader

    arguments = vdata.loader_workers(2, forkserver=True)
    parents = {int(p) for p in DataLoader(_ParentPids(), batch_size=1, **arguments)}
    (server,) = parents  # both workers come from the one server, not from this process
    assert server != __import__("os").getpid()
    assert "libtorch" in Path(f"/proc/{server}/maps").read_text()


@pytest.mark.skipif(not Path(vdata.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_evaluation_through_forkserver_workers_matches_the_main_process(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation loader's workers started by forkserver (what a process that has trained on CUDA gets) see the
    same dataset and transform as the main process: the dataset and worker set-up must pickle."""
    import timm

    from vitzoo.train.evaluate import evaluate_model

    kwargs = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    model = "softmax_deit_tiny_patch16_224"
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save(timm.create_model(model, img_size=28, patch_size=7, in_chans=1, num_classes=10, **kwargs).state_dict(),
               weights)

    def evaluate(workers: int) -> dict:
        return evaluate_model(model, str(weights), "fashion_mnist", None, batch_size=50, workers=workers,
                              val_subset=100, model_kwargs=kwargs, img_size=28, patch_size=7, count_macs=False)

    in_process = evaluate(0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    through_forkserver = evaluate(1)
    assert in_process["count"] == through_forkserver["count"] == 100
    assert (through_forkserver["top1"], through_forkserver["top5"]) == (in_process["top1"], in_process["top5"])


def test_augment_on_device_moves_randaugment_from_the_workers_to_the_device_stage() -> None:
    from vitzoo.train.rand_augment import BatchRandAugment

    workers, device, _ = vdata.folder_transforms(DATA_CONFIG, vdata.AugmentConfig(on_device=True))
    names = [type(step).__name__ for step in workers.transforms]
    assert "RandAugment" not in names and isinstance(device.rand_augment, BatchRandAugment)
    workers, device, _ = vdata.folder_transforms(DATA_CONFIG, vdata.AugmentConfig())
    assert "RandAugment" in [type(step).__name__ for step in workers.transforms] and device.rand_augment is None
    # the device stage runs it on the uint8 batch, before normalising
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = vdata.DeviceAugment(DATA_CONFIG["mean"], DATA_CONFIG["std"], rand_augment=lambda x: 255 - x)(batch)
    mean = torch.tensor(DATA_CONFIG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DATA_CONFIG["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((255 - batch).float() / 255 - mean) / std)


def _grey_candidates(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Every crop-and-flip outcome of GreyTransform for each image, normalised in float64: (2 (2 pad + 1)^2, B, 28,
    28), ordered (flip, top, left)."""
    x = torch.nn.functional.pad(images[:, 0].double() / 255, (pad,) * 4)
    crops = [x[:, top: top + 28, left: left + 28] for top in range(2 * pad + 1) for left in range(2 * pad + 1)]
    crops += [crop.flip(-1) for crop in crops]
    return (torch.stack(crops) - vdata.FASHION_MNIST_MEAN[0]) / vdata.FASHION_MNIST_STD[0]


def test_grey_batch_augment_gives_each_image_one_of_grey_transforms_crops_and_flips() -> None:
    """Every image of the batch comes out as one of GreyTransform's (2 pad + 1)^2 crops, flipped or not; the images
    draw their own offsets and flips, covering every offset and flipping about half of them."""
    torch.manual_seed(3)
    images = torch.randint(0, 256, (301, 1, 28, 28), dtype=torch.uint8)
    out = vdata.GreyBatchAugment(28, pad=2, hflip=0.5)(images)
    assert out.shape == (301, 1, 28, 28) and out.dtype == torch.float32
    error = (_grey_candidates(images, 2) - out[:, 0].double()).abs().amax(dim=(2, 3))  # (candidates, B)
    best, choice = error.min(dim=0)
    assert best.max() < 1e-5, f"image {int(best.argmax())} is no crop/flip of its input ({float(best.max()):.2e})"
    assert len(set((choice % 25).tolist())) == 25, "not every crop offset was drawn"
    flipped = (choice >= 25).float().mean()
    assert 0.4 < flipped < 0.6, f"{flipped:.2f} of the images flipped, expected about 0.5"


@pytest.mark.parametrize("size", [28, 37])
def test_grey_batch_augment_without_crop_or_flip_is_the_eval_transform(size: int) -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    out = vdata.GreyBatchAugment(size, pad=0, hflip=0.0)(images)
    expected = torch.stack([vdata.GreyTransform(False, size)(image) for image in images])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_grey_batch_augment_rejects_normalised_or_misshapen_batches() -> None:
    augment = vdata.GreyBatchAugment()
    with pytest.raises(TypeError, match=r"\(B, 1, 28, 28\) uint8"):
        augment(torch.rand(4, 1, 28, 28))
    with pytest.raises(TypeError, match=r"\(B, 1, 28, 28\) uint8"):
        augment(torch.zeros(4, 3, 28, 28, dtype=torch.uint8))


def test_fashion_mnist_batches_without_a_transform_are_fetched_at_once_with_the_samples_of_one_by_one(
        tmp_path: Path) -> None:
    """The loader's batch fetch (DataLoader calls __getitems__) gives the samples the one-by-one path gives: in one
    indexing op for raw uint8 samples (augment_on_device), one by one under each sample's seed for a transform."""
    from tiny_runs import write_fashion_mnist_idx

    folder = write_fashion_mnist_idx(tmp_path / "fm", train=37, val=5)
    raw = vdata.build_dataset("fashion_mnist", folder, "train", None, seed=0)
    fetched = []
    original = raw.dataset.raw_batch
    raw.dataset.raw_batch = lambda indices: fetched.append(len(indices)) or original(indices)
    loader = torch.utils.data.DataLoader(raw, batch_size=8, sampler=vdata.EpochShuffleSampler(37, seed=1))
    images, targets = zip(*loader, strict=True)
    assert fetched == [8, 8, 8, 8, 5]
    order = list(vdata.EpochShuffleSampler(37, seed=1))
    expected = [raw[index] for index in order]
    assert torch.equal(torch.cat(images), torch.stack([image for image, _ in expected]))
    assert torch.cat(targets).tolist() == [target for _, target in expected]
    # with a random transform each sample is still drawn under its own seed
    transformed = vdata.build_dataset("fashion_mnist", folder, "train", vdata.GreyTransform(True), seed=0)
    batch = transformed.__getitems__([3, 1, 3])
    for (image, target), index in zip(batch, [3, 1, 3], strict=True):
        assert torch.equal(image, transformed[index][0]) and target == transformed[index][1]


def test_seed_everything_seeds_torch_as_torch_manual_seed() -> None:
    """The per-batch seeding sets the CPU generator (and CUDA's, where there is one) to the state ``torch.manual_seed``
    gives, so runs and resumes draw the same numbers as before it stopped calling ``torch.manual_seed``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    torch.manual_seed(1234)
    expected = [torch.rand(5, device=device) for device in devices]
    torch.manual_seed(99)
    vdata.seed_everything(1234)
    for device, values in zip(devices, expected, strict=True):
        torch.testing.assert_close(torch.rand(5, device=device), values, atol=0, rtol=0)
