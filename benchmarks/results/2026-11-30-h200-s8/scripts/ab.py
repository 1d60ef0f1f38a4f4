"""Device time of one copy of the linear-attention op, for A/B runs of variants side by side in one device call.

``python ab.py ROOT [--suite relu|configs]`` imports ``vitzoo`` from ROOT (a copy of the package with one change
applied or reverted) and prints one JSON line of CUDA-graph median device times in microseconds (bf16, H=6, d=64):

- ``relu`` (calls 2 and 3): the ReLU-normalised configuration, forward and forward+backward, at N = 197 / 785 / 3137
  / 12545 (B*N ~ 50k; q/k/v views of a fused qkv), and the InLine configuration at N=197 (call 2 timed N = 197 and
  3137 only);
- ``configs`` (calls 6 and 7): [forward, forward+backward] of QT (learnable constant), ZeroS (three weightings),
  FEM's doubled values (d_v = 128) and ReLU, at N = 197 and 3137, gradients for every input.

Each variant ran in its own process, in the order the results README gives. On the device the two suites were two
files (``ab.py``, ``ab_configs.py``) with the same code as the two suites here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

HEADS, HEAD_DIM = 6, 64


def device_us(fn) -> float:
    import triton.testing

    return round(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3, 1)


def relu_suite(la) -> dict:
    row = {}
    for b, n in ((256, 197), (64, 785), (16, 3137), (4, 12545)):
        qkv = torch.randn(b, n, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        configs = {"relu": dict(feature_map="relu", normalize=True)}
        if n == 197:
            configs["inline"] = dict(feature_map="identity", center_keys=True, scale=HEAD_DIM**-0.5 / n,
                                     feature_const=n**-0.5)
        for name, kwargs in configs.items():
            q, k, v = qkv.unbind(2)
            row[f"{name}{n}_fwd"], row[f"{name}{n}_fwdbwd"] = time_op(la, (q, k, v), kwargs, [q, k, v], grad)
    return row


def config_inputs(name: str, b: int, n: int) -> tuple:
    """(q, k, v), op kwargs, the tensors to differentiate, as the mixers of that family call the op."""
    dv = 2 * HEAD_DIM if name == "fem" else HEAD_DIM
    q, k = (torch.randn(b, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    v = torch.randn(b, n, HEADS, dv, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    leaves = [q, k, v]
    if name == "qt":
        const = torch.tensor(0.6, device="cuda", requires_grad=True)
        kwargs = dict(feature_map="qt", feature_const=const, normalize=True)
        leaves.append(const)
    elif name == "zeros":
        s = torch.randn(b, n, HEADS, device="cuda") * 0.5
        key_weights = torch.stack([s.exp(), s, torch.ones_like(s)], dim=-1).to(torch.bfloat16).requires_grad_()
        query_weights = torch.randn(b, n, HEADS, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        kwargs = dict(feature_map="l2norm", key_weights=key_weights, query_weights=query_weights)
        leaves += [key_weights, query_weights]
    else:  # relu, fem
        kwargs = dict(feature_map="relu", normalize=True)
    return (q, k, v), kwargs, leaves


def configs_suite(la) -> dict:
    row = {}
    for name in ("qt", "zeros", "fem", "relu"):
        for b, n in ((256, 197), (16, 3137)):
            qkv, kwargs, leaves = config_inputs(name, b, n)
            grad = torch.randn(b, n, HEADS, qkv[2].shape[-1], device="cuda", dtype=torch.bfloat16)
            row[f"{name}{n}"] = list(time_op(la, qkv, kwargs, leaves, grad))
    return row


def time_op(la, qkv: tuple, kwargs: dict, leaves: list, grad: torch.Tensor) -> tuple[float, float]:
    def fwd():
        with torch.no_grad():
            return la.linear_attention_triton(*qkv, **kwargs)

    def fwd_bwd():
        return torch.autograd.grad(la.linear_attention_triton(*qkv, **kwargs), leaves, grad)

    fwd_bwd()
    return device_us(fwd), device_us(fwd_bwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder holding the vitzoo copy to time")
    parser.add_argument("--suite", choices=("relu", "configs"), default="relu")
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    la = importlib.import_module("vitzoo.kernels.linear_attention")
    if not la.__file__.startswith(args.root):
        raise SystemExit(f"imported {la.__file__}, not the copy in {args.root}")
    torch.manual_seed(0)
    suite = relu_suite if args.suite == "relu" else configs_suite
    print(json.dumps({"variant": args.root.rstrip("/").split("/")[-1], **suite(la)}), flush=True)


if __name__ == "__main__":
    main()
