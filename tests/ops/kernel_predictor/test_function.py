"""InLine's local-kernel predictor: the reference against the released layers, the kernels against the float64
reference, where each runs, bad inputs.

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch
import torch.nn as nn

from vitzoo.ops import predict_local_kernels, predict_local_kernels_reference, set_backend
from vitzoo.ops.kernel_predictor import function
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(b, n, c, groups, k, dtype, device, seed):
    """Fresh random tokens (a strided slice of a wider tensor, as the block input is not) and fp32 layer weights,
    never zeros."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, n, 2 * c, generator=gen, dtype=torch.float64) + 0.5)[:, :, ::2].to(device, dtype)
    width = c // groups
    params = [torch.randn(c, width, 1, generator=gen, dtype=torch.float64) / width ** 0.5,
              torch.randn(c, generator=gen, dtype=torch.float64),
              torch.randn(c * k * k, width, 1, generator=gen, dtype=torch.float64) / width ** 0.5,
              torch.randn(c * k * k, generator=gen, dtype=torch.float64)]
    return x, [p.to(device, torch.float32) for p in params]


def _float64(x, params):
    return x.detach().cpu().double(), [p.detach().cpu().double() for p in params]


def test_reference_is_the_released_layers_on_the_token_mean():
    """The released code runs grouped Conv1d layers on the mean as a length-1 signal and reads channel c's kernel
    from outputs c k^2 .. (c + 1) k^2 - 1."""
    x, params = _float64(*_inputs(3, 7, 12, 3, 3, torch.float64, "cpu", 0))
    layers = nn.Sequential(nn.Conv1d(12, 12, 1, groups=3), nn.GELU(), nn.Conv1d(12, 108, 1, groups=3)).double()
    with torch.no_grad():
        for p, value in zip((layers[0].weight, layers[0].bias, layers[2].weight, layers[2].bias), params, strict=True):
            p.copy_(value)
        expected = layers(x.mean(dim=1).unsqueeze(-1)).view(3, 12, 3, 3)
    got = predict_local_kernels_reference(x, *params, groups=3, kernel_size=3)
    assert got.shape == (3, 12, 3, 3) and got.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


CASES = [  # (b, n, c, groups, k)
    (3, 37, 12, 3, 3),     # a partial block of images, groups of 4 channels (padded to 16), odd token count
    (17, 70, 130, 2, 3),   # two image blocks, groups of 65 channels, three channel blocks of the mean
    (2, 5, 8, 1, 5),       # one group, 5 x 5 kernels
    (2, 530, 8, 2, 3),     # nine token spans, the last one partial
]


@needs_kernels
@pytest.mark.parametrize("b, n, c, groups, k", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_match_float64_reference(b, n, c, groups, k, dtype):
    x, params = _inputs(b, n, c, groups, k, dtype, DEVICE, b + n + c)
    set_backend("triton")
    try:
        with torch.no_grad():
            got = predict_local_kernels(x, *params, groups=groups, kernel_size=k)
    finally:
        set_backend("auto")
    ref_x, ref_params = _float64(x, params)
    expected = predict_local_kernels_reference(ref_x, *ref_params, groups, k)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert got.permute(0, 2, 3, 1).is_contiguous()
    assert relative_error(got.cpu(), expected) < 1e-5


@needs_kernels
def test_kernels_run_only_where_no_gradient_is_recorded(monkeypatch):
    """Calls that record a gradient run the reference; the first call without one launches the kernels and keeps
    its launches, which a call with the same key (other tensors) repeats, with the reference's result."""
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    calls = []
    launch = function._predict_local_kernels
    monkeypatch.setattr(function, "_predict_local_kernels", lambda *a, **kw: calls.append(1) or launch(*a, **kw))
    x, params = _inputs(2, 9, 6, 2, 3, torch.float32, DEVICE, 1)
    set_backend("triton")
    try:
        leaves = [p.clone().requires_grad_() for p in params]
        out = predict_local_kernels(x, *leaves, groups=2, kernel_size=3)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        assert calls == []
        with torch.no_grad():
            predict_local_kernels(x, *leaves, groups=2, kernel_size=3)
            assert calls == [1]
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            kept = predict_local_kernels(x.clone(), *[p.clone() for p in params], groups=2, kernel_size=3)
        assert calls == [1] and len(function._KEPT.launches) == 1
    finally:
        set_backend("auto")
    ref_x, ref_params = _float64(x, params)
    assert relative_error(kept.cpu(), predict_local_kernels_reference(ref_x, *ref_params, 2, 3)) < 1e-5
    ref_leaves = [p.requires_grad_() for p in ref_params]
    ref_out = predict_local_kernels_reference(ref_x, *ref_leaves, groups=2, kernel_size=3)
    for got, expected in zip(grads, torch.autograd.grad(ref_out.square().sum(), ref_leaves), strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5


def test_reference_path_ignores_autocast():
    """The op computes in the weights' dtype whatever autocast is on, as the kernels do: under bf16 autocast the
    reference path gives the fp32 result of the same call without autocast, not a bf16 one."""
    x, params = _inputs(3, 10, 12, 3, 3, torch.float32, "cpu", 4)
    expected = predict_local_kernels(x, *params, groups=3, kernel_size=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = predict_local_kernels(x, *params, groups=3, kernel_size=3)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@needs_kernels
def test_kernels_write_every_output(monkeypatch):
    """The outputs are fresh buffers: poisoning the allocator's memory must not leak into them."""
    x, params = _inputs(19, 40, 12, 3, 3, torch.float32, DEVICE, 2)
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        with torch.no_grad():
            out = predict_local_kernels(x, *params, groups=3, kernel_size=3)
    finally:
        set_backend("auto")
    assert torch.isfinite(out).all()


@needs_cuda
def test_bf16_tokens_at_model_size():
    """InLine-T's shape (64 images of 197 tokens, 192 channels in 3 groups, 3 x 3 kernels), bf16 tokens, against
    float64: the kernels sum and multiply in fp32 as the reference does."""
    x, params = _inputs(64, 197, 192, 3, 3, torch.bfloat16, "cuda", 3)
    with torch.no_grad():
        got = predict_local_kernels(x, *params, groups=3, kernel_size=3)
    ref_x, ref_params = _float64(x, params)
    expected = predict_local_kernels_reference(ref_x, *ref_params, 3, 3)
    assert relative_error(got.cpu(), expected) < 1e-5


@pytest.mark.parametrize("change, message", [
    (lambda x, p: (x[0], p, 3), r"\(B, N, C\)"),
    (lambda x, p: (x, p, 5), "groups=5 must divide"),
    (lambda x, p: (x, [p[0], p[1], p[2][:-1], p[3]], 3), r"weight2 must be \(108, 4, 1\)"),
    (lambda x, p: (x.long(), p, 3), "dtype"),
])
def test_bad_inputs_get_one_line_errors(change, message):
    x, params = _inputs(2, 5, 12, 3, 3, torch.float32, "cpu", 4)
    x, params, groups = change(x, params)
    with pytest.raises(ValueError, match=message):
        predict_local_kernels(x, *params, groups=groups, kernel_size=3)
