"""Device time of one copy of the linear-attention op, for A/B runs of variants side by side in one device call.

``python ab.py ROOT`` imports ``vitzoo`` from ROOT (a copy of the package with one change applied or reverted) and
prints one JSON line: CUDA-graph median device time in microseconds of the ReLU-normalised configuration (forward,
forward+backward) at N = 197 / 785 / 3137 / 12545 (B*N ~ 50k, H=6, d=64, bf16, q/k/v views of a fused qkv) and of the
InLine configuration at N=197. The calls of session 8 ran each variant in its own process, in the order the call
scripts beside this file give, twice for the reference variants.
"""
from __future__ import annotations

import importlib
import json
import sys

root = sys.argv[1]
sys.path.insert(0, root)

import torch  # noqa: E402
import triton.testing  # noqa: E402

la = importlib.import_module("vitzoo.kernels.linear_attention")
assert la.__file__.startswith(root), la.__file__


def device_us(fn) -> float:
    return round(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3, 1)


def main() -> None:
    torch.manual_seed(0)
    row = {"variant": root.rstrip("/").split("/")[-1]}
    for b, n in ((256, 197), (64, 785), (16, 3137), (4, 12545)):
        qkv = torch.randn(b, n, 3, 6, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(b, n, 6, 64, device="cuda", dtype=torch.bfloat16)
        configs = {"relu": dict(feature_map="relu", normalize=True)}
        if n == 197:
            configs["inline"] = dict(feature_map="identity", center_keys=True, scale=64**-0.5 / n,
                                     feature_const=n**-0.5)
        for name, kwargs in configs.items():
            def fwd(qkv=qkv, kwargs=kwargs):
                with torch.no_grad():
                    return la.linear_attention_triton(*qkv.unbind(2), **kwargs)

            def fwd_bwd(qkv=qkv, grad=grad, kwargs=kwargs):
                q, k, v = qkv.unbind(2)
                return torch.autograd.grad(la.linear_attention_triton(q, k, v, **kwargs), (q, k, v), grad)

            fwd_bwd()
            row[f"{name}{n}_fwd"] = device_us(fwd)
            row[f"{name}{n}_fwdbwd"] = device_us(fwd_bwd)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
