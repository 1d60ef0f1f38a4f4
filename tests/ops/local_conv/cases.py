"""Inputs and markers shared by the local-convolution tests."""
import torch

from ..markers import HAS_CUDA, needs_cuda, needs_kernels

__all__ = ["HAS_CUDA", "make_inputs", "needs_cuda", "needs_kernels", "outputs_and_grads"]


def make_inputs(b, c, grid, prefix, k, per_image, with_bias, with_residual, dtype, device, seed):
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


def outputs_and_grads(fn, tensors, grad, grid, prefix, activation=None):
    out = fn(tensors[0], tensors[1], grid, prefix, bias=tensors[2], residual=tensors[3], activation=activation)
    live = [t for t in tensors if t is not None]
    return out, torch.autograd.grad(out, live, grad)

