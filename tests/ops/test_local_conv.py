"""The fused local-convolution kernels against the float64 PyTorch reference (and the reference against F.conv2d).

Without CUDA the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

from vitzoo.ops import set_backend, triton_available
from vitzoo.ops import local_conv, local_conv_reference
from vitzoo.ops.testing import relative_error

lc = importlib.import_module("vitzoo.ops.local_conv.kernels")  # the package's name is also the function's
HAS_CUDA = torch.cuda.is_available()
INTERPRETED = not HAS_CUDA and triton_available() and type(lc._local_conv_fwd_kernel).__name__ == "InterpretedFunction"
needs_kernels = pytest.mark.skipif(not (HAS_CUDA or INTERPRETED), reason="needs CUDA or the Triton interpreter")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def _inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, dtype, device, seed):
    """Fresh random inputs as the mixers pass them: x a strided slice of a wider projection, never zeros."""
    gen = torch.Generator().manual_seed(seed)
    n = prefix + grid[0] * grid[1]
    wide = torch.randn(b, n, 3 * c, generator=gen, dtype=torch.float64)
    x = wide.to(device=device, dtype=dtype)[:, :, c:2 * c]  # unit stride on C, row stride 3C
    weight = torch.randn(b if per_image else 1, c, k, k, generator=gen, dtype=torch.float64).to(device, dtype)
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(device, dtype) if with_bias else None
    residual = torch.randn(b, n, c, generator=gen, dtype=torch.float64).to(device, dtype) if with_residual else None
    tensors = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias, residual)]
    return tensors, torch.randn(b, n, c, generator=gen, dtype=torch.float64).to(device, dtype)


def _grads(fn, tensors, grad, grid, prefix):
    out = fn(tensors[0], tensors[1], grid, prefix, bias=tensors[2], residual=tensors[3])
    live = [t for t in tensors if t is not None]
    return out, torch.autograd.grad(out, live, grad)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_reference_matches_conv2d(per_image, prefix):
    """The reference is F.conv2d on the patch grid, prefix tokens copied through."""
    (x, weight, bias, _), _ = _inputs(2, 4, (3, 5), prefix, 3, per_image, True, False, torch.float64, "cpu", 1)
    out = local_conv_reference(x, weight, (3, 5), prefix, bias=bias)
    for i in range(2):
        grid = x[i, prefix:].T.reshape(1, 4, 3, 5)
        w = weight[i if per_image else 0].unsqueeze(1)
        expected = F.conv2d(grid, w, bias, padding=1, groups=4).reshape(4, 15).T
        torch.testing.assert_close(out[i, prefix:], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[i, :prefix], x[i, :prefix], rtol=0, atol=0)


@needs_kernels
@pytest.mark.parametrize(
    "b, c, grid, prefix, k, per_image, with_bias, with_residual",
    [
        (2, 5, (3, 4), 1, 3, True, False, True),    # InLine: per-image kernel onto the attention output
        (2, 7, (4, 3), 1, 3, False, True, False),   # DeltaNet / H3: one kernel, bias, prefix copied through
        (3, 20, (2, 5), 0, 3, False, False, False),  # no prefix, C over one channel block
        (1, 70, (5, 5), 2, 5, True, True, True),    # K = 5, two channel blocks, every option
    ],
)
def test_kernel_matches_reference(b, c, grid, prefix, k, per_image, with_bias, with_residual):
    """Forward and every gradient of the kernel (fp32) against the float64 reference, on strided inputs."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    seed = 7 * b + c
    tensors, grad = _inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, torch.float32, device, seed)
    ref_tensors, ref_grad = _inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, torch.float64, "cpu",
                                    seed)
    out, grads = _grads(local_conv, tensors, grad, grid, prefix)
    ref_out, ref_grads = _grads(local_conv_reference, ref_tensors, ref_grad, grid, prefix)
    assert out.dtype == torch.float32
    assert relative_error(out.cpu(), ref_out) < 1e-5
    for got, expected in zip(grads, ref_grads, strict=True):
        assert got.shape == expected.shape
        assert relative_error(got.cpu(), expected) < 1e-5


@needs_kernels
def test_kernel_writes_every_output(monkeypatch):
    """Outputs are fresh buffers: poisoning the allocator's memory must not leak into them (no unwritten element)."""
    set_backend("triton")
    device = "cuda" if HAS_CUDA else "cpu"
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a[0], float("nan"), **kw))
    (x, weight, bias, residual), _ = _inputs(2, 6, (3, 3), 1, 3, True, True, True, torch.float32, device, 3)
    out = local_conv(x.detach(), weight.detach(), (3, 3), 1, bias=bias.detach(), residual=residual.detach())
    assert torch.isfinite(out).all()


def test_bad_inputs_raise_one_line_errors():
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="needs 13"):
        local_conv(x, torch.randn(1, 4, 3, 3), (3, 4), 1)
    with pytest.raises(ValueError, match="weight must be"):
        local_conv(x, torch.randn(3, 4, 3, 3), (3, 3), 1)
    with pytest.raises(ValueError, match="odd"):
        local_conv(x, torch.randn(1, 4, 2, 2), (3, 3), 1)


@needs_cuda
@pytest.mark.parametrize("per_image", [False, True])
def test_bf16_at_model_size(per_image):
    """bf16 inputs at DeiT-T size (B=32, 14x14 grid + cls, C=576 / 192) against the float64 reference."""
    c = 192 if per_image else 576
    tensors, grad = _inputs(32, c, (14, 14), 1, 3, per_image, not per_image, per_image, torch.bfloat16, "cuda", 5)
    ref = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in tensors]
    out, grads = _grads(local_conv, tensors, grad, (14, 14), 1)
    ref_out, ref_grads = _grads(local_conv_reference, ref, grad.double().cpu(), (14, 14), 1)
    assert relative_error(out.cpu(), ref_out) < 1e-2
    for got, expected in zip(grads, ref_grads, strict=True):
        assert relative_error(got.cpu(), expected) < 1e-2
