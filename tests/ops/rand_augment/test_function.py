"""One RandAugment layer: the kernel against the reference for every op (exact but for a filtered pixel within a
rounding step of .5), odd and tiny image sizes, a batch that mixes every op, bad inputs.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``); the
reference's ops against Pillow: tests/train/test_rand_augment.py.
"""
import math

import pytest
import torch

from vitzoo.ops import use_backend
from vitzoo.ops.rand_augment import LAYER_OPS, OP_CODES, rand_augment_layer, rand_augment_layer_reference

from ..markers import DEVICE, needs_cuda, needs_kernels

FILL = (124.0, 116.0, 104.0)
FILTERED = {OP_CODES["affine_bilinear"], OP_CODES["affine_bicubic"]}


def _layer(ops: list[int], height: int, width: int, seed: int, smooth: bool = False):
    """Random images and per-image arguments as timm's policy gives them (integer bits, thresholds and additions;
    blend factors in [0.1, 1.9]; rotations with shears and shifts of a few pixels), never zeros."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(ops)
    if smooth:  # upscaled noise: its filtered values are rarely within a rounding step of .5
        small = torch.randint(0, 256, (batch, 3, height // 4 + 2, width // 4 + 2), generator=gen).float()
        images = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear").round().to(torch.uint8)
    else:
        images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    codes = torch.tensor(ops, dtype=torch.int64)
    args = torch.rand(batch, generator=gen, dtype=torch.float64) * 1.8 + 0.1
    integer_args = {OP_CODES["posterize"]: 9, OP_CODES["solarize"]: 257, OP_CODES["solarize_add"]: 111}
    for code, high in integer_args.items():
        picked = codes == code
        args[picked] = torch.randint(0, high, (int(picked.sum()),), generator=gen).double()
    angle = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * math.radians(60)
    shear = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    shift = (torch.rand(batch, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.4 * max(height, width)
    matrices = torch.stack([torch.cos(angle), torch.sin(angle) + shear, shift[:, 0],
                            -torch.sin(angle), torch.cos(angle), shift[:, 1]], dim=1)
    return images, codes, args, matrices


def _compare(ops: list[int], height: int, width: int, seed: int, smooth: bool = False) -> None:
    images, codes, args, matrices = _layer(ops, height, width, seed, smooth)
    want = rand_augment_layer_reference(images, codes, args, matrices, FILL)
    with use_backend("triton"):
        got = rand_augment_layer(images.to(DEVICE), codes, args, matrices, FILL).cpu()
    assert got.dtype == torch.uint8 and got.shape == images.shape
    diff = (got.int() - want.int()).abs()
    for index, code in enumerate(ops):
        if code in FILTERED:
            assert diff[index].max() <= 1, (LAYER_OPS[code], int(diff[index].max()))
            assert (diff[index] > 0).float().mean() < 0.01, LAYER_OPS[code]
        else:
            assert torch.equal(got[index], want[index]), (LAYER_OPS[code], int(diff[index].max()))


@needs_kernels
@pytest.mark.parametrize("name", LAYER_OPS)
def test_each_op_equals_the_reference(name: str) -> None:
    code = OP_CODES[name]
    _compare([code] * 4, 19, 27, seed=code, smooth=code in FILTERED)


@needs_kernels
@pytest.mark.parametrize(("height", "width"), [(1, 5), (2, 2), (3, 3), (37, 11)])
def test_a_batch_of_every_op_equals_the_reference_at_odd_sizes(height: int, width: int) -> None:
    # every op in one launch, the statistics' images scattered among the others
    _compare([code for code in range(len(LAYER_OPS)) for _ in range(2)], height, width, seed=height * width)


@needs_kernels
@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (97, 89)])
def test_the_whole_image_statistics_equal_the_reference_on_few_levels(height: int, width: int) -> None:
    """Auto-contrast, equalize and contrast read histograms that the kernels count (in several programs per image
    at 97x89) and turn into stretches, tables and means: channels of a few levels in a narrow range, one image of
    one level, each op on each."""
    gen = torch.Generator().manual_seed(height * width)
    low = torch.randint(0, 200, (6, 3, 1, 1), generator=gen)
    span = torch.randint(1, 40, (6, 3, 1, 1), generator=gen)
    images = (low + (torch.rand(6, 3, height, width, generator=gen) * span).floor()).clamp(max=255)
    images[0] = 77  # one level only: the ops leave it as it is (auto-contrast and equalize) or blend with it
    images = images.to(torch.uint8)
    stats_ops = [OP_CODES["auto_contrast"], OP_CODES["equalize"], OP_CODES["contrast"]]
    for ops in (stats_ops * 2, stats_ops[::-1] * 2):
        codes = torch.tensor(ops)
        args = torch.rand(6, generator=gen, dtype=torch.float64) * 1.8 + 0.1
        matrices = torch.zeros(6, 6, dtype=torch.float64)
        want = rand_augment_layer_reference(images, codes, args, matrices, FILL)
        with use_backend("triton"):
            got = rand_augment_layer(images.to(DEVICE), codes, args, matrices, FILL).cpu()
        assert torch.equal(got, want), [LAYER_OPS[c] for c, g, w in zip(ops, got, want, strict=True)
                                        if not torch.equal(g, w)]


@needs_kernels
def test_identity_images_and_an_empty_batch_come_back_unchanged_as_new_tensors() -> None:
    images, codes, args, matrices = _layer([0, 0, 0], 5, 7, seed=1)
    with use_backend("triton"):
        out = rand_augment_layer(images.to(DEVICE), codes, args, matrices, FILL)
        assert torch.equal(out.cpu(), images) and out.data_ptr() != images.data_ptr()
        empty = rand_augment_layer(images[:0].to(DEVICE), codes[:0], args[:0], matrices[:0], FILL)
    assert empty.shape == (0, 3, 5, 7)


def test_bad_inputs_get_one_line_errors() -> None:
    images, codes, args, matrices = _layer([1, 2], 5, 7, seed=2)
    with pytest.raises(TypeError, match="uint8"):
        rand_augment_layer(images.float(), codes, args, matrices, FILL)
    with pytest.raises(ValueError, match="op codes must be in"):
        rand_augment_layer(images, codes + len(LAYER_OPS), args, matrices, FILL)
    with pytest.raises(ValueError, match="matrices must be a host tensor of shape"):
        rand_augment_layer(images, codes, args, matrices[:, :4], FILL)
    with pytest.raises(ValueError, match="integer op codes"):
        rand_augment_layer(images, codes.float(), args, matrices, FILL)
    with pytest.raises(ValueError, match="fill takes 3 values"):
        rand_augment_layer(images, codes, args, matrices, FILL[:2])


@needs_cuda
def test_a_full_size_batch_on_the_gpu_equals_the_reference() -> None:
    ops = [code for code in range(len(LAYER_OPS)) for _ in range(8)]
    _compare(ops, 224, 224, seed=7, smooth=True)
