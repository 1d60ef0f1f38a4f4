"""Device time (us) of the linear-attention op of the vitzoo copy in ROOT for the QT, ZeroS, FEM and ReLU configs."""
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


def inputs(name: str, b: int, n: int):
    h, d = 6, 64
    dv = 2 * d if name == "fem" else d
    q, k = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    v = torch.randn(b, n, h, dv, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    leaves = [q, k, v]
    kwargs = {}
    if name == "qt":
        const = torch.tensor(0.6, device="cuda", requires_grad=True)
        kwargs = dict(feature_map="qt", feature_const=const, normalize=True)
        leaves.append(const)
    elif name == "zeros":
        s = torch.randn(b, n, h, device="cuda") * 0.5
        kw = torch.stack([s.exp(), s, torch.ones_like(s)], dim=-1).to(torch.bfloat16).requires_grad_()
        qw = torch.randn(b, n, h, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        kwargs = dict(feature_map="l2norm", key_weights=kw, query_weights=qw)
        leaves += [kw, qw]
    else:  # relu, fem (doubled values)
        kwargs = dict(feature_map="relu", normalize=True)
    return (q, k, v), kwargs, leaves


def main() -> None:
    torch.manual_seed(0)
    row = {"variant": root.rstrip("/").split("/")[-1]}
    for name in ("qt", "zeros", "fem", "relu"):
        for b, n in ((256, 197), (16, 3137)):
            (q, k, v), kwargs, leaves = inputs(name, b, n)
            grad = torch.randn(b, n, 6, v.shape[-1], device="cuda", dtype=torch.bfloat16)

            def fwd(q=q, k=k, v=v, kwargs=kwargs):
                with torch.no_grad():
                    return la.linear_attention_triton(q, k, v, **kwargs)

            def fwd_bwd(q=q, k=k, v=v, kwargs=kwargs, leaves=leaves, grad=grad):
                return torch.autograd.grad(la.linear_attention_triton(q, k, v, **kwargs), leaves, grad)

            fwd_bwd()
            row[f"{name}{n}"] = (device_us(fwd), device_us(fwd_bwd))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
