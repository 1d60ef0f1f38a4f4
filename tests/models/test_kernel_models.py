"""Whole models through the Triton kernels equal the same models through the PyTorch references, at initialisation
and after training.

On a CPU-only machine the kernels run under the Triton interpreter (fp32, exact products), so the logits and every
parameter gradient must agree to fp32 rounding. "After training" means weights moved by real AdamW steps on real
Fashion-MNIST images (or random images when the dataset is not installed), with a learning rate high enough that they
are far from their initial distribution.
"""
from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.ops import set_backend, triton_available
from vitzoo.ops.testing import relative_error
from vitzoo.ops.utils import interpreting
from vitzoo.registry import DEIT_FAMILIES, FAMILIES
from vitzoo.train.data import FASHION_MNIST_DIR

# The ops' launch functions, spied on by name: each family must run exactly its own ops through the kernels.
SPIED_OPS = {"linear_attention": "linear_attention_triton", "delta_rule": "delta_rule_triton",
             "local_conv": "_local_conv_fwd", "layer_norm": ("_norm", "_add_norm"),
             "kernel_predictor": "_predictor_fwd",
             "zeros_weights": "_zeros_weights_fwd", "free_energy": ("_free_energy_values_fwd", "_free_energy_mix_fwd"),
             "ssm_kernel": ("_ssm_kernels_fwd", "_ssm_lags_fwd"), "toeplitz_attention": "_toeplitz_attention_fwd"}
FAMILY_OPS = {  # beyond every family's norms (norm1 and the final norm; norm2 with the residual add before it)
    "softmax": set(),
    "linear": {"linear_attention_triton"},
    "inline": {"linear_attention_triton", "_local_conv_fwd", "_predictor_fwd"},
    "qt": {"linear_attention_triton"},
    "zeros": {"linear_attention_triton", "_zeros_weights_fwd"},
    "fem": {"linear_attention_triton", "_free_energy_values_fwd", "_free_energy_mix_fwd"},
    "fem_softmax": {"_free_energy_values_fwd", "_free_energy_mix_fwd"},
    "deltanet": {"delta_rule_triton", "_local_conv_fwd"},
    "h3": {"_local_conv_fwd", "_ssm_lags_fwd", "_toeplitz_attention_fwd"},
}

INTERPRETER = triton_available() and interpreting() and not torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not INTERPRETER, reason="needs the Triton interpreter (TRITON_INTERPRET=1, no CUDA)")

# Every DeiT-style family: all run their LayerNorms through the norm kernels, and all but softmax attention a mixer op
# too (FAMILY_OPS).
KERNEL_MODELS = {FAMILIES[name].model_name("tiny"): name for name in DEIT_FAMILIES}
TINY = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
# The delta rule steps through its tokens one by one, which the interpreter makes slow: DeltaNet sees 2 x 2 patches
# here (its op's own tests cover long sequences and several chunks).
TINY_FOR = {"deltanet": dict(TINY, patch_size=14)}


def _images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if Path(FASHION_MNIST_DIR).is_dir():
        from vitzoo.train.data import FashionMNIST

        data = FashionMNIST(FASHION_MNIST_DIR, "train")
        index = torch.randperm(len(data), generator=generator)[:count]
        return (data.images[index].float() / 255 - 0.29) / 0.35, data.targets[index]
    return torch.randn(count, 1, 28, 28, generator=generator), torch.randint(0, 10, (count,), generator=generator)


def _logits_and_grads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, backend: str,
                      family: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and parameter gradients with kernel backend ``backend``; checks that the Triton ops ran exactly when
    asked for."""
    set_backend(backend)
    launched = set()
    with pytest.MonkeyPatch.context() as spy:
        for package, ops in SPIED_OPS.items():
            module = importlib.import_module(f"vitzoo.ops.{package}.function")
            for op in (ops,) if isinstance(ops, str) else ops:
                real = getattr(module, op)
                spy.setattr(module, op, lambda *a, _real=real, _op=op, **k: launched.add(_op) or _real(*a, **k))
        model.zero_grad(set_to_none=True)
        logits = model(images)
        torch.nn.functional.cross_entropy(logits, labels).backward()
    expected = FAMILY_OPS[family] | {"_norm", "_add_norm"} if backend == "triton" else set()
    assert launched == expected, f"{backend}: ran {sorted(launched)}, expected {sorted(expected)}"
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_backends_agree(model, images, labels, when: str, family: str) -> None:
    """Logits within fp32 rounding of the reference path; every gradient within 1e-4 of the model's float64
    gradient plus 4x the fp32 reference's own error there (a gradient that cancels, such as ZeroS's gate bias after
    training, is 5e-5 off float64 on the reference path alone: two fp32 summation orders need not agree to 1e-4)."""
    ref_logits, ref_grads = _logits_and_grads(model, images, labels, "reference", family)
    tri_logits, tri_grads = _logits_and_grads(model, images, labels, "triton", family)
    _, truth = _logits_and_grads(copy.deepcopy(model).double(), images.double(), labels, "reference", family)
    scale = ref_logits.abs().max()
    assert (tri_logits - ref_logits).abs().max() <= 1e-4 * scale, f"{when}: logits differ"
    assert tri_grads.keys() == ref_grads.keys() == truth.keys()
    for name, exact in truth.items():
        kernel_error, reference_error = (relative_error(g, exact) for g in (tri_grads[name], ref_grads[name]))
        assert kernel_error <= 1e-4 + 4 * reference_error, \
            f"{when}: gradient of {name} is {kernel_error:.2e} off float64 (references {reference_error:.2e})"


@pytest.mark.parametrize("name", KERNEL_MODELS)
def test_model_through_kernels_equals_reference_at_init_and_after_training(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY_FOR.get(KERNEL_MODELS[name], TINY))
    images, labels = _images(12)
    batch, label_batch = images[:4], labels[:4]
    _assert_backends_agree(model, batch, label_batch, "at initialisation", KERNEL_MODELS[name])
    initial = [p.detach().clone() for p in model.parameters()]

    # Train on the reference path (the CPU default), then compare both paths on the moved weights.
    set_backend("reference")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for step in range(8):
        start = 4 * (step % 3)
        loss = torch.nn.functional.cross_entropy(model(images[start:start + 4]), labels[start:start + 4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = max((p.detach() - q).abs().max() / q.abs().max().clamp(min=1e-6)
                for p, q in zip(model.parameters(), initial, strict=True))
    assert moved > 0.1, "the training steps did not move the weights"
    _assert_backends_agree(model, batch, label_batch, "after training", KERNEL_MODELS[name])


@pytest.mark.parametrize("name", KERNEL_MODELS)
def test_empty_batch_through_kernels(name):
    set_backend("triton")
    model = timm.create_model(name, **TINY)
    logits = model(torch.randn(0, 1, 28, 28))
    assert logits.shape == (0, 10)
    logits.sum().backward()
