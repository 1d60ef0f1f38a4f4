"""Bidirectional H3: the long convolution vs explicit Toeplitz sums, the SSM kernel vs its definition, and the
mixer's FFT path vs the explicit form of ``explicit_mixers.py`` (the default path: ``test_mixers_numerics.py``)."""
from __future__ import annotations

import pytest
import torch
from explicit_mixers import explicit_h3

from vitzoo.layers import long_conv
from vitzoo.layers.h3 import BidirectionalH3, DiagonalSSMKernel
from vitzoo.layers.long_conv import (
    bidirectional_long_conv,
    fast_fft_length,
    gated_long_conv_fft,
    gated_long_conv_toeplitz,
)
from vitzoo.ops.ssm_kernel import toeplitz_lag_vector
from vitzoo.ops.testing import relative_error
from vitzoo.ops.toeplitz_attention import toeplitz_from_lags

DIM, HEADS = 64, 4  # head_dim 16
LAYOUTS = [((1, 1), 0), ((6, 8), 1), ((14, 14), 1)]  # N = 1, 49, 197


def causal_conv_explicit(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} kernel[t - s] x_s, one token pair at a time (x (..., L), kernel broadcastable)."""
    length = x.shape[-1]
    y = torch.zeros(torch.broadcast_shapes(x.shape, kernel.shape), dtype=x.dtype)
    for t in range(length):
        for s in range(t + 1):
            y[..., t] += kernel[..., t - s] * x[..., s]
    return y


def test_fast_fft_length_has_only_small_prime_factors():
    def small_primes_only(n: int) -> bool:
        for p in (2, 3, 5, 7):
            while n % p == 0:
                n //= p
        return n == 1

    for minimum in range(1, 3000):
        n = fast_fft_length(minimum)
        assert n >= minimum and small_primes_only(n), minimum
        assert not any(small_primes_only(m) for m in range(minimum, n)), minimum  # the smallest such length
    assert fast_fft_length(2 * 4097 - 1) == 8232  # 1024 px: 2^3 3 7^3 instead of 2 * 17 * 241


@pytest.mark.parametrize("length", [1, 2, 49, 197, 577])
def test_long_conv_matches_toeplitz_sums(length):
    torch.manual_seed(length)
    x = torch.randn(2, 3, length, dtype=torch.float64)
    kernel_fwd, kernel_bwd = torch.randn(2, 3, length, dtype=torch.float64).unbind(0)
    zero = torch.zeros_like(kernel_fwd)
    forward = causal_conv_explicit(x, kernel_fwd)
    backward = causal_conv_explicit(x.flip(-1), kernel_bwd).flip(-1)  # the flipped-sequence direction
    torch.testing.assert_close(bidirectional_long_conv(x, kernel_fwd, zero), forward, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(bidirectional_long_conv(x, zero, kernel_bwd), backward, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(
        bidirectional_long_conv(x, kernel_fwd, kernel_bwd), forward + backward, atol=1e-10, rtol=1e-10
    )


@pytest.mark.parametrize("length", [1, 2, 13])
def test_toeplitz_lags_give_the_two_sided_kernel(length):
    """T[t, s] = Kf[t - s] (t >= s) + Kb[s - t] (s >= t) + skip (s = t), read from the lag vector by the op's rule."""
    kernel_fwd, kernel_bwd = torch.randn(2, 3, length, dtype=torch.float64).unbind(0)
    skip = torch.randn(3, dtype=torch.float64)
    lags = toeplitz_lag_vector(kernel_fwd, kernel_bwd, skip)
    assert lags.shape == (3, 2 * length - 1)
    weights = toeplitz_from_lags(lags, length)
    for t in range(length):
        for s in range(length):
            expected = (kernel_fwd[:, t - s] if t >= s else 0) + (kernel_bwd[:, s - t] if s >= t else 0) \
                + (skip if s == t else 0)
            torch.testing.assert_close(weights[:, t, s], expected, atol=0, rtol=0)


@pytest.mark.parametrize("length", [1, 8, 13, 40])
def test_toeplitz_core_equals_fft_core_with_gradients(length):
    """Both cores on the same inputs, float64, at token counts on and off the Toeplitz form's multiple of 8."""
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, 3, length, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    kernels = [torch.randn(3, length, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    skip = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    inputs = (q, k, v, *kernels, skip)
    grad = torch.randn(2, 3, length, 5, generator=gen, dtype=torch.float64)
    results = []
    for core in (gated_long_conv_toeplitz, gated_long_conv_fft):
        out = core(*inputs)
        results.append((out, torch.autograd.grad(out, inputs, grad)))
    (out, grads), (expected, expected_grads) = results
    assert out.shape == (2, 3, length, 5)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_ssm_kernel_is_the_zoh_impulse_response():
    torch.manual_seed(0)
    ssm = DiagonalSSMKernel(3, d_state=8, dtype=torch.float64)
    with torch.no_grad():
        ssm.B.normal_()
    kernel_fwd, kernel_bwd = ssm(20, torch.float64)
    for direction, kernel in enumerate((kernel_fwd, kernel_bwd)):
        dt = ssm.log_dt[direction].exp()[:, None]
        a = torch.complex(-ssm.log_A_real[direction].exp(), ssm.A_imag[direction])
        b, c = torch.view_as_complex(ssm.B[direction]), torch.view_as_complex(ssm.C[direction])
        a_bar, b_bar = torch.exp(dt * a), (torch.exp(dt * a) - 1) / a * b
        state = b_bar  # the state after an impulse at step 0, advanced one step per lag
        for lag in range(20):
            torch.testing.assert_close(kernel[:, lag], 2 * (c * state).sum(-1).real, atol=1e-12, rtol=1e-10)
            state = a_bar * state


def _complex_ssm_kernels(ssm: DiagonalSSMKernel, length: int) -> torch.Tensor:
    """The kernels in complex arithmetic (complex expm1 and exp), float64: the formula the real-arithmetic module
    code must equal."""
    dt = ssm.log_dt.exp().unsqueeze(-1)
    a = torch.complex(-ssm.log_A_real.exp(), ssm.A_imag)
    b, c = torch.view_as_complex(ssm.B.contiguous()), torch.view_as_complex(ssm.C.contiguous())
    coeff = c * b * torch.expm1(dt * a) / a
    powers = torch.exp((dt * a).unsqueeze(-1) * torch.arange(length, dtype=torch.float64).to(torch.complex128))
    return 2 * torch.einsum("dhm,dhml->dhl", coeff, powers).real


@pytest.mark.parametrize("log_dt", [-12.0, -4.0, -1.0])
def test_real_arithmetic_ssm_kernel_equals_complex_formula(log_dt):
    """Real cos / sin / exp arithmetic (ONNX-exportable) against complex expm1 / exp, float64, down to tiny dt
    where expm1's precision matters."""
    torch.manual_seed(1)
    ssm = DiagonalSSMKernel(3, d_state=16, dtype=torch.float64)
    with torch.no_grad():
        ssm.log_dt.uniform_(log_dt - 1, log_dt + 1)
        ssm.log_A_real.uniform_(-3, 2)
        ssm.A_imag.uniform_(-20, 20)
        ssm.B.normal_()
    expected = _complex_ssm_kernels(ssm, 40)
    kernel_fwd, kernel_bwd = ssm(40, torch.float64)
    got = torch.stack([kernel_fwd, kernel_bwd])
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-11)
    # and the gradients of every SSM parameter, through complex autograd on the one side
    weights = torch.randn(expected.shape, dtype=torch.float64)
    params = list(ssm.parameters())
    for grad, want in zip(torch.autograd.grad((got * weights).sum(), params),
                          torch.autograd.grad((expected * weights).sum(), params), strict=True):
        torch.testing.assert_close(grad, want, atol=1e-12 * want.abs().max().item(), rtol=1e-9)


def _make_mixer(seed: int = 0) -> BidirectionalH3:
    torch.manual_seed(seed)
    mixer = BidirectionalH3(DIM, num_heads=HEADS, d_state=16, dtype=torch.float64)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if not name.startswith("ssm."):  # keep the S4D-Lin init of the SSM (a stable kernel)
                p.normal_(std=0.3)
    return mixer


@pytest.mark.parametrize("grid_size, num_prefix", LAYOUTS)
def test_fft_path_matches_explicit(monkeypatch, grid_size, num_prefix):
    # The FFT core at these lengths (test_mixers_numerics covers the Toeplitz core that short sequences take).
    monkeypatch.setattr(long_conv, "TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM", 0)
    mixer = _make_mixer()
    n = num_prefix + grid_size[0] * grid_size[1]
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    out = mixer(x, grid_size=grid_size, num_prefix_tokens=num_prefix)
    assert out.shape == (2, n, DIM)
    torch.testing.assert_close(out, explicit_h3(mixer, x, grid_size, num_prefix), atol=1e-10, rtol=1e-9)


def test_fft_path_is_counted_by_fvcore(monkeypatch):
    """fvcore traces the model with torch.jit.trace, where sizes are 0-dim tensors: the FFT length must not break."""
    pytest.importorskip("fvcore")
    from vitzoo.flops import count_macs

    monkeypatch.setattr(long_conv, "TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM", 0)
    mixer = _make_mixer(1).float()
    macs = count_macs(_GridWrapper(mixer, (5, 5)), torch.randn(1, 26, DIM))
    # more than the input (C -> 3C) and output (C -> C) projections: the convolution and the FFT work count too
    assert macs > 4 * 26 * DIM * DIM


class _GridWrapper(torch.nn.Module):
    def __init__(self, mixer: torch.nn.Module, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.mixer, self.grid_size = mixer, grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x, grid_size=self.grid_size)


def test_fft_path_gradients_match_explicit_and_reach_every_parameter(monkeypatch):
    monkeypatch.setattr(long_conv, "TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM", 0)
    mixer = _make_mixer(1)
    x = torch.randn(2, 26, DIM, dtype=torch.float64, requires_grad=True)
    params = [x, *mixer.parameters()]
    grads = torch.autograd.grad(mixer(x, grid_size=(5, 5)).square().sum(), params)
    expected = torch.autograd.grad(explicit_h3(mixer, x, (5, 5), 1).square().sum(), params)
    for (name, _), grad, ref in zip([("x", None), *mixer.named_parameters()], grads, expected, strict=True):
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(grad, ref, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")


def test_ssm_parameters_are_marked_for_the_optimiser():
    mixer = BidirectionalH3(DIM, num_heads=HEADS)
    names = mixer.no_weight_decay()
    params = dict(mixer.named_parameters())
    assert names == {"ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "ssm.B"}
    for name, param in params.items():
        expected = {"weight_decay": 0.0, "lr": 1e-3} if name in names else None
        assert getattr(param, "_optim", None) == expected, name
    dt = params["ssm.log_dt"].exp()
    assert ((dt >= 1e-3) & (dt <= 1e-1)).all()


def test_rejects_unknown_option_and_odd_state():
    with pytest.raises(TypeError):
        BidirectionalH3(DIM, num_heads=HEADS, head_dim=1)
    with pytest.raises(ValueError):
        BidirectionalH3(DIM, num_heads=HEADS, d_state=7)


def test_ssm_kernels_are_kept_without_gradients_until_a_parameter_changes(monkeypatch):
    ssm = DiagonalSSMKernel(3, d_state=8, dtype=torch.float64)
    computed = []
    real = DiagonalSSMKernel.kernels
    monkeypatch.setattr(DiagonalSSMKernel, "kernels", lambda self, *a: computed.append(a) or real(self, *a))
    with torch.no_grad():
        first = ssm(11, torch.float64)
        again = ssm(11, torch.float64)
        assert len(computed) == 1 and again[0] is first[0]
        ssm(12, torch.float64)  # another length
        assert len(computed) == 2
        ssm.C.add_(0.5)  # an in-place update (as an optimizer step or load_state_dict)
        changed = ssm(12, torch.float64)
        assert len(computed) == 3
        torch.testing.assert_close(changed[0], real(ssm, 12, torch.float64)[0])
    with torch.inference_mode():
        ssm(12, torch.float64)
        assert len(computed) == 3
    # with gradients recorded the kernels are computed every call, and the parameters get their gradient
    kernel_fwd, kernel_bwd = ssm(12, torch.float64)
    assert len(computed) == 4
    (kernel_fwd.sum() + kernel_bwd.sum()).backward()
    assert all(p.grad is not None for p in ssm.parameters())


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("toeplitz", [True, False], ids=["toeplitz", "fft"])
def test_core_precision_under_autocast(monkeypatch, toeplitz, grad):
    """Under bf16 autocast the Toeplitz core runs as attention does (16-bit matrix products, fp32 accumulation), the
    FFT core in fp32, with gradients (training) and without; either way the mixer stays within bf16 error of its
    float64 self."""
    if not toeplitz:
        monkeypatch.setattr(long_conv, "TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM", 0)
    core_dtypes = []
    for name in ("gated_long_conv_toeplitz", "gated_long_conv_fft"):
        real = getattr(long_conv, name)
        monkeypatch.setattr(long_conv, name, lambda *a, _real=real: core_dtypes.append((out := _real(*a)).dtype) or out)
    mixer = _make_mixer(2)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    expected = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
    core_dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        out = mixer.float()(x.float(), grid_size=(7, 7), num_prefix_tokens=1)
    assert core_dtypes == [torch.bfloat16 if toeplitz else torch.float32]
    assert out.requires_grad == grad
    assert relative_error(out, expected.detach()) < 1e-2


def test_toeplitz_core_gradients_with_and_without_kept_lags():
    """float64 numerical gradients of the Toeplitz core: with the skip, without it, and with kept lags that carry no
    gradient (a frozen SSM); kept lags with kernels that need a gradient are refused."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    kernels = [torch.randn(3, 7, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2)]
    skip = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(gated_long_conv_toeplitz, (q, k, v, *kernels, skip))
    assert torch.autograd.gradcheck(gated_long_conv_toeplitz, (q, k, v, *kernels))
    frozen = [t.detach() for t in kernels]
    kept = toeplitz_lag_vector(*frozen, skip.detach())
    with_kept = lambda *qkv: gated_long_conv_toeplitz(*qkv, *frozen, skip.detach(), kept)  # noqa: E731
    assert torch.autograd.gradcheck(with_kept, (q, k, v))
    with pytest.raises(ValueError, match="kept Toeplitz lags carry no gradient"):
        gated_long_conv_toeplitz(q, k, v, *kernels, skip, kept)


def test_fft_form_without_kernels_gets_a_one_line_error(monkeypatch):
    monkeypatch.setattr(long_conv, "TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM", 0)
    q = k = v = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    lags = torch.randn(2, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="the FFT form .* needs kernel_fwd and kernel_bwd"):
        long_conv.gated_long_conv(q, k, v, None, None, lags=lags)


def test_toeplitz_lags_are_kept_between_inference_forwards_until_a_parameter_changes(monkeypatch):
    from vitzoo.layers import h3

    built = []
    real = h3.DiagonalSSMKernel.toeplitz_lags
    monkeypatch.setattr(h3.DiagonalSSMKernel, "toeplitz_lags", lambda self, *a: built.append(1) or real(self, *a))
    mixer = _make_mixer(3)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    with torch.no_grad():
        first = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
        again = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
        assert len(built) == 1
        torch.testing.assert_close(again, first, atol=0, rtol=0)
        mixer.D.add_(0.5)  # the skip is part of the lags
        after_skip = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
        mixer.ssm.C.add_(0.1)  # so are the SSM kernels
        after_ssm = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
        assert len(built) == 3
    torch.testing.assert_close(after_ssm, explicit_h3(mixer, x, (7, 7), 1), atol=1e-10, rtol=1e-9)
    assert (after_skip - first).abs().max() > 1e-3 and (after_ssm - after_skip).abs().max() > 1e-3


def test_kept_lags_are_all_an_inference_forward_reads(monkeypatch):
    """With the lags kept, an inference forward neither asks the SSM for its kernels nor casts the skip: each of those
    was host time (a lookup, a dispatch) on every forward."""
    mixer = _make_mixer(5)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    asked = []
    for name in ("forward", "toeplitz_lags"):
        real = getattr(DiagonalSSMKernel, name)
        monkeypatch.setattr(DiagonalSSMKernel, name,
                            lambda self, *a, _real=real, _name=name: asked.append(_name) or _real(self, *a))
    with torch.no_grad():
        mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
        asked.clear()
        out = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
    assert asked == []
    torch.testing.assert_close(out, explicit_h3(mixer, x, (7, 7), 1), atol=1e-10, rtol=1e-9)
    asked.clear()
    mixer(x, grid_size=(7, 7), num_prefix_tokens=1)  # with gradients: the lags, in the graph
    assert asked == ["toeplitz_lags"]


def test_kept_values_follow_a_fused_optimizers_updates_across_train_and_eval():
    """A fused AdamW step leaves the parameters' version counters as they were; the evaluation after it (train(),
    step, eval(), as training loops do) must still see the updated SSM kernels and Toeplitz lags."""
    mixer = _make_mixer(4)
    x = torch.randn(2, 50, DIM, dtype=torch.float64)
    optimizer = torch.optim.AdamW(mixer.parameters(), lr=0.05, fused=True)
    mixer.eval()
    with torch.no_grad():
        mixer(x, grid_size=(7, 7), num_prefix_tokens=1)  # keeps the kernels and weights
    mixer.train()
    mixer(x, grid_size=(7, 7), num_prefix_tokens=1).square().sum().backward()
    optimizer.step()
    mixer.eval()
    with torch.no_grad():
        out = mixer(x, grid_size=(7, 7), num_prefix_tokens=1)
    torch.testing.assert_close(out, explicit_h3(mixer, x, (7, 7), 1), atol=1e-10, rtol=1e-9)


def test_toeplitz_form_at_any_length_where_the_fused_kernels_run():
    """Above N = 64 d the FFT form runs where the Toeplitz op would fall back to its reference (which holds the
    (N, N) scores); where the op's kernels run (the Triton backend) the Toeplitz form runs at every N."""
    from vitzoo.ops import set_backend, triton_available
    from vitzoo.ops.utils import interpreting

    q, k, v = (torch.randn(1, 2, 70, 1) for _ in range(3))  # N = 70 > 64 d
    short = q[:, :, :64]
    assert not long_conv.uses_toeplitz(q, k, v) and long_conv.uses_toeplitz(short, short, short)
    assert not long_conv.uses_toeplitz(*(t.double() for t in (q, k, v)))
    if torch.cuda.is_available():  # the kernels' own device
        q, k, v = (t.cuda() for t in (q, k, v))
    elif not (triton_available() and interpreting()):
        pytest.skip("the kernels' half needs CUDA or the Triton interpreter")
    set_backend("triton")  # CPU tensors run the kernels under the interpreter
    try:
        assert long_conv.uses_toeplitz(q, k, v)
        assert not long_conv.uses_toeplitz(*(t.double() for t in (q, k, v)))  # the kernels take no float64
    finally:
        set_backend("auto")
