"""The input contract the attention-like ops share (``vitzoo.ops.utils.check_qkv``)."""
import pytest
import torch

from vitzoo.ops import delta_rule_bidirectional_reference, linear_attention_reference


def _delta_rule(q, k, v):
    return delta_rule_bidirectional_reference(q, k, v, torch.full(q.shape[:3], 0.5))


@pytest.mark.parametrize("op", [linear_attention_reference, _delta_rule], ids=["linear_attention", "delta_rule"])
@pytest.mark.parametrize("case,message", [
    ("rank", "of shape"), ("qk_shape", "same shape"), ("v_tokens", "share"), ("dtype", "dtype"),
])
def test_both_ops_reject_the_same_bad_inputs(op, case, message):
    q = torch.randn(1, 5, 2, 8)
    k, v = q.clone(), q.clone()
    if case == "rank":
        q, k, v = q[0], k[0], v[0]
    elif case == "qk_shape":
        k = k[..., :4]
    elif case == "v_tokens":
        v = v[:, :4]
    elif case == "dtype":
        v = v.int()
    with pytest.raises(ValueError, match=message):
        op(q, k, v)
    op(torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 6))  # a valid call passes
