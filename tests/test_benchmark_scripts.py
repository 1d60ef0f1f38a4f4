"""Every benchmark script still starts: its imports resolve against the package as it is, and its arguments parse.

The benchmarks run only on the GPU machine, so nothing else on CI imports them; a renamed helper would otherwise
surface there, in device time.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from tiny_runs import write_image_folder

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.ops.utils import interpreting
from vitzoo.train.pack import pack_image_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_script_starts(script: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    # Run as __main__ in this process, as `python benchmarks/<script>` would (its folder first on sys.path, for the
    # scripts that import a sibling), since a process per script would import torch again for each. What a script
    # changes as it starts (sys.path, TRITON_INTERPRET, the siblings it imported) is undone afterwards.
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])
    environment, modules = dict(os.environ), set(sys.modules)
    try:
        with pytest.raises(SystemExit) as stopped:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        os.environ.clear()
        os.environ.update(environment)
        for name in set(sys.modules) - modules:
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == script.parent:
                del sys.modules[name]
    assert stopped.value.code in (0, None), capsys.readouterr().err.strip().splitlines()[-1:]
    assert "usage" in capsys.readouterr().out.lower()


_WORKER_DECODE_STAGES = ["read + decode", "RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                         "MaybePILToTensor", "DeviceAugment"]
# decode_on_device: the workers read the bytes and draw the crop; the device stage is timed after decoding
_DEVICE_DECODE_STAGES = ["read + check", "EncodedRandomResizedCrop", "DeviceAugment"]
_DEVICE_CROP_STAGES = ["read + decode", "PixelRandomResizedCrop", "DeviceAugment"]
_JPEG_LOADER = "JPEG bytes and crop draws, decoded on the device"
_PIXEL_LOADER = "decoded pixels and crop draws, cropped on the device"


@pytest.mark.parametrize(("overrides", "stages", "outputs"), [
    ((), _WORKER_DECODE_STAGES, ["float32", "uint8", "uint8, RandAugment on the device", _JPEG_LOADER,
                                 _PIXEL_LOADER]),
    (("augment_on_device=true", "decode_on_device=true"), _DEVICE_DECODE_STAGES,
     ["float32", "uint8", _JPEG_LOADER, _PIXEL_LOADER]),
    (("augment_on_device=true", "crop_on_device=true"), _DEVICE_CROP_STAGES,
     ["float32", "uint8", _JPEG_LOADER, _PIXEL_LOADER]),
    # with a packed store of the folder: its loader too
    (("--packed", "augment_on_device=true", "crop_on_device=true"), _DEVICE_CROP_STAGES,
     ["float32", "uint8", _JPEG_LOADER, _PIXEL_LOADER, "packed pixels and crop draws, cropped on the device"]),
    # no RandAugment: the JPEG loader must not switch augment_on_device on (it would look for a policy to move)
    (("auto_augment=null", "color_jitter=0", "decode_on_device=true"), _DEVICE_DECODE_STAGES,
     ["float32", "uint8", _JPEG_LOADER, _PIXEL_LOADER]),
], ids=["workers_decode", "decode_on_device", "crop_on_device", "packed", "decode_on_device_no_rand_augment"])
def test_data_pipeline_times_every_placement_of_the_augmentation(tmp_path: Path, overrides: tuple[str, ...],
                                                                 stages: list[str], outputs: list[str]):
    """On a tiny folder: the stage costs of the config's own pipeline, a loader rate for float32, uint8, uint8 with
    RandAugment on the device (whose workers no longer run RandAugment; only where the config runs it in the
    workers), JPEG bytes (decode_on_device), decoded pixels (crop_on_device) and with --packed the pixels of a packed
    store, and the device decoding's cost."""
    data = write_image_folder(tmp_path / "images", train_per_class=6)
    packed = []
    if overrides[:1] == ("--packed",):
        pack_image_folder(data, tmp_path / "store", workers=0, progress=False)
        packed, overrides = ["--packed", str(tmp_path / "store")], overrides[1:]
    out = tmp_path / "pipeline.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--config",
                           str(ROOT / "configs" / "fashion_imagenet" / "softmax.yaml"), "--data-dir", str(data),
                           "--images", "4", "--workers", "1", "--batches", "2", *packed, "--out", str(out),
                           "batch_size=2", "img_size=32", *overrides], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert list(result["stages_ms_per_image"]) == stages
    assert result["stages_ms_per_image"]["DeviceAugment"] > 0 and result["img_per_s_per_core"] > 0
    assert [row["output"] for row in result["loaders"]] == outputs
    assert all(row["img_per_s"] > 0 for row in result["loaders"])
    assert result["device_decode"]["device"] == "cpu" and result["device_decode"]["ms_per_image"] > 0


def _benchmark_module(name: str):
    """benchmarks/<name>.py imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_counts_kernel_path_counts_stubbed_launches_and_restores_the_kernels():
    """The CUDA path's count: every Triton launch is counted (none runs), and the kernels are back afterwards."""
    if not interpreting():
        pytest.skip("the ops take their Triton branch on the CPU only under TRITON_INTERPRET=1")
    op_counts = _benchmark_module("op_counts")
    function = importlib.import_module("vitzoo.ops.free_energy.function")
    kernel = function._free_energy_mix_fwd_kernel
    launches: list[int] = []
    model = timm.create_model("fem_deit_tiny_patch16_224", img_size=32, depth=2).eval()
    with op_counts.stubbed_kernels(launches):
        assert isinstance(function._free_energy_mix_fwd_kernel, op_counts._StubKernel)
        with torch.inference_mode():
            total = op_counts.count(lambda: model(torch.randn(1, 3, 32, 32)), launches)
    # per block: two norms, the linear prior and FEM's two ops; plus the final norm
    assert len(launches) == 2 * 5 + 1
    assert total > len(launches)
    assert function._free_energy_mix_fwd_kernel is kernel


def test_op_counts_stubs_the_kernels_an_op_launches_from_a_tuple():
    """The delta rule's training forward launches its three kernels from a module-level tuple: those are stubbed and
    counted too (run instead, they took minutes in the interpreter and their argument copies counted as ops)."""
    if not interpreting():
        pytest.skip("the ops take their Triton branch on the CPU only under TRITON_INTERPRET=1")
    op_counts = _benchmark_module("op_counts")
    function = importlib.import_module("vitzoo.ops.delta_rule.function")
    kernels = function._THREE_KERNELS
    launches: list[int] = []
    model = timm.create_model("deltanet_deit_tiny_patch16_224", img_size=32, depth=1).train()
    with op_counts.stubbed_kernels(launches):
        assert all(isinstance(kernel, op_counts._StubKernel) for kernel in function._THREE_KERNELS)
        op_counts.count(lambda: model(torch.randn(1, 3, 32, 32)), launches)
    # norm1, the short convolution, the delta rule's three kernels, the gated norm, norm2 with its add, the final norm
    assert len(launches) == 8
    assert function._THREE_KERNELS is kernels


# A stand-in for the official InLine checkout: a models/inline_deit.py whose VisionTransformer takes the official
# constructor's arguments and which registers an entry point of its own at import, as the official file does.
_STAND_IN = '''
import torch
from timm.models import register_model


class VisionTransformer(torch.nn.Module):
    def __init__(self, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.img_size = img_size  # the official position embedding fixes it
        self.patch_embed = torch.nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.head = torch.nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        if x.shape[-1] != self.img_size:
            raise ValueError(f"built for {self.img_size} px, got {x.shape[-1]}")
        return self.head(self.patch_embed(x).mean((2, 3)))


@register_model
def stand_in_inline_deit_tiny(pretrained=False, **kwargs):
    return VisionTransformer(embed_dim=192, num_heads=6, **kwargs)
'''


def test_official_speed_measures_the_official_model_beside_the_zoo_group(tmp_path: Path):
    (tmp_path / "repo" / "models").mkdir(parents=True)
    (tmp_path / "repo" / "models" / "inline_deit.py").write_text(_STAND_IN)
    out = tmp_path / "official.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = [sys.executable, str(ROOT / "benchmarks" / "official_speed.py")]
    done = subprocess.run([*script, "--inline-repo", str(tmp_path / "repo"), "--sizes", "tiny", "--img-sizes", "32",
                           "--device", "cpu", "--repeats", "1", "--warm-steps", "1", "--timed-steps", "1",
                           "--batch-size", "2", "--results-file", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(row["model"], row["role"], row["status"]) for row in result["rows"]] == [
        ("inline_deit_tiny_patch16_224", "zoo", "ok"), ("official_inline_deit_tiny", "official", "ok"),
        ("softmax_deit_tiny_patch16_224", "twin", "ok"), ("deit_tiny_patch16_224", "timm", "ok")]
    assert result["rows"][0]["official_model"] == "official_inline_deit_tiny"
    assert all(row["img_per_s"] > 0 and row["img_size"] == 32 for row in result["rows"])
    _assert_official_speed_refuses(["--inline-repo", str(tmp_path / "nope")],
                                   "inline_deit.py does not exist; --inline-repo takes a checkout")


# A stand-in for the official QT-ViT checkout: an efficientvit package whose classifiers module imports a training-only
# package at module level, as the official one does through its trainer.
_QTVIT_STAND_IN = '''
import torch
import torchpack.distributed as dist  # not installed here: the benchmark stands in for it


def efficientvit_cls_b1(n_classes=1000):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, 8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, n_classes))
'''


def test_official_speed_measures_the_official_qtvit_beside_the_zoo_model(tmp_path: Path):
    package = tmp_path / "repo" / "efficientvit" / "models" / "efficientvit"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "cls.py").write_text(_QTVIT_STAND_IN)
    out = tmp_path / "official.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = [sys.executable, str(ROOT / "benchmarks" / "official_speed.py")]
    done = subprocess.run([*script, "--qtvit-repo", str(tmp_path / "repo"), "--qtvit-models", "qtvit_1",
                           "--img-sizes", "32", "--device", "cpu", "--repeats", "1", "--warm-steps", "1",
                           "--timed-steps", "1", "--batch-size", "2", "--results-file", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(row["model"], row["role"], row["status"]) for row in result["rows"]] == [
        ("qtvit_1", "zoo", "ok"), ("official_qtvit_1", "official", "ok"), ("efficientvit_b1", "timm", "ok")]
    assert result["rows"][0]["official_model"] == "official_qtvit_1"
    assert result["info"]["official"] == ["official_qtvit_1"]
    _assert_official_speed_refuses(["--qtvit-repo", str(tmp_path / "nope")],
                                   "--qtvit-repo takes a checkout of the official QT-ViT code")
    _assert_official_speed_refuses([], "pass --inline-repo, --qtvit-repo or both")


def _assert_official_speed_refuses(argv: list[str], message: str) -> None:
    """official_speed.py stops with status 2 and ``message`` on stderr, before it registers or builds a model."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stderr(stderr):
        _benchmark_module("official_speed").main(argv)
    assert stopped.value.code == 2 and message in stderr.getvalue()


class _HalfOnlyAttention(torch.nn.Module):
    """The official QT-ViT attention's dtype rule: a float16 qkv is cast to float32, any other is taken as it is and
    must then be float32 to meet the float32 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def relu_linear_att(self, qkv: torch.Tensor) -> torch.Tensor:
        if qkv.dtype == torch.float16:
            qkv = qkv.float()
        if qkv.dtype != self.scale.dtype:
            raise RuntimeError(f"expected scalar type Float but found {qkv.dtype}")
        return qkv * self.scale


def test_official_qtvit_attention_takes_bfloat16_as_its_code_takes_float16():
    official_speed = _benchmark_module("official_speed")
    model = torch.nn.Sequential(_HalfOnlyAttention())
    qkv = torch.randn(2, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="expected scalar type Float"):
        model[0].relu_linear_att(qkv)
    official_speed.float_attention_input(model)
    out = model[0].relu_linear_att(qkv)
    assert out.dtype == torch.float32 and torch.equal(out, qkv.float())
    assert model[0].relu_linear_att(qkv.half()).dtype == torch.float32


class _Range:
    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def elapsed_us(self) -> float:
        return self.end - self.start


class _Event:
    """What profile_training reads of a torch.profiler event: name, device type, time range (us), device time."""

    def __init__(self, name: str, start: float, end: float, device_us: float = 0.0, kernel: bool = False,
                 annotation: bool = False, thread: int = 1) -> None:
        self.name, self.time_range, self.device_time_total = name, _Range(start, end), device_us
        self.thread = thread
        self.device_type = "DeviceType.CUDA" if kernel or annotation else "DeviceType.CPU"
        self.is_user_annotation = annotation


def test_profile_training_counts_stages_and_busy_time_between_the_first_and_last_step():
    """Three updates between the first and the last step range (at 0, 10, 20 and 30 ms): ranges and kernels are
    counted by their start inside [0, 30); overlapping kernels count once in the busy time."""
    summarise = _benchmark_module("profile_training").summarise
    ms = 1000.0
    events = [_Event("vitzoo.step", t * ms, (t + 6) * ms, device_us=4 * ms) for t in (0, 10, 20, 30)]
    events += [_Event("vitzoo.augment", (t - 3) * ms, (t - 1) * ms, device_us=1 * ms) for t in (10, 20, 30, 40)]
    events += [_Event("vitzoo.decode", 2 * ms, 5 * ms, thread=2)]
    events += [_Event("gemm", 1 * ms, 5 * ms, kernel=True), _Event("gemm", 3 * ms, 8 * ms, kernel=True),
               _Event("erase", 12 * ms, 14 * ms, kernel=True), _Event("gemm", 31 * ms, 39 * ms, kernel=True)]
    # each range's annotation on the GPU's timeline is neither a range of the host nor a kernel
    events += [_Event("vitzoo.step", t * ms, (t + 9) * ms, annotation=True) for t in (0, 10, 20)]
    summary = summarise(events, batch=100)
    assert summary["updates"] == 3 and summary["wall_ms"] == 10.0 and summary["img_per_s_from_wall"] == 10000.0
    assert summary["stages"]["step"] == {"ranges": 3, "host_ms": 6.0, "device_ms": 4.0}
    # augment ranges start at 7, 17, 27 and 37 ms: the last one is outside
    assert summary["stages"]["augment"] == {"ranges": 3, "host_ms": 2.0, "device_ms": 1.0}
    assert summary["stages"]["decode"]["ranges"] == 1
    assert summary["loop_other_ms"] == 2.0
    # the device stage in a thread of its own: the training thread's time is its steps only
    moved = [_Event(e.name, e.time_range.start, e.time_range.end, e.device_time_total, thread=2)
             if e.name == "vitzoo.augment" else e for e in events]
    assert summarise(moved, batch=100)["loop_other_ms"] == 4.0
    assert summary["device_busy_ms"] == 3.0 and summary["device_kernel_ms"] == round(11 / 3, 3)
    assert summary["launches"] == 1.0
    assert [k["name"] for k in summary["kernels"]] == ["gemm", "erase"] and summary["kernels"][0]["calls"] == 0.67
    with pytest.raises(ValueError, match="at least 3 updates"):
        summarise(events[:2], batch=100)


def _profile_tiny_decoding_run(tmp_path: Path, *overrides: str) -> dict:
    """profile_training.py's entry for a tiny JPEG run with decoding and RandAugment on the device."""
    data = write_image_folder(tmp_path / "images", train_per_class=16, suffix=".jpg")
    out = tmp_path / "profile.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_training.py"), "--data-dir", str(data), "--warm", "2",
         "--steps", "5", "--out", str(out), "model=softmax_deit_tiny_patch16_224", "img_size=16", "patch_size=8",
         "model_kwargs={embed_dim: 16, depth: 1, num_heads: 2}", "workers=1", "batch_size=4", "epochs=3",
         "warmup_epochs=0", "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true", "decode_on_device=true",
         *overrides], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert list(run["profile"]["stages"]) == ["load", "decode", "augment", "step"]
    assert run["model"] == "softmax_deit_tiny_patch16_224" and run["profile"]["config"]["decode_on_device"] is True
    assert run["profile"]["updates"] >= 3 and run["profile"]["wall_ms"] > 0
    stages, updates = run["profile"]["stages"], run["profile"]["updates"]
    assert stages["step"]["ranges"] == updates
    # Decoding and augmenting run ahead in threads of their own, chained: batch j's augmenting starts between step
    # j - 1's start and step j's, its decoding between step j - 2's start and step j's. So a window of n steps holds
    # the starts of n - 1 to n + 1 augment ranges and n - 2 to n + 2 decode ranges, depending on where those threads
    # are when it opens and closes (n - 2 decodes: two batches decoded ahead when it opens, none when it closes at the
    # end of an epoch).
    for name, most_ahead in (("decode", 2), ("augment", 1)):
        assert -most_ahead <= stages[name]["ranges"] - updates <= most_ahead, (name, stages[name]["ranges"], updates)
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU run's profile (the run would use the GPU: the next test)")
def test_profile_training_profiles_each_stage_of_a_decoding_run(tmp_path: Path):
    """On the CPU: every stage's ranges, once per update, with their host time; no device time; the timeline of the
    profiled updates as a gzipped Chrome trace."""
    import gzip

    trace = tmp_path / "trace.json.gz"
    run = _profile_tiny_decoding_run(tmp_path, "precision=fp32", "--trace", str(trace))
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert sum(event.get("name") == "vitzoo.step" for event in events) >= run["profile"]["updates"]
    profile = run["profile"]
    assert all(stage["host_ms"] > 0 and stage["device_ms"] == 0 for stage in profile["stages"].values())
    assert profile["device_busy_ms"] == 0 and profile["kernels"] == []
    assert run["info"]["device"] == "CPU" and "decode_on_device=true" in run["info"]["command"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (device time, nvJPEG, CUDA graphs)")
def test_profile_training_attributes_device_time_to_each_stage_of_a_graphed_gpu_run(tmp_path: Path):
    """On a GPU with graphed steps: the replayed forward and backward's kernels count in the step's device time,
    RandAugment's and erasing's in the device stage's, nvJPEG's in the decoding's, and the GPU's busy time is at
    most the summed kernel time."""
    profile = _profile_tiny_decoding_run(tmp_path, "precision=bf16", "cuda_graph=true", "re_prob=0.25")["profile"]
    stages = profile["stages"]
    assert stages["step"]["device_ms"] > 0 and stages["augment"]["device_ms"] > 0
    assert stages["decode"]["device_ms"] > 0
    assert 0 < profile["device_busy_ms"] <= profile["device_kernel_ms"] + 1e-3
    assert profile["launches"] > 0 and profile["kernels"]


def test_profile_training_reports_a_bad_config_in_one_line(tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_training.py"), "--data-dir",
                           str(tmp_path), "--out", str(tmp_path / "p.json"), "--", "workers=-1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "workers" in done.stderr.strip().splitlines()[-1] and not (tmp_path / "p.json").exists()


def test_profile_training_results_keep_one_run_per_config_model_and_overrides(tmp_path: Path):
    module = _benchmark_module("profile_training")
    out = tmp_path / "profile.json"

    def merged(path: Path, new: dict) -> dict:
        return module.merge_run(path, new, module.RUN_KEY)

    def run(model: str, overrides: list[str], wall: float) -> dict:
        return {"config_file": "c.yaml", "model": model, "overrides": overrides, "profile": {"wall_ms": wall}}

    out.write_text(json.dumps(merged(out, run("a", ["workers=4"], 1.0))))
    out.write_text(json.dumps(merged(out, run("b", ["workers=4"], 2.0))))
    out.write_text(json.dumps(merged(out, run("a", ["workers=8"], 3.0))))
    out.write_text(json.dumps(merged(out, run("a", ["workers=4"], 4.0))))
    runs = json.loads(out.read_text())["runs"]
    assert [(r["model"], r["overrides"], r["profile"]["wall_ms"]) for r in runs] == [
        ("b", ["workers=4"], 2.0), ("a", ["workers=8"], 3.0), ("a", ["workers=4"], 4.0)]


def test_sample_training_summarises_each_threads_frames_gil_and_waits(tmp_path: Path):
    """Per thread: its samples, the share of the ticks it held the GIL, its frames by the share of its samples that
    have them on the stack (without the frames on every sample); a thread that sat in one frame is listed apart."""
    module = _benchmark_module("sample_training")
    idle = tmp_path / "idle.txt"
    idle.write_text("thread (7): MainThread;<module> (train.py:5);step (loop.py:10);draw (aug.py:3) 30\n"
                    "thread (7): MainThread;<module> (train.py:5);step (loop.py:10);backward (loop.py:12) 50\n"
                    "thread (7): MainThread;<module> (train.py:5);log (loop.py:20);log (loop.py:20) 20\n"
                    "thread (9): pin;run (threading.py:1);select (selectors.py:415) 99\n"
                    "thread (9): pin;run (threading.py:1);pin (pin_memory.py:60) 1\n"
                    "thread (11): QueueFeederThread;wait (threading.py:355) 100\n"
                    "thread (12): QueueFeederThread;wait (threading.py:355) 100\n")
    gil = tmp_path / "gil.txt"
    gil.write_text("thread (7): MainThread;<module> (train.py:5);step (loop.py:10);draw (aug.py:3) 30\n"
                   "thread (9): pin;run (threading.py:1);pin (pin_memory.py:60) 2\n")
    summary = module.summarise(module.read_raw(idle), module.read_raw(gil), ticks=200, top=4)
    main = summary["threads"]["MainThread"]
    assert main["samples"] == 100 and main["gil_percent"] == 15.0
    assert main["frames"] == [{"frame": "step (loop.py:10)", "percent": 80.0},
                              {"frame": "backward (loop.py:12)", "percent": 50.0},
                              {"frame": "draw (aug.py:3)", "percent": 30.0},
                              {"frame": "log (loop.py:20)", "percent": 20.0}]  # a recursive frame counts once
    # 99% in one frame, but it held the GIL: not a waiting thread
    assert summary["threads"]["pin"]["gil_percent"] == 1.0
    assert summary["waiting_threads"] == {"QueueFeederThread": "wait (threading.py:355)"}


def _py_spy_can_attach() -> str | None:
    """Why py-spy cannot sample a process here, or None if it can."""
    py_spy = _benchmark_module("sample_training").find_py_spy()
    if py_spy is None:
        return "py-spy is not installed"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        done = subprocess.run([py_spy, "dump", "--pid", str(child.pid)], capture_output=True, text=True, timeout=60)
        return None if done.returncode == 0 else f"py-spy cannot attach here: {done.stderr.strip()[:200]}"
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_sample_training_samples_a_running_training_and_stops_it(tmp_path: Path):
    """A tiny CPU run, sampled after its first epoch: the main thread's training loop is in its frames, and the run
    is stopped afterwards (no process left behind)."""
    reason = _py_spy_can_attach()
    if reason:
        pytest.skip(reason)
    data = write_image_folder(tmp_path / "images", train_per_class=16)
    out = tmp_path / "samples.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sample_training.py"), "--data-dir", str(data), "--out", str(out),
         "--seconds", "1", "--rate", "50", "model=softmax_deit_tiny_patch16_224", "img_size=16", "patch_size=8",
         "model_kwargs={embed_dim: 16, depth: 1, num_heads: 2}", "workers=1", "batch_size=4", "warmup_epochs=0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    main = run["threads"]["MainThread"]
    assert main["samples"] > 0 and 0 <= main["gil_percent"] <= 100
    assert any("train_one_epoch" in frame["frame"] for frame in main["frames"])
    assert run["sampling"] == {"rate_hz": 50, "seconds": 1, "after_epochs": 1, "native": False}
    assert run["model"] == "softmax_deit_tiny_patch16_224" and run["info"]["git_revision"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU machine's answer (on a GPU the script runs the tests)")
def test_gpu_tests_script_says_what_to_run_on_a_machine_without_a_gpu():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_tests.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "sees no CUDA GPU; on a CPU machine run bash scripts/test.sh" in done.stderr
