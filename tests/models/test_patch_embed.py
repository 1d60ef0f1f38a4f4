"""The zoo's PatchEmbed (the patch convolution as one matrix product over unfolded patches) against timm's
convolution, in float64: outputs and gradients, odd shapes, both output layouts, and bf16 autocast."""
from __future__ import annotations

import pytest
import timm
import torch
from dispatch_counting import CastCounter

from vitzoo.models.vitzoo_vit import PatchEmbed
from vitzoo.ops.testing import relative_error

CASES = [  # (image (H, W), patch (p, q), channels, width)
    ((32, 48), (16, 16), 3, 24),
    ((28, 28), (7, 7), 1, 10),
    ((30, 20), (5, 4), 5, 7),
]


def _pair(img_size, patch_size, chans, width, **options) -> tuple[PatchEmbed, timm.layers.PatchEmbed]:
    torch.manual_seed(0)
    kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=chans, embed_dim=width, **options)
    ours, conv = PatchEmbed(**kwargs).double(), timm.layers.PatchEmbed(**kwargs).double()
    with torch.no_grad():
        for param in conv.parameters():
            param.normal_()
    ours.load_state_dict(conv.state_dict())
    return ours, conv


@pytest.mark.parametrize("img_size, patch_size, chans, width", CASES)
@pytest.mark.parametrize("output_fmt", [None, "NHWC"])
def test_matches_the_convolution_with_gradients(img_size, patch_size, chans, width, output_fmt):
    ours, conv = _pair(img_size, patch_size, chans, width, output_fmt=output_fmt, strict_img_size=output_fmt is None)
    x = torch.randn(3, chans, *img_size, dtype=torch.float64, requires_grad=True)
    got, expected = ours(x), conv(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(got)
    grads = torch.autograd.grad(got, (x, *ours.parameters()), upstream)
    expected_grads = torch.autograd.grad(expected, (x, *conv.parameters()), upstream)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_channels_last_inputs_and_weights():
    ours, conv = _pair((32, 32), (8, 8), 3, 16)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).to(memory_format=torch.channels_last)
    ours.to(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), conv(x), rtol=1e-12, atol=1e-12)


def test_bf16_autocast_gives_bf16_tokens_within_rounding():
    ours, conv = _pair((32, 32), (16, 16), 3, 24)
    ours.float()
    conv.float()
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = ours(x), conv(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    truth = conv.double()(x.double())
    # bf16 operands, fp32 accumulation: the error of rounding inputs and weights to 8 bits (the convolution's too)
    assert relative_error(got, truth) < 1e-2
    assert relative_error(got, truth) < 2 * relative_error(expected, truth) + 1e-3


def test_inference_under_autocast_keeps_the_cast_kernel_and_follows_updates():
    """Eval mode without gradients: the kernel and bias are cast once (the patches' own cast is their gather copy),
    and the output is the plain path's bit for bit, before and after an in-place update."""
    ours, _ = _pair((32, 32), (16, 16), 3, 24)
    ours.float().eval()
    x = torch.randn(2, 3, 32, 32)

    def kept_and_plain():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.inference_mode(), CastCounter() as counter:
                kept = ours(x)
            plain = ours(x)  # gradient mode: autocast casts the parameters itself
        return kept, plain, counter.casts

    kept_and_plain()
    kept, plain, casts = kept_and_plain()
    assert casts == 0
    assert torch.equal(kept, plain)
    with torch.no_grad():
        ours.proj.weight.mul_(-0.5)
    kept, plain, _ = kept_and_plain()
    assert torch.equal(kept, plain)
