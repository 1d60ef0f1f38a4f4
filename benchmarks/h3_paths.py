"""H3's two ways to run its gated long convolution, timed side by side: the Toeplitz-weighted attention (O(N^2 d)
matmul work) against the FFT long convolution (O(d^2 N log N) memory-bound work), to place the switch between them
(``TOEPLITZ_MAX_TOKENS_PER_HEAD_DIM`` in ``vitzoo/layers/long_conv.py``).

For the token counts of a 16-px-patch ViT at 224..1024 px, at B*N ~ 50k tokens, H=3, d=64 (H3-T), as the mixer runs
its core in a bf16 model on the GPU (bf16 projections under autocast: the Toeplitz path's matrix products in bf16, the
FFT path in fp32; fp32 throughout on the CPU): check that both paths give the same output, then time forward and
forward+backward (median of repeats, CUDA events on the GPU). Writes a JSON and prints where the FFT path starts to
win, as N / d.

    python benchmarks/h3_paths.py --out benchmarks/results/h3_paths/h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fft_lengths import TOKENS, time_ms  # noqa: E402

from vitzoo.layers.h3 import DiagonalSSMKernel  # noqa: E402
from vitzoo.layers.long_conv import gated_long_conv_fft, gated_long_conv_toeplitz  # noqa: E402
from vitzoo.ops.testing import relative_error  # noqa: E402

HEADS, HEAD_DIM, TOKENS_PER_STEP = 3, 64, 50_000
PATHS = {"toeplitz": gated_long_conv_toeplitz, "fft": gated_long_conv_fft}


def measure(tokens: int, device: torch.device, repeats: int, tokens_per_step: int) -> dict:
    batch = max(1, tokens_per_step // tokens)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(batch, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype) * 0.5 for _ in range(3))
    with torch.no_grad():
        kernel_fwd, kernel_bwd = DiagonalSSMKernel(HEADS).to(device)(tokens)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        outputs = {name: path(q, k, v, kernel_fwd, kernel_bwd) for name, path in PATHS.items()}
    error = relative_error(outputs["fft"], outputs["toeplitz"])
    if error > (2e-2 if dtype == torch.bfloat16 else 1e-3):
        raise SystemExit(f"N={tokens}: the FFT and Toeplitz paths differ by {error:.1e} (relative); not timing")
    row = {"N": tokens, "B": batch, "N_over_d": tokens / HEAD_DIM, "rel_diff": error}
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q)
    for name, path in PATHS.items():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            row[f"{name}_fwd_ms"] = time_ms(lambda p=path: p(q, k, v, kernel_fwd, kernel_bwd), device, repeats)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            row[f"{name}_fwd_bwd_ms"] = time_ms(
                lambda p=path: torch.autograd.grad(p(*leaves, kernel_fwd, kernel_bwd), leaves, grad), device, repeats
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/h3_paths/h200.json"))
    parser.add_argument("--img-sizes", type=int, nargs="+", default=list(TOKENS), choices=list(TOKENS))
    parser.add_argument("--tokens-per-step", type=int, default=TOKENS_PER_STEP, help="B*N (default 50k)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for img_size in args.img_sizes:
        row = {"img_size": img_size, **measure(TOKENS[img_size], device, args.repeats, args.tokens_per_step)}
        rows.append(row)
        print({key: float(f"{value:.4g}") if isinstance(value, float) else value for key, value in row.items()},
              flush=True)
    fft_wins = [row["N_over_d"] for row in rows if row["fft_fwd_bwd_ms"] < row["toeplitz_fwd_bwd_ms"]]
    print(f"FFT faster (forward+backward) from N/d = {min(fft_wins):.1f}" if fft_wins else "Toeplitz faster everywhere")
    info = {
        "what": "H3 gated long convolution, Toeplitz vs FFT path, as in a bf16 model (fp32 on the CPU), H=3, d=64, "
                "median ms",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
