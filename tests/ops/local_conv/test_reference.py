"""The local-convolution reference is F.conv2d on the patch grid, prefix tokens copied through."""
import pytest
import torch
import torch.nn.functional as F

from vitzoo.ops import local_conv_reference

from .cases import make_inputs


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_reference_matches_conv2d(per_image, prefix):
    """The reference is F.conv2d on the patch grid, prefix tokens copied through."""
    (x, weight, bias, _), _ = make_inputs(2, 4, (3, 5), prefix, 3, per_image, True, False, torch.float64, "cpu", 1)
    out = local_conv_reference(x, weight, (3, 5), prefix, bias=bias)
    for i in range(2):
        grid = x[i, prefix:].T.reshape(1, 4, 3, 5)
        w = weight[i if per_image else 0].unsqueeze(1)
        expected = F.conv2d(grid, w, bias, padding=1, groups=4).reshape(4, 15).T
        torch.testing.assert_close(out[i, prefix:], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out[i, :prefix], x[i, :prefix], rtol=0, atol=0)


def _conv2d_form(x, weight, bias, residual, grid, prefix, activation):
    """The op's definition per image with F.conv2d: prefix tokens from the residual (else x), patches convolved plus
    bias plus the residual's patches, then the activation on every token."""
    rows = []
    for i in range(x.shape[0]):
        image = x[i, prefix:].T.reshape(1, x.shape[2], *grid)
        kernels = weight[i if weight.shape[0] > 1 else 0].unsqueeze(1)
        patches = F.conv2d(image, kernels, bias, padding=weight.shape[-1] // 2, groups=x.shape[2])
        patches = patches.reshape(x.shape[2], -1).T
        source = x if residual is None else residual
        if residual is not None:
            patches = patches + residual[i, prefix:]
        rows.append(torch.cat([source[i, :prefix], patches]))
    out = torch.stack(rows)
    return F.silu(out) if activation == "silu" else out


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("with_residual, activation", [(False, None), (True, None), (False, "silu")])
def test_reference_and_its_gradients_match_conv2d_form(k, per_image, with_residual, activation):
    """Forward and gradients of every input, with a residual or the SiLU, prefix tokens included (float64)."""
    grid, prefix = (4, 5), 2
    tensors, grad = make_inputs(2, 3, grid, prefix, k, per_image, True, with_residual, torch.float64, "cpu", k)
    x, weight, bias, residual = tensors
    out = local_conv_reference(x, weight, grid, prefix, bias=bias, residual=residual, activation=activation)
    expected = _conv2d_form(x, weight, bias, residual, grid, prefix, activation)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    live = [t for t in tensors if t is not None]
    for got, want in zip(torch.autograd.grad(out, live, grad), torch.autograd.grad(expected, live, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
