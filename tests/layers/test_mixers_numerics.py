"""Numerics of every registered mixer: float64 forward and gradients against the mixer's math written out
(``explicit_mixers.py``) on odd sizes, and a finite bf16 forward at ImageNet-768 length."""
from __future__ import annotations

import copy

import pytest
import torch
from explicit_mixers import EXPLICIT

from vitzoo.layers import MIXERS, create_mixer
from vitzoo.ops import set_backend
from vitzoo.ops.testing import relative_error
from vitzoo.ops.utils import interpreting, triton_available
from vitzoo.registry import DEIT_FAMILIES, FAMILIES

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(not (torch.cuda.is_available() or triton_available() and interpreting()),
                                   reason="needs CUDA or the Triton interpreter")

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


def _with_random_running_stats(mixer: torch.nn.Module) -> torch.nn.Module:
    """The mixer in eval mode with every BatchNorm's running statistics random (QT's shortcut reads them there)."""
    with torch.no_grad():
        for module in mixer.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return mixer.eval()


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("grad_mode", [False, True])
def test_eval_forward_matches_explicit_float64(family, grad_mode):
    grid_size, num_prefix = LAYOUTS[0]
    mixer = _with_random_running_stats(_random_mixer(family, seed=2))
    x = torch.randn(2, num_prefix + grid_size[0] * grid_size[1], DIM, dtype=torch.float64)
    with torch.set_grad_enabled(grad_mode):
        out = mixer(x, grid_size, num_prefix)
    expected = EXPLICIT[CASES[family][0]](mixer, x, grid_size, num_prefix)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)


@needs_kernels
def test_qt_eval_shortcut_through_the_kernels_matches_explicit_float64_and_follows_the_statistics():
    """QT in eval mode on the kernels (fp32): attention and the one-pass shortcut against the float64 math, before
    and after its running statistics change."""
    grid_size, num_prefix = LAYOUTS[0]
    mixer = _with_random_running_stats(_random_mixer("qt", seed=3))
    x = torch.randn(2, num_prefix + grid_size[0] * grid_size[1], DIM, dtype=torch.float64)
    fp32 = copy.deepcopy(mixer).float().to(KERNEL_DEVICE)
    for step in range(2):
        set_backend("triton")
        try:
            with torch.no_grad():
                out = fp32(x.float().to(KERNEL_DEVICE), grid_size, num_prefix)
        finally:
            set_backend("auto")
        expected = EXPLICIT["qt"](mixer, x, grid_size, num_prefix)
        assert relative_error(out.cpu(), expected) < 1e-5, step
        with torch.no_grad():  # new statistics, changed in place as load_state_dict and EMA do
            for norm in (mixer.core.v_norm, fp32.core.v_norm):
                norm.running_mean.add_(0.5)
                norm.running_var.mul_(3.0)


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
        reference = copy.deepcopy(mixer).double()(x.double(), grid, 1)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # and right: within bf16's rounding of the same mixer in float64
    assert relative_error(out.double(), reference) < 3e-2
