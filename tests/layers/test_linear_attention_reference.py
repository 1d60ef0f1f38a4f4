"""The linear-attention op reference against explicit O(N^2) forms (float64), in the features the mixers use (ReLU
linear attention, InLine, QT, ZeroS); the mixers themselves: ``test_mixers_numerics.py``."""
from __future__ import annotations

import pytest
import torch

from vitzoo.ops import linear_attention_reference
from vitzoo.ops.linear_attention import apply_feature_map


@pytest.fixture(autouse=True)
def _float64_by_default():
    """Every tensor and module of this file is float64 (restored afterwards: other modules must not see it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _explicit_weights(q, k, *, feature_map="identity", center_keys=False, scale=1.0, const=None):
    """sim[b, h, t, i] for (B, N, H, D) q and k, written out pair by pair."""
    phi_q, phi_k = apply_feature_map(q, feature_map), apply_feature_map(k, feature_map)
    if center_keys:
        phi_k = phi_k - phi_k.mean(dim=1, keepdim=True)
    sim = scale * torch.einsum("bthd,bihd->bhti", phi_q, phi_k)
    return sim + (const**2 if const is not None else 0.0)


@pytest.mark.parametrize("n", [1, 49, 197])
@pytest.mark.parametrize("feature_map", ["identity", "relu", "l2norm", "qt"])
def test_reference_equals_explicit_quadratic_form(n, feature_map):
    torch.manual_seed(n)
    q, k = torch.randn(2, n, 3, 24), torch.randn(2, n, 3, 24)
    v = torch.randn(2, n, 3, 40)
    const = torch.tensor(0.7)
    out = linear_attention_reference(
        q, k, v, feature_map=feature_map, feature_const=const, scale=0.3, normalize=True, eps=1e-9,
    )
    sim = _explicit_weights(q, k, feature_map=feature_map, scale=0.3, const=const)
    expected = torch.einsum("bhti,bihv->bthv", sim / (sim.sum(-1, keepdim=True) + 1e-9), v)
    torch.testing.assert_close(out, expected)


def test_reference_weighted_states():
    """W weightings: out_t = sum_w b_tw sum_i a_iw sim(q_t, k_i) v_i (ZeroS uses W=3)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 49, 2, 16), torch.randn(2, 49, 2, 16), torch.randn(2, 49, 2, 16)
    a, b = torch.randn(2, 49, 2, 3), torch.randn(2, 49, 2, 3)
    out = linear_attention_reference(q, k, v, a, b, feature_map="l2norm")
    sim = _explicit_weights(q, k, feature_map="l2norm")
    weights = torch.einsum("bthw,bihw->bhti", b, a) * sim
    torch.testing.assert_close(out, torch.einsum("bhti,bihv->bthv", weights, v))


def test_reference_gradcheck():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 5, 2, 4, requires_grad=True) for _ in range(3))
    a, b = (torch.randn(1, 5, 2, 2, requires_grad=True) for _ in range(2))
    const = torch.tensor(0.5, requires_grad=True)

    def fn(q, k, v, a, b, const):
        return linear_attention_reference(q, k, v, a, b, feature_map="qt", feature_const=const, normalize=True)

    assert torch.autograd.gradcheck(fn, (q, k, v, a, b, const))


def test_reference_rejects_bad_input():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match=r"\(B, N, H, D\)"):
        linear_attention_reference(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="feature_map"):
        linear_attention_reference(q, q, q, feature_map="elu")
    with pytest.raises(ValueError, match="dtype"):
        linear_attention_reference(q.int(), q, q)
    with pytest.raises(ValueError, match="together"):
        linear_attention_reference(q, q, q, key_weights=torch.ones(1, 4, 2, 1))
