"""The linear-attention reference, the specification of the kernels."""
import pytest
import torch

from vitzoo.ops import linear_attention_reference

from .cases import grad_leaves, make_inputs


@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros", "fem", "combo"])
def test_reference_gradcheck(config):
    """The specification itself is differentiable as written (float64, tiny shapes)."""
    tensors, kwargs = make_inputs(config, 1, 5, 2, 3, torch.float64, "cpu", layout="separate")
    leaves = grad_leaves(tensors, kwargs)
    n_inputs = len([t for t in tensors if t is not None])

    def fn(*xs):
        inputs = list(xs[:n_inputs]) + [None] * (5 - n_inputs)
        kw = dict(kwargs, feature_const=xs[n_inputs]) if len(xs) > n_inputs else kwargs
        return linear_attention_reference(*inputs, **kw)

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-6)


def _features(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """The feature maps written out: QT's in the official order (normalise, square, normalise)."""
    if feature_map == "identity":
        return x
    if feature_map == "relu":
        return torch.clamp(x, min=0)
    if feature_map == "l2norm":
        return x / x.square().sum(-1, keepdim=True).sqrt()
    unit = x / x.square().sum(-1, keepdim=True).sqrt()
    return unit.square() / unit.square().square().sum(-1, keepdim=True).sqrt()


def _explicit_weights(q, k, feature_map, scale=1.0, const=None):
    """sim[b, h, t, i] for (B, N, H, D) q and k, pair by pair."""
    sim = scale * torch.einsum("bthd,bihd->bhti", _features(q, feature_map), _features(k, feature_map))
    return sim + (const**2 if const is not None else 0.0)


@pytest.mark.parametrize("n", [1, 49, 197])
@pytest.mark.parametrize("feature_map", ["identity", "relu", "l2norm", "qt"])
def test_reference_equals_explicit_quadratic_form(n, feature_map):
    """Normalised rows of feature similarities plus a constant feature, against the (N, N) weights (float64)."""
    gen = torch.Generator().manual_seed(n)
    q, k = (torch.randn(2, n, 3, 24, generator=gen, dtype=torch.float64) for _ in "qk")
    v = torch.randn(2, n, 3, 40, generator=gen, dtype=torch.float64)
    const = torch.tensor(0.7, dtype=torch.float64)
    out = linear_attention_reference(
        q, k, v, feature_map=feature_map, feature_const=const, scale=0.3, normalize=True, eps=1e-9,
    )
    sim = _explicit_weights(q, k, feature_map, scale=0.3, const=const)
    expected = torch.einsum("bhti,bihv->bthv", sim / (sim.sum(-1, keepdim=True) + 1e-9), v)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_reference_weighted_states():
    """W weightings: out_t = sum_w b_tw sum_i a_iw sim(q_t, k_i) v_i (ZeroS uses W=3)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 49, 2, 16, generator=gen, dtype=torch.float64) for _ in "qkv")
    a, b = (torch.randn(2, 49, 2, 3, generator=gen, dtype=torch.float64) for _ in "ab")
    out = linear_attention_reference(q, k, v, a, b, feature_map="l2norm")
    weights = torch.einsum("bthw,bihw->bhti", b, a) * _explicit_weights(q, k, "l2norm")
    torch.testing.assert_close(out, torch.einsum("bhti,bihv->bthv", weights, v), rtol=1e-10, atol=1e-12)
