"""ZeroS mixer against an explicit O(N^2) construction of its zero-sum weights (float64, CPU)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from rope_reference import rope_2d_reference

from vitzoo.layers.zeros import ZeroSAttention

DIM, HEADS = 64, 2  # head_dim 32
# (grid_size, num_prefix_tokens) giving N = 1, 49, 197
LAYOUTS = [((1, 1), 0), ((6, 8), 1), ((14, 14), 1)]


def _make_mixer(seed: int = 0, **options) -> ZeroSAttention:
    torch.manual_seed(seed)
    mixer = ZeroSAttention(DIM, num_heads=HEADS, qkv_bias=True, dtype=torch.float64, **options)
    with torch.no_grad():  # random everything, biases and the mean-prior included (never zeros)
        for p in mixer.parameters():
            p.normal_(std=0.3)
        mixer.log_tau.normal_(std=1.0)
    return mixer


def explicit_zeros(
        mixer: ZeroSAttention, x: torch.Tensor, grid_size: tuple[int, int] = (7, 7), num_prefix: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and weights w (B, t, i, h) of ZeroS built token pair by token pair.

    With the zero-order gate, the released first-layer form: w += tanh(g0) / t (t = N here); with rope, q and k
    are rotated before their normalisation."""
    batch, n, dim = x.shape
    h, d = mixer.num_heads, mixer.head_dim
    q, k, v, u = F.linear(x, mixer.qkvu.weight, mixer.qkvu.bias).view(batch, n, 4, h, d).unbind(2)
    if mixer.rope:
        q, k = rope_2d_reference(q, grid_size, num_prefix), rope_2d_reference(k, grid_size, num_prefix)
    gates = F.linear(x, mixer.gates.weight, mixer.gates.bias).view(batch, n, -1, h)
    sigma1, sigmah = torch.sigmoid(gates[:, :, 0]), torch.sigmoid(gates[:, :, 1])
    tau = mixer.log_tau.clamp(-50, 30).exp()
    u_bar = (tau[:, None] * mixer.mu + u.sum(1)) / (tau[:, None] + n)
    s = -torch.einsum("bnhd,bhd->bnh", u, u_bar) / math.sqrt(d)
    softmax = torch.softmax(s, dim=1)
    delta = s - s.mean(dim=1, keepdim=True)
    residual = softmax - 1 / n - delta / n  # eps_i: sums to zero
    weights = sigma1[:, :, None] * delta[:, None] / n + sigmah[:, :, None] * residual[:, None]  # (B, t, i, h)
    if mixer.zero_order_gate:
        weights = weights + torch.tanh(gates[:, :, 2])[:, :, None] / n
    cos = torch.einsum("bthd,bihd->btih", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    out = torch.einsum("btih,bihd->bthd", weights * cos, v)
    out = F.layer_norm(out, (d,), eps=1e-5).reshape(batch, n, dim)
    return F.linear(out, mixer.proj.weight, mixer.proj.bias), weights


@pytest.mark.parametrize("grid_size, num_prefix", LAYOUTS)
def test_matches_explicit_and_weights_sum_to_zero(grid_size, num_prefix):
    mixer = _make_mixer()
    n = num_prefix + grid_size[0] * grid_size[1]
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    out = mixer(x, grid_size=grid_size, num_prefix_tokens=num_prefix)
    expected, weights = explicit_zeros(mixer, x)
    assert out.shape == (2, n, DIM)
    torch.testing.assert_close(weights.sum(dim=2), torch.zeros_like(weights[:, :, 0]), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)


def test_gradients_match_explicit_and_reach_every_parameter():
    mixer = _make_mixer(1)
    x = torch.randn(2, 50, DIM, dtype=torch.float64, requires_grad=True)
    params = [x, *mixer.parameters()]
    grads = torch.autograd.grad(mixer(x, grid_size=(7, 7)).square().sum(), params)
    expected = torch.autograd.grad(explicit_zeros(mixer, x)[0].square().sum(), params)
    for (name, _), grad, ref in zip([("x", None), *mixer.named_parameters()], grads, expected, strict=True):
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(grad, ref, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")


def test_shift_of_logits_is_harmless_at_large_logits():
    # A large common offset in u makes |s| large: the max shift and the centred linear weight keep it exact.
    mixer = _make_mixer(2)
    x = torch.randn(1, 50, DIM, dtype=torch.float64)
    with torch.no_grad():
        mixer.qkvu.bias[3 * DIM:] += 4.0
    torch.testing.assert_close(mixer(x, grid_size=(7, 7)), explicit_zeros(mixer, x)[0], atol=1e-9, rtol=1e-8)


RELEASED_OPTIONS = [dict(zero_order_gate=True), dict(rope=True), dict(zero_order_gate=True, rope=True)]


@pytest.mark.parametrize("options", RELEASED_OPTIONS)
@pytest.mark.parametrize("grid_size, num_prefix", [((6, 8), 1), ((5, 5), 0)])
def test_released_options_match_explicit(options, grid_size, num_prefix):
    """The zero-order gate sigma0 = tanh(.) and RoPE before the normalisation, against the pairwise form."""
    mixer = _make_mixer(seed=5, **options)
    assert mixer.gates.out_features == (3 if options.get("zero_order_gate") else 2) * HEADS
    n = num_prefix + grid_size[0] * grid_size[1]
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    expected, weights = explicit_zeros(mixer, x, grid_size, num_prefix)
    torch.testing.assert_close(mixer(x, grid_size, num_prefix), expected, atol=1e-10, rtol=1e-9)
    if options.get("zero_order_gate"):  # the zero-order term gives the weights a nonzero sum
        assert weights.sum(dim=2).abs().max() > 1e-3


def test_rejects_unknown_option_and_bad_grid():
    with pytest.raises(TypeError):
        ZeroSAttention(DIM, num_heads=HEADS, causal=True)
    with pytest.raises(ValueError, match="divisible by 4"):
        ZeroSAttention(36, num_heads=2, rope=True)
    mixer = _make_mixer()
    with pytest.raises(ValueError):
        mixer(torch.randn(1, 10, DIM, dtype=torch.float64), grid_size=(3, 4), num_prefix_tokens=1)
