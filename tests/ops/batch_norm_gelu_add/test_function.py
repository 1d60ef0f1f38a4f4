"""x + GELU(BatchNorm(v)) in eval mode: the kernel against the float64 reference, where each runs, bad inputs.

Without CUDA the kernel runs under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import pytest
import torch
import torch.nn.functional as F

from vitzoo.ops import batch_norm_gelu_add, batch_norm_gelu_add_reference, set_backend
from vitzoo.ops.batch_norm_gelu_add import function
from vitzoo.ops.launch import KeptLaunches
from vitzoo.ops.testing import relative_error

from ..markers import DEVICE, needs_cuda, needs_kernels


def _inputs(rows_shape, heads, head_dim, dtype, device, seed, head_stride=None):
    """Fresh random inputs as QT's shortcut passes them, never zeros: v a slice of a fused projection, (..., 3, H, D)
    (QT-DeiT) or, with ``head_stride`` 3, (..., H, 3 D) (QT-ViT's LiteMLA); x the attention output; statistics and
    affine parameters per head-dim channel."""
    gen = torch.Generator().manual_seed(seed)
    if head_stride is None:
        fused = torch.randn(*rows_shape, 3, heads, head_dim, generator=gen, dtype=torch.float64) * 2
        v = fused.to(device, dtype)[..., 2, :, :]
    else:
        fused = torch.randn(*rows_shape, heads, 3 * head_dim, generator=gen, dtype=torch.float64) * 2
        v = fused.to(device, dtype)[..., 2 * head_dim:]
    x = torch.randn(*rows_shape, heads, head_dim, generator=gen, dtype=torch.float64).to(device, dtype)
    stats = [torch.randn(head_dim, generator=gen, dtype=torch.float64),  # running mean
             torch.rand(head_dim, generator=gen, dtype=torch.float64) + 0.5,  # running var
             torch.randn(head_dim, generator=gen, dtype=torch.float64),  # weight
             torch.randn(head_dim, generator=gen, dtype=torch.float64)]  # bias
    return [x, v, *(t.to(device, torch.float32) for t in stats)]


def _float64(tensors):
    return [None if t is None else t.detach().cpu().double() for t in tensors]


CASES = [  # (leading shape, heads, head dim, head stride of v's fused layout, affine)
    ((2, 37), 3, 15, None, True),     # odd rows and channels: partial row and channel blocks
    ((1, 130), 2, 64, 3, True),       # LiteMLA's layout: heads 3 D apart
    ((3,), 1, 5, None, False),        # 2-D rows, fewer channels than a block, no affine parameters
]


@needs_kernels
@pytest.mark.parametrize("rows_shape, heads, head_dim, head_stride, affine", CASES)
def test_kernel_matches_float64_reference(rows_shape, heads, head_dim, head_stride, affine):
    tensors = _inputs(rows_shape, heads, head_dim, torch.float32, DEVICE, 3 * heads + head_dim, head_stride)
    if not affine:
        tensors[4:] = [None, None]
    set_backend("triton")
    try:
        with torch.no_grad():
            out = batch_norm_gelu_add(*tensors, eps=1e-3)
    finally:
        set_backend("auto")
    expected = batch_norm_gelu_add_reference(*_float64(tensors), eps=1e-3)
    assert out.shape == tensors[0].shape and out.dtype == tensors[0].dtype
    assert relative_error(out.cpu(), expected) < 1e-6


def test_reference_is_eval_batch_norm_then_gelu_then_the_sum_in_float64():
    x, v, mean, var, weight, bias = _float64(_inputs((2, 7), 2, 3, torch.float64, "cpu", 0))
    norm = torch.nn.BatchNorm1d(3, eps=1e-3, dtype=torch.float64).eval()
    with torch.no_grad():
        norm.running_mean.copy_(mean), norm.running_var.copy_(var), norm.weight.copy_(weight), norm.bias.copy_(bias)
    expected = x + F.gelu(norm(v.reshape(-1, 3))).view(v.shape)
    got = batch_norm_gelu_add_reference(x, v, mean, var, weight, bias, eps=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@needs_kernels
def test_kernel_runs_only_where_no_gradient_is_recorded(monkeypatch):
    """With a gradient recorded the differentiable reference runs (its gradients are the float64 ones); without,
    the kernel; inputs it cannot view as rows go to the reference too."""
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    calls = []
    launch = function._batch_norm_gelu_add
    monkeypatch.setattr(function, "_batch_norm_gelu_add", lambda *a, **kw: calls.append(1) or launch(*a, **kw))
    tensors = _inputs((2, 9), 2, 8, torch.float32, DEVICE, 1)
    set_backend("triton")
    try:
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = batch_norm_gelu_add(*leaves)
        grads = torch.autograd.grad(out.square().sum(), [leaves[0], leaves[1], leaves[4], leaves[5]])
        assert calls == []
        with torch.no_grad():
            batch_norm_gelu_add(*leaves)
        assert calls == [1]
        x, v, *stats = tensors
        with torch.no_grad():  # no (rows, H, D) view: leading dims that do not merge, a channel stride of 2
            batch_norm_gelu_add(x.transpose(0, 1), v.transpose(0, 1), *stats)
            batch_norm_gelu_add(x, torch.randn(*x.shape[:-1], 2 * x.shape[-1], device=DEVICE)[..., ::2], *stats)
        assert calls == [1]
    finally:
        set_backend("auto")
    ref_leaves = [t.requires_grad_() for t in _float64(tensors)]
    ref_out = batch_norm_gelu_add_reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), [ref_leaves[0], ref_leaves[1], ref_leaves[4],
                                                             ref_leaves[5]])
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-5


@needs_kernels
def test_inference_calls_reuse_their_kept_launch(monkeypatch):
    """An eager call without gradients and with the key of an earlier one skips the checks and repeats the kept
    launch on its own tensors (poisoned output); another shape is checked again; every call matches float64."""
    monkeypatch.setattr(function, "_KEPT", KeptLaunches())
    checks = []
    check = function.check_inputs
    monkeypatch.setattr(function, "check_inputs", lambda *a: checks.append(1) or check(*a))
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        with torch.no_grad():
            for seed, rows, expected_checks in [(1, (2, 9), 1), (2, (2, 9), 1), (3, (3, 5), 2), (4, (3, 5), 2)]:
                tensors = _inputs(rows, 2, 8, torch.float32, DEVICE, seed)
                out = batch_norm_gelu_add(*tensors)
                assert relative_error(out.cpu(), batch_norm_gelu_add_reference(*_float64(tensors))) < 1e-5
                assert len(checks) == expected_checks
    finally:
        set_backend("auto")
    assert len(function._KEPT.launches) == 2


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """The output is a fresh buffer: poisoning the allocator's memory must not leak into it."""
    tensors = _inputs((2, 70), 3, 24, torch.float32, DEVICE, 2)
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    set_backend("triton")
    try:
        with torch.no_grad():
            out = batch_norm_gelu_add(*tensors)
    finally:
        set_backend("auto")
    assert torch.isfinite(out).all()


@needs_cuda
def test_bf16_at_model_size():
    """bf16 at QT-DeiT-T's shape (64 x 197 tokens, 3 heads of 64) against float64, no further off than the
    BatchNorm, GELU and add it replaces."""
    tensors = _inputs((64, 197), 3, 64, torch.bfloat16, "cuda", 5)
    x, v, mean, var, weight, bias = tensors
    with torch.no_grad():
        out = batch_norm_gelu_add(*tensors)
        replaced = x + F.gelu(F.batch_norm(v.reshape(-1, 64), mean, var, weight, bias, eps=1e-5)).view(v.shape)
    expected = batch_norm_gelu_add_reference(*_float64(tensors))
    assert out.dtype == torch.bfloat16
    assert relative_error(out.cpu(), expected) < 4e-3
    assert relative_error(out.cpu(), expected) <= relative_error(replaced.cpu(), expected)


@pytest.mark.parametrize("change, message", [
    (lambda t: [t[0], t[1][..., :-1], *t[2:]], "one shape"),
    (lambda t: [*t[:3], t[3][:-1], *t[4:]], r"running_var must be \(15,\)"),
    (lambda t: [t[0], t[1].long(), *t[2:]], "dtype"),
    (lambda t: [t[0][0, 0, 0], t[1][0, 0, 0], *t[2:]], r"\(\.\.\., H, D\)"),
])
def test_bad_inputs_get_one_line_errors(change, message):
    tensors = _inputs((2, 5), 2, 15, torch.float32, "cpu", 4)
    with pytest.raises(ValueError, match=message):
        batch_norm_gelu_add(*change(tensors))
