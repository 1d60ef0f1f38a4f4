"""PyTorch ops per forward of each family's tiny model, counted on the CPU (no GPU needed).

Eager models on a GPU are host-bound: the host time of a forward is roughly its number of PyTorch ops (each a
dispatch, most a kernel launch) times a per-op cost of tens of microseconds (``benchmarks/host_cost.py`` measures that
cost on a GPU). The count itself does not depend on the machine, so it tracks what a change to a mixer's shell does to
the host time before a GPU is at hand. Counted with a ``TorchDispatchMode`` (every aten op that reaches the
dispatcher's Python layer, views included) over one forward at batch 1:

- ``infer_first`` / ``infer``: inference (``torch.inference_mode``), the first forward and the next one (parameter-
  derived values a mixer keeps between forwards, like H3's SSM kernels, are computed in the first only);
- ``train``: a training forward and backward (``model.train()``, gradients on).

Counts are of the CPU's path, where each fused op runs its PyTorch reference (several ops; one Triton launch on
CUDA): compare a family with itself across changes, or shells of families that call the same ops. Under the Triton
interpreter the kernels' own bookkeeping would be counted instead, which a GPU does not have.

    python benchmarks/op_counts.py --out benchmarks/results/op_counts/cpu.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitzoo  # noqa: E402,F401  (registers the models)
from vitzoo.bench.common import environment, git_revision, write_json  # noqa: E402
from vitzoo.registry import DEIT_FAMILIES, FAMILIES  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count(step) -> int:
    with OpCounter() as counter:
        step()
    return counter.count


def family_counts(name: str, img_size: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img_size).eval()
    x = torch.randn(1, 3, img_size, img_size)
    with torch.inference_mode():
        first = count(lambda: model(x))
        second = count(lambda: model(x))
    model.train()
    train = count(lambda: model(x).sum().backward())
    return {"model": name, "blocks": len(model.blocks), "infer_first": first, "infer": second, "train": train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for family in DEIT_FAMILIES:
        rows.append(family_counts(FAMILIES[family].model_name("tiny"), args.img_size))
        row = rows[-1]
        print(f"{row['model']:36s} infer {row['infer']:5d} (first {row['infer_first']:5d})  train {row['train']:5d}",
              flush=True)
    info = environment(torch.device("cpu")) | {"command": "python " + " ".join(sys.argv),
                                               "git_revision": git_revision(), "batch": 1, "img_size": args.img_size}
    write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
