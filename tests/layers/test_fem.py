"""Free Energy Mixer: preset widths, the limits of the free energy in beta, clipping, the released options and the
released linear prior, against the explicit forms of ``explicit_mixers.py`` (float64). Forward and gradients of the
default mixers: ``test_mixers_numerics.py``."""
from __future__ import annotations

import math

import pytest
import torch
from explicit_mixers import explicit_fem, fem_prior_and_values, fem_reads

from vitzoo.layers.fem import FreeEnergyMixer, fem_value_width

DIM, HEADS = 64, 2  # d_k = 32, E = 32, d_v = 16
LAYOUT = ((7, 7), 1)  # N = 50
PRIORS = ["linear", "softmax"]


def _make_mixer(prior: str, seed: int = 0, **options) -> FreeEnergyMixer:
    torch.manual_seed(seed)
    mixer = FreeEnergyMixer(DIM, num_heads=HEADS, qkv_bias=True, prior=prior, dtype=torch.float64, **options)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(std=0.3)
        mixer.beta_param.normal_(mean=1.8, std=0.5)
    return mixer


def _set_beta(mixer: FreeEnergyMixer, beta: float) -> None:
    with torch.no_grad():  # inverse of beta = softplus(p) + 1e-6
        mixer.beta_param.fill_(math.log(math.expm1(beta - 1e-6)))


def test_preset_a_widths():
    assert fem_value_width(192, 3) == 96 and fem_value_width(384, 6) == 192 and fem_value_width(768, 12) == 384
    mixer = FreeEnergyMixer(192, num_heads=3)
    assert (mixer.qk_head_dim, mixer.v_head_dim) == (64, 32)
    assert mixer.qkv.out_features == 2 * 192 + 96 and mixer.proj.in_features == 96


@pytest.mark.parametrize("prior", PRIORS)
def test_free_energy_tends_to_mean_as_beta_vanishes(prior):
    mixer = _make_mixer(prior, seed=2)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    mean, free_energy = mixer.reads(x, (7, 7), 1)
    assert (free_energy - mean).abs().max() > 1e-2  # at beta ~ 2 the reads differ
    _set_beta(mixer, 1e-4)
    mean, free_energy = mixer.reads(x, (7, 7), 1)
    torch.testing.assert_close(mean, fem_reads(mixer, x, *LAYOUT)[0], atol=1e-12, rtol=1e-10)
    p, v = fem_prior_and_values(mixer, x, *LAYOUT)
    variance = (p @ v.square() - (p @ v).square()).transpose(1, 2)
    # F - mu = beta Var_p(v) / 2 + O(beta^2)
    # the O(beta^2) rest is below 1e-7 here, where the terms reach about 1e-3
    torch.testing.assert_close(free_energy - mean, 1e-4 * variance / 2, atol=1e-6, rtol=1e-3)
    assert (free_energy - mean).abs().max() < 1e-2


@pytest.mark.parametrize("prior", PRIORS)
def test_free_energy_tends_to_support_max_as_beta_grows(prior):
    mixer = _make_mixer(prior, seed=3)
    with torch.no_grad():  # small values so that |beta v| stays under the clipping cap for every beta below
        mixer.qkv.weight[2 * DIM:] *= 0.02
        mixer.qkv.bias[2 * DIM:] *= 0.02
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    p, v = fem_prior_and_values(mixer, x, *LAYOUT)  # (B, h, t, i), (B, h, i, d_v)
    support = p > 0
    assert v.abs().max() < 0.2 and support.any(dim=-1).all()
    masked = torch.where(support[..., None], v[:, :, None], -math.inf)  # (B, h, t, i, d_v)
    support_max, argmax = masked.max(dim=3)
    log_p_at_max = torch.log(torch.gather(p, 3, argmax)).transpose(1, 2)  # (B, t, h, d_v)
    support_max = support_max.transpose(1, 2)
    previous, mean_gaps = -math.inf, []
    for beta in (1.0, 10.0, 50.0, 199.0):
        _set_beta(mixer, beta)
        free_energy = mixer.reads(x, (7, 7), 1)[1]
        torch.testing.assert_close(free_energy, fem_reads(mixer, x, *LAYOUT)[1], atol=1e-10, rtol=1e-9)
        # log(p_max) / beta <= F - max <= 0
        gap = free_energy - support_max
        assert (gap <= 1e-9).all()
        assert (gap >= log_p_at_max / beta - 1e-9).all()
        assert (free_energy >= previous - 1e-12).all()  # F grows with beta
        previous = free_energy
        mean_gaps.append(gap.abs().mean().item())
    assert mean_gaps[-1] < 0.5 * mean_gaps[0]  # the O(1/beta) lower bound squeezes F onto the max


@pytest.mark.parametrize("prior", PRIORS)
def test_clipping_at_large_beta(prior):
    mixer = _make_mixer(prior, seed=4)
    _set_beta(mixer, 500.0)  # |v| ~ 1 >> 40 / 500: most values are clipped
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    _, v = fem_prior_and_values(mixer, x, *LAYOUT)
    assert (v.abs() == 40.0 / 500.0).float().mean() > 0.5
    out = mixer(x, grid_size=(7, 7))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, explicit_fem(mixer, x, *LAYOUT), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("options", [dict(rope=True), dict(conv=True), dict(rope=True, conv=True)])
@pytest.mark.parametrize("grid_size, num_prefix", [((6, 8), 1), ((5, 5), 0)])
def test_rope_and_conv_options_match_explicit(prior, options, grid_size, num_prefix):
    mixer = _make_mixer(prior, seed=6, **options)
    n = num_prefix + grid_size[0] * grid_size[1]
    x = torch.randn(2, n, DIM, dtype=torch.float64, requires_grad=True)
    expected = explicit_fem(mixer, x, grid_size, num_prefix)
    out = mixer(x, grid_size, num_prefix)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)
    assert (mixer.conv is not None) == options.get("conv", False)
    params = [x, *mixer.parameters()]
    for got, want in zip(torch.autograd.grad(out.square().sum(), params, allow_unused=True),
                         torch.autograd.grad(expected.square().sum(), params, allow_unused=True), strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("prior", ["linear", "softmax"])
def test_beta_is_kept_between_inference_forwards_until_its_parameter_changes(monkeypatch, prior):
    mixer = _make_mixer(prior, seed=8)
    x = torch.randn(2, 17, DIM, dtype=torch.float64)
    computed = []
    real = FreeEnergyMixer.beta_max
    monkeypatch.setattr(FreeEnergyMixer, "beta_max", lambda self, *a: computed.append(a) or real(self, *a))
    with torch.no_grad():
        first = mixer(x, (4, 4), 1)
        again = mixer(x, (4, 4), 1)
        assert len(computed) == 1
        torch.testing.assert_close(again, first, atol=0, rtol=0)
        mixer.beta_param.add_(0.3)  # an in-place update, as an optimizer step or load_state_dict
        changed = mixer(x, (4, 4), 1)
        assert len(computed) == 2
    torch.testing.assert_close(changed, explicit_fem(mixer, x, (4, 4), 1), atol=1e-10, rtol=1e-9)
    assert (changed - first).abs().max() > 1e-6
    mixer(x, (4, 4), 1)  # with gradients: computed in the graph every time
    assert len(computed) == 3


def test_linear_prior_of_an_all_negative_query_is_the_released_one():
    """A query whose projections are all negative: phi(q) = eps, so its prior is phi(k_i)-weighted, not 0/0."""
    mixer = _make_mixer("linear", seed=5)
    with torch.no_grad():
        mixer.qkv.weight[:DIM] = 0.0
        mixer.qkv.bias[:DIM] = -1.0
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    p, _ = fem_prior_and_values(mixer, x, *LAYOUT)
    torch.testing.assert_close(p.sum(dim=-1), torch.ones_like(p[..., 0]), atol=1e-12, rtol=0)
    out = mixer(x, grid_size=(7, 7))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, explicit_fem(mixer, x, *LAYOUT), atol=1e-10, rtol=1e-9)


def test_rejects_unknown_option_and_bad_prior():
    with pytest.raises(TypeError):
        FreeEnergyMixer(DIM, num_heads=HEADS, time_decay=True)
    with pytest.raises(ValueError):
        FreeEnergyMixer(40, num_heads=4, rope=True)  # d_k = 10 is not divisible by 4
    with pytest.raises(ValueError):
        FreeEnergyMixer(DIM, num_heads=HEADS, prior="mamba")


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_prior_reads_at_the_projections_precision_under_autocast(monkeypatch, prior, dtype):
    """Under bf16 autocast both priors read bf16 features and values (as attention reads v: their read comes back
    bf16) while FEM's own arithmetic stays fp32; fp16 would flush the small exponentials, so there the priors read
    fp32 values. The mixer stays within 16-bit error of its float64 self."""
    from vitzoo.layers import fem
    from vitzoo.ops.testing import relative_error

    reads = []
    real = fem.free_energy_mix
    monkeypatch.setattr(fem, "free_energy_mix", lambda read, *a: reads.append(read.dtype) or real(read, *a))
    mixer = _make_mixer(prior, seed=4)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    expected = mixer(x, *LAYOUT)
    with torch.autocast("cpu", dtype=dtype):
        out = mixer.float()(x.float(), *LAYOUT)
    read_dtype = torch.float32 if dtype == torch.float16 else dtype
    assert reads == [torch.float64, read_dtype] and out.dtype == dtype
    assert relative_error(out, expected) < 1e-2
