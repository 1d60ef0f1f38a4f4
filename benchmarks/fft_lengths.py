"""H3's long convolution: FFT time at the old length 2N against the next 7-smooth length (``fast_fft_length``).

For the token counts of a 16-px-patch ViT at 224..1024 px (N = 197 .. 4097), time rfft + irfft of a (rows, N) fp32
batch at both lengths, on the GPU when there is one (CUDA events) and else on the CPU, and write a JSON:

    python benchmarks/fft_lengths.py --out benchmarks/results/fft_lengths/cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vitzoo.layers.long_conv import fast_fft_length  # noqa: E402

TOKENS = {224: 197, 384: 577, 512: 1025, 768: 2305, 1024: 4097}


def time_ms(fn, device: torch.device, repeats: int) -> float:
    """Median ms of ``fn`` over ``repeats`` calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="signals per batch (default 4096 GPU, 256 CPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = args.rows or (4096 if device.type == "cuda" else 256)
    results = []
    for size, n in TOKENS.items():
        x = torch.randn(rows, n, device=device)
        row = {"img_size": size, "tokens": n}
        for name, length in (("old_2n", 2 * n), ("fast", fast_fft_length(2 * n - 1))):
            row[f"{name}_length"] = length
            def round_trip(x=x, n_fft=length):
                return torch.fft.irfft(torch.fft.rfft(x, n=n_fft), n=n_fft)

            row[f"{name}_ms"] = round(time_ms(round_trip, device, args.repeats), 4)
        row["speedup"] = round(row["old_2n_ms"] / row["fast_ms"], 2)
        results.append(row)
        print(row, flush=True)
    info = {
        "what": "rfft + irfft of a (rows, length) fp32 batch, median of repeats",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, "
                                                                              f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "rows": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "rows": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
