"""x + GELU(v * scale + shift): the kernel against the float64 reference, where each runs, bad inputs.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch
import torch.nn.functional as F

from vitzoo.ops import affine_gelu_add, affine_gelu_add_reference, set_backend
from vitzoo.ops.affine_gelu_add import function
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(rows_shape, heads, head_dim, dtype, device, seed):
    """Fresh random inputs as QT's shortcut passes them: v a strided slice of a fused projection (B, N, 3, H * D),
    x the attention output, scale and shift per head-dim channel repeated over the heads, never zeros."""
    gen = torch.Generator().manual_seed(seed)
    channels = heads * head_dim
    fused = torch.randn(*rows_shape, 3, channels, generator=gen, dtype=torch.float64) * 2
    v = fused.to(device, dtype)[..., 2, :]
    x = torch.randn(*rows_shape, channels, generator=gen, dtype=torch.float64).to(device, dtype)
    scale = (torch.rand(head_dim, generator=gen, dtype=torch.float64) + 0.5).repeat(heads).to(device, torch.float32)
    shift = torch.randn(head_dim, generator=gen, dtype=torch.float64).repeat(heads).to(device, torch.float32)
    return x, v, scale, shift


def _float64(*tensors):
    return [t.detach().cpu().double() for t in tensors]


CASES = [  # (leading shape, heads, head dim)
    ((2, 37), 3, 15),     # odd rows and channels: partial row and channel blocks
    ((1, 130), 2, 64),    # 128 channels: two full channel blocks
    ((3,), 1, 5),         # 2-D rows, fewer channels than a block
]


@needs_kernels
@pytest.mark.parametrize("rows_shape, heads, head_dim", CASES)
def test_kernel_matches_float64_reference(rows_shape, heads, head_dim):
    x, v, scale, shift = _inputs(rows_shape, heads, head_dim, torch.float32, DEVICE, 3 * heads + head_dim)
    set_backend("triton")
    try:
        with torch.no_grad():
            out = affine_gelu_add(x, v, scale, shift)
    finally:
        set_backend("auto")
    expected = affine_gelu_add_reference(*_float64(x, v, scale, shift))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert relative_error(out.cpu(), expected) < 1e-6


def test_reference_is_the_formula_in_float64():
    x, v, scale, shift = _float64(*_inputs((2, 7), 2, 3, torch.float64, "cpu", 0))
    expected = x + 0.5 * (v * scale + shift) * (1 + torch.erf((v * scale + shift) / 2 ** 0.5))
    torch.testing.assert_close(affine_gelu_add_reference(x, v, scale, shift), expected, rtol=1e-12, atol=1e-12)


@needs_kernels
def test_kernel_runs_only_where_no_gradient_is_recorded(monkeypatch):
    """With a gradient recorded the differentiable reference runs (its gradients are the float64 ones); without,
    the kernel (a rows view it cannot make sends it to the reference too)."""
    calls = []
    launch = function._affine_gelu_add
    monkeypatch.setattr(function, "_affine_gelu_add", lambda *a, **kw: calls.append(1) or launch(*a, **kw))
    x, v, scale, shift = _inputs((2, 9), 2, 8, torch.float32, DEVICE, 1)
    set_backend("triton")
    try:
        leaves = [t.clone().requires_grad_() for t in (x, v, scale, shift)]
        out = affine_gelu_add(*leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        assert calls == []
        with torch.no_grad():
            affine_gelu_add(*leaves)
        assert calls == [1]
        with torch.no_grad():  # no (rows, C) view: leading dims that do not merge, a channel stride of 2
            affine_gelu_add(x.transpose(0, 1), v.transpose(0, 1), scale, shift)
            affine_gelu_add(x, torch.randn(*x.shape[:-1], 2 * x.shape[-1], device=DEVICE)[..., ::2], scale, shift)
        assert calls == [1]
    finally:
        set_backend("auto")
    ref_leaves = [t.requires_grad_() for t in _float64(x, v, scale, shift)]
    ref_grads = torch.autograd.grad(affine_gelu_add_reference(*ref_leaves).square().sum(), ref_leaves)
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """The output is a fresh buffer: poisoning the allocator's memory must not leak into it."""
    x, v, scale, shift = _inputs((2, 70), 3, 24, torch.float32, DEVICE, 2)
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        with torch.no_grad():
            out = affine_gelu_add(x, v, scale, shift)
    finally:
        set_backend("auto")
    assert torch.isfinite(out).all()


@needs_cuda
def test_bf16_at_model_size():
    """bf16 at QT-DeiT-T's shape (64 x 197 tokens, 3 heads of 64) against float64 and against the BatchNorm, GELU and
    add it replaces, rounded in bf16."""
    x, v, scale, shift = _inputs((64, 197), 3, 64, torch.bfloat16, "cuda", 5)
    with torch.no_grad():
        out = affine_gelu_add(x, v, scale, shift)
        replaced = x + F.gelu(v * scale.to(v.dtype) + shift.to(v.dtype))
    expected = affine_gelu_add_reference(*_float64(x, v, scale, shift))
    assert out.dtype == torch.bfloat16
    assert relative_error(out.cpu(), expected) < 4e-3
    assert relative_error(out.cpu(), expected) <= relative_error(replaced.cpu(), expected)


@pytest.mark.parametrize("change, message", [
    (lambda x, v, s, b: (x, v[..., :-1], s, b), "one shape"),
    (lambda x, v, s, b: (x, v, s[:-1], b), r"must be \(30,\)"),
    (lambda x, v, s, b: (x, v.long(), s, b), "dtype"),
])
def test_bad_inputs_get_one_line_errors(change, message):
    x, v, scale, shift = _inputs((2, 5), 2, 15, torch.float32, "cpu", 4)
    with pytest.raises(ValueError, match=message):
        affine_gelu_add(*change(x, v, scale, shift))
