"""The launch heuristics: whichever launch they pick, split or not, the kernels compute the float64 reference."""
import importlib
import zlib

import pytest
import torch

from vitzoo.ops import linear_attention_reference

from .cases import function, make_inputs, needs_interpreter, rel_err

heuristics = importlib.import_module("vitzoo.ops.linear_attention.heuristics")


def _launch_both_passes(tensors, kwargs, grad, forward, backward):
    """Output and (dq, dk, dv) of the host launches with the given forward and backward launches."""
    q, k, v = (t.detach() for t in tensors[:3])
    options = (kwargs.get("feature_const", 0.0), function._FEATURE_CODES[kwargs["feature_map"]],
               kwargs.get("center_keys", False), kwargs.get("scale", 1.0), kwargs.get("normalize", False),
               kwargs.get("eps", 1e-6))
    out, state = function._linear_attention_fwd(q, k, v, None, None, None, *options, True, direct_launch=True,
                                                launch=forward)
    dq, dk, dv, *_ = function._linear_attention_bwd(grad, q, k, v, None, None, None, options[0], state, *options[1:],
                                                    False, direct_launch=True, launch=backward)
    return out, dq, dk, dv


SPLIT_SHAPES = [(1, 2, 450), (2, 2, 450), (4, 2, 330)]  # (B, H, N): B*H below and at the interpreter's 4 programs


@needs_interpreter
@pytest.mark.parametrize("config", ["relu", "inline"])
@pytest.mark.parametrize("b,h,n", SPLIT_SHAPES, ids=[f"B{b}-H{h}-N{n}" for b, h, n in SPLIT_SHAPES])
def test_split_and_unsplit_launches_match_reference(poisoned, config, b, h, n):
    """The launch the heuristics pick, one program per sequence, and the sequence split over several programs (states
    summed with atomics, two launches per pass) all give the float64 reference's output and gradients, for B*H on
    both sides of the split threshold (the GPU size the heuristics assume)."""
    torch.manual_seed(zlib.crc32(f"split{config}{b}{h}{n}".encode()))
    tensors, kwargs = make_inputs(config, b, n, h, 32, torch.float32, "cpu", "separate")
    grad = torch.randn(b, n, h, 32)
    ref_tensors = [t.detach().double().requires_grad_() for t in tensors[:3]]
    ref = linear_attention_reference(*ref_tensors, **kwargs)
    expected = (ref, *torch.autograd.grad(ref, ref_tensors, grad.double()))
    cpu = torch.device("cpu")
    chosen = (heuristics.forward_launch(b * h, n, 32, 32, 1, cpu), heuristics.backward_launch(b * h, n, 32, 32, 1, cpu))
    assert (chosen[0].splits > 1) == (b * h < 4), "the shapes must sit on both sides of the split threshold"
    tiles = dict(block_n=64, num_warps=4, num_stages=1)
    launches = {
        "chosen": chosen,
        "unsplit": (heuristics.Launch(**tiles, splits=1, chunk=n),) * 2,
        "split": (heuristics.Launch(**tiles, splits=-(-n // 192), chunk=192),) * 2,
    }
    for name, (forward, backward) in launches.items():
        got = _launch_both_passes(tensors, kwargs, grad, forward, backward)
        for label, x, want in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
            err = rel_err(x, want)
            assert err <= 1e-5, f"{name} launch: {label} rel err {err:.2e}"


def test_launch_options_carry_the_register_cap():
    """A policy's register cap reaches the kernel launch as Triton's maxnreg; without one Triton chooses."""
    cpu = torch.device("cpu")
    capped = heuristics.LaunchPolicy(split_below=4, programs_per_sm=4, max_registers=168)
    assert heuristics.backward_launch(8, 197, 64, 64, 1, cpu, capped).options()["maxnreg"] == 168
    assert "maxnreg" not in heuristics.backward_launch(8, 197, 64, 64, 1, cpu).options()
