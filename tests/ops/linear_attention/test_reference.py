"""The linear-attention reference, the specification of the kernels."""
import zlib

import pytest
import torch

from vitzoo.ops import linear_attention, linear_attention_reference, set_backend
from vitzoo.ops.utils import triton_available

from .cases import function, grad_leaves, make_inputs


@pytest.mark.parametrize("config", ["relu", "inline", "qt", "zeros", "fem", "combo"])
def test_reference_gradcheck(config):
    """The specification itself is differentiable as written (float64, tiny shapes). Seeded: random inputs can land
    on the kinks of ReLU or of the clamped normaliser, where finite differences disagree with the gradient."""
    torch.manual_seed(zlib.crc32(config.encode()))
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


_OPS = [linear_attention_reference, linear_attention,
        pytest.param(getattr(function, "linear_attention_triton", None), id="linear_attention_triton",
                     marks=pytest.mark.skipif(not triton_available(), reason="needs triton"))]


@pytest.mark.parametrize("op", _OPS)
@pytest.mark.parametrize("kwargs, message", [
    (dict(feature_const=torch.ones(3)), r"feature_const must be a float or a 0-dim tensor, got a tensor of shape "
                                        r"\(3,\)"),
    (dict(feature_const=torch.tensor(2)), "feature_const has dtype torch.int64; use a float"),
    (dict(feature_const="a"), "feature_const must be a float or a 0-dim tensor, got str"),
    (dict(feature_const=True), "feature_const must be a float or a 0-dim tensor, got bool"),
    (dict(scale="a"), "scale must be a real number, got str"),
    (dict(scale=float("nan")), "scale must be finite, got nan"),
    (dict(eps=None), "eps must be a real number, got NoneType"),
    (dict(key_weights=torch.ones(1, 5, 2, 1, dtype=torch.int64), query_weights=torch.ones(1, 5, 2, 1)),
     "key_weights has dtype torch.int64; use float16, bfloat16, float32 or float64"),
    (dict(key_weights=torch.ones(1, 5, 2, 1), query_weights=torch.ones(1, 5, 2, 1, dtype=torch.int32)),
     "query_weights has dtype torch.int32"),
], ids=["const_shape", "const_int", "const_str", "const_bool", "scale_str", "scale_nan", "eps_none", "key_weights_int",
        "query_weights_int"])
def test_bad_arguments_are_one_line_errors(op, kwargs, message):
    """Every entry point checks its non-tensor arguments before any arithmetic: one line that names the argument."""
    set_backend("auto")
    q = torch.randn(1, 5, 2, 8)
    with pytest.raises(ValueError, match=rf"^linear_attention: {message}"):
        op(q, q, q, **kwargs)


@pytest.mark.parametrize("feature_const, scale", [(torch.tensor(0.5), 1), (torch.full((1,), 0.5), 0.25), (2, 0.5)])
def test_scalar_arguments_of_any_real_kind_are_accepted(feature_const, scale):
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    out = linear_attention_reference(q, q, q, feature_const=feature_const, scale=scale)
    expected = linear_attention_reference(q, q, q, feature_const=float(feature_const), scale=float(scale))
    torch.testing.assert_close(out, expected)


def test_argument_checks_trace_in_a_fullgraph_compile_with_dynamic_shapes():
    """InLine's scale and constant depend on N: under dynamic shapes they are symbolic, and the checks still trace."""
    set_backend("reference")

    def inline(q, k, v):
        n = q.shape[1]
        return linear_attention(q, k, v, center_keys=True, scale=q.shape[-1] ** -0.5 / n, feature_const=n**-0.5)

    compiled = torch.compile(inline, fullgraph=True, backend="eager", dynamic=True)
    for n in (5, 7):
        q, k, v = (torch.randn(1, n, 2, 8) for _ in "qkv")
        torch.testing.assert_close(compiled(q, k, v), inline(q, k, v))
