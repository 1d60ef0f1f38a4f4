"""BatchRandomErasing: timm's rectangles for the same seed, erased for the whole batch at once by the device stage."""
from __future__ import annotations

import random

import pytest
import torch
from timm.data.random_erasing import RandomErasing

from vitzoo.train.data import DeviceAugment
from vitzoo.train.random_erasing import BatchRandomErasing


def _timm_rectangles(probability: float, batch: int, height: int, width: int, seed: int) -> list[tuple]:
    """The rectangles timm's RandomErasing erases (zeros on a batch of ones), image by image."""
    random.seed(seed)
    erased = RandomErasing(probability, mode="const", device="cpu")(torch.ones(batch, 3, height, width)) == 0
    rectangles = []
    for index, image in enumerate(erased.all(1)):
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        if len(rows):
            rectangles.append((index, int(rows[0]), int(cols[0]), len(rows), len(cols)))
    return rectangles


@pytest.mark.parametrize(("probability", "height", "width"), [(0.25, 32, 32), (1.0, 17, 40), (0.6, 224, 224)])
def test_the_rectangles_are_timms_for_the_same_seed(probability: float, height: int, width: int) -> None:
    want = _timm_rectangles(probability, 64, height, width, seed=7)
    random.seed(7)
    got = BatchRandomErasing(probability).rectangles(64, height, width)
    assert got == want
    assert 0 < len(got) <= 64


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_the_device_stage_erases_timms_rectangles_with_the_modes_fill_and_nothing_else(mode: str,
                                                                                        device: str) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 40, 32), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    random.seed(1)
    rectangles = BatchRandomErasing(1.0, mode).rectangles(48, 40, 32)
    random.seed(1)
    out = DeviceAugment(mean, std, re_prob=1.0, re_mode=mode)(images.to(device)).cpu()
    plain = DeviceAugment(mean, std)(images)
    inside = torch.zeros(48, 40, 32, dtype=torch.bool)
    for index, top, left, h, w in rectangles:
        inside[index, top:top + h, left:left + w] = True
        patch = out[index, :, top:top + h, left:left + w]
        if mode == "const":
            assert torch.equal(patch, torch.zeros_like(patch))
        elif mode == "rand":  # one colour per channel
            assert torch.equal(patch, patch[:, :1, :1].expand_as(patch)) and patch.abs().max() < 6
        else:
            assert patch.abs().max() < 7 and patch.flatten(1).std(1).min() > 0.3
    assert len(rectangles) == 48
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~inside], plain.permute(1, 0, 2, 3)[:, ~inside])
    if mode == "pixel":  # standard normal noise, as timm's
        noise = out.permute(1, 0, 2, 3)[:, inside]
        assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02


def test_no_rectangle_is_an_empty_draw_and_a_bad_mode_is_refused() -> None:
    rectangles, seed = BatchRandomErasing(0.0).draw(8, 16, 16)
    assert rectangles.shape == (0, 5) and 0 <= seed < 2**32
    with pytest.raises(ValueError, match="one of const, rand, pixel"):
        BatchRandomErasing(0.5, "noise")
