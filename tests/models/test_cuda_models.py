"""Whole models on a GPU under bf16 autocast: through the Triton kernels as through the PyTorch references (GPU only).

The interpreter tests (``test_kernel_models.py``) compare the two paths in fp32 on the CPU; this runs the compiled
kernels at the precision training uses, so a kernel that compiles differently for the device, or a bf16 path the
interpreter cannot run, shows up in a model. Both bf16 paths are measured against the same model in float64 (the
references, no autocast): the kernels may be a few times further off than the references (they multiply bf16 operands
where the references multiply fp32 ones), and a wrong formula is off by O(1). A bound relative to the references'
own error holds where bf16 cancels heavily, as in the gradient of QT's one learnable feature constant, which sums
over the whole batch.
"""
import copy

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.ops import use_backend
from vitzoo.ops.testing import relative_error
from vitzoo.registry import DEIT_FAMILIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


def _logits_and_grads(model, images, labels, backend, autocast=True):
    model.zero_grad(set_to_none=True)
    with use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    return logits.double(), {name: p.grad.double() for name, p in model.named_parameters() if p.grad is not None}


def _assert_no_worse_than_references(name, got, ref, truth):
    kernel_error, reference_error = relative_error(got, truth), relative_error(ref, truth)
    assert kernel_error < 3 * reference_error + 1e-2, f"{name}: kernels {kernel_error:.1e} off float64, " \
                                                      f"references {reference_error:.1e}"


@pytest.mark.parametrize("name", [f"{f}_deit_tiny_patch16_224" for f in DEIT_FAMILIES])
def test_kernels_match_references_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = timm.create_model(name, depth=2, num_classes=10).cuda().train()
    for module in model.modules():  # dropout off, so both passes see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    images = torch.randn(8, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 10, (8,), device="cuda")
    truth_logits, truth_grads = _logits_and_grads(copy.deepcopy(model).double(), images.double(), labels,
                                                  "reference", autocast=False)
    ref_logits, ref_grads = _logits_and_grads(model, images, labels, "reference")
    logits, grads = _logits_and_grads(model, images, labels, "triton")
    assert grads.keys() == ref_grads.keys() == truth_grads.keys()
    _assert_no_worse_than_references("logits", logits, ref_logits, truth_logits)
    for key, truth in truth_grads.items():
        _assert_no_worse_than_references(key, grads[key], ref_grads[key], truth)


@pytest.mark.parametrize("name", [f"{f}_deit_tiny_patch16_224" for f in ("softmax", "qt", "deltanet", "h3")])
def test_captured_inference_reads_the_parameters_not_kept_copies(name):
    """Eager inference forwards keep values computed from the parameters (16-bit copies of the Linear weights, the
    local convolution's tap-major weight, H3's SSM kernels and Toeplitz lags); a CUDA graph captured after them must
    still compute them from the parameters inside the graph, so that a replay follows in-place updates (of QT's
    shortcut BatchNorm's statistics too)."""
    torch.manual_seed(0)
    model = timm.create_model(name, depth=2, num_classes=10).cuda().eval()
    images = torch.randn(4, 3, 224, 224, device="cuda")

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return model(images)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # the eager forwards that keep the copies
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = forward()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "log_" in param_name:  # H3's log step sizes and decay rates: a finite change that keeps them stable
                param.add_(0.3)
            else:
                param.mul_(-1.5)
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.add_(0.5)
    graph.replay()
    # stale copies would be off by O(1) (every weight's sign flipped)
    torch.testing.assert_close(captured, forward(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", [f"{f}_deit_tiny_patch16_224" for f in DEIT_FAMILIES] + ["qtvit_1"])
def test_empty_batch_under_bf16_autocast(name):
    """The kernel paths (training and the inference launches) take a batch of zero images, as the CPU path does."""
    model = timm.create_model(name, num_classes=10).cuda()
    images = torch.randn(0, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(images)
        assert logits.shape == (0, 10)
        logits.float().sum().backward()
        model.eval()
        with torch.no_grad():
            assert model(images).shape == (0, 10)
