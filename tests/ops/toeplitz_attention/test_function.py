"""The Toeplitz-attention kernels against the float64 reference, forward and every gradient, on strided views of a
fused projection as the H3 mixer passes them.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``), in
fp32 with exact products.
"""
import pytest
import torch

from vitzoo.ops import set_backend, toeplitz_attention, toeplitz_attention_reference
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels

CASES = [  # (B, N, H, D)
    (2, 13, 3, 8),   # one tile each way, odd N
    (1, 70, 2, 16),  # one forward query block, three key steps; two key blocks of the gradients, a partial one last
    (1, 150, 1, 8),  # two forward query blocks, the second partial; three gradient blocks each way
    (3, 1, 1, 5),    # one token, a head dim below the tile's 16
]


def _inputs(batch, length, heads, dim, dtype, seed):
    """q, k, v as views of one (B, N, 3, H, D) projection (strided, as the mixer's), lags, and an output gradient;
    fresh random values, never zeros."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, 3, heads, dim, generator=gen, dtype=torch.float64)
    lags = torch.randn(heads, 2 * length - 1, generator=gen, dtype=torch.float64)
    grad = torch.randn(batch, length, heads, dim, generator=gen, dtype=torch.float64)
    return qkv.to(DEVICE, dtype), lags.to(DEVICE), grad


def _raises(*args, **kwargs):
    raise AssertionError("the autograd function ran for inputs that need no gradient")


def _run(fn, qkv, lags, grad):
    qkv = qkv.detach().requires_grad_()
    lags = lags.detach().requires_grad_()
    q, k, v = qkv.unbind(2)
    out = fn(q, k, v, lags)
    grads = torch.autograd.grad(out, (qkv, lags), grad.to(out.device, out.dtype))
    return out, grads


@needs_kernels
@pytest.mark.parametrize("batch, length, heads, dim", CASES)
def test_kernels_match_float64_reference(batch, length, heads, dim, monkeypatch):
    from vitzoo.ops.toeplitz_attention import function

    qkv, lags, grad = _inputs(batch, length, heads, dim, torch.float32, length + dim)
    set_backend("triton")
    try:
        out, (dqkv, dlags) = _run(toeplitz_attention, qkv, lags.float(), grad)
        with torch.no_grad(), monkeypatch.context() as patch:
            # without a gradient the forward launches directly, without the autograd function
            patch.setattr(function._ToeplitzAttentionFunction, "apply", _raises)
            inference = toeplitz_attention(*qkv.unbind(2), lags.float())
    finally:
        set_backend("auto")
    ref_out, (ref_dqkv, ref_dlags) = _run(toeplitz_attention_reference, qkv.double().cpu(), lags.double().cpu(), grad)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert dlags.dtype == torch.float32
    assert relative_error(inference.cpu(), ref_out) < 1e-5
    for name, got, expected in (("out", out, ref_out), ("dq", dqkv[:, :, 0], ref_dqkv[:, :, 0]),
                                ("dk", dqkv[:, :, 1], ref_dqkv[:, :, 1]), ("dv", dqkv[:, :, 2], ref_dqkv[:, :, 2]),
                                ("dlags", dlags, ref_dlags)):
        error = relative_error(got.cpu(), expected)
        assert error < 1e-5, f"{name}: relative error {error:.1e}"


@needs_kernels
def test_kernels_write_every_output(monkeypatch):
    """Outputs allocated uninitialised and filled with NaN first: a tile the kernels skip shows up."""
    qkv, lags, grad = _inputs(2, 70, 2, 8, torch.float32, 1)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    set_backend("triton")
    try:
        out, grads = _run(toeplitz_attention, qkv, lags.float(), grad)
    finally:
        set_backend("auto")
    assert all(torch.isfinite(t).all() for t in (out, *grads))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_kernels_match_float64_reference(dtype):
    """H3-T's shape (197 tokens, 3 heads of 64) in 16 bits: within the inputs' rounding of the float64 reference."""
    qkv, lags, grad = _inputs(4, 197, 3, 64, dtype, 7)
    lags = lags / 197  # H3's kernels decay: keep the sums of 197 weighted terms at the scale of one
    out, (dqkv, dlags) = _run(toeplitz_attention, qkv, lags.float(), grad)
    ref_out, (ref_dqkv, ref_dlags) = _run(toeplitz_attention_reference, qkv.double().cpu(), lags.double().cpu(), grad)
    assert out.dtype == dtype
    for name, got, expected in (("out", out, ref_out), ("dqkv", dqkv, ref_dqkv), ("dlags", dlags, ref_dlags)):
        error = relative_error(got.cpu(), expected)
        assert error < 2e-2, f"{name}: relative error {error:.1e}"


@needs_kernels
def test_inference_calls_reuse_their_kept_launch(monkeypatch):
    """An eager call without gradients and with the key of an earlier one skips the checks and repeats the kept
    launch on its own tensors (the output poisoned); another length, and fp64 lags (cast, so not kept), are checked
    again; every call matches float64."""
    from vitzoo.ops.toeplitz_attention import function

    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a: checks.append(1) or check(*a))
    real_empty = torch.empty
    set_backend("triton")
    try:
        with torch.no_grad():
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
            for seed, length, lag_dtype, expected_checks in [(1, 13, torch.float32, 1), (2, 13, torch.float32, 1),
                                                             (3, 9, torch.float32, 2), (4, 9, torch.float32, 2),
                                                             (5, 9, torch.float64, 3), (6, 9, torch.float64, 4)]:
                qkv, lags, _ = _inputs(2, length, 2, 8, torch.float32, seed)
                out = toeplitz_attention(*qkv.unbind(2), lags.to(lag_dtype))
                expected = toeplitz_attention_reference(*qkv.double().cpu().unbind(2), lags.double().cpu())
                assert relative_error(out.cpu(), expected) < 1e-5
                assert len(checks) == expected_checks
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 2
