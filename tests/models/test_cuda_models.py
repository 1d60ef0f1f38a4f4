"""Whole models on a GPU under bf16 autocast: through the Triton kernels as through the PyTorch references (GPU only).

The interpreter tests (``test_kernel_models.py``) compare the two paths in fp32 on the CPU; this runs the compiled
kernels at the precision training uses, so a kernel that compiles differently for the device, or a bf16 path the
interpreter cannot run, shows up in a model. Tolerances are norm-wise at bf16 rounding (the kernels multiply bf16
operands where the references multiply fp32 ones); a wrong gradient formula is off by O(1).
"""
import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.ops import use_backend
from vitzoo.ops.testing import relative_error
from vitzoo.registry import DEIT_FAMILIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def _logits_and_grads(model, images, labels, backend):
    model.zero_grad(set_to_none=True)
    with use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    return logits.float(), {name: p.grad.float() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", [f"{f}_deit_tiny_patch16_224" for f in DEIT_FAMILIES])
def test_kernels_match_references_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = timm.create_model(name, depth=2, num_classes=10).cuda().train()
    for module in model.modules():  # dropout off, so both passes see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    images = torch.randn(8, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 10, (8,), device="cuda")
    ref_logits, ref_grads = _logits_and_grads(model, images, labels, "reference")
    logits, grads = _logits_and_grads(model, images, labels, "triton")
    assert relative_error(logits, ref_logits) < 3e-2
    assert grads.keys() == ref_grads.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    assert relative_error(flat, torch.cat([g.flatten() for g in ref_grads.values()])) < 5e-2
    for key, ref in ref_grads.items():
        assert relative_error(grads[key], ref, floor=1e-3 * ref.numel() ** 0.5 * flat.abs().mean().item()) < 0.2, key
