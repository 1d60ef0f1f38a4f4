"""The Linear bias gradient as autograd's column sum ('plain') against a product with ones ('product',
:func:`vitzoo.layers.kept.linear_with_product_bias_grad`), in whole training steps (GPU).

For each model: one backward each way on the same weights and input (the largest relative difference of any
parameter gradient), then AdamW training steps (bf16 autocast, batch 128, 224 px) eager and replayed from CUDA graphs,
the two paths alternated in one process: step ms (CUDA events over queued steps), device ms and launches
(torch.profiler), host ms to enqueue a step. The path is switched here, for every forward that records the bias's
gradient (eager and captured alike), by replacing ``KeptCastLinear.forward``; the library itself takes the product
in captured steps only, which this measurement decided.

    python benchmarks/product_bias_grad.py --out product_bias_grad.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench.common import environment  # noqa: E402
from vitzoo.bench.compare import Step, build, device_profile, host_ms, timed_ms  # noqa: E402
from vitzoo.layers.kept import KeptCastLinear, linear_with_product_bias_grad  # noqa: E402


def _product_forward(self: KeptCastLinear, x: torch.Tensor) -> torch.Tensor:
    if self.bias is not None and self.bias.requires_grad and torch.is_grad_enabled():
        return linear_with_product_bias_grad(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def _plain_forward(self: KeptCastLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.weight, self.bias)


def use_path(path: str) -> None:
    """Every Linear of the zoo's models takes ``path`` in training forwards (these steps never run eval forwards)."""
    KeptCastLinear.forward = _product_forward if path == "product" else _plain_forward


def gradient_difference(name: str, device: torch.device) -> float:
    """The largest relative difference of a parameter gradient between the two paths."""
    torch.manual_seed(0)
    model = build(name, 224, device, "none").train()
    x = torch.randn(64, 3, 224, 224, device=device)
    target = torch.randint(0, 1000, (64,), device=device)
    grads = {}
    for path in ("plain", "product"):
        use_path(path)
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            F.cross_entropy(model(x), target).backward()
        grads[path] = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return max((grads["product"][n] - g).abs().max().item() / max(g.abs().max().item(), 1e-30)
               for n, g in grads["plain"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["softmax_deit_tiny_patch16_224",
                                                        "deltanet_deit_tiny_patch16_224"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    out = {"info": environment(device) | {"command": " ".join(["python", *sys.argv])}, "grad_check": {}, "rows": []}
    for name in args.models:
        out["grad_check"][name] = gradient_difference(name, device)
        for graphed in (False, True):
            steps = {}
            for path in ("plain", "product"):
                use_path(path)  # graphed steps capture the path in force here
                torch.manual_seed(0)
                steps[path] = Step(build(name, 224, device, "none"), "train", 128, 224, device, compiled=False,
                                   graphed=graphed)
                for _ in range(5):
                    steps[path]()
            results = {path: {"step": [], "device": [], "host": []} for path in steps}
            for _ in range(args.repeats):
                for path, step in steps.items():
                    use_path(path)
                    results[path]["step"].append(timed_ms(step, device, 10))
                    device_ms, launches = device_profile(step, device, 3)
                    results[path]["device"].append(device_ms)
                    results[path]["launches"] = launches
                    results[path]["host"].append(host_ms(step, device, samples=5))
            for path, r in results.items():
                out["rows"].append({"model": name, "graphed": graphed, "path": path,
                                    "step_ms_median": statistics.median(r["step"]), "step_ms": r["step"],
                                    "device_ms_median": statistics.median(r["device"]), "device_ms": r["device"],
                                    "host_ms_median": statistics.median(r["host"]), "launches": r["launches"]})
                print(json.dumps(out["rows"][-1]), flush=True)
            args.out.write_text(json.dumps(out, indent=1) + "\n")  # after each mode: a cut-off run keeps its rows


if __name__ == "__main__":
    main()
