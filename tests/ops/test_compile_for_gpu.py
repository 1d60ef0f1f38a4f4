"""The training pipeline's device-stage kernels, InLine's kernel predictor and H3's Toeplitz lags with their
backwards, and ZeroS's weightings and FEM's values split over token chunks, compile for a Hopper GPU (sm_90) with the
arguments their launches pass, on a machine without one: the Triton interpreter runs only the branches the data
takes and checks no types, so a branch that a launch's argument types break (a float64 buffer where the kernel reads
float32) passes every interpreted test and fails on the GPU. Each op runs once with the Triton backend under the
interpreter, its launches are recorded, and the kernels are compiled down to cubins for those argument types (in a
process of its own, where ``triton.jit`` makes compilable kernels)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vitzoo.ops import use_backend
from vitzoo.ops.free_energy import function as free_energy_function
from vitzoo.ops.kernel_predictor import function as kernel_predictor_function
from vitzoo.ops.normalize_erase import function as normalize_erase_function
from vitzoo.ops.rand_augment import function as rand_augment_function
from vitzoo.ops.resized_crop import function as resized_crop_function
from vitzoo.ops.ssm_kernel import function as ssm_kernel_function
from vitzoo.ops.zeros_weights import function as zeros_weights_function

from .markers import INTERPRETED

triton = pytest.importorskip("triton")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - an older Triton
    GPUTarget = ASTSource = None

_TYPES = {torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64", torch.float16: "fp16", torch.bfloat16: "bf16",
          torch.float32: "fp32", torch.float64: "fp64"}
_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


class _Recorder:
    """Stands in for ``cached_launcher``: records each launch and runs it through the interpreter."""

    def __init__(self) -> None:
        self.launches = []

    def __call__(self, kernel):
        def index(grid):
            def launch(*args, **kwargs):
                self.launches.append((kernel, args, kwargs))
                kernel[grid](*args, **kwargs)
            return launch

        return type("Launch", (), {"__getitem__": lambda _, grid: index(grid)})()


def _compile_request(kernel, args, kwargs) -> dict:
    """What compiles ``kernel`` for the recorded launch: its module and name, signature, constexprs and options."""
    function = kernel.fn
    names = list(function.__code__.co_varnames[:function.__code__.co_argcount])
    signature, constexprs = {}, {}
    for name, value in zip(names, args, strict=False):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    for name, value in kwargs.items():
        if name in names:
            signature[name], constexprs[name] = "constexpr", value
    return {"module": function.__module__, "name": function.__name__, "signature": signature,
            "constexprs": constexprs, "options": {key: value for key, value in kwargs.items() if key in _OPTIONS}}


_COMPILE = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
for request in json.loads(sys.argv[1]):
    kernel = getattr(importlib.import_module(request["module"]), request["name"])
    source = ASTSource(fn=kernel, signature=request["signature"], constexprs=request["constexprs"])
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=request["options"])
    assert compiled.asm["cubin"], request["name"]
    print("compiled", request["name"], request["signature"])
"""


def _compile(requests: list[dict]) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(requests)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _launches(module, monkeypatch, call) -> list:
    recorder = _Recorder()
    monkeypatch.setattr(module, "cached_launcher", recorder, raising=False)
    monkeypatch.setattr(module, "launcher", lambda kernel, direct_launch: recorder(kernel), raising=False)
    with use_backend("triton"):
        call()
    assert recorder.launches
    return recorder.launches


def _rand_augment_layer():
    from vitzoo.ops.rand_augment import OP_CODES, rand_augment_layer
    codes = torch.tensor([OP_CODES["invert"], OP_CODES["affine_bicubic"]])  # no statistics: one launch
    rand_augment_layer(torch.zeros(2, 3, 4, 5, dtype=torch.uint8) + 7, codes, torch.ones(2, dtype=torch.float64),
                       torch.eye(2, 3, dtype=torch.float64).flatten().repeat(2, 1), (1.0, 2.0, 3.0))


def _rand_augment_layer_with_statistics():
    from vitzoo.ops.rand_augment import OP_CODES, rand_augment_layer
    codes = torch.tensor([OP_CODES["contrast"], OP_CODES["auto_contrast"], OP_CODES["equalize"]])
    rand_augment_layer(torch.arange(180, dtype=torch.uint8).view(3, 3, 4, 5), codes,
                       torch.ones(3, dtype=torch.float64), torch.zeros(3, 6, dtype=torch.float64), (1.0, 2.0, 3.0))


def _normalize_erase():
    from vitzoo.ops.normalize_erase import normalize_erase
    normalize_erase(torch.zeros(2, 3, 4, 5, dtype=torch.uint8) + 9, (0.5,) * 3, (0.25,) * 3,
                    torch.tensor([[1, 0, 0, 2, 2]]), "pixel", seed=2**32 - 1)


def _normalize_erase_mixed(box: tuple[int, int, int, int] | None, dtype: torch.dtype):
    from vitzoo.ops.normalize_erase import BatchMix, normalize_erase
    normalize_erase(torch.zeros(2, 3, 4, 5, dtype=torch.uint8) + 9, (0.5,) * 3, (0.25,) * 3,
                    torch.tensor([[1, 0, 0, 2, 2]]), "rand", seed=7, mix=BatchMix(0.375, box), dtype=dtype)


def _resized_crops():
    from vitzoo.ops.resized_crop import resized_crops
    resized_crops(torch.zeros(2, 3, 6, 7, dtype=torch.uint8) + 5, torch.tensor([[0.0, 0.0, 7.0, 6.0]] * 2),
                  torch.tensor([False, True]), 4)


def _kernel_predictor_training_step():
    from vitzoo.ops import predict_local_kernels
    x = torch.rand(17, 5, 12, dtype=torch.bfloat16, requires_grad=True)
    params = [torch.rand(shape, requires_grad=True) for shape in ((12, 4, 1), (12,), (108, 4, 1), (108,))]
    predict_local_kernels(x, *params, groups=3, kernel_size=3).sum().backward()


def _ssm_toeplitz_lags_training_step():
    from vitzoo.ops import ssm_toeplitz_lags
    params = [torch.rand(shape, requires_grad=True) for shape in ((2, 3), (2, 3, 5), (2, 3, 5), (2, 3, 5, 2),
                                                                   (2, 3, 5, 2))]
    ssm_toeplitz_lags(*params, torch.rand(3, requires_grad=True), 7).sum().backward()


def _zeros_weights_split_forward():
    from vitzoo.ops import zeros_weights
    from vitzoo.ops.zeros_weights import heuristics
    programs, min_blocks = heuristics._INTERPRETER_PROGRAMS, heuristics.SPLIT_MIN_BLOCKS
    heuristics._INTERPRETER_PROGRAMS, heuristics.SPLIT_MIN_BLOCKS = 8, 2  # one sequence of 200 tokens: four chunks
    try:
        # u records a gradient: the training forward's launches (the inference ones are bound, not recorded here)
        u = torch.rand(1, 200, 1, 16, dtype=torch.bfloat16, requires_grad=True)
        zeros_weights(u, torch.rand(1, 200, 2, 1, dtype=torch.bfloat16), torch.rand(1, 16), torch.zeros(1))
    finally:
        heuristics._INTERPRETER_PROGRAMS, heuristics.SPLIT_MIN_BLOCKS = programs, min_blocks


def _free_energy_values_split_forward():
    from vitzoo.ops import free_energy_values
    from vitzoo.ops.free_energy import heuristics
    programs, min_blocks = heuristics._INTERPRETER_PROGRAMS, heuristics.VALUES_SPLIT_MIN_BLOCKS
    heuristics._INTERPRETER_PROGRAMS, heuristics.VALUES_SPLIT_MIN_BLOCKS = 8, 2  # 200 tokens: four chunks
    try:
        v = torch.rand(1, 200, 1, 16, dtype=torch.bfloat16, requires_grad=True)  # the training forward's launches
        free_energy_values(v, torch.rand(1, 16), torch.bfloat16)
    finally:
        heuristics._INTERPRETER_PROGRAMS, heuristics.VALUES_SPLIT_MIN_BLOCKS = programs, min_blocks


# (the module whose launcher is recorded, the call, its launches): the statistics take a histogram and a statistics
# kernel before the layer's
CASES = [(rand_augment_function, _rand_augment_layer, 1),
         (rand_augment_function, _rand_augment_layer_with_statistics, 3),
         (normalize_erase_function, _normalize_erase, 1),
         (normalize_erase_function, lambda: _normalize_erase_mixed(None, torch.bfloat16), 1),  # mixup's blend
         (normalize_erase_function, lambda: _normalize_erase_mixed((1, 3, 2, 4), torch.float16), 1),  # cutmix's box
         (resized_crop_function, _resized_crops, 1),
         (kernel_predictor_function, _kernel_predictor_training_step, 3),  # token sums, MLP, backward
         (ssm_kernel_function, _ssm_toeplitz_lags_training_step, 2),
         (zeros_weights_function, _zeros_weights_split_forward, 3),
         (free_energy_function, _free_energy_values_split_forward, 2)]


@pytest.mark.skipif(not INTERPRETED, reason="records the launches under the Triton interpreter (CPU only)")
@pytest.mark.skipif(GPUTarget is None, reason="this Triton has no ahead-of-time compile API")
def test_the_kernels_compile_for_sm90_with_their_launch_arguments(monkeypatch) -> None:
    requests = []
    for module, call, count in CASES:
        launches = _launches(module, monkeypatch, call)
        assert len(launches) == count, [kernel.fn.__name__ for kernel, _, _ in launches]
        requests += [_compile_request(kernel, args, kwargs) for kernel, args, kwargs in launches]
    _compile(requests)  # one process: Triton's import and its compiler's start-up once
