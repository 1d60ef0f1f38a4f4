"""Inputs and checks shared by the linear-attention tests: the configurations the mixers call the op with, and the
comparison of the Triton path's output and gradients with the float64 reference.

On a machine without CUDA the kernels run under the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
triton is first imported, which ``tests/conftest.py`` does (and this module repeats, for runs without the conftest).
"""
import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import pytest  # noqa: E402

from vitzoo.ops import linear_attention_reference  # noqa: E402
from vitzoo.ops.testing import const_grad_terms, relative_error  # noqa: E402

from ..markers import HAS_CUDA, INTERPRETED  # noqa: E402

# the package's name is also the re-exported function's: reach its modules through importlib
function = importlib.import_module("vitzoo.ops.linear_attention.function")
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter on a CPU-only machine")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def config_kwargs(name: str, n: int, dk: int, device, requires_grad: bool = True, const_dtype=torch.float32):
    """(op kwargs, number of weightings or None, Dv) for each way the mixers call the op."""
    if name == "relu":
        return dict(feature_map="relu", normalize=True), None, dk
    if name == "inline":
        return dict(feature_map="identity", center_keys=True, scale=dk**-0.5 / n, feature_const=n**-0.5), None, dk
    if name == "qt":
        const = torch.tensor(0.6, device=device, dtype=const_dtype, requires_grad=requires_grad)
        return dict(feature_map="qt", feature_const=const, normalize=True, eps=1e-6), None, dk
    if name == "zeros":
        return dict(feature_map="l2norm"), 3, dk
    if name == "fem":  # the released linear prior's clamped normaliser; make_inputs puts half the rows below eps
        return dict(feature_map="relu", normalize=True, clamp_denominator=True, eps=1.0), None, 2 * dk
    if name == "fem_prior":  # the prior as FEM calls it, its eps large enough to move the features visibly
        return dict(feature_map="relu_eps", normalize=True, clamp_denominator=True, eps=0.05), None, 2 * dk
    if name == "combo":  # every switch at once: W=2, centring, learnable constant, normaliser
        const = torch.tensor(1.1, device=device, dtype=const_dtype, requires_grad=requires_grad)
        kwargs = dict(feature_map="l2norm", center_keys=True, feature_const=const, normalize=True, scale=0.7)
        return kwargs, 2, dk
    raise ValueError(name)


def make_inputs(config: str, b: int, n: int, h: int, dk: int, dtype, device, layout: str = "fused", std: float = 1.0,
            requires_grad: bool = True):
    """Fresh random q, k, v (and weights) as the mixers pass them: strided views, never zeros."""
    const_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    kwargs, weightings, dv = config_kwargs(config, n, dk, device, requires_grad, const_dtype)
    if layout == "fused" and dv == dk:  # timm-style fused qkv: (B, N, 3, H, D) -> three strided views
        qkv = (torch.randn(b, n, 3, h, dk, device=device) * std).to(dtype)
        q, k, v = (qkv[:, :, i].detach().requires_grad_(requires_grad) for i in range(3))
    elif layout == "channel_first":  # EfficientViT: (B, H, D, N) channel-first -> D stride N
        q, k = ((torch.randn(b, h, dk, n, device=device) * std).to(dtype).permute(0, 3, 1, 2) for _ in range(2))
        v = (torch.randn(b, h, dv, n, device=device) * std).to(dtype).permute(0, 3, 1, 2)
        q, k, v = (t.detach().requires_grad_(requires_grad) for t in (q, k, v))
    else:
        q, k = ((torch.randn(b, n, h, dk, device=device) * std).to(dtype) for _ in range(2))
        v = (torch.randn(b, n, h, dv, device=device) * std).to(dtype)
        q, k, v = (t.detach().requires_grad_(requires_grad) for t in (q, k, v))
    if config == "fem":
        with torch.no_grad():  # every other query 1e4x smaller: its normaliser falls below eps = 1, so both sides
            q[:, 1::2] *= 1e-4  # of max(den, eps), and its zero gradient below eps, are checked
    key_weights = query_weights = None
    if weightings == 3:  # ZeroS: key weights (e^s, s, 1), signed per-query coefficients
        s = torch.randn(b, n, h, device=device) * 0.5
        key_weights = torch.stack([s.exp(), s, torch.ones_like(s)], dim=-1).to(dtype)
        query_weights = torch.randn(b, n, h, 3, device=device).to(dtype)
    elif weightings:  # positive weights keep the normaliser away from zero
        key_weights = (torch.rand(b, n, h, weightings, device=device) + 0.5).to(dtype)
        query_weights = (torch.rand(b, n, h, weightings, device=device) + 0.5).to(dtype)
    if key_weights is not None:
        key_weights.requires_grad_(requires_grad)
        query_weights.requires_grad_(requires_grad)
    return (q, k, v, key_weights, query_weights), kwargs


def grad_leaves(tensors, kwargs):
    const = kwargs.get("feature_const")
    return [t for t in (*tensors, const) if isinstance(t, torch.Tensor)]


def reference_kwargs(kwargs):
    const = kwargs.get("feature_const")
    if isinstance(const, torch.Tensor):
        return dict(kwargs, feature_const=const.detach().double().requires_grad_())
    return kwargs


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref||, with ||ref|| floored at an RMS of 1e-2: gradients that cancel to ~0 (dq at N=1 with
    the normaliser is O(eps)) are judged against O(1) terms, not against their own vanishing size."""
    assert x.shape == ref.shape, (x.shape, ref.shape)
    assert torch.isfinite(x).all(), "non-finite values (unwritten output?)"
    return relative_error(x, ref, floor=1e-2 * max(ref.numel(), 1) ** 0.5)


def check_against_reference(tensors, kwargs, tol: float, grad_tol: float, backward: bool = True):
    """Forward and every gradient of the Triton path vs the float64 reference on the same inputs."""
    out = function.linear_attention(*tensors, **kwargs)
    assert out.dtype == tensors[2].dtype
    ref_tensors = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    ref_kwargs = reference_kwargs(kwargs)
    const = kwargs.get("feature_const")
    ref = linear_attention_reference(*ref_tensors, **ref_kwargs)
    err = rel_err(out, ref)
    assert err <= tol, f"forward rel err {err:.2e} > {tol:.0e}"
    if not backward:
        return
    grad = torch.randn_like(out)
    leaves = grad_leaves(tensors, kwargs)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, grad_leaves(ref_tensors, ref_kwargs), grad.double())
    names = ["q", "k", "v", "key_weights", "query_weights", "feature_const"]
    names = [name for name, t in zip(names, (*tensors, const), strict=True) if isinstance(t, torch.Tensor)]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        assert g.dtype == dict(zip(names, leaves, strict=True))[name].dtype
        if name == "feature_const" and kwargs.get("normalize"):
            _check_const_grad(g, rg, tensors, kwargs, grad, grad_tol)
            continue
        err = rel_err(g, rg)
        assert err <= grad_tol, f"d{name} rel err {err:.2e} > {grad_tol:.0e}"


def _check_const_grad(g, rg, tensors, kwargs, grad, grad_tol: float) -> None:
    """The normalised read's dL/dc is a difference of two large per-(batch, head) sums (numerator and normaliser
    parts, A ~ -B; on the GPU test's inputs |A| + |B| is 70-260x |A + B|). The kernel gets each sum to fp32-sum
    accuracy, so the error is judged against tol x (|dL/dc| + sum(|A| + |B|) / 100): in bf16 1e-4 of the summands."""
    options = {key: value for key, value in kwargs.items() if key not in ("feature_const", "normalize")}
    term_a, term_b = const_grad_terms(*tensors[:3], grad, kwargs["feature_const"].item(), *tensors[3:5], **options)
    assert torch.allclose((term_a + term_b).sum(), rg.reshape(()), rtol=1e-9), "A + B must equal the reference dL/dc"
    summands = (term_a.abs() + term_b.abs()).sum().item()
    err, allowed = abs(g.item() - rg.item()), grad_tol * (abs(rg.item()) + summands / 100)
    assert err <= allowed, (f"dfeature_const abs err {err:.3e} > {allowed:.3e} (net {rg.item():.3e}, summands "
                            f"{summands:.3e})")

