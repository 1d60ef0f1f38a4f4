"""Launches through the cached compiled kernel (every launch after the first of a signature) compute what Triton's
own launch path computes (GPU only: the interpreter compiles nothing, so every CPU launch takes Triton's path)."""
import pytest
import torch

from vitzoo.kernels import linear_attention, linear_attention_reference
from vitzoo.kernels.delta_rule import delta_rule_bidirectional, delta_rule_bidirectional_reference
from vitzoo.kernels.local_conv import local_conv, local_conv_reference
from vitzoo.kernels.testing import relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def _qkv(batch, n, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, n, 3, 3, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    return qkv.unbind(2)


@pytest.mark.parametrize("batch", [64, 2])  # one program per sequence, and the sequence split over programs
def test_linear_attention_repeated_launches(batch):
    for seed in range(3):  # the first launch compiles and caches, the next two take the cached kernel
        q, k, v = _qkv(batch, 197, seed)
        out = linear_attention(q, k, v, feature_map="relu", normalize=True)
        ref = linear_attention_reference(q.double(), k.double(), v.double(), feature_map="relu", normalize=True)
        assert relative_error(out, ref) < 1e-2, f"launch {seed}"


def test_local_conv_and_delta_rule_repeated_launches():
    for seed in range(3):
        q, k, v = _qkv(4, 197, seed)
        x = q.reshape(4, 197, 192)
        weight = torch.randn(1, 192, 3, 3, device="cuda")
        out = local_conv(x, weight, (14, 14), 1)
        assert relative_error(out, local_conv_reference(x.double(), weight.double(), (14, 14), 1)) < 1e-2
        beta = torch.rand(4, 197, 3, device="cuda", dtype=torch.bfloat16)
        out = delta_rule_bidirectional(q, k, v, beta)
        ref = delta_rule_bidirectional_reference(q.double(), k.double(), v.double(), beta.double())
        assert relative_error(out, ref) < 2e-2, f"launch {seed}"
