"""How well-conditioned is the gradient of QT's constant feature? (CPU, float64.)

On the H200 the linear-attention op's gradient for the learnable constant feature c missed its tolerance
(bf16, QT configuration, B=8, N=3137: relative error 5.2e-2; fp32, N=577: 1.4e-4), while every other gradient passed.
With normalisation, dL/dc = 2c sum_(b,h) (A + B), A = u . dL/dr and B = s dL/dzc (u: value sum, s: key count), two
large terms that nearly cancel. This script measures, on the GPU test's inputs:

- the cancellation ratio (|A| + |B|) / |A + B|;
- how far dL/dc moves when the features are rounded to bf16 the way the kernel's bf16 products round them (phi(q) in
  the numerator read, phi(k) in the state), which bounds what the kernel's bf16 products alone can explain.

    python benchmarks/const_grad_conditioning.py --out benchmarks/results/const_grad_conditioning/cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.ops.linear_attention import apply_feature_map  # noqa: E402
from vitzoo.ops.testing import const_grad_terms  # noqa: E402

SHAPES = [(64, 197), (16, 785), (8, 3137)]  # (B, N) of the GPU test, H=6, d=64
HEADS, HEAD_DIM, CONST, EPS = 6, 64, 0.6, 1e-6


def const_grad(q, k, v, g, round_query: bool, round_key: bool) -> float:
    """dL/dc of the normalised QT read in float64, features optionally rounded to bf16."""
    def bf16(x: torch.Tensor) -> torch.Tensor:
        return x.bfloat16().double()

    c = torch.tensor(CONST, dtype=torch.float64, requires_grad=True)
    phi_q, phi_k = apply_feature_map(q, "qt"), apply_feature_map(k, "qt")
    state = torch.einsum("bnhk,bnhv->bhkv", bf16(phi_k) if round_key else phi_k, v)
    z, u, count = phi_k.sum(1), v.sum(1), q.shape[1]
    num = torch.einsum("bnhk,bhkv->bnhv", bf16(phi_q) if round_query else phi_q, state) + c * c * u[:, None]
    den = torch.einsum("bnhk,bhk->bnh", phi_q, z) + c * c * count + EPS
    (grad,) = torch.autograd.grad(num / den[..., None], c, g)
    return grad.item()


def cancellation_ratio(q, k, v, g) -> float:
    """(|A| + |B|) / |A + B| summed over (batch, head): how much the two parts of dL/dc cancel."""
    term_a, term_b = const_grad_terms(q, k, v, g, CONST, feature_map="qt", eps=EPS)
    return ((term_a.abs() + term_b.abs()).sum() / (term_a + term_b).sum().abs()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/const_grad_conditioning/cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for b, n in SHAPES:
        q, k, v, g = (torch.randn(b, n, HEADS, HEAD_DIM).bfloat16().double() for _ in range(4))
        exact = const_grad(q, k, v, g, round_query=False, round_key=False)
        rounded = const_grad(q, k, v, g, round_query=True, round_key=True)
        ratio = cancellation_ratio(q, k, v, g)
        rows.append({"B": b, "N": n, "dconst": exact, "cancellation_ratio": ratio,
                     "rel_change_bf16_features": abs(rounded - exact) / abs(exact)})
        print(f"N={n:>5} B={b:>3}: dL/dc {exact:+.4e}  cancellation (|A|+|B|)/|A+B| {ratio:8.1f}  "
              f"bf16-rounded features move it by {rows[-1]['rel_change_bf16_features']:.1e}")
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "machine": "CPU, float64", "command": " ".join(["python", *sys.argv]),
            "config": f"qt feature map, constant {CONST}, normalize, eps {EPS}, H={HEADS}, d={HEAD_DIM}"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"info": info, "rows": rows}, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
