"""What ``torch.compile`` does to each whole model (GPU): compile time, graph breaks, warnings, speed against eager.

For each model, in one process and in the order given: eager bf16-autocast inference at batch 256 / 224 px, then
``torch.compile(fullgraph=True)`` in the given mode: seconds to the first finished step (tracing, Inductor, Triton
autotuning), warnings logged by torch while compiling, img/s and device ms per step. A graph break makes
``fullgraph=True`` fail, and the error is the row's status. The JSON is rewritten after every model, so a run cut
short keeps what it measured.

    python benchmarks/compile_models.py --models softmax_deit_tiny_patch16_224 linear_deit_tiny_patch16_224 \\
        --out compile.json
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vitzoo.bench.common import write_json  # noqa: E402
from vitzoo.bench.compare import Step, build, device_profile, provenance, timed_ms  # noqa: E402


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:200])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def measure(name: str, mode: str, batch: int, img_size: int, steps: int, device: torch.device) -> dict:
    row: dict = {"model": name, "img_size": img_size, "batch": batch, "compile": mode}
    eager = Step(build(name, img_size, device, "none"), "infer", batch, img_size, device, compiled=False)
    for _ in range(5):
        eager()
    row["eager_img_per_s"] = round(batch / timed_ms(eager, device, steps) * 1e3, 1)
    row["eager_device_ms"] = _round(device_profile(eager, device)[0])
    del eager
    handler = _CountWarnings()
    logging.getLogger("torch").addHandler(handler)
    begin = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = Step(build(name, img_size, device, mode), "infer", batch, img_size, device, compiled=True)
            compiled()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        row["compile_s"] = round(time.perf_counter() - begin, 1)
        row["warnings"] = handler.count + len(caught)
        row["first_warnings"] = handler.first + [str(w.message)[:200] for w in caught[:3]]
        for _ in range(5):
            compiled()
        row["img_per_s"] = round(batch / timed_ms(compiled, device, steps) * 1e3, 1)
        dev_ms, launches = device_profile(compiled, device)
        row.update(device_ms=_round(dev_ms), launches=launches, status="ok")
    except Exception as error:  # a graph break under fullgraph=True, a lowering failure, an OOM: the row says which
        message = str(error).strip().splitlines()
        row.update(compile_s=round(time.perf_counter() - begin, 1),
                   status=type(error).__name__ + (f": {message[0][:300]}" if message else ""))
    finally:
        logging.getLogger("torch").removeHandler(handler)
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    result = {"info": provenance(" ".join(["python", *sys.argv]), device), "rows": []}
    for name in args.models:
        row = measure(name, args.mode, args.batch_size, args.img_size, args.steps, device)
        print({k: v for k, v in row.items() if k != "first_warnings"}, flush=True)
        result["rows"].append(row)
        write_json(args.out, result)


if __name__ == "__main__":
    main()
