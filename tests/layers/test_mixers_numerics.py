"""Numerics of every registered mixer: float64 forward and gradients against the mixer's math written out
(``explicit_mixers.py``) on odd sizes, and a finite bf16 forward at ImageNet-768 length."""
from __future__ import annotations

import pytest
import torch
from explicit_mixers import EXPLICIT

from vitzoo.layers import MIXERS, create_mixer
from vitzoo.registry import DEIT_FAMILIES, FAMILIES

# Each DeiT family's mixer with the family's options (fem and fem_softmax: both priors).
CASES = {name: (FAMILIES[name].mixer, FAMILIES[name].mixer_kwargs) for name in DEIT_FAMILIES}
DIM, HEADS = 45, 3  # head dim 15
LAYOUTS = [((3, 5), 1), ((5, 3), 0), ((1, 1), 2)]  # (grid_size, num_prefix_tokens): N = 16, 15, 3


def _random_mixer(family: str, seed: int = 0) -> torch.nn.Module:
    """The family's mixer in float64 with every parameter random (biases and gains included), except H3's SSM
    (its S4D-Lin init is a stable kernel) and FEM's inverse temperature (around its init)."""
    mixer_name, options = CASES[family]
    torch.manual_seed(seed)
    mixer = create_mixer(mixer_name, DIM, num_heads=HEADS, qkv_bias=True, dtype=torch.float64, **options)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name == "beta_param":
                p.normal_(mean=1.8, std=0.5)
            elif not name.startswith("ssm."):
                p.normal_(std=0.3)
    return mixer


def test_every_mixer_has_a_case_and_an_explicit_form():
    assert {mixer for mixer, _ in CASES.values()} == set(MIXERS) == set(EXPLICIT)


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("grid_size, num_prefix", LAYOUTS)
def test_forward_matches_explicit_float64(family, grid_size, num_prefix):
    mixer = _random_mixer(family)
    x = torch.randn(2, num_prefix + grid_size[0] * grid_size[1], DIM, dtype=torch.float64)
    out = mixer(x, grid_size, num_prefix)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected = EXPLICIT[CASES[family][0]](mixer, x, grid_size, num_prefix)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("family", sorted(CASES))
def test_gradients_match_explicit_float64_and_reach_every_parameter(family):
    grid_size, num_prefix = LAYOUTS[0]
    mixer = _random_mixer(family, seed=1)
    x = torch.randn(2, num_prefix + grid_size[0] * grid_size[1], DIM, dtype=torch.float64, requires_grad=True)
    names, params = zip(("x", x), *mixer.named_parameters(), strict=False)
    grads = torch.autograd.grad(mixer(x, grid_size, num_prefix).square().sum(), params)
    explicit = EXPLICIT[CASES[family][0]](mixer, x, grid_size, num_prefix)
    expected = torch.autograd.grad(explicit.square().sum(), params)
    for name, grad, ref in zip(names, grads, expected, strict=True):
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(grad, ref, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_bf16_forward_is_finite_at_n3137(name):
    grid = (56, 56)
    torch.manual_seed(0)
    mixer = create_mixer(name, 64, num_heads=2, qkv_bias=True, dtype=torch.bfloat16).eval()
    # Unnormalised activations (std 3): overflow in a bf16 sum over 3137 tokens is what this guards against.
    x = 3 * torch.randn(2, 1 + grid[0] * grid[1], 64, dtype=torch.bfloat16)
    with torch.no_grad():
        out = mixer(x, grid, 1)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
