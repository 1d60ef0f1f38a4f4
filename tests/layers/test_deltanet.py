"""BidirectionalDeltaNet: prefix handling of the conv, the beta range and the op arguments, weight-decay names.
Forward and gradients against the written-out specification: ``test_mixers_numerics.py``."""
from __future__ import annotations

import torch

import vitzoo.layers.deltanet as deltanet_module
from vitzoo.layers.deltanet import BidirectionalDeltaNet


def randomise(mixer: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


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
    assert seen["kwargs"] == {"qk_l2norm": True, "beta_logits": True}  # the op takes the sigmoid
    assert torch.equal(seen["beta"], mixer.beta_proj(x))
    beta = torch.sigmoid(seen["beta"])
    assert beta.shape == (3, 17, 4)
    assert ((beta > 0) & (beta < 1)).all() and beta.max() - beta.min() > 0.5
    assert seen["q"].shape == seen["k"].shape == seen["v"].shape == (3, 17, 4, 8)


def test_weight_decay_names_and_init():
    mixer = BidirectionalDeltaNet(32, num_heads=4)
    names = dict(mixer.named_parameters())
    assert mixer.no_weight_decay() == {"norm_weight", "conv.conv.weight"} and mixer.no_weight_decay() <= set(names)
    with torch.no_grad():
        mixer.norm_weight.zero_()
    mixer.init_weights()
    assert (mixer.norm_weight == 1).all()
