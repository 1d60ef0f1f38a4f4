"""decode_on_device: the workers' file checks and crop draws, and the batch decoding and cropping on the device,
against Pillow's decode, crop, bilinear resize and flip."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitzoo.train.data import UnreadableImage, load_encoded, sample_seed, seed_everything
from vitzoo.train.device_decode import (
    EncodedBatch,
    EncodedCrop,
    EncodedRandomResizedCrop,
    collate_encoded,
    decode_crops,
)

CPU = torch.device("cpu")


def _picture(height: int = 80, width: int = 96) -> np.ndarray:
    """Smooth gradients and a sharp disc: asymmetric, so a wrong flip or offset shows."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 / width, yy * 255 / height, 128 + 100 * np.sin(xx / 9) * np.cos(yy / 7)], axis=-1)
    image[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 300] = (250, 30, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "a.jpg"
    Image.fromarray(_picture()).save(path, quality=95)
    return path


def _pillow_crop(path: Path, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    with Image.open(path) as image:
        crop = image.convert("RGB").crop(box).resize((size, size), Image.BILINEAR)
    return np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop).astype(np.int64)


def test_a_plain_jpeg_is_passed_on_as_its_bytes(jpeg: Path) -> None:
    encoded = load_encoded(str(jpeg))
    assert bytes(encoded.data.numpy()) == jpeg.read_bytes()
    assert (encoded.width, encoded.height) == (96, 80)


@pytest.mark.parametrize("kind", ["png", "cmyk-jpeg", "grey16-png", "grey-jpeg", "progressive-jpeg"])
def test_other_images_are_reencoded_as_rgb_jpegs(tmp_path: Path, kind: str) -> None:
    picture = _picture()
    path = tmp_path / ("a.png" if "png" in kind else "a.jpg")
    if kind == "png":
        Image.fromarray(picture).save(path)
    elif kind == "cmyk-jpeg":
        Image.fromarray(picture).convert("CMYK").save(path, quality=95)
    elif kind == "grey-jpeg":
        Image.fromarray(picture[..., 0]).save(path, quality=95)
    elif kind == "progressive-jpeg":
        Image.fromarray(picture).save(path, quality=95, progressive=True)
    else:
        Image.fromarray(picture[..., 0].astype(np.uint16) * 257).save(path)
    encoded = load_encoded(str(path))
    assert bytes(encoded.data.numpy()) != path.read_bytes()  # re-encoded
    assert bytes(encoded.data[:2].numpy()) == b"\xff\xd8" and (encoded.width, encoded.height) == (96, 80)
    with Image.open(io.BytesIO(bytes(encoded.data.numpy()))) as image:
        assert image.mode == "RGB" and not image.info.get("progressive")
    batch, _ = collate_encoded([(EncodedCrop(encoded.data, (0.0, 0.0, 96.0, 80.0), False), 0)])
    decoded = decode_crops(batch, CPU, 32)
    assert decoded.shape == (1, 3, 32, 32) and decoded.dtype == torch.uint8


def test_unreadable_files_raise_unreadable_image(tmp_path: Path, jpeg: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    for path in (garbage, truncated):
        with pytest.raises(UnreadableImage, match=path.name):
            load_encoded(str(path))


@pytest.mark.parametrize(("box", "flip", "size"), [
    ((10, 5, 70, 65), False, 32),  # shrink 1.9x
    ((10, 5, 70, 65), True, 32),
    ((20, 20, 40, 40), False, 32),  # enlarge 1.6x
    ((0, 0, 96, 80), False, 64),  # the whole image, two aspect ratios
])
def test_decoded_crops_match_pillows_bilinear_crops(jpeg: Path, box: tuple[int, int, int, int], flip: bool,
                                                    size: int) -> None:
    encoded = load_encoded(str(jpeg))
    batch, targets = collate_encoded([(EncodedCrop(encoded.data, tuple(map(float, box)), flip), 7)])
    assert targets.tolist() == [7]
    got = decode_crops(batch, CPU, size)[0].permute(1, 2, 0).numpy().astype(np.int64)
    expected = _pillow_crop(jpeg, box, size, flip)
    # measured: mean 0.2-0.5 grey levels, the largest differences on the disc's sharp edge
    assert np.abs(got - expected).mean() < 1.0
    assert np.percentile(np.abs(got - expected), 99) <= 6
    assert np.abs(got - _pillow_crop(jpeg, box, size, not flip)).mean() > 10  # the comparison sees orientation


def test_a_file_the_decoder_rejects_becomes_grey_and_the_batch_goes_on(tmp_path: Path, jpeg: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    raw = bytearray(jpeg.read_bytes())
    table = raw.find(b"\xff\xc4")  # a Huffman table: Pillow's header check passes it, libjpeg rejects it
    raw[table + 5:table + 21] = b"\xff" * 16
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(bytes(raw))
    crops = [(EncodedCrop(load_encoded(str(path)).data, (10.0, 5.0, 70.0, 65.0), False), 0) for path in (jpeg, damaged)]
    decoded = decode_crops(collate_encoded(crops)[0], CPU, 32)
    assert torch.equal(decoded[0], decode_crops(collate_encoded(crops[:1])[0], CPU, 32)[0])
    assert (decoded[1] == 128).all()
    assert "1 JPEG file(s) of a training batch failed to decode" in caplog.text
    with pytest.raises(RuntimeError):  # a batch of nothing but damaged files is not the data's occasional fault
        decode_crops(collate_encoded(crops[1:] * 2)[0], CPU, 32)


def test_a_batch_of_different_sizes_decodes_each_image_as_alone(tmp_path: Path, jpeg: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "small.jpg"
    Image.fromarray(_picture(40, 56)).save(small, quality=90)
    crops = [(EncodedCrop(load_encoded(str(path)).data, box, flip), 0)
             for path, box, flip in ((jpeg, (3.0, 4.0, 90.0, 77.0), True), (small, (0.0, 0.0, 56.0, 40.0), False))]
    together = decode_crops(collate_encoded(crops)[0], CPU, 24)
    for index, crop in enumerate(crops):
        alone = decode_crops(collate_encoded([crop])[0], CPU, 24)
        assert torch.equal(together[index], alone[0])
    from vitzoo.train import device_decode

    monkeypatch.setattr(device_decode, "_CROP_CHUNK_ELEMENTS", 1)  # every image its own roi_align call
    assert torch.equal(decode_crops(collate_encoded(crops * 2)[0], CPU, 24), torch.cat([together, together]))


def test_crop_draws_follow_the_sample_seed_and_stay_inside_the_image() -> None:
    sampler = EncodedRandomResizedCrop(scale=(0.08, 1.0), hflip=0.5)
    boxes, flips = [], []
    for index in range(200):
        seed_everything(sample_seed(3, 0, index), devices=False)
        x0, y0, w, h = sampler.box(96, 80)
        assert 0 <= x0 and 0 <= y0 and x0 + w <= 96 and y0 + h <= 80 and w > 0 and h > 0
        assert 0.08 * 96 * 80 * 0.8 <= w * h <= 96 * 80
        boxes.append((x0, y0, w, h))
        flips.append(bool(torch.rand(1) < 0.5))
    seed_everything(sample_seed(3, 0, 5), devices=False)
    assert sampler.box(96, 80) == boxes[5]
    assert len(set(boxes)) > 150 and 60 < sum(flips) < 140
    # an image far outside the ratio range gets the centre crop of the nearest allowed ratio
    assert EncodedRandomResizedCrop(scale=(0.9, 1.0)).box(1000, 10) == (493, 0, 13, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decoding)")
def test_the_gpu_decodes_and_crops_as_the_cpu_does(jpeg: Path) -> None:
    encoded = load_encoded(str(jpeg))
    batch, _ = collate_encoded([(EncodedCrop(encoded.data, (10.0, 5.0, 70.0, 65.0), True), 0),
                                (EncodedCrop(encoded.data, (0.0, 0.0, 96.0, 80.0), False), 0)])
    on_gpu = decode_crops(batch, torch.device("cuda"), 32).cpu().long()
    on_cpu = decode_crops(batch, CPU, 32).long()
    # nvJPEG's inverse DCT and upsampling round differently from libjpeg's by a grey level here and there
    assert (on_gpu - on_cpu).abs().float().mean() < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decoding)")
def test_decoding_does_not_write_memory_that_queued_kernels_still_read(jpeg: Path) -> None:
    """The host runs ahead of the GPU: tensors it has freed may still be read by queued kernels. nvJPEG writes from
    a stream of its own, so its outputs must not take those tensors' memory before the kernels ran."""
    device = torch.device("cuda")
    encoded = load_encoded(str(jpeg))
    batch, _ = collate_encoded([(EncodedCrop(encoded.data, (0.0, 0.0, 96.0, 80.0), False), 0)] * 8)
    decode_crops(batch, device, 32)  # the decoder's set-up, outside the race below
    torch.cuda.synchronize()
    # freed blocks of exactly the decoded images' size, read only after a long wait on the current stream
    sources = [torch.full((3, 80, 96), 7, dtype=torch.uint8, device=device) for _ in range(8)]
    torch.cuda._sleep(500_000_000)  # about a quarter of a second at 2 GHz
    copies = [source.clone() for source in sources]
    del sources
    decode_crops(batch, device, 32)
    torch.cuda.synchronize()
    assert all(bool((copy == 7).all()) for copy in copies)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decoding, CUDA graphs)")
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_gpu_run_decodes_on_the_device_and_graphs_its_steps(tmp_path: Path) -> None:
    """The fastest pipeline end to end on a GPU: JPEG bytes from the workers, decoding, crops and RandAugment on the
    device, graphed steps, bf16; the run trains its updates with a finite loss and writes its checkpoint."""
    from tiny_runs import MODEL, train_args, write_image_folder

    from vitzoo.train.config import load_config
    from vitzoo.train.loop import train

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")
    output = tmp_path / "run"
    args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                      "decode_on_device=true", "cuda_graph=true", "precision=bf16", "re_prob=0.25", "workers=1",
                      "epochs=1")
    metrics = train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(data)))
    assert metrics["num_updates"] == 6 and np.isfinite(metrics["train_loss"])
    assert (output / "checkpoints").is_dir()


def test_prepared_ahead_prepares_every_batch_in_order_with_its_index(jpeg: Path) -> None:
    from vitzoo.train.device_decode import prepared_ahead

    encoded = load_encoded(str(jpeg))
    batches = [collate_encoded([(EncodedCrop(encoded.data, (float(i), 0.0, 60.0 + i, 60.0), i % 2 == 1), i)])
               for i in range(5)]
    indices = []

    def prepare(index: int, batch: EncodedBatch, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices.append(index)
        return decode_crops(batch, CPU, 16), targets + 10

    got = list(prepared_ahead(batches, prepare, CPU))
    assert indices == [0, 1, 2, 3, 4]
    assert [int(targets) for _, targets in got] == [10, 11, 12, 13, 14]
    for (images, _), (batch, _) in zip(got, batches, strict=True):
        assert torch.equal(images, decode_crops(batch, CPU, 16))


def test_prepared_ahead_raises_a_preparing_error_at_its_batch_and_stops_its_thread_with_the_caller() -> None:
    import threading

    from vitzoo.train.device_decode import prepared_ahead

    def prepare(index: int, images: torch.Tensor, name: str) -> tuple[torch.Tensor, str]:
        if index == 1:
            raise RuntimeError("corrupt batch")
        return images, name

    seen = []
    with pytest.raises(RuntimeError, match="corrupt batch"):
        for _, name in prepared_ahead([(torch.zeros(1), "good"), (torch.zeros(1), "bad"), (torch.zeros(1), "never")],
                                      prepare, CPU):
            seen.append(name)
    assert seen == ["good"]
    # chained, each stage in a thread of its own; stopping early ends both threads with the generator
    first = prepared_ahead([(torch.zeros(1), index) for index in range(100)], lambda i, x, t: (x + 1, t), CPU,
                           name="first-stage")
    ahead = prepared_ahead(first, lambda i, x, t: (x * 3, t), CPU, name="second-stage")
    assert [(float(x), t) for x, t in (next(ahead), next(ahead))] == [(3.0, 0), (3.0, 1)]
    def stages() -> set[str]:
        return {thread.name.rsplit("_", 1)[0] for thread in threading.enumerate()} & {"first-stage", "second-stage"}

    assert stages() == {"first-stage", "second-stage"}
    ahead.close()
    del first
    assert stages() == set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (streams)")
def test_a_stage_on_a_stream_of_its_own_hands_each_batch_over_after_its_work_and_keeps_its_memory() -> None:
    """prepared_ahead on a stream of its own: the taking stream waits for the batch's kernels (queued behind a wait
    on the stage's stream), and the allocator does not give a taken batch's memory to a later batch while the taker's
    queued kernels still read it (the taker's stream is held up longer than the stage's)."""
    from vitzoo.train.device_decode import prepared_ahead

    device = torch.device("cuda")
    stream = torch.cuda.Stream(device)

    def prepare(index: int, images: None, targets: int) -> tuple[torch.Tensor, int]:
        torch.cuda._sleep(100_000_000)  # about 50 ms at 2 GHz on the stage's stream before it writes the batch
        return torch.full((1 << 20,), float(index + 1), device=device), targets

    firsts, lasts = [], []
    for images, targets in prepared_ahead([(None, index) for index in range(4)], prepare, device, stream=stream):
        firsts.append((images.clone(), targets))  # queued at once: must wait for the stage's write
        torch.cuda._sleep(400_000_000)  # the taking stream is busy while the stage writes the next batches
        lasts.append(images.clone())
        del images
    torch.cuda.synchronize()
    for index, ((first, targets), last) in enumerate(zip(firsts, lasts, strict=True)):
        assert targets == index
        assert bool((first == index + 1).all()), f"batch {index} was read before the stage wrote it"
        assert bool((last == index + 1).all()), f"batch {index} was overwritten while it was still being read"


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_the_device_stage_ahead_trains_as_the_same_stage_run_in_the_training_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_on_device decodes each batch in one thread and augments it (RandAugment, erasing, mixup) in another,
    its python and numpy draws seeded there per batch: the run ends with the weights of the same run whose batches
    are prepared one at a time in the training thread."""
    from safetensors.torch import load_file
    from tiny_runs import MODEL, train_args, write_image_folder

    import vitzoo.train.loop as loop
    from vitzoo.train.config import load_config

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")

    def run(name: str) -> dict[str, torch.Tensor]:
        output = tmp_path / name
        args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                          "decode_on_device=true", "re_prob=0.5", "mixup=0.8", "cutmix=1.0", "workers=1", "epochs=2")
        loop.train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(data)))
        return load_file(str(max((output / "checkpoints").glob("step-*")) / "model.safetensors"))

    ahead = run("ahead")
    monkeypatch.setattr(loop, "_prepares_ahead", lambda training: False)
    inline = run("inline")
    assert ahead.keys() == inline.keys()
    for key in ahead:
        assert torch.equal(ahead[key], inline[key]), f"{key} differs"


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_bf16_run_whose_device_stage_writes_bf16_trains_as_with_float32_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a bf16 run the device stage rounds its batches (erased, cutmixed or mixed up) to bf16 itself; the run ends
    with the weights of the same run handed float32 batches, which its autocast rounds the same way."""
    from safetensors.torch import load_file
    from tiny_runs import MODEL, train_args, write_image_folder

    import vitzoo.train.factories as factories
    import vitzoo.train.loop as loop
    from vitzoo.train.config import load_config
    from vitzoo.train.data import DeviceAugment

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")
    written = []
    mix = DeviceAugment.mix

    def run(name: str) -> dict[str, torch.Tensor]:
        output = tmp_path / name
        args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                          "decode_on_device=true", "re_prob=0.5", "mixup=0.8", "cutmix=1.0", "workers=1", "epochs=2",
                          "precision=bf16")
        loop.train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(data)))
        return load_file(str(max((output / "checkpoints").glob("step-*")) / "model.safetensors"))

    def recording_mix(self, *args, **kwargs):
        images, targets = mix(self, *args, **kwargs)
        written.append(images.dtype)
        return images, targets

    monkeypatch.setattr(DeviceAugment, "mix", recording_mix)
    rounded = run("bf16-batches")
    assert written and set(written) == {torch.bfloat16}
    monkeypatch.setattr(factories, "model_input_dtype", lambda config: torch.float32)
    written.clear()
    float32 = run("float32-batches")
    assert written and set(written) == {torch.float32}
    assert rounded.keys() == float32.keys()
    for key in rounded:
        assert torch.equal(rounded[key], float32[key]), f"{key} differs"


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_run_stopped_mid_epoch_shuts_its_decoding_loader_down_cleanly(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """max_steps stops the epoch with the next batch being decoded ahead; the loader's worker must still exit
    cleanly (workers started from the background thread failed at their exit)."""
    import gc
    import sys

    from tiny_runs import MODEL, train_args, write_image_folder

    from vitzoo.train.config import load_config
    from vitzoo.train.loop import train

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(info.exc_value))
    output = tmp_path / "run"
    args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                      "decode_on_device=true", "workers=1", "max_steps=4")
    metrics = train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(data)))
    gc.collect()
    assert metrics["num_updates"] == 4
    assert unraisable == []


def test_crops_of_pixels_the_workers_decoded_equal_the_crops_of_their_files(tmp_path: Path, jpeg: Path) -> None:
    """crop_on_device: the workers decode with Pillow and send the pixels (shapes packed beside them); the device's
    crops equal those of the same JPEGs decoded on the device, for a batch of two sizes, flipped and not."""
    from vitzoo.train.data import load_image
    from vitzoo.train.device_decode import PixelRandomResizedCrop

    small = tmp_path / "small.jpg"
    Image.fromarray(_picture(40, 56)).save(small, quality=90)
    cases = ((jpeg, (3.0, 4.0, 90.0, 77.0), True), (small, (0.0, 0.0, 56.0, 40.0), False), (jpeg, (0.0, 0.0, 9.0, 7.0),
                                                                                              False))
    files = [(EncodedCrop(load_encoded(str(path)).data, box, flip), 0) for path, box, flip in cases]
    pixels = []
    for path, box, flip in cases:
        drawn = PixelRandomResizedCrop(hflip=0.0)(load_image(str(path)))
        assert drawn.shape == (3, *Image.open(path).size[::-1]) and drawn.data.dtype == torch.uint8
        pixels.append((EncodedCrop(drawn.data, box, flip, drawn.shape), 0))
    batch, _ = collate_encoded(pixels)
    assert batch.shapes.tolist() == [[3, 80, 96], [3, 40, 56], [3, 80, 96]]
    assert torch.equal(decode_crops(batch, CPU, 24), decode_crops(collate_encoded(files)[0], CPU, 24))
    # one size: the copied pixels are the stacked batch itself
    one_size = [pixels[0], pixels[2]]
    assert torch.equal(decode_crops(collate_encoded(one_size)[0], CPU, 24),
                       decode_crops(collate_encoded([files[0], files[2]])[0], CPU, 24))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned memory)")
def test_the_loaders_pin_thread_pins_a_batchs_bytes_and_keeps_the_rest() -> None:
    batch = EncodedBatch(torch.arange(12, dtype=torch.uint8), np.array([0, 12]), np.zeros((1, 4), np.float32),
                         np.zeros(1, bool), np.array([[3, 2, 2]]))
    pinned = batch.pin_memory()
    assert pinned.data.is_pinned() and torch.equal(pinned.data, batch.data) and pinned.shapes is batch.shapes


def test_a_workers_batch_holds_one_tensor_and_numpy_fields() -> None:
    """Only the bytes are a tensor (each tensor costs a shared-memory handshake on receipt); the per-image fields are
    NumPy arrays, pickled with the batch."""
    crops = [(EncodedCrop(torch.full((3 * 4 * 5,), k, dtype=torch.uint8), (0.0, 1.0, 5.0, 4.0), k == 1, (3, 4, 5)), k)
             for k in range(3)]
    batch, targets = collate_encoded(crops)
    assert [field.name for field in dataclasses.fields(batch)
            if isinstance(getattr(batch, field.name), torch.Tensor)] == ["data"]
    assert batch.offsets.tolist() == [0, 60, 120, 180] and batch.flips.tolist() == [False, True, False]
    assert batch.shapes.tolist() == [[3, 4, 5]] * 3 and batch.boxes.dtype == np.float32
    assert targets.tolist() == [0, 1, 2]


def test_pixel_crops_draw_what_the_encoded_crops_draw_for_the_same_seed(jpeg: Path) -> None:
    from vitzoo.train.data import load_image
    from vitzoo.train.device_decode import PixelRandomResizedCrop

    image = load_image(str(jpeg))
    torch.manual_seed(3)
    pixel = PixelRandomResizedCrop()(image)
    torch.manual_seed(3)
    encoded = EncodedRandomResizedCrop()(load_encoded(str(jpeg)))
    assert (pixel.box, pixel.flip) == (encoded.box, encoded.flip)
    assert torch.equal(pixel.data.view(pixel.shape).permute(1, 2, 0), torch.from_numpy(np.asarray(image)))


def test_a_run_with_the_crops_on_the_device_trains(tmp_path: Path) -> None:
    from tiny_runs import MODEL, train_args, write_image_folder

    from vitzoo.train.config import load_config
    from vitzoo.train.loop import train

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")
    output = tmp_path / "run"
    args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                      "crop_on_device=true", "workers=1", "max_steps=3")
    metrics = train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(data)))
    assert metrics["num_updates"] == 3


def test_chained_stages_mark_one_loader_fetch_per_batch() -> None:
    """The profiler's load range marks the fetches from the loader, not the second stage's waits for the first."""
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    from vitzoo.train.device_decode import PROFILE_RANGES, prepared_ahead

    with profile(activities=[ProfilerActivity.CPU],
                 experimental_config=_ExperimentalConfig(profile_all_threads=True)) as profiler:
        first = prepared_ahead([(torch.ones(1), index) for index in range(4)], lambda i, x, t: (x + 1, t), CPU)
        chained = prepared_ahead(first, lambda i, x, t: (x * 2, t), CPU, fetch_range=None)
        assert [t for _, t in chained] == [0, 1, 2, 3]
    loads = [event for event in profiler.events() if event.name == PROFILE_RANGES["load"]]
    assert len(loads) == 5  # four batches and the fetch that finds the loader's end
