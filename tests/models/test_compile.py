"""Every family traces whole under ``torch.compile(fullgraph=True)``, for a training step and for inference, and the
traced model computes what the eager one does (here on the CPU, where the ops run their PyTorch references; the
Triton ops' own compile tests are under tests/ops). ``aot_eager`` traces forward and backward as Inductor would,
without generating code, so a graph break or a wrong trace shows up in seconds."""
from __future__ import annotations

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.registry import DEIT_FAMILIES, FAMILIES

MODELS = [FAMILIES[family].model_name("tiny") for family in DEIT_FAMILIES] + ["qtvit_1"]
SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kwargs = {} if name == "qtvit_1" else SMALL  # QT-ViT-1 keeps its EfficientViT shape
    model = timm.create_model(name, num_classes=5, **kwargs).double()
    side = 64 if name == "qtvit_1" else 32
    return model, torch.randn(2, 3, side, side, dtype=torch.float64)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_compiles_whole_and_matches_eager(name: str) -> None:
    model, images = _model(name)
    model.train()
    torch.manual_seed(1)  # the same drop-path and dropout draws in both runs
    model(images).square().mean().backward()
    eager = {key: param.grad.clone() for key, param in model.named_parameters() if param.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    torch.compile(model, backend="aot_eager", fullgraph=True)(images).square().mean().backward()
    assert eager
    for key, grad in eager.items():
        torch.testing.assert_close(dict(model.named_parameters())[key].grad, grad, rtol=1e-9, atol=1e-12, msg=key)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", MODELS)
def test_inference_compiles_whole_and_follows_parameter_updates(name: str) -> None:
    """The compiled model also sees new parameter values (H3 keeps its SSM kernels between no-grad forwards, keyed
    by the parameters' versions)."""
    model, images = _model(name)
    model.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-9, atol=1e-12)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
        after = compiled(images)
        torch.testing.assert_close(after, model(images), rtol=1e-9, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["softmax_deit_tiny_patch16_224", "deltanet_deit_tiny_patch16_224"])
def test_compiled_autocast_inference_equals_the_eager_kept_casts(name: str) -> None:
    """Eager inference under autocast reads the Linear layers' kept bf16 copies; traced whole, the model casts the
    parameters itself, and both give the same logits."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **SMALL).eval()
    images = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(images)
        assert model.head._kept is not None  # the eager forward kept its copies
        torch.testing.assert_close(compiled(images), eager, rtol=0, atol=0)
    torch._dynamo.reset()
