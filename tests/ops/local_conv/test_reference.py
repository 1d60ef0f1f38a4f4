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
