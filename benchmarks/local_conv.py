"""Device time of the local-convolution kernels at the mixers' shapes, for several launch shapes and both weight
layouts (GPU).

Shapes (bf16, batch 256 at 224 px on the 14 x 14 grid, batch 16 at 1024 px on the 64 x 64 grid, one cls token):
DeltaNet-T's 576-channel SiLU convolution with one shared kernel, InLine-T's 192-channel one with per-image kernels
and the attention output as residual. For each: the forward kernel at each (rows per band, columns, channels, warps)
with the weight as (C, K, K) per image ('native') and channels-last (taps outer, channels contiguous, what the
layers pass), and both dw kernels with their partial-sum reduction (shared-kernel shapes): by input rows, what the op
runs for K = 3, and by tiles of positions, what it runs for other K. Device time is
``triton.testing.do_bench``'s median; the bytes floor is one read of the inputs and one write of the output at the
GPU's memory bandwidth.

    python benchmarks/local_conv.py --out benchmarks/results/local_conv/h200.json
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench.common import environment, git_revision, write_json  # noqa: E402
from vitzoo.ops.utils import cdiv  # noqa: E402

kernels = importlib.import_module("vitzoo.ops.local_conv.kernels")
heuristics = importlib.import_module("vitzoo.ops.local_conv.heuristics")

SHAPES = {  # name: (batch, grid side, channels, SiLU, per-image kernels with a residual)
    "deltanet_224": (256, 14, 576, True, False),
    "inline_224": (256, 14, 192, False, True),
    "deltanet_1024": (16, 64, 576, True, False),
    "inline_1024": (16, 64, 192, False, True),
}
BANDWIDTH_TBS = {"H100": 3.35, "H200": 4.8}  # HBM bandwidth of the SXM parts, TB/s
# (rows per band, columns, channels, warps)
LAUNCHES = [(8, 16, 64, 4), (8, 16, 64, 8), (14, 16, 64, 4), (14, 16, 64, 8), (16, 16, 64, 4), (32, 16, 64, 4),
            (14, 16, 32, 4), (14, 16, 128, 8), (8, 32, 64, 8)]


def forward_us(x, weight, residual, grid: int, act: bool, launch: tuple[int, int, int, int]) -> tuple[float, object]:
    b, n, c = x.shape
    rows, block_w, block_c, warps = launch
    bands = cdiv(grid, rows)
    out = torch.empty_like(x)
    res = residual if residual is not None else x

    def run():
        kernels._local_conv_fwd_kernel[(b * bands, cdiv(grid, block_w), cdiv(c, block_c))](
            x, weight, x, res, out, c, grid, grid, 1, bands, x.stride(0), x.stride(1),
            weight.stride(0) if weight.shape[0] > 1 else 0, *weight.stride()[1:], res.stride(0), res.stride(1),
            out.stride(0), out.stride(1), K=3, HAS_BIAS=False, HAS_RESIDUAL=residual is not None,
            PREFIX=2 if residual is not None else 1, ACT=int(act), FLIP=False, ROWS=rows, BLOCK_W=block_w,
            BLOCK_C=block_c, num_warps=warps)

    return triton.testing.do_bench(run, warmup=25, rep=100) * 1e3, out


def dw_us(x, grad, grid: int, by_rows: bool) -> tuple[float, torch.Tensor]:
    """dw with its partial-sum reduction: the input-row kernel (K = 3, what the op runs) or the position tiles."""
    b, _, c = x.shape
    block_c = heuristics.block_c(c)
    rows, block_w = heuristics.rows(grid), heuristics.block_w(grid)
    bands, column_blocks = cdiv(grid, rows), cdiv(grid, block_w)
    tiles = bands * column_blocks if by_rows else cdiv(grid * grid, heuristics.DW_BLOCK_P)

    def run():
        part = torch.empty(b, tiles, 9, c, device=x.device)
        if by_rows:
            kernels._local_conv_dw_rows_kernel[(b * bands, column_blocks, cdiv(c, block_c))](
                x, grad, part, c, grid, grid, 1, bands, x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
                ROWS=rows, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=heuristics.NUM_WARPS)
        else:
            kernels._local_conv_dw_kernel[(b, tiles, cdiv(c, block_c))](
                x, grad, part, c, grid, grid, 1, tiles, x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
                K=3, BLOCK_P=heuristics.DW_BLOCK_P, BLOCK_C=block_c, num_warps=heuristics.DW_NUM_WARPS)
        return part.sum(dim=(0, 1))

    return triton.testing.do_bench(run, warmup=25, rep=100) * 1e3, run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bandwidth-tbs", type=float,
                        help="memory bandwidth for the bytes floor (default: the GPU's, for H100 and H200)")
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth_tbs or next((tbs for gpu, tbs in BANDWIDTH_TBS.items() if gpu in name), None)
    if bandwidth is None:
        parser.error(f"no bandwidth known for {name}: pass --bandwidth-tbs")
    torch.manual_seed(0)
    rows = []
    for name, (b, grid, c, act, per_image) in SHAPES.items():
        x = torch.randn(b, 1 + grid * grid, c, device="cuda", dtype=torch.bfloat16)
        weight = torch.randn(b if per_image else 1, c, 3, 3, device="cuda",
                             dtype=torch.bfloat16 if per_image else torch.float32)
        residual = torch.randn_like(x) if per_image else None
        floor = (3 if per_image else 2) * x.numel() * x.element_size() / (bandwidth * 1e12) * 1e6
        reference = None
        for layout in ("channels_last", "native"):
            w = weight.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else weight
            for launch in LAUNCHES:
                us, out = forward_us(x, w, residual, grid, act, launch)
                reference = out.clone() if reference is None else reference
                assert torch.equal(out, reference), (name, layout, launch)  # every launch computes the same sums
                picked = launch == (heuristics.rows(grid), heuristics.block_w(grid), heuristics.block_c(c),
                                    heuristics.NUM_WARPS)
                rows.append(dict(shape=name, kernel="forward", weight=layout, rows=launch[0], block_w=launch[1],
                                 block_c=launch[2], warps=launch[3], us=round(us, 1), floor_us=round(floor, 1),
                                 heuristic=picked and layout == "channels_last"))
                print(f"{name:14s} forward {layout:13s} rows {launch[0]:2d} cols {launch[1]:2d} channels "
                      f"{launch[2]:2d} warps {launch[3]}: {us:7.1f} us (floor {floor:.1f}){' *' if picked else ''}",
                      flush=True)
        if not per_image:
            grad = torch.randn_like(x)
            sums = {}
            for kernel, by_rows in (("dw_rows", True), ("dw_tiles", False)):
                us, sums[kernel] = dw_us(x, grad, grid, by_rows)
                rows.append(dict(shape=name, kernel=kernel, us=round(us, 1)))
                print(f"{name:14s} {kernel} + sum: {us:7.1f} us", flush=True)
            # the two kernels add in different orders: fp32 sums of 50k bf16 products agree to rounding
            torch.testing.assert_close(sums["dw_rows"], sums["dw_tiles"], rtol=1e-4, atol=1e-2)
    info = dict(environment(torch.device("cuda")), command=" ".join(["python"] + sys.argv), git_revision=git_revision(),
                bandwidth_tbs=bandwidth)
    write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
