"""PyTorch ops per forward of each family's tiny model, counted on the CPU (no GPU needed).

Eager models on a GPU are host-bound: the host time of a forward is roughly its number of PyTorch ops (each a
dispatch, most a kernel launch) times a per-op cost of tens of microseconds (``benchmarks/host_cost.py`` measures that
cost on a GPU). The count itself does not depend on the machine, so it tracks what a change to a mixer's shell does to
the host time before a GPU is at hand. Counted with a ``TorchDispatchMode`` (every aten op that reaches the
dispatcher's Python layer, views included) over one forward at batch 1:

- ``infer_first`` / ``infer``: inference (``torch.inference_mode``), the first forward and the next one (parameter-
  derived values a mixer keeps between forwards, like H3's SSM kernels, are computed in the first only);
- ``train``: a training forward and backward (``model.train()``, gradients on).
- ``cuda_infer_bf16`` (with ``--kernel-path``): the ``cuda_infer`` forward under bf16 autocast (the CPU's autocast
  standing in for CUDA's: both cast the inputs of linear, matmul and conv layers), the way eager inference runs on a
  GPU; the dtype casts it counts are launches there.

Counts are of the CPU's path, where each fused op runs its PyTorch reference (several ops; one Triton launch on
CUDA): compare a family with itself across changes, or shells of families that call the same ops.

``--kernel-path`` also counts the path a GPU takes: with ``TRITON_INTERPRET=1`` the ops take their Triton branch on
the CPU, and every kernel launch is replaced by a stub that only counts it (no kernel runs, so the numbers the model
computes are meaningless; only the calls count). ``cuda_*`` = aten ops + Triton launches of that path. Launch
heuristics that depend on the GPU (a split over programs that takes a second launch) can differ from a real GPU by a
few launches.

    python benchmarks/op_counts.py --out benchmarks/results/op_counts/cpu.json
    TRITON_INTERPRET=1 python benchmarks/op_counts.py --kernel-path --out benchmarks/results/op_counts/cpu.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitzoo  # noqa: E402  (registers the models)
import vitzoo.ops  # noqa: E402
from vitzoo.bench.common import environment, git_revision, write_json  # noqa: E402
from vitzoo.ops import use_backend  # noqa: E402
from vitzoo.ops.utils import interpreting  # noqa: E402
from vitzoo.registry import DEIT_FAMILIES, FAMILIES  # noqa: E402

# every op package of vitzoo.ops, each with its kernels' launches in its ``function`` module
OP_PACKAGES = tuple(module.name for module in pkgutil.iter_modules(vitzoo.ops.__path__) if module.ispkg)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class _StubKernel:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` counts the launch and runs nothing."""

    def __init__(self, launches: list[int]) -> None:
        self.launches = launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(1)


@contextlib.contextmanager
def stubbed_kernels(launches: list[int]) -> Iterator[None]:
    """Replace every kernel the ops' function modules launch with a counting stub, and take the Triton branch: the
    module attributes named ``_..._kernel`` and the module-level tuples that hold them (a kernel launched from such a
    tuple would otherwise run in the interpreter, uncounted, and its argument copies would count as ops)."""
    saved = []
    for package in OP_PACKAGES:
        module = importlib.import_module(f"vitzoo.ops.{package}.function")
        kernels = {name: value for name, value in vars(module).items()
                   if name.startswith("_") and name.endswith("_kernel")}
        stubs = {id(kernel): _StubKernel(launches) for kernel in kernels.values()}
        for name, value in list(vars(module).items()):
            if name in kernels:
                stub = stubs[id(value)]
            elif isinstance(value, tuple) and value and all(id(item) in stubs for item in value):
                stub = tuple(stubs[id(item)] for item in value)
            else:
                continue
            saved.append((module, name, value))
            setattr(module, name, stub)
    try:
        with use_backend("triton"):
            yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)


def count(step, launches: list[int] | None = None) -> int:
    """Aten ops of ``step`` (plus the stubbed launches recorded into ``launches`` meanwhile, when given)."""
    start = len(launches) if launches is not None else 0
    with OpCounter() as counter:
        step()
    return counter.count + (len(launches) - start if launches is not None else 0)


def _counts(model: torch.nn.Module, x: torch.Tensor, launches: list[int] | None, prefix: str) -> dict:
    model.eval()
    with torch.inference_mode():
        first = count(lambda: model(x), launches)
        second = count(lambda: model(x), launches)
    row = {f"{prefix}infer_first": first, f"{prefix}infer": second}
    if launches is not None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)  # the first forward under autocast keeps what a model keeps between forwards
            row[f"{prefix}infer_bf16"] = count(lambda: model(x), launches)
    model.train()
    row[f"{prefix}train"] = count(lambda: model(x).sum().backward(), launches)
    return row


def family_counts(name: str, img_size: int, kernel_path: bool) -> dict:
    x = torch.randn(1, 3, img_size, img_size)
    model = timm.create_model(name, img_size=img_size)
    row = {"model": name, "blocks": len(model.blocks), **_counts(model, x, None, "")}
    if kernel_path:
        launches: list[int] = []
        # a fresh model: what the first model keeps between forwards (H3's kernels and weights) must be computed
        # again for the first forward's count
        model = timm.create_model(name, img_size=img_size)
        with stubbed_kernels(launches):
            row |= _counts(model, x, launches, "cuda_")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kernel-path", action="store_true",
                        help="also count the GPU's path (ops + Triton launches, kernels stubbed); needs "
                             "TRITON_INTERPRET=1")
    args = parser.parse_args()
    if args.kernel_path and not interpreting():
        parser.error("--kernel-path needs TRITON_INTERPRET=1 in the environment (the ops take their Triton branch on "
                     "the CPU only under the interpreter)")
    rows = []
    for family in DEIT_FAMILIES:
        rows.append(family_counts(FAMILIES[family].model_name("tiny"), args.img_size, args.kernel_path))
        row = rows[-1]
        line = f"{row['model']:36s} infer {row['infer']:5d} (first {row['infer_first']:5d})  train {row['train']:5d}"
        if args.kernel_path:
            line += (f"   cuda path: infer {row['cuda_infer']:5d}  bf16 {row['cuda_infer_bf16']:5d}  "
                     f"train {row['cuda_train']:5d}")
        print(line, flush=True)
    command = ("TRITON_INTERPRET=1 " if args.kernel_path else "") + "python " + " ".join(sys.argv)
    info = environment(torch.device("cpu")) | {"command": command,
                                               "git_revision": git_revision(), "batch": 1, "img_size": args.img_size}
    write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
