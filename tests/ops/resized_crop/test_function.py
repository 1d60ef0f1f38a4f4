"""Resized crops: the kernel against the reference (torchvision's roi_align) for shrinking, enlarging, edge and
one-pixel boxes, flipped or not, odd sizes; bad inputs.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch

from vitzoo.ops import use_backend
from vitzoo.ops.resized_crop import resized_crops, resized_crops_reference

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(batch: int, height: int, width: int, seed: int):
    """Random images, random integer boxes (as the loader draws them) plus the whole image, a one-pixel box and a
    box at the far corner; every other image flipped."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    boxes = [[0, 0, width, height], [width - 1, height - 1, width, height], [0, 0, 1, 1]]
    while len(boxes) < batch:
        w = int(torch.randint(1, width + 1, (1,), generator=gen))
        h = int(torch.randint(1, height + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, width - w + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, height - h + 1, (1,), generator=gen))
        boxes.append([x0, y0, x0 + w, y0 + h])
    flips = torch.arange(batch) % 2 == 1
    return images, torch.tensor(boxes[:batch], dtype=torch.float32), flips


def _compare(batch: int, height: int, width: int, size: int, seed: int) -> None:
    images, boxes, flips = _inputs(batch, height, width, seed)
    want = resized_crops_reference(images, boxes, flips, size)
    with use_backend("triton"):
        got = resized_crops(images.to(DEVICE), boxes, flips, size).cpu()
    assert got.dtype == torch.uint8 and got.shape == (batch, 3, size, size)
    diff = (got.int() - want.int()).abs()
    # the same float32 operations; on a GPU a sum that contracts into fused multiply-adds may round the other way
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


@needs_kernels
@pytest.mark.parametrize(("height", "width", "size"), [(41, 37, 16), (9, 13, 20), (50, 7, 5), (3, 3, 1), (24, 24, 12)])
def test_the_kernel_equals_roi_align(height: int, width: int, size: int) -> None:
    _compare(8, height, width, size, seed=height * width + size)


def test_the_reference_resizes_flips_and_rounds() -> None:
    images, boxes, flips = _inputs(4, 12, 10, seed=1)
    images[2] = torch.tensor([54, 119, 104], dtype=torch.uint8).view(3, 1, 1)  # a flat image: any box is its colour
    out = resized_crops_reference(images, boxes, flips, 6)
    assert out.shape == (4, 3, 6, 6) and out.dtype == torch.uint8
    assert torch.equal(out[2], images[2, :, :6, :6])
    # a whole 12x12 image halved: the 2x2 samples of each output pixel fall on its 2x2 block's pixel centres
    square = torch.randint(0, 256, (1, 3, 12, 12), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    halved = resized_crops_reference(square, torch.tensor([[0.0, 0.0, 12.0, 12.0]]), torch.tensor([False]), 6)
    blocks = square.float().view(1, 3, 6, 2, 6, 2).mean(dim=(3, 5))
    assert torch.equal(halved, blocks.round().to(torch.uint8))
    unflipped = resized_crops_reference(images, boxes, torch.zeros(4, dtype=torch.bool), 6)
    assert torch.equal(out[1], unflipped[1].flip(-1)) and torch.equal(out[0], unflipped[0])


def test_bad_inputs_get_one_line_errors() -> None:
    images, boxes, flips = _inputs(4, 8, 8, seed=2)
    with pytest.raises(TypeError, match="uint8"):
        resized_crops(images.float(), boxes, flips, 4)
    with pytest.raises(ValueError, match="boxes must be a host float tensor"):
        resized_crops(images, boxes[:3], flips, 4)
    with pytest.raises(ValueError, match="flips must be a host bool tensor"):
        resized_crops(images, boxes, flips.float(), 4)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        resized_crops(images, boxes, flips, 0)


@needs_cuda
def test_a_full_size_batch_on_the_gpu_equals_roi_align() -> None:
    _compare(64, 256, 256, 224, seed=3)
