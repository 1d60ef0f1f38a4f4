"""RandAugment on uint8 batches (:mod:`vitzoo.train.rand_augment`) against timm's Pillow RandAugment: each op of
the layer reference (:mod:`vitzoo.ops.rand_augment.reference`) on random images of odd sizes, and the policy's draws
(the kernel against the reference: tests/ops/rand_augment; a resumed run with ``augment_on_device``:
test_checkpoints.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment as timm_aa

from vitzoo.ops.rand_augment import reference as ref
from vitzoo.train import rand_augment as ra
from vitzoo.train.config import ConfigError, load_config

FILL = (124, 116, 104)


def _images(count: int = 3, height: int = 29, width: int = 37, smooth: bool = False,
            seed: int = 0) -> list[Image.Image]:
    """Random RGB images; ``smooth`` ones are upscaled noise (resampling them is well defined to a grey level)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        if smooth:
            small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
            images.append(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
        else:
            images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
    return images


def _batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]).float()


POINT_CASES = [
    ("auto_contrast", lambda im, a: ImageOps.autocontrast(im), [0.0], 0),
    ("equalize", lambda im, a: ImageOps.equalize(im), [0.0], 0),
    ("invert", lambda im, a: ImageOps.invert(im), [0.0], 0),
    ("posterize", lambda im, a: timm_aa.posterize(im, int(a)) if a > 0 else Image.new("RGB", im.size), [0, 1, 3, 4, 8],
     0),
    ("solarize", lambda im, a: ImageOps.solarize(im, int(a)), [0, 26, 128, 230, 256], 0),
    ("solarize_add", lambda im, a: timm_aa.solarize_add(im, int(a)), [0, 33, 99, 110], 0),
    # Pillow blends in single precision and truncates: an exact .0 can land either side.
    ("color", lambda im, a: timm_aa.color(im, a), [0.1, 0.55, 1.0, 1.37, 1.9], 1),
    ("contrast", lambda im, a: timm_aa.contrast(im, a), [0.1, 0.55, 1.0, 1.37, 1.9], 1),
    ("brightness", lambda im, a: timm_aa.brightness(im, a), [0.1, 0.55, 1.0, 1.37, 1.9], 1),
    ("sharpness", lambda im, a: timm_aa.sharpness(im, a), [0.1, 0.55, 1.0, 1.37, 1.9], 1),
]


@pytest.mark.parametrize(("name", "pillow", "args", "tolerance"), POINT_CASES, ids=[c[0] for c in POINT_CASES])
def test_point_and_colour_ops_equal_pillows(name, pillow, args, tolerance) -> None:
    images = _images()
    # a flat channel (auto-contrast and equalize leave it alone) and a two-level image
    flat = np.asarray(images[0]).copy()
    flat[..., 1] = 77
    images.append(Image.fromarray(flat))
    images.append(Image.fromarray(np.where(np.asarray(images[1]) > 128, 200, 10).astype(np.uint8)))
    batch = _batch(images)
    op = getattr(ref, name)
    for arg in args:
        got = op(batch.clone(), torch.full((len(images),), float(arg)))
        want = _batch([pillow(image, arg) for image in images])
        diff = (got - want).abs()
        assert diff.max() <= tolerance, f"{name}({arg}): max difference {diff.max()}"
        if tolerance:
            assert (diff > 0).float().mean() < 0.02, f"{name}({arg}): {(diff > 0).float().mean():.3f} differ"


GEOMETRIC_CASES = [("Rotate", [-30.0, -7.5, 12.0, 29.0]), ("ShearX", [-0.3, 0.11, 0.27]),
                   ("ShearY", [-0.27, 0.05, 0.3]), ("TranslateXRel", [-0.45, 0.2]),
                   ("TranslateYRel", [-0.31, 0.45])]


@pytest.mark.parametrize(("name", "values"), GEOMETRIC_CASES, ids=[c[0] for c in GEOMETRIC_CASES])
@pytest.mark.parametrize("resample", [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC],
                         ids=["nearest", "bilinear", "bicubic"])
def test_affine_ops_follow_pillows_geometry_and_fill(name, values, resample) -> None:
    images = _images(smooth=True, seed=1)
    pillow_op = timm_aa.NAME_TO_OP[name]
    for value in values:
        want = _batch([pillow_op(image, value, fillcolor=FILL, resample=resample) for image in images])
        matrices = torch.from_numpy(ra.affine_matrices(name, np.full(len(images), value), 29, 37))
        got = ref.affine(_batch(images), matrices, torch.tensor(FILL, dtype=torch.float32),
                         ref.AFFINE_FILTERS[ra._AFFINE_CODES[resample]])
        diff = (got - want).abs()
        # The fill: the same pixels as Pillow's, but for points on the image's edge.
        fill = torch.tensor(FILL).view(1, 3, 1, 1)
        got_fill, want_fill = (got == fill).all(1), (want == fill).all(1)
        assert (got_fill != want_fill).float().mean() < 0.01, f"{name}({value}): fill differs"
        # Inside: nearest and bilinear are Pillow's filters up to rounding, bicubic a differently shaped kernel.
        limit = 4.0 if resample == Image.Resampling.BICUBIC else 1.0
        assert diff.mean() < limit / 2 and diff.float().quantile(0.99) <= limit * 4, f"{name}({value}): {diff.mean()}"


def _recorded_timm_draws(policy, count: int, seed: int) -> list[list[tuple[str, float, object]]]:
    """What timm's own RandAugment applies to ``count`` images after seeding, recorded instead of applied."""
    record: list[tuple[str, float, object]] = []

    def recorder(name):
        def apply(image, *args, **kwargs):
            kwargs = dict(kwargs)
            if name in ra._GEOMETRIC:
                timm_aa._check_args_tf(kwargs)  # timm draws the filter here
            record.append((name, float(args[0]) if args else 0.0, kwargs["resample"] if name in ra._GEOMETRIC
                           else None))
            return image
        return apply

    originals = [op.aug_fn for op in policy.ops]
    for op in policy.ops:
        op.aug_fn = recorder(op.name)
    random.seed(seed)
    np.random.seed(seed)
    draws = []
    try:
        for _ in range(count):
            record.clear()
            policy(Image.new("RGB", (4, 4)))
            draws.append(list(record))
    finally:
        for op, original in zip(policy.ops, originals, strict=True):
            op.aug_fn = original
    return draws


@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-inc1", "rand-n1-m3", "rand-n3-m7-mstd0.5", "rand-m9-tweights"])
def test_the_batch_version_draws_what_timms_randaugment_applies(text: str) -> None:
    hparams = {"img_mean": FILL, "translate_const": 100}
    policy = timm_aa.rand_augment_transform(text, hparams)
    want = _recorded_timm_draws(policy, 64, seed=5)
    random.seed(5)
    np.random.seed(5)
    got = ra.BatchRandAugment(policy).draw(64)
    assert got == want
    assert len({name for image in got for name, _, _ in image}) > 5  # the draws cover many ops


def _applying_every_op(hparams: dict) -> ra.BatchRandAugment:
    """The DeiT recipe's policy with every drawn op applied (probability 1)."""
    policy = timm_aa.rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)
    for op in policy.ops:
        op.prob = 1.0
    return ra.BatchRandAugment(policy)


def test_batches_keep_their_dtype_shape_and_device_and_every_op_runs() -> None:
    augment = _applying_every_op({"img_mean": FILL})
    batch = _batch(_images(count=40, smooth=True)).to(torch.uint8)
    random.seed(0)
    np.random.seed(0)
    out = augment(batch)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert (out != batch).flatten(1).any(1).float().mean() > 0.9
    with pytest.raises(TypeError, match="uint8"):
        augment(batch.float())


def test_each_image_of_a_batch_gets_its_own_ops_in_order_one_layer_call_per_op_position(monkeypatch) -> None:
    """The batch equals each image put through its own draws one op at a time, with one layer call per op position
    for the whole batch (one call per op group took several hundred launches a batch)."""
    augment = _applying_every_op({"img_mean": FILL, "translate_const": 10})
    batch = _batch(_images(count=60, smooth=True)).to(torch.uint8)
    random.seed(3)
    np.random.seed(3)
    draws = augment.draw(len(batch))
    calls = []
    real_layer = ra.rand_augment_layer
    monkeypatch.setattr(ra, "rand_augment_layer", lambda *args: calls.append(len(args[0])) or real_layer(*args))
    random.seed(3)
    np.random.seed(3)
    out = augment(batch)
    assert calls == [len(batch)] * max(len(applied) for applied in draws)
    assert len({name for applied in draws for name, _, _ in applied}) > 10
    fill = torch.tensor(FILL, dtype=torch.float32)
    for index, (image, applied) in enumerate(zip(batch, draws, strict=True)):
        x = image[None].float()
        for name, arg, resample in applied:
            if name in ra._GEOMETRIC:
                x = ref.affine(x, torch.from_numpy(ra.affine_matrices(name, [arg], *x.shape[2:])), fill,
                               ref.AFFINE_FILTERS[ra._AFFINE_CODES[resample]])
            else:
                x = ref.POINT_OPS[ra._POINT_CODES[name]](x, torch.tensor([arg]))
        assert torch.equal(out[index], x[0].to(torch.uint8)), (index, applied)


def test_a_policy_with_ops_the_batch_version_lacks_is_refused() -> None:
    policy = timm_aa.rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": FILL})
    policy.ops.append(timm_aa.AugmentOp("GaussianBlur", 0.5, 9, {"img_mean": FILL}))
    with pytest.raises(ValueError, match="GaussianBlur"):
        ra.BatchRandAugment(policy)


def test_augment_on_device_needs_a_randaugment_policy() -> None:
    with pytest.raises(ConfigError, match="augment_on_device"):
        load_config(None, ["augment_on_device=true", "auto_augment=null", "model=linear_deit_tiny_patch16_224"])


def test_fashion_mnist_moves_its_crop_and_flip_to_the_device_without_a_randaugment_policy() -> None:
    config = load_config(None, ["augment_on_device=true", "auto_augment=null", "dataset=fashion_mnist",
                                "model=linear_deit_tiny_patch16_224"])
    assert config.augment_on_device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_batch_on_the_gpu_gets_the_cpu_batchs_pixels() -> None:
    """Same seeds, same draws: the GPU result equals the CPU one but where a filter's float sum rounds the other way."""
    policy = timm_aa.rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": FILL})
    augment = ra.BatchRandAugment(policy)
    batch = _batch(_images(count=64, height=61, width=47, seed=3)).to(torch.uint8)
    random.seed(11)
    np.random.seed(11)
    on_cpu = augment(batch)
    random.seed(11)
    np.random.seed(11)
    on_gpu = augment(batch.cuda()).cpu()
    diff = (on_gpu.int() - on_cpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
