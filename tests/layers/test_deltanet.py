"""BidirectionalDeltaNet: contract, prefix handling, beta range, and equality with the written-out specification."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitzoo.layers.deltanet as deltanet_module
from vitzoo.layers import create_mixer
from vitzoo.layers.deltanet import BidirectionalDeltaNet
from vitzoo.ops.delta_rule import delta_rule_recurrent_reference, l2_normalize


def randomise(mixer: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


@pytest.mark.parametrize("grid,prefix", [((7, 7), 1), ((3, 5), 0), ((1, 1), 2)])
def test_shape_and_grads(grid, prefix):
    mixer = create_mixer("deltanet", 48, num_heads=3)
    assert isinstance(mixer, BidirectionalDeltaNet)
    x = torch.randn(2, prefix + grid[0] * grid[1], 48, requires_grad=True)
    out = mixer(x, grid, prefix)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().mean().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name


def test_matches_explicit_recurrent_computation():
    dim, heads, grid, prefix = 32, 2, (4, 5), 1
    mixer = BidirectionalDeltaNet(dim, num_heads=heads, qkv_bias=True, dtype=torch.float64)
    randomise(mixer)
    x = torch.randn(2, prefix + grid[0] * grid[1], dim, dtype=torch.float64)
    b, n, _ = x.shape
    d = dim // heads

    qkv = F.linear(x, mixer.qkv.weight, mixer.qkv.bias)
    patches = qkv[:, prefix:].transpose(1, 2).reshape(b, 3 * dim, *grid)
    patches = F.conv2d(patches, mixer.conv.conv.weight, padding=1, groups=3 * dim).flatten(2).transpose(1, 2)
    qkv = F.silu(torch.cat([qkv[:, :prefix], patches], dim=1))
    q, k, v = (t.reshape(b, n, heads, d) for t in qkv.split(dim, dim=-1))
    q, k = l2_normalize(q), l2_normalize(k)
    beta = torch.sigmoid(x @ mixer.beta_proj.weight.T)
    o = 0.5 * (delta_rule_recurrent_reference(q, k, v, beta)
               + delta_rule_recurrent_reference(q, k, v, beta, reverse=True))
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * mixer.norm_weight
    o = o * F.silu((x @ mixer.gate.weight.T).reshape(b, n, heads, d))
    expected = F.linear(o.reshape(b, n, dim), mixer.proj.weight, mixer.proj.bias)

    torch.testing.assert_close(mixer(x, grid, prefix), expected, rtol=1e-10, atol=1e-10)


def test_conv_skips_prefix_tokens():
    mixer = BidirectionalDeltaNet(24, num_heads=2)
    randomise(mixer)
    x = torch.randn(1, 2 + 9, 3 * 24)
    out = mixer.conv(x, (3, 3), 2)
    torch.testing.assert_close(out[:, :2], x[:, :2])
    assert not torch.allclose(out[:, 2:], x[:, 2:])
    # Changing a patch token must not change the prefix tokens' q/k/v.
    x2 = x.clone()
    x2[:, 5] += 1.0
    torch.testing.assert_close(mixer.conv(x2, (3, 3), 2)[:, :2], out[:, :2])


def test_beta_range_and_op_arguments(monkeypatch):
    seen = {}
    real_op = deltanet_module.delta_rule_bidirectional

    def spy(q, k, v, beta, **kwargs):
        seen.update(q=q, k=k, v=v, beta=beta, kwargs=kwargs)
        return real_op(q, k, v, beta, **kwargs)

    monkeypatch.setattr(deltanet_module, "delta_rule_bidirectional", spy)
    torch.manual_seed(0)
    mixer = BidirectionalDeltaNet(32, num_heads=4)
    x = torch.randn(3, 1 + 16, 32) * 3  # spreads beta over its range (fp32 sigmoid rounds to 1 beyond ~17)
    mixer(x, (4, 4), 1)
    beta = seen["beta"]
    assert beta.shape == (3, 17, 4)
    assert ((beta > 0) & (beta < 1)).all() and beta.max() - beta.min() > 0.5
    assert seen["q"].shape == seen["k"].shape == seen["v"].shape == (3, 17, 4, 8)
    assert seen["kwargs"] == {"qk_l2norm": True}


def test_weight_decay_names_and_init():
    mixer = BidirectionalDeltaNet(32, num_heads=4)
    names = dict(mixer.named_parameters())
    assert mixer.no_weight_decay() <= set(names)
    with torch.no_grad():
        mixer.norm_weight.zero_()
    mixer.init_weights()
    assert (mixer.norm_weight == 1).all()
