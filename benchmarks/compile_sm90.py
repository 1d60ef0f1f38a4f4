"""Registers, spills and shared memory of the Triton kernels compiled for sm_90 (H100/H200), without a GPU.

Triton compiles each kernel for a ``GPUTarget`` and ``ptxas -v`` (shipped with Triton) reports the resources: the
numbers that set occupancy, to check before and after a kernel change (see CONTRIBUTING.md). ``--maxnreg`` caps the
registers per thread as the launch option of that name does (the spills then show its cost).

    python benchmarks/compile_sm90.py [--chunk 32] [--head-dim 64 128] [--maxnreg 168] [--family delta linear shell]

``shell``: the kernels around the mixers' cores (norms, local convolution, InLine's kernel predictor, FEM's two ops,
ZeroS's weightings, H3's SSM kernels and Toeplitz attention) at the launch settings their heuristics pick for the tiny
models.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vitzoo.ops import delta_rule as dr  # noqa: E402

# the package's name is also the re-exported function's: reach its modules through importlib
la = importlib.import_module("vitzoo.ops.linear_attention.kernels")
la_heuristics = importlib.import_module("vitzoo.ops.linear_attention.heuristics")
dr_kernels = importlib.import_module("vitzoo.ops.delta_rule.kernels")

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
FP32_POINTERS = {"state_ptr", "dstate_ptr", "dc_ptr"}  # every other pointer is bf16 (the benchmarks' dtype)
FLOAT_SCALARS = {"scale", "c_value", "eps", "log_eps", "gate_floor", "tiny", "sqrt_dv", "cap_numerator"}


def resources(kernel, constexprs: dict, num_warps: int, num_stages: int = 3, maxnreg: int | None = None,
              divisible: tuple[str, ...] = (), fp32_pointers: frozenset[str] | set[str] = FP32_POINTERS,
              ) -> dict[str, int]:
    """Compile ``kernel`` for sm_90 with ``constexprs``; registers, spill bytes and shared memory per block.
    ``divisible``: integer arguments that the real launches pass as multiples of 16. Triton specialises those, and
    only with that knowledge may it load rows 16 bytes at a time and pipeline them (cp.async). ``fp32_pointers``:
    the pointer arguments to fp32 data (the others point to bf16)."""
    params = list(inspect.signature(kernel.fn).parameters)
    signature, constants = {}, {}
    for i, name in enumerate(params):
        if name in constexprs:
            signature[name] = "constexpr"
            constants[(i,)] = constexprs[name]
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in fp32_pointers else "*bf16"
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(params)
             if name.endswith("_ptr") or name in divisible}
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                              options=options)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        report = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", ptx, "-o", os.path.join(tmp, "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
            "shared_bytes": compiled.metadata.shared}


def stride_arguments(kernels, pattern: str) -> tuple[str, ...]:
    """The integer arguments of ``kernels`` whose names match ``pattern``: the strides the benchmark's launches pass
    as multiples of 16."""
    return tuple(name for kernel in kernels for name in inspect.signature(kernel.fn).parameters
                 if re.fullmatch(pattern, name))


def delta_rule_kernels(chunk: int, d: int) -> list[tuple]:
    base = dict(DK=d, DV=d, BT=chunk, BK=d, FIRST_DIR=0, L2NORM=True, DOT_MODE=1)
    both = dict(base, NUM_DIRS=2)
    launch = dr.heuristics.DEFAULT_LAUNCH
    kernels = [
        ("wy", dr_kernels._delta_rule_wy_kernel,
         dict(both, LOG2_BT=chunk.bit_length() - 1, BV=d, STORE_T=True, BETA_LOGITS=True),
         launch.wy_num_warps, 3),
        ("states", dr_kernels._delta_rule_states_kernel, dict(base, BV=min(d, 64)), launch.num_warps, 3),
        ("output", dr_kernels._delta_rule_output_kernel, dict(both, BV=d), launch.num_warps, 3),
        ("scan_output", dr_kernels._delta_rule_scan_output_kernel, dict(both, BV=min(d, 64)), launch.num_warps, 3),
        ("dstates", dr_kernels._delta_rule_dstates_kernel, dict(both, BV=min(d, 64)), launch.num_warps, 3),
        ("grads", dr_kernels._delta_rule_grads_kernel, dict(both, BV=d, BETA_LOGITS=True), launch.grads_num_warps,
         3),
    ]
    # q, k, v are views of a fused (B, N, 3, H, D) qkv and o, do are (B, N, H, D): their batch, token and head
    # strides divide by 16; beta's (B, N, H) strides do not
    divisible = stride_arguments([kernel for _, kernel, *_ in kernels], r"s[qkvod][bnh]")
    return [(*entry, divisible) for entry in kernels]


def linear_attention_kernels(d: int) -> list[tuple]:
    """The benchmark's ReLU-normalised configuration, one program per sequence (N=197's launch)."""
    common = dict(DK=d, DV=d, DKP=d, DVP=d, W=1, HAS_WEIGHTS=False, FEATURE=1, CENTER=False, UNIT_D=True,
                  CONST_PTR=False, HAS_CONST=False, NORMALIZE=True,
                  PREC="bf16")
    # no GPU is needed to pick the launch: 256 x 6 sequences fill any GPU, and a CPU device skips the SM count
    host = torch.device("cpu")
    forward = la_heuristics.forward_launch(256 * 6, 197, d, d, 1, host)
    backward = la_heuristics.backward_launch(256 * 6, 197, d, d, 1, host)
    assert forward.splits == backward.splits == 1, "N=197 at B=256, H=6 runs one program per sequence"
    # the benchmark's views of a fused (B, N, 3, H, D) qkv and (B, N, H, D) gradients: every batch, token and head
    # stride divides by 16, and so does the padded state stride
    divisible = stride_arguments([la._linear_attention_fwd_kernel, la._linear_attention_bwd_kernel],
                                 r"s[a-z]+_[bnh]|state_stride")
    assert la_heuristics.state_size(1, d, d) % 16 == 0
    return [
        ("la fwd", la._linear_attention_fwd_kernel,
         dict(common, DO_STATE=True, DO_OUTPUT=True, STORE_STATE=True, ATOMIC=False, NEED_Z=True, NEED_U=False,
              BLOCK_N=forward.block_n), forward.num_warps, forward.num_stages, divisible),
        ("la bwd", la._linear_attention_bwd_kernel,
         dict(common, DO_Q=True, DO_KV=True, NEED_DC=False, ROW_SCALED=True, BLOCK_N=backward.block_n),
         backward.num_warps, backward.num_stages, divisible),
    ]


def shell_kernels() -> list[tuple]:
    """The kernels around the cores at the tiny models' sizes and their heuristics' launch settings: (label, kernel,
    constexprs, warps, stages, divisible, fp32 pointers)."""
    fe = importlib.import_module("vitzoo.ops.free_energy.kernels")
    fe_h = importlib.import_module("vitzoo.ops.free_energy.heuristics")
    ssm = importlib.import_module("vitzoo.ops.ssm_kernel.kernels")
    ssm_h = importlib.import_module("vitzoo.ops.ssm_kernel.heuristics")
    norm = importlib.import_module("vitzoo.ops.layer_norm.kernels")
    norm_h = importlib.import_module("vitzoo.ops.layer_norm.heuristics")
    conv = importlib.import_module("vitzoo.ops.local_conv.kernels")
    conv_h = importlib.import_module("vitzoo.ops.local_conv.heuristics")
    toep = importlib.import_module("vitzoo.ops.toeplitz_attention.kernels")
    toep_h = importlib.import_module("vitzoo.ops.toeplitz_attention.heuristics")
    # a bf16 FEM: values, reads, projections and gate logits bf16; M, beta and beta's partial gradients fp32
    fem_fp32 = {"shift_ptr", "beta_ptr", "dbeta_ptr"}
    values = dict(BLOCK_N=fe_h.BLOCK_T, BLOCK_D=fe_h.block_d(32))
    mix = dict(BLOCK_T=fe_h.BLOCK_T, BLOCK_D=fe_h.block_d(32))
    ssm_meta = dict(BLOCK_M=ssm_h.block_m(32), BLOCK_L=ssm_h.BLOCK_L)
    ssm_fp32 = {name for name in inspect.signature(ssm._ssm_kernels_bwd_kernel.fn).parameters if name.endswith("_ptr")}
    entries = [
        *[(f"FEM values fwd stage {stage}", fe._free_energy_values_fwd_kernel, dict(values, STAGE=stage, BLOCK_S=64),
           fe_h.VALUES_NUM_WARPS, fem_fp32 | {"part_ptr"}) for stage in range(3)],
        ("FEM values bwd", fe._free_energy_values_bwd_kernel, values, fe_h.VALUES_NUM_WARPS, fem_fp32),
        ("FEM output fwd", fe._free_energy_mix_fwd_kernel, mix, fe_h.MIX_NUM_WARPS, fem_fp32),
        ("FEM output bwd", fe._free_energy_mix_bwd_kernel, mix, fe_h.MIX_NUM_WARPS, fem_fp32),
        ("SSM kernels fwd", ssm._ssm_kernels_fwd_kernel, ssm_meta, ssm_h.NUM_WARPS, ssm_fp32),
        ("SSM Toeplitz lags fwd", ssm._ssm_lags_fwd_kernel, dict(ssm_meta, HAS_SKIP=True), ssm_h.NUM_WARPS,
         ssm_fp32 | {"skip_ptr", "out_ptr"}),
        ("SSM kernels bwd", ssm._ssm_kernels_bwd_kernel, dict(ssm_meta, LAGS=False), ssm_h.NUM_WARPS, ssm_fp32),
        ("SSM lags bwd", ssm._ssm_kernels_bwd_kernel, dict(ssm_meta, LAGS=True), ssm_h.NUM_WARPS, ssm_fp32),
    ]
    for width, gate, add, label in ((192, False, False, "layer norm 192"), (192, False, True, "add + layer norm 192"),
                                    (64, True, False, "gated RMS norm 64")):
        meta = dict(HAS_WEIGHT=True, HAS_BIAS=not gate, RMS=gate, GATE=gate, ADD=add, BLOCK_M=norm_h.block_m(width),
                    BLOCK_N=norm_h.block_n(width))
        fp32 = {"w_ptr", "b_ptr", "mean_ptr", "rstd_ptr", "dw_ptr", "db_ptr"}
        entries += [(f"{label} fwd", norm._norm_fwd_kernel, dict(meta, SAVE_STATS=True), norm_h.num_warps(width),
                     fp32),
                    (f"{label} bwd", norm._norm_bwd_kernel, meta, norm_h.num_warps(width), fp32)]
    # DeltaNet-T's convolution at 224 px: a 14 x 14 grid, 576 channels
    conv_fwd = dict(K=3, ROWS=conv_h.rows(14), BLOCK_W=conv_h.block_w(14), BLOCK_C=conv_h.block_c(576))
    for act, flip in ((0, False), (1, False), (0, True)):  # the forward, the SiLU forward, dx
        entries.append((f"local conv 576 act {act}{' flip' if flip else ''}", conv._local_conv_fwd_kernel,
                        dict(conv_fwd, HAS_BIAS=False, HAS_RESIDUAL=False, PREFIX=1, ACT=act, FLIP=flip),
                        conv_h.NUM_WARPS, {"w_ptr", "bias_ptr"}))
    entries.append(("local conv 576 dw", conv._local_conv_dw_kernel,
                    dict(K=3, BLOCK_P=conv_h.DW_BLOCK_P, BLOCK_C=conv_h.block_c(576)), conv_h.DW_NUM_WARPS,
                    {"part_ptr"}))
    # InLine-T's predictor: 6 groups of 32 channels, fp32 weights, sums and gradients, bf16 tokens and their gradient
    pred = importlib.import_module("vitzoo.ops.kernel_predictor.kernels")
    pred_h = importlib.import_module("vitzoo.ops.kernel_predictor.heuristics")
    pred_meta = dict(BLOCK_B=pred_h.MLP_BLOCK_B, BLOCK_D=pred_h.block_width(32), BLOCK_J=pred_h.MLP_BLOCK_J)
    for name, warps in (("mlp", pred_h.NUM_WARPS), ("bwd", pred_h.BWD_NUM_WARPS)):
        kernel = getattr(pred, f"_predictor_{name}_kernel")
        fp32 = {p for p in inspect.signature(kernel.fn).parameters if p.endswith("_ptr") and p != "dx_ptr"}
        entries.append((f"InLine predictor {name}", kernel, pred_meta, warps, fp32))
    # ZeroS-T's weightings: bf16 u and gate logits of head dim 64, fp32 weights, logits, statistics and partials; the
    # forward in one program per sequence (stage 0) and split over token chunks (stages 1-3)
    zw = importlib.import_module("vitzoo.ops.zeros_weights.kernels")
    zw_h = importlib.import_module("vitzoo.ops.zeros_weights.heuristics")
    zw_fp32 = {"mu_ptr", "log_tau_ptr", "kw_ptr", "qw_ptr", "s_ptr", "stats_ptr", "ubar_ptr", "part_ptr"}
    for stage in range(4):
        entries.append((f"ZeroS weights fwd stage {stage}", zw._zeros_weights_fwd_kernel,
                        dict(STAGE=stage, ZERO_ORDER=False, BLOCK_N=zw_h.BLOCK_N, BLOCK_D=zw_h.block_d(64)),
                        zw_h.NUM_WARPS, zw_fp32))
    # H3-T: bf16 q, k, v of head dim 64, fp32 lags
    toep_meta = dict(DK=64, DV=64, BLOCK_DK=toep_h.block_d(64), BLOCK_DV=toep_h.block_d(64), BLOCK_T=toep_h.BLOCK_T,
                     BLOCK_S=toep_h.BLOCK_S, PREC="native")
    for name in ("fwd", "dkdv", "dlags"):  # dq is the forward kernel on (do, v, k)
        entries.append((f"Toeplitz attention d 64 {name}", getattr(toep, f"_toeplitz_attention_{name}_kernel"),
                        toep_meta, toep_h.NUM_WARPS, {"lags_ptr", "dlags_ptr"}))
    # at the tiny models' widths every batch, token and head stride divides by 16 (FEM-T's 480-wide projections,
    # 192-wide reads and gates; DeiT-T's 192 and DeltaNet's 576 channels), as do the norms' and convolution's rows
    kernels = [kernel for _, kernel, *_ in entries]
    divisible = stride_arguments(kernels, r"s[a-z]+_[bnhm]")
    return [(label, kernel, meta, warps, 3, divisible, frozenset(fp32)) for label, kernel, meta, warps, fp32 in entries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=dr.heuristics.DEFAULT_LAUNCH.chunk, help="delta-rule chunk")
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--maxnreg", type=int, default=None, help="cap on registers per thread")
    parser.add_argument("--family", nargs="+", choices=["delta", "linear", "shell"],
                        default=["delta", "linear", "shell"])
    args = parser.parse_args()
    kernels = []
    for d in args.head_dim:
        if "delta" in args.family:
            kernels += [(f"chunk {args.chunk} d {d:>3} {name}", *rest, FP32_POINTERS)
                        for name, *rest in delta_rule_kernels(args.chunk, d)]
        if "linear" in args.family:
            kernels += [(f"d {d:>3} {name}", *rest, FP32_POINTERS) for name, *rest in linear_attention_kernels(d)]
    if "shell" in args.family:
        kernels += shell_kernels()
    for label, kernel, constexprs, warps, stages, divisible, fp32_pointers in kernels:
        r = resources(kernel, constexprs, warps, stages, args.maxnreg, divisible, fp32_pointers)
        print(f"{label:>26} ({warps} warps, {stages} stages): {r['registers']:>3} registers, "
              f"{r['spill_bytes']:>5} B spilled, {r['shared_bytes']:>6} B shared", flush=True)


if __name__ == "__main__":
    main()
