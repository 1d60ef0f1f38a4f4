"""The Toeplitz-attention reference against its definition, one token pair at a time, and its checks."""
import pytest
import torch

from vitzoo.ops import toeplitz_attention, toeplitz_attention_reference
from vitzoo.ops.toeplitz_attention import toeplitz_from_lags


def _explicit(q, k, v, lags):
    batch, length, heads, _ = q.shape
    out = torch.zeros(batch, length, heads, v.shape[-1], dtype=torch.float64)
    for t in range(length):
        for s in range(length):
            weight = lags[:, s - t + length - 1]  # (H,)
            out[:, t] += (weight * (q[:, t] * k[:, s]).sum(-1))[..., None] * v[:, s]
    return out


@pytest.mark.parametrize("length", [1, 2, 9])
def test_reference_matches_definition(length):
    gen = torch.Generator().manual_seed(length)
    q, k = (torch.randn(2, length, 3, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, length, 3, 4, generator=gen, dtype=torch.float64)
    lags = torch.randn(3, 2 * length - 1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(toeplitz_attention_reference(q, k, v, lags), _explicit(q, k, v, lags))
    weights = toeplitz_from_lags(lags, length)
    for t in range(length):
        for s in range(length):
            assert torch.equal(weights[:, t, s], lags[:, s - t + length - 1])


def test_reference_path_gradients_float64():
    """The entry point's reference path (CPU, float64; checkpointed with gradients) against numerical gradients."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    lags = torch.randn(2, 11, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(toeplitz_attention, (q, k, v, lags))


@pytest.mark.parametrize("shapes, match", [
    (((2, 5, 3, 4), (2, 5, 3, 4), (2, 5, 3, 4), (3, 10)), r"lags must be \(H, 2N - 1\) = \(3, 9\)"),
    (((2, 5, 3, 4), (2, 5, 3, 4), (2, 5, 3, 4), (2, 9)), r"lags must be \(H, 2N - 1\)"),
    (((2, 5, 3, 4), (2, 5, 3, 4), (2, 6, 3, 4), (3, 9)), "v must share"),
    (((5, 3, 4), (5, 3, 4), (5, 3, 4), (3, 9)), r"expects q, k, v of shape \(B, N, H, D\)"),
])
def test_bad_shapes_are_rejected(shapes, match):
    q, k, v, lags = (torch.randn(s) for s in shapes)
    for fn in (toeplitz_attention, toeplitz_attention_reference):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, lags)
