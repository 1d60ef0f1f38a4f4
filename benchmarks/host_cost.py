"""Host time per eager call of every family's token mixer and block, and of the pieces they are made of (GPU).

An eager model is host-bound when enqueueing its kernels takes longer than running them; then its speed follows the
CPU, not the GPU. Whole-model host times (``vitzoo-bench --compare``) say that it happens; this says where. For each
DeiT family at the tiny size (batch 256 at 224 px: 197 tokens of width 192, bf16 autocast, inference mode):

- ``mixer`` / ``block``: one block's token mixer, and the whole block (norms, mixer, MLP, residuals);
- ``mixer_train``: the mixer's forward and backward (the backward's host work runs on autograd's thread and is
  inside the call, which returns once every kernel is enqueued);
- pieces: a Linear under autocast, the zoo's 16-bit LayerNorm, SDPA, each op as the mixers call it, an empty Triton
  launch.

Host time is the median, over ``--samples`` calls, of the wall time to enqueue one call on an idle GPU (a sync before
each call, none inside it), so the device time cannot leak into it. ``launches`` and ``device_us`` come from
torch.profiler. Host times depend on the CPU of the machine: compare rows of one run (the softmax mixer is in every
run), not runs.

    python benchmarks/host_cost.py --out benchmarks/results/host_cost/h200.json
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench.common import create_model, environment, git_revision, write_json  # noqa: E402
from vitzoo.bench.compare import device_profile, host_ms  # noqa: E402
from vitzoo.layers.norms import low_precision_layer_norm  # noqa: E402
from vitzoo.ops import delta_rule_bidirectional, linear_attention, local_conv  # noqa: E402
from vitzoo.registry import DEIT_FAMILIES, FAMILIES  # noqa: E402

BATCH, IMG_SIZE, GRID = 256, 224, (14, 14)
TOKENS = 1 + GRID[0] * GRID[1]


@triton.jit
def _empty_kernel(x_ptr):
    pass


def measure(name: str, call: Callable[[], object], samples: int, rows: list[dict]) -> None:
    for _ in range(5):  # warm-up: kernel compilation, allocator
        call()
    cuda = torch.device("cuda")
    host = host_ms(call, cuda, samples=samples) * 1e3
    device_ms, launches = device_profile(call, cuda, steps=5)
    device = device_ms * 1e3
    rows.append(dict(name=name, host_us=round(host, 1), device_us=round(device, 1), launches=round(launches, 1)))
    print(f"{name:40s} host {host:8.1f} us  device {device:8.1f} us  launches {launches:5.1f}", flush=True)


def in_autocast(call: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return call()
    return run


def family_rows(family_name: str, samples: int, rows: list[dict]) -> None:
    x = torch.randn(BATCH, TOKENS, 192, device="cuda", dtype=torch.bfloat16)
    model = create_model(FAMILIES[family_name].model_name("tiny"), IMG_SIZE, torch.device("cuda"))
    block = model.blocks[0]
    measure(f"{family_name}/mixer", in_autocast(lambda: block.attn(x, GRID, 1)), samples, rows)
    measure(f"{family_name}/block", in_autocast(lambda: block(x, GRID, 1)), samples, rows)
    block.train()
    xg = x.detach().clone().requires_grad_()

    def mixer_train():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = block.attn(xg, GRID, 1)
        out.sum().backward()

    measure(f"{family_name}/mixer_train", mixer_train, samples, rows)


def piece_rows(samples: int, rows: list[dict]) -> None:
    x = torch.randn(BATCH, TOKENS, 192, device="cuda", dtype=torch.bfloat16)
    linear = torch.nn.Linear(192, 576, device="cuda")
    weight, bias = torch.ones(192, device="cuda"), torch.zeros(192, device="cuda")
    qkv = linear(x.float()).to(torch.bfloat16).view(BATCH, TOKENS, 3, 3, 64)
    q, k, v = qkv.unbind(2)
    qs, ks, vs = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    beta = torch.rand(BATCH, TOKENS, 3, device="cuda", dtype=torch.bfloat16)
    kernels = torch.randn(BATCH, 192, 3, 3, device="cuda", dtype=torch.bfloat16)
    vflat = v.reshape(BATCH, TOKENS, 192)
    small = torch.zeros(16, device="cuda")
    pieces = {
        "empty_triton_launch": lambda: _empty_kernel[(1,)](small),
        "torch_empty": lambda: torch.empty(BATCH, TOKENS, 192, device="cuda", dtype=torch.bfloat16),
        "linear_autocast_192x576": in_autocast(lambda: linear(x)),
        "layer_norm_16bit": in_autocast(lambda: low_precision_layer_norm(x, (192,), weight, bias, 1e-6)),
        "sdpa": in_autocast(lambda: F.scaled_dot_product_attention(qs, ks, vs)),
        "linear_attention_relu": in_autocast(lambda: linear_attention(q, k, v, feature_map="relu", normalize=True)),
        "linear_attention_inline": in_autocast(lambda: linear_attention(
            q, k, v, center_keys=True, scale=64**-0.5 / TOKENS, feature_const=TOKENS**-0.5)),
        "local_conv_per_image": in_autocast(lambda: local_conv(vflat, kernels, GRID, 1)),
        "delta_rule_bidirectional": in_autocast(lambda: delta_rule_bidirectional(q, k, v, beta)),
    }
    for name, call in pieces.items():
        measure(name, call, samples, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="calls timed per row (median)")
    parser.add_argument("--families", nargs="+", choices=DEIT_FAMILIES, default=list(DEIT_FAMILIES))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_cost.py measures enqueue time on a CUDA device; none is visible")
    torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    piece_rows(args.samples, rows)
    for family_name in args.families:
        family_rows(family_name, args.samples, rows)
    info = environment(torch.device("cuda")) | {
        "command": "python " + " ".join(sys.argv), "git_revision": git_revision(),
        "shape": f"batch {BATCH}, {TOKENS} tokens, width 192 (tiny), bf16 autocast, inference mode unless _train",
    }
    write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
