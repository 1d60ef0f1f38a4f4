"""InLine's local-kernel predictor: the reference against the released layers, the kernels and their backward
against the float64 reference, where each runs, bad inputs.

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


def _gradients(out, inputs, seed):
    """The gradients of ``inputs`` for a fresh random incoming gradient of ``out`` (float64 on the CPU, cast to
    ``out``'s dtype and device; read in the (B, k, k, C) order, as the local convolution's backward writes it)."""
    b, c, k, _ = out.shape
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(b, k, k, c, generator=gen, dtype=torch.float64).permute(0, 3, 1, 2)
    return torch.autograd.grad(out, inputs, grad.to(out.device, out.dtype))


@needs_kernels
@pytest.mark.parametrize("b, n, c, groups, k", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_gradients_match_float64_reference(b, n, c, groups, k, dtype, monkeypatch):
    """The backward kernel's gradients of x (one image's share for each of its tokens, in x's dtype) and of the
    four weights (fp32, summed over image blocks) against float64; every gradient written (NaN-poisoned
    allocator). A bf16 x's gradient carries one bf16 rounding."""
    x, params = _inputs(b, n, c, groups, k, dtype, DEVICE, b + n + c + 1)
    leaves = [x.requires_grad_(), *[p.requires_grad_() for p in params]]
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        out = predict_local_kernels(*leaves, groups=groups, kernel_size=k)
        grads = _gradients(out, leaves, seed=c)
    finally:
        set_backend("auto")
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    expected = _gradients(predict_local_kernels_reference(*ref_leaves, groups, k), ref_leaves, seed=c)
    assert [g.dtype for g in grads] == [dtype] + [torch.float32] * 4
    assert relative_error(grads[0].cpu(), expected[0]) < (5e-3 if dtype == torch.bfloat16 else 1e-5)
    for got, want in zip(grads[1:], expected[1:], strict=True):
        assert relative_error(got.cpu(), want) < 1e-5


@needs_kernels
def test_kernels_gradients_with_a_16_bit_second_layer():
    """The kernels take fp32 first-layer weights and any kernel dtype for the rest (each read as fp32): a bf16 second
    layer gets bf16 gradients, the others fp32, all against float64 within one bf16 rounding of the weights."""
    x, params = _inputs(5, 11, 12, 3, 3, torch.float32, DEVICE, 6)
    params[2], params[3] = params[2].bfloat16(), params[3].bfloat16()
    leaves = [x.requires_grad_(), *[p.requires_grad_() for p in params]]
    set_backend("triton")
    try:
        grads = _gradients(predict_local_kernels(*leaves, groups=3, kernel_size=3), leaves, seed=2)
    finally:
        set_backend("auto")
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    expected = _gradients(predict_local_kernels_reference(*ref_leaves, 3, 3), ref_leaves, seed=2)
    assert [g.dtype for g in grads] == [torch.float32] * 3 + [torch.bfloat16] * 2
    for got, want in zip(grads, expected, strict=True):
        assert relative_error(got.cpu().double(), want) < 5e-3


@needs_kernels
def test_kernels_run_eagerly_and_keep_only_inference_launches(monkeypatch):
    """A call that records a gradient runs the autograd function (the kernels) and keeps nothing; the first call
    without one launches the kernels and keeps its launches, which a call with the same key (other tensors) repeats,
    with the reference's result."""
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    calls = []
    launch, forward = function._predict_local_kernels, function._predictor_fwd
    monkeypatch.setattr(function, "_predict_local_kernels", lambda *a, **kw: calls.append("infer") or launch(*a, **kw))
    monkeypatch.setattr(function, "_predictor_fwd", lambda *a, **kw: calls.append("train") or forward(*a, **kw))
    x, params = _inputs(2, 9, 6, 2, 3, torch.float32, DEVICE, 1)
    set_backend("triton")
    try:
        leaves = [p.clone().requires_grad_() for p in params]
        predict_local_kernels(x, *leaves, groups=2, kernel_size=3)
        assert calls == ["train"] and not function._KEPT.launches
        with torch.no_grad():
            predict_local_kernels(x, *leaves, groups=2, kernel_size=3)
            assert calls == ["train", "infer"]
            monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
            kept = predict_local_kernels(x.clone(), *[p.clone() for p in params], groups=2, kernel_size=3)
        assert calls == ["train", "infer"] and len(function._KEPT.launches) == 1
    finally:
        set_backend("auto")
    ref_x, ref_params = _float64(x, params)
    assert relative_error(kept.cpu(), predict_local_kernels_reference(ref_x, *ref_params, 2, 3)) < 1e-5


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
    float64, forward and gradients: the kernels sum and multiply in fp32 as the reference does."""
    x, params = _inputs(64, 197, 192, 3, 3, torch.bfloat16, "cuda", 3)
    with torch.no_grad():
        got = predict_local_kernels(x, *params, groups=3, kernel_size=3)
    ref_x, ref_params = _float64(x, params)
    expected = predict_local_kernels_reference(ref_x, *ref_params, 3, 3)
    assert relative_error(got.cpu(), expected) < 1e-5
    leaves = [x.requires_grad_(), *[p.requires_grad_() for p in params]]
    grads = _gradients(predict_local_kernels(*leaves, groups=3, kernel_size=3), leaves, seed=5)
    ref_leaves = [t.requires_grad_() for t in (ref_x, *ref_params)]
    expected = _gradients(predict_local_kernels_reference(*ref_leaves, 3, 3), ref_leaves, seed=5)
    assert relative_error(grads[0].cpu(), expected[0]) < 5e-3  # one bf16 rounding
    for got, want in zip(grads[1:], expected[1:], strict=True):
        assert relative_error(got.cpu(), want) < 1e-5


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
