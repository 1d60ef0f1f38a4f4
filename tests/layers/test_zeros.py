"""ZeroS: zero-sum weights, large logits, the released options, against the explicit form of
``explicit_mixers.py`` (float64). Forward and gradients of the default mixer: ``test_mixers_numerics.py``."""
from __future__ import annotations

import pytest
import torch
from explicit_mixers import zeros_weights_and_output

from vitzoo.layers.zeros import ZeroSAttention

DIM, HEADS = 64, 2  # head_dim 32
LAYOUT = ((7, 7), 1)  # N = 50


def _make_mixer(seed: int = 0, **options) -> ZeroSAttention:
    torch.manual_seed(seed)
    mixer = ZeroSAttention(DIM, num_heads=HEADS, qkv_bias=True, dtype=torch.float64, **options)
    with torch.no_grad():  # random everything, biases and the mean-prior included (never zeros)
        for p in mixer.parameters():
            p.normal_(std=0.3)
        mixer.log_tau.normal_(std=1.0)
    return mixer


def test_weights_sum_to_zero():
    """The weights of the explicit form (which test_mixers_numerics holds the mixer to) sum to zero per query."""
    mixer = _make_mixer()
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    _, weights = zeros_weights_and_output(mixer, x, *LAYOUT)
    torch.testing.assert_close(weights.sum(dim=2), torch.zeros_like(weights[:, :, 0]), atol=1e-12, rtol=0)


def test_shift_of_logits_is_harmless_at_large_logits():
    # A large common offset in u makes |s| large: the max shift and the centred linear weight keep it exact.
    mixer = _make_mixer(2)
    x = torch.randn(1, 50, DIM, dtype=torch.float64)
    with torch.no_grad():
        mixer.qkvu.bias[3 * DIM:] += 4.0
    expected = zeros_weights_and_output(mixer, x, *LAYOUT)[0]
    torch.testing.assert_close(mixer(x, grid_size=(7, 7)), expected, atol=1e-9, rtol=1e-8)


RELEASED_OPTIONS = [dict(zero_order_gate=True), dict(rope=True), dict(zero_order_gate=True, rope=True)]


@pytest.mark.parametrize("options", RELEASED_OPTIONS)
@pytest.mark.parametrize("grid_size, num_prefix", [((6, 8), 1), ((5, 5), 0)])
def test_released_options_match_explicit(options, grid_size, num_prefix):
    """The zero-order gate sigma0 = tanh(.) and RoPE before the normalisation, against the pairwise form."""
    mixer = _make_mixer(seed=5, **options)
    assert mixer.gates.out_features == (3 if options.get("zero_order_gate") else 2) * HEADS
    n = num_prefix + grid_size[0] * grid_size[1]
    x = torch.randn(2, n, DIM, dtype=torch.float64, requires_grad=True)
    expected, weights = zeros_weights_and_output(mixer, x, grid_size, num_prefix)
    out = mixer(x, grid_size, num_prefix)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)
    if options.get("zero_order_gate"):  # the zero-order term gives the weights a nonzero sum
        assert weights.sum(dim=2).abs().max() > 1e-3
    params = [x, *mixer.parameters()]
    for got, want in zip(torch.autograd.grad(out.square().sum(), params),
                         torch.autograd.grad(expected.square().sum(), params), strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-8)


def test_rejects_unknown_option_and_bad_grid():
    with pytest.raises(TypeError):
        ZeroSAttention(DIM, num_heads=HEADS, causal=True)
    with pytest.raises(ValueError, match="divisible by 4"):
        ZeroSAttention(36, num_heads=2, rope=True)
    mixer = _make_mixer()
    with pytest.raises(ValueError):
        mixer(torch.randn(1, 10, DIM, dtype=torch.float64), grid_size=(3, 4), num_prefix_tokens=1)
