"""Normalisation with random erasing: the kernel against the reference (the normalised pixels exactly, the fill up to
the last bits of log, cos and sqrt), the fill's distribution and determinism, odd sizes, bad inputs.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch
import triton
import triton.language as tl

from vitzoo.ops import use_backend
from vitzoo.ops.normalize_erase import ERASE_MODES, BatchMix, normalize_erase, normalize_erase_reference
from vitzoo.ops.normalize_erase.kernels import _bf16_bits
from vitzoo.ops.normalize_erase.reference import mix32, normal_noise

from ..markers import DEVICE, needs_cuda, needs_kernels

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _inputs(batch: int, height: int, width: int, seed: int):
    """Random images and one random rectangle in every other image (one covering a whole image, one a single
    pixel)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    rectangles = [(0, 0, 0, height, width), (batch - 1, height - 1, width - 1, 1, 1)]
    for index in range(2, batch - 1, 2):
        h = int(torch.randint(1, height + 1, (1,), generator=gen))
        w = int(torch.randint(1, width + 1, (1,), generator=gen))
        top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
        rectangles.append((index, top, left, h, w))
    return images, torch.tensor(rectangles, dtype=torch.int64)


@triton.jit
def _rounded_kernel(x_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, _bf16_bits(tl.load(x_ptr + offs)).to(tl.bfloat16, bitcast=True))


def _kernel(images, rectangles, mode, seed, mean=MEAN, std=STD, mix=None, dtype=torch.float32):
    with use_backend("triton"):
        return normalize_erase(images.to(DEVICE), mean, std, rectangles, mode, seed, mix, dtype).cpu()


def _erased(rectangles: torch.Tensor, shape) -> torch.Tensor:
    inside = torch.zeros(shape[0], shape[2], shape[3], dtype=torch.bool)
    for index, top, left, h, w in rectangles.tolist():
        inside[index, top:top + h, left:left + w] = True
    return inside[:, None].expand(shape)


@needs_kernels
@pytest.mark.parametrize("mode", ERASE_MODES)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (13, 17), (40, 3)])
def test_the_kernel_equals_the_reference(mode: str, height: int, width: int) -> None:
    images, rectangles = _inputs(7, height, width, seed=height + width)
    want = normalize_erase_reference(images, MEAN, STD, rectangles, mode, seed=99)
    got = _kernel(images, rectangles, mode, 99)
    assert got.dtype == torch.float32 and got.shape == images.shape
    erased = _erased(rectangles, images.shape)
    assert torch.equal(got[~erased], want[~erased])  # the normalised pixels: the same float32 operations
    assert torch.allclose(got[erased], want[erased], rtol=1e-5, atol=5e-5)


@needs_kernels
@pytest.mark.parametrize("mix", [BatchMix(0.3125), BatchMix(0.7, (2, 11, 1, 16)), BatchMix(0.5, (0, 13, 0, 17)),
                                 BatchMix(1.0, (4, 4, 3, 9))])
@pytest.mark.parametrize("mode", ["pixel", "rand"])
def test_the_mixing_kernel_equals_the_reference(mix: BatchMix, mode: str) -> None:
    """mixup and cutmix in the normalising pass: each image with its mirror in the batch, both erased first (odd
    sizes, an empty box, a box over the whole image)."""
    images, rectangles = _inputs(6, 13, 17, seed=11)
    want = normalize_erase_reference(images, MEAN, STD, rectangles, mode, seed=5, mix=mix)
    got = _kernel(images, rectangles, mode, 5, mix=mix)
    # one rounding apart where the kernel fuses timm's two products and their sum; the fill as above
    assert torch.allclose(got, want, rtol=1e-5, atol=5e-5)
    unmixed = normalize_erase_reference(images, MEAN, STD, rectangles, mode, seed=5)
    if mix.box is None:
        assert torch.allclose(got, mix.lam * unmixed + (1 - mix.lam) * unmixed.flip(0), rtol=1e-5, atol=5e-5)
    else:
        top, bottom, left, right = mix.box
        assert torch.equal(got[:, :, top:bottom, left:right], _kernel(images, rectangles, mode, 5).flip(0)[
            :, :, top:bottom, left:right])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mix", [None, BatchMix(0.3125), BatchMix(0.7, (2, 11, 1, 16))])
def test_a_16_bit_output_is_the_float32_one_rounded_once(dtype: torch.dtype, mix: BatchMix | None) -> None:
    """What a 16-bit model's autocast would do to the float32 batch before its first layer: one round to nearest."""
    images, rectangles = _inputs(6, 13, 17, seed=21)
    want32 = normalize_erase_reference(images, MEAN, STD, rectangles, "pixel", seed=3, mix=mix)
    want = normalize_erase_reference(images, MEAN, STD, rectangles, "pixel", seed=3, mix=mix, dtype=dtype)
    assert want.dtype == dtype and torch.equal(want, want32.to(dtype))
    got = _kernel(images, rectangles, "pixel", 3, mix=mix, dtype=dtype)
    got32 = _kernel(images, rectangles, "pixel", 3, mix=mix)
    assert got.dtype == dtype and torch.equal(got, got32.to(dtype))
    # the kernel's float32 values are the reference's up to the fill's last bits and the fused mix: a 16-bit
    # rounding apart at most
    assert torch.allclose(got.float(), want.float(), rtol=torch.finfo(dtype).eps, atol=5e-5)


@needs_kernels
def test_the_kernels_bfloat16_rounding_is_torchs_ties_to_even_included() -> None:
    # random values, and values halfway between two bfloat16s (low 16 bits 0x8000; high bits of magnitudes between
    # 2^-15 and 2^17, even and odd last kept bits)
    halfway = (torch.randint(0x3800, 0x4800, (254,), dtype=torch.int32) << 16 | 0x8000).view(torch.float32)
    values = torch.cat([torch.randn(512) * 4, halfway, -halfway, torch.tensor([0.0, -0.0, 1.0, 3.0e38])])
    out = torch.empty(1024, dtype=torch.bfloat16, device=DEVICE)
    _rounded_kernel[(1,)](values.to(DEVICE), out, N=1024)
    assert torch.equal(out.cpu(), values.to(torch.bfloat16))


@pytest.mark.parametrize("mix", [BatchMix(0.375), BatchMix(0.5, (1, 7, 2, 10))])
def test_the_reference_mixes_as_timms_mixup(mix: BatchMix, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's mix is timm's ``Mixup`` in batch mode, given its draws (lam, and the box for cutmix)."""
    import timm.data.mixup as timm_mixup

    images, rectangles = _inputs(4, 9, 11, seed=6)
    plain = normalize_erase_reference(images, MEAN, STD, rectangles, "pixel", seed=2)
    mixup = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=4)
    monkeypatch.setattr(mixup, "_params_per_batch", lambda: (mix.lam, mix.box is not None))
    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", lambda *args, **kwargs: (mix.box, mix.lam))
    want, _ = mixup(plain.clone(), torch.arange(4))
    assert torch.equal(normalize_erase_reference(images, MEAN, STD, rectangles, "pixel", 2, mix), want)


@needs_kernels
def test_no_rectangles_is_torchvisions_normalisation() -> None:
    images, _ = _inputs(3, 9, 11, seed=3)
    want = (images.float().div(255) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(_kernel(images, torch.zeros(0, 5, dtype=torch.int64), "pixel", 0), want)
    assert torch.equal(normalize_erase(images, MEAN, STD), want)


def test_the_fill_is_standard_normal_deterministic_and_follows_the_seed() -> None:
    index = torch.arange(200_000)
    noise = normal_noise(index, seed=5)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert abs(float((noise > 1.96).float().mean()) - 0.025) < 0.002  # a normal tail, not a uniform's
    assert torch.equal(noise, normal_noise(index, seed=5))
    other = normal_noise(index, seed=6)
    assert abs(float(torch.corrcoef(torch.stack([noise, other]))[0, 1])) < 0.01
    # neighbouring elements are unrelated too
    assert abs(float(torch.corrcoef(torch.stack([noise[:-1], noise[1:]]))[0, 1])) < 0.01
    assert mix32(0) == 0 and mix32(1) != 1 and 0 <= mix32(2**32 - 1) < 2**32


def test_each_mode_fills_only_the_rectangles() -> None:
    images, rectangles = _inputs(6, 20, 24, seed=1)
    erased = _erased(rectangles, images.shape)
    plain = normalize_erase_reference(images, MEAN, STD, rectangles[:0], "pixel")
    for mode in ERASE_MODES:
        out = normalize_erase_reference(images, MEAN, STD, rectangles, mode, seed=4)
        assert torch.equal(out[~erased], plain[~erased])
        patch = out[0]  # the rectangle covering image 0
        if mode == "const":
            assert torch.equal(patch, torch.zeros_like(patch))
        elif mode == "rand":  # one colour per channel
            assert torch.equal(patch, patch[:, :1, :1].expand_as(patch)) and len(patch[:, 0, 0].unique()) == 3
        else:
            assert patch.flatten(1).std(1).min() > 0.5


def test_bad_inputs_get_one_line_errors() -> None:
    images, rectangles = _inputs(4, 8, 8, seed=2)
    with pytest.raises(TypeError, match="uint8"):
        normalize_erase(images.float(), MEAN, STD, rectangles)
    with pytest.raises(ValueError, match="3 channels need 3 means"):
        normalize_erase(images, MEAN[:2], STD, rectangles)
    with pytest.raises(ValueError, match="mode must be one of"):
        normalize_erase(images, MEAN, STD, rectangles, "noise")
    with pytest.raises(ValueError, match="inside its image"):
        normalize_erase(images, MEAN, STD, torch.tensor([[0, 5, 5, 4, 1]]))
    with pytest.raises(ValueError, match="one per image"):
        normalize_erase(images, MEAN, STD, torch.tensor([[1, 0, 0, 1, 1], [1, 2, 2, 1, 1]]))
    with pytest.raises(ValueError, match=r"host \(R, 5\) integer tensor"):
        normalize_erase(images, MEAN, STD, rectangles.float())
    with pytest.raises(ValueError, match="needs an even batch, got 3"):
        normalize_erase(images[:3], MEAN, STD, mix=BatchMix(0.5))
    with pytest.raises(ValueError, match="must lie inside the 8x8 images"):
        normalize_erase(images, MEAN, STD, rectangles, mix=BatchMix(0.5, (0, 9, 0, 4)))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16, not torch.float64"):
        normalize_erase(images, MEAN, STD, rectangles, dtype=torch.float64)


@needs_cuda
def test_a_full_size_batch_on_the_gpu_equals_the_reference() -> None:
    images, rectangles = _inputs(64, 224, 224, seed=8)
    want = normalize_erase_reference(images, MEAN, STD, rectangles, "pixel", seed=2**32 - 1)
    got = _kernel(images, rectangles, "pixel", 2**32 - 1)
    erased = _erased(rectangles, images.shape)
    assert torch.equal(got[~erased], want[~erased])
    assert torch.allclose(got[erased], want[erased], rtol=1e-5, atol=5e-5)
    for dtype in (torch.bfloat16, torch.float16):  # rounded once, as the GPU's own conversion rounds
        assert torch.equal(_kernel(images, rectangles, "pixel", 2**32 - 1, dtype=dtype), got.to(dtype))
