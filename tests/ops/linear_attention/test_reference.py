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
