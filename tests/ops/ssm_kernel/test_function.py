"""The SSM-kernel kernels and the Toeplitz lags built from them against the float64 reference, forward and every
gradient (``tests/layers/test_h3.py`` checks the reference against the SSM's definition in complex arithmetic).

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import math

import pytest
import torch

from vitzoo.ops import set_backend
from vitzoo.ops.ssm_kernel import (
    ssm_kernels,
    ssm_kernels_reference,
    ssm_toeplitz_lags,
    ssm_toeplitz_lags_reference,
)
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _params(lead, modes, length, log_dt_range, dtype, device, seed):
    """Fresh random parameters around the S4D-Lin init (never zeros), and a random gradient of the kernels."""
    gen = torch.Generator().manual_seed(seed)
    low, high = log_dt_range
    log_dt = low + (high - low) * torch.rand(lead, generator=gen, dtype=torch.float64)
    log_a_real = torch.rand(*lead, modes, generator=gen, dtype=torch.float64) * 3 - 2
    a_imag = math.pi * torch.arange(modes, dtype=torch.float64) + torch.randn(*lead, modes, generator=gen,
                                                                              dtype=torch.float64)
    b = torch.randn(*lead, modes, 2, generator=gen, dtype=torch.float64)
    c = torch.randn(*lead, modes, 2, generator=gen, dtype=torch.float64)
    params = [t.to(device, dtype).requires_grad_() for t in (log_dt, log_a_real, a_imag, b, c)]
    return params, torch.randn(*lead, length, generator=gen, dtype=torch.float64)


def _run(fn, params, grad, length):
    out = fn(*params, length)
    return out, torch.autograd.grad(out, params, grad.to(out.device, out.dtype))


CASES = [  # (lead, modes, length, log dt range)
    ((2, 3), 5, 37, (math.log(1e-3), math.log(1e-1))),   # odd modes and lags in one block, H3's dt range
    ((2, 1), 32, 197, (math.log(1e-3), math.log(1e-1))),  # H3-T's 32 modes at 197 tokens, lags over four blocks
    ((4,), 7, 1, (-4.0, 0.0)),                             # one lag; larger steps (|dt A| near and above 1)
    ((3,), 6, 50, (-12.0, -10.0)),                         # tiny steps, where exp(dt A) - 1 needs expm1's precision
]
NAMES = ("log_dt", "log_a_real", "a_imag", "b", "c")


@needs_kernels
@pytest.mark.parametrize("lead, modes, length, log_dt_range", CASES)
def test_kernel_matches_float64_reference(lead, modes, length, log_dt_range):
    set_backend("triton")
    try:
        params, grad = _params(lead, modes, length, log_dt_range, torch.float32, DEVICE, modes + length)
        reference = [p.detach().double().cpu().requires_grad_() for p in params]
        out, grads = _run(ssm_kernels, params, grad, length)
        ref_out, ref_grads = _run(ssm_kernels_reference, reference, grad, length)
    finally:
        set_backend("auto")
    assert out.dtype == torch.float32 and out.shape == (*lead, length)
    for name, got, expected in zip(("kernels", *NAMES), (out, *grads), (ref_out, *ref_grads), strict=True):
        assert got.shape == expected.shape, name
        _assert_fp32_close(got.cpu(), expected, name)


def _assert_fp32_close(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    # fp32 arithmetic: the fp32 reference itself is 4e-6 (kernels) and 2e-5 (gradients) off float64 at 32 modes and 197
    # lags, where angles y l reach ~2000 rad and carry fp32's rounding; tiny steps cancel in the gradients (1.6e-4 at
    # dt ~ 1e-5)
    error = relative_error(got, expected)
    assert error < (1e-4 if name == "kernels" else 1e-3), f"{name}: relative error {error:.1e}"


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    set_backend("triton")
    try:
        params, grad = _params((2, 3), 9, 70, (-6.0, -2.0), torch.float32, DEVICE, 3)
        monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
        out, grads = _run(ssm_kernels, params, grad, 70)
        with torch.no_grad():
            inference = ssm_kernels(*params, 70)
    finally:
        set_backend("auto")
    assert all(torch.isfinite(t).all() for t in (out, inference, *grads))


@needs_cuda
def test_torch_compile_fullgraph_traces_the_reference():
    params, grad = _params((2, 3), 32, 197, (math.log(1e-3), math.log(1e-1)), torch.float32, "cuda", 13)
    reference = [p.detach().double().cpu().requires_grad_() for p in params]
    expected = _run(ssm_kernels_reference, reference, grad, 197)
    for fn in (ssm_kernels, torch.compile(ssm_kernels, fullgraph=True)):
        out, grads = _run(fn, params, grad, 197)
        for name, got, want in zip(("kernels", *NAMES), (out, *grads), (expected[0], *expected[1]), strict=True):
            _assert_fp32_close(got.cpu(), want, name)


def test_bad_inputs_are_one_line_errors():
    params, _ = _params((2, 3), 4, 5, (-3.0, -1.0), torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match=r"b must be \(2, 3, 4, 2\)"):
        ssm_kernels(params[0], params[1], params[2], params[3][..., 0], params[4], 5)
    with pytest.raises(ValueError, match="length must be at least 1"):
        ssm_kernels(*params, 0)


def _run_lags(fn, params, skip, grad, length):
    inputs = [*params] if skip is None else [*params, skip]
    out = fn(*params, skip, length)
    return out, torch.autograd.grad(out, inputs, grad.to(out.device, out.dtype))


LAG_CASES = [  # (heads, modes, length, with a skip)
    (3, 5, 37, True),     # odd modes and lags in one block
    (1, 32, 197, True),   # H3-T's 32 modes at 197 tokens: lags over four blocks each way
    (2, 7, 1, False),     # one lag: lag zero alone
    (4, 6, 65, False),    # one lag past a block
]


@needs_kernels
@pytest.mark.parametrize("heads, modes, length, with_skip", LAG_CASES)
def test_toeplitz_lags_kernels_match_float64_reference(heads, modes, length, with_skip, monkeypatch):
    """The lag vector and the gradients of every parameter and the skip against float64, every output written
    (NaN-poisoned allocator)."""
    params, _ = _params((2, heads), modes, length, (math.log(1e-3), math.log(1e-1)), torch.float32, DEVICE, length)
    gen = torch.Generator().manual_seed(heads + modes)
    skip = torch.randn(heads, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32).requires_grad_() \
        if with_skip else None
    grad = torch.randn(heads, 2 * length - 1, generator=gen, dtype=torch.float64)
    reference = [p.detach().double().cpu().requires_grad_() for p in params]
    ref_skip = None if skip is None else skip.detach().double().cpu().requires_grad_()
    expected = _run_lags(ssm_toeplitz_lags_reference, reference, ref_skip, grad, length)
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        out, grads = _run_lags(ssm_toeplitz_lags, params, skip, grad, length)
        with torch.no_grad():
            inference = ssm_toeplitz_lags(*params, skip, length)
    finally:
        set_backend("auto")
    assert out.dtype == torch.float32 and out.shape == (heads, 2 * length - 1)
    assert torch.equal(inference, out.detach())
    names = ("kernels", *NAMES, "skip")
    for name, got, want in zip(names, (out, *grads), (expected[0], *expected[1]), strict=False):
        assert got.shape == want.shape, name
        _assert_fp32_close(got.cpu(), want, name)


def test_toeplitz_lags_reference_places_both_directions_around_lag_zero():
    """lags[s - t + L - 1] = T[t, s]: the forward kernel reversed, the lag-zero sum with the skip, the flipped
    direction's kernel."""
    params, _ = _params((2, 3), 4, 6, (-3.0, -1.0), torch.float64, "cpu", 1)
    skip = torch.randn(3, dtype=torch.float64)
    kernels = ssm_kernels_reference(*params, 6)
    lags = ssm_toeplitz_lags_reference(*params, skip, 6)
    for t in range(6):
        for s in range(6):
            value = kernels[0, :, t - s] * (t >= s) + kernels[1, :, s - t] * (s >= t) + skip * (s == t)
            torch.testing.assert_close(lags[:, s - t + 5], value, rtol=0, atol=1e-14)


def test_toeplitz_lags_bad_inputs_are_one_line_errors():
    params, _ = _params((3,), 4, 5, (-3.0, -1.0), torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match="first dim must hold the two directions"):
        ssm_toeplitz_lags(*params, None, 5)
    params, _ = _params((2, 3), 4, 5, (-3.0, -1.0), torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match=r"skip must be \(3,\)"):
        ssm_toeplitz_lags(*params, torch.zeros(4), 5)
