"""End-to-end tests of vitzoo-train / vitzoo-eval on CPU, each through the real command line in a subprocess.

Every run uses a tiny DeiT-shaped model (width 32, depth 1, patch 7 on 28x28 Fashion-MNIST or patch 8 on 32x32 PNGs),
fp32 and no loader workers unless a test needs them, so the whole file stays within about three minutes on 2 cores.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitzoo.train.data import FASHION_MNIST_DIR, FashionMNIST
from vitzoo.train.evaluate import RESULT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
MODEL = "softmax_deit_tiny_patch16_224"
TINY = ["model_kwargs={embed_dim: 32, depth: 1, num_heads: 2}", "precision=fp32", "progress=false",
        "warmup_epochs=0", "lr=0.001"]
FASHION = ["dataset=fashion_mnist", "img_size=28", "patch_size=7", "val_subset=200"]

needs_fashion_mnist = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                                         reason="Fashion-MNIST idx files not installed (dataset-fashion-mnist)")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def _train(output: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "--model", MODEL, "--output", str(output), *TINY, *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=output.parent)


def _result(stdout: str) -> dict:
    lines = stdout.splitlines()
    return json.loads(lines[lines.index("--result") + 1])


def _weights(checkpoint: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / name))


def _latest(output: Path) -> Path:
    return sorted((output / "checkpoints").glob("step-*"))[-1]


@needs_fashion_mnist
@pytest.mark.parametrize("aug_repeats", [0, 3])
def test_two_processes_match_one(tmp_path: Path, aug_repeats: int) -> None:
    """torchrun with 2 gloo processes x batch 16 == 1 process x batch 32: same samples, same averaged gradients, same
    mean training loss; with repeated augmentation too (the copies' draws do not depend on the process layout).

    Tolerance: eval top-1/top-5 exactly equal, eval loss to 1e-5 relative, weights to 2e-4 absolute (all-reduce sums
    gradients in another order; AdamW's normalised update amplifies the last-bit differences of tiny gradients).
    """
    common = [*FASHION, "train_subset=256", "epochs=1", "workers=0", "mixup=0", "cutmix=0", "smoothing=0",
              "drop_path=0", f"aug_repeats={aug_repeats}"]
    single = _train(tmp_path / "one", *common, "batch_size=32")
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(ROOT / "train.py"), "--model", MODEL, "--output", str(tmp_path / "two"), *TINY, *common,
                "batch_size=16"]
    double = subprocess.run(torchrun, capture_output=True, text=True, env=_env(), timeout=180, cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _result(single.stdout), _result(double.stdout)
    assert one["num_updates"] == two["num_updates"] == 8
    assert one["eval_count"] == two["eval_count"] == 200
    assert (one["eval_top1"], one["eval_top5"]) == (two["eval_top1"], two["eval_top5"])
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    # The logged training loss is the mean over both processes' batches, not rank 0's half.
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    a, b = _weights(_latest(tmp_path / "one")), _weights(_latest(tmp_path / "two"))
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=0)
    meta = json.loads((_latest(tmp_path / "two") / "meta.json").read_text())
    assert meta["num_processes"] == 2


@needs_fashion_mnist
def test_sigkill_and_resume_reaches_same_weights(tmp_path: Path) -> None:
    """SIGKILL mid-run, ``--resume auto`` from a mid-epoch checkpoint: model and EMA weights are bit-identical to an
    uninterrupted run (with 2 loader workers, drop path, EMA and grad clipping on)."""
    common = [*FASHION, "train_subset=256", "batch_size=16", "epochs=4", "workers=2", "checkpoint_interval=4",
              "checkpoint_keep=50", "model_ema=true", "model_ema_decay=0.9", "drop_path=0.1", "clip_grad=1.0"]
    full = _train(tmp_path / "full", *common)
    assert full.returncode == 0, full.stderr[-3000:]

    output = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "train.py"), "--model", MODEL, "--output", str(output), *TINY, *common]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                               cwd=tmp_path)
    target = output / "checkpoints" / "step-00000012"  # mid-epoch: epoch 0 has 16 updates
    deadline = time.time() + 120
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert still_running, "the run ended before it could be killed"
    assert not (output / "checkpoints" / "step-00000064").exists()
    # As if the kill had come right after update 12: the resume must then start mid-epoch (skip_first_batches).
    for later in (output / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > 12:
            shutil.rmtree(later)

    resumed = _train(output, *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "(epoch 0, update 12)" in resumed.stdout
    final_full, final_resumed = _latest(tmp_path / "full"), _latest(output)
    assert final_full.name == final_resumed.name == "step-00000064"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = _weights(final_full, name), _weights(final_resumed, name)
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"


def _write_png_folder(root: Path, classes: int = 3, train_per_class: int = 12, val_per_class: int = 6) -> Path:
    from PIL import Image

    images = FashionMNIST(FASHION_MNIST_DIR, "train")
    picked = {c: (images.targets == c).nonzero().flatten().tolist() for c in range(classes)}
    for split, count, offset in (("train", train_per_class, 0), ("val", val_per_class, train_per_class)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in picked[c][offset: offset + count]:
                grey = Image.fromarray(images.images[i, 0].numpy(), mode="L")
                grey.resize((32, 32)).convert("RGB").save(folder / f"{i:05d}.png")
    bad = root / "train" / "class_0" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a PNG signature followed by garbage
    return bad


@needs_fashion_mnist
def test_image_folder_with_corrupt_file_trains_and_evaluates(tmp_path: Path) -> None:
    """Real PNGs through timm's transforms (RandAugment, random erasing, mixup); the corrupt file is named once."""
    data = tmp_path / "pngs"
    bad = _write_png_folder(data)
    output = tmp_path / "run"
    run = _train(output, "--data-dir", str(data), "img_size=32", "patch_size=8", "batch_size=8", "epochs=2",
                 "workers=2", "mixup=0.8", "cutmix=1.0", "model_ema=true")
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert result["eval_count"] == 18
    assert result["skipped_files"] == 1
    assert run.stderr.count(str(bad)) == 1, run.stderr[-3000:]
    assert "1 unreadable image file(s) skipped" in run.stderr
    events = [json.loads(line)["event"] for line in (output / "log.jsonl").read_text().splitlines()]
    assert events.count("eval") == 2

    results = tmp_path / "results.csv"
    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "--checkpoint", str(output), "--data-dir", str(data), "--use-ema",
         "--results-file", str(results), "--workers", "0"],
        capture_output=True, text=True, env=_env(), timeout=120, cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    with results.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == RESULT_COLUMNS
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["model"] == MODEL and row["img_size"] == "32" and row["kernel_backend"] == "reference"
    assert float(row["top1"]) + float(row["top1_err"]) == pytest.approx(100.0)
    assert row["checkpoint"].endswith(":ema") and float(row["gmacs"]) > 0


@needs_fashion_mnist
def test_eval_csv_columns_for_model_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """eval on a model name (random init) writes timm's 9 columns, then ours, in that exact order (in-process)."""
    from vitzoo.train.cli import eval_main

    results = tmp_path / "fm.csv"
    argv = ["--model", MODEL, "--dataset", "fashion_mnist", "--img-size", "28", "--patch-size", "7", "--model-kwargs",
            "{embed_dim: 32, depth: 1, num_heads: 2}", "--val-subset", "100", "--results-file", str(results),
            "--workers", "0", "--no-macs"]
    for _ in range(2):  # the second run appends a row under the same header
        eval_main(argv)
    lines = results.read_text().splitlines()
    assert lines[0] == ("model,top1,top1_err,top5,top5_err,param_count,img_size,crop_pct,interpolation,"
                        "dataset,checkpoint,gmacs,kernel_backend")
    assert len(lines) == 3 and lines[1].startswith(MODEL + ",")
    assert _result(capsys.readouterr().out)["count"] == 100


@pytest.mark.parametrize(("args", "expected"), [
    (["--dataset", "fashion_mnist", "nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["--data-dir", "/nonexistent/imagenet"], "/nonexistent/imagenet/train does not exist"),
    (["--dataset", "fashion_mnist", "--model", "nosuch_deit_tiny"], "unknown model 'nosuch_deit_tiny'"),
    (["--config", "configs/nosuch.yaml"], "config file configs/nosuch.yaml does not exist"),
    (["--dataset", "fashion_mnist", "compile=fast"], "compile must be one of default, reduce-overhead"),
    (["--dataset", "fashion_mnist", "cuda_graph=true", "compile=default"], "cuda_graph and compile='default' both"),
    (["--dataset", "fashion_mnist", "decode_on_device=true"], "decode_on_device crops image folders' images"),
    (["--dataset", "fashion_mnist", "crop_on_device=true"], "crop_on_device crops image folders' images"),
    (["--data-dir", "/nonexistent/imagenet", "crop_on_device=true"], "set augment_on_device=true too"),
    (["--data-dir", "/nonexistent/imagenet", "crop_on_device=true", "decode_on_device=true"],
     "decode_on_device crops on the device already"),
    (["--data-dir", "/nonexistent/imagenet", "decode_on_device=true"], "set augment_on_device=true too"),
    (["--data-dir", "/nonexistent/imagenet", "decode_on_device=true", "auto_augment=null", "color_jitter=0.4"],
     "decode_on_device does not implement color_jitter"),
    pytest.param(["--dataset", "fashion_mnist", "cuda_graph=true"], "cuda_graph=true needs a single CUDA process",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only machine's error")),
])
@pytest.mark.usefixtures("fresh_accelerator_state")  # the cuda_graph case builds an Accelerator before it fails
def test_bad_input_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                       expected: str) -> None:
    """Bad key / missing dataset / unknown model / missing config: exit status 2 and one stderr line on what to fix.

    Runs ``train_main`` in-process (the same code path as the console script, without paying a 10 s interpreter
    start-up per case on a loaded 2-core machine).
    """
    from vitzoo.train.cli import train_main

    with pytest.raises(SystemExit) as exited:
        train_main(["--model", MODEL, "--output", str(tmp_path / "run"), *args])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expected in lines[0]
    if "config key" in expected:
        assert "valid keys:" in lines[0] and "batch_size" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path: Path) -> None:
    """Every shipped YAML uses valid keys and values, and its values are the config's (a given model overrides)."""
    from vitzoo.train.config import TrainConfig, load_config

    config = load_config(path, model="softmax_deit_tiny_patch16_224")
    for key, value in yaml.safe_load(path.read_text()).items():
        loaded = getattr(config, key)
        if isinstance(value, str) and isinstance(loaded, float):
            value = float(value)  # YAML 1.1 reads 5e-4 as a string; the config converts it
        assert key == "model" or loaded == value, key
    assert config.model == "softmax_deit_tiny_patch16_224" and config != TrainConfig(model=config.model)


def test_no_weight_decay_groups_and_optim_caps() -> None:
    """1-d params, biases and no_weight_decay() names get wd 0; an ``_optim`` lr is a cap."""
    import timm

    from vitzoo.train.factories import param_groups

    model = timm.create_model(MODEL, img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1,
                              num_heads=2)
    special = model.head.weight
    special._optim = {"weight_decay": 0.0, "lr": 1e-4}
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.pos_embed)]["weight_decay"] == 0.0
    assert by_id[id(model.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.blocks[0].mlp.fc1.weight)]["weight_decay"] == 0.05
    assert by_id[id(special)] == {"weight_decay": 0.0, "lr": 1e-4, "params": [special]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(("opt", "fused"), [("adamw", True), ("lookahead_adam", True), ("lamb", None)])
def test_fused_optimizers_where_torch_has_them(opt: str, fused: bool | None) -> None:
    """fused=True (train.py on a GPU) gives torch's fused AdamW / Adam, whose update equals the for-each one's; other
    optimizers are built as before (LAMB has no fused form: both requests build the same optimizer)."""
    from vitzoo.train.config import load_config
    from vitzoo.train.factories import build_optimizer

    config = load_config(None, [f"opt={opt}"], model=MODEL)
    steps = {}
    for request in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
        optimizer = build_optimizer(config, model, lr=1e-2, fused=request)
        inner = getattr(optimizer, "optimizer", getattr(optimizer, "base_optimizer", optimizer))
        assert inner.defaults.get("fused") == (fused if request else None)
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 5)).square().mean().backward()
            optimizer.step()
        steps[request] = torch.cat([p.detach().flatten() for p in model.parameters()])
    if fused:
        torch.testing.assert_close(steps[True], steps[False], rtol=1e-5, atol=1e-6)


def test_temporary_checkpoint_folders_are_ignored(tmp_path: Path) -> None:
    """Temporary checkpoint folders are never reported as checkpoints."""
    from vitzoo.train.checkpoint import list_checkpoints

    (tmp_path / "checkpoints" / ".tmp-step-00000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000002").mkdir()
    (tmp_path / "checkpoints" / "step-00000002" / "meta.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    shutil.rmtree(tmp_path / "checkpoints")
    assert list_checkpoints(tmp_path) == []


@needs_fashion_mnist
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss after update 4 stops the run with a message naming the checkpoint written at update 4."""
    from vitzoo.train import loop
    from vitzoo.train.config import load_config

    real_criterion = loop.build_criterion

    def poisoned_criterion(config):
        criterion, calls = real_criterion(config), []

        def loss(logits, targets):
            calls.append(1)
            value = criterion(logits, targets)
            return value * float("nan") if len(calls) > 4 else value

        return loss

    monkeypatch.setattr(loop, "build_criterion", poisoned_criterion)
    config = load_config(None, [*TINY, *FASHION, "train_subset=256", "batch_size=32", "checkpoint_interval=4",
                                "workers=0"], model=MODEL, output=str(tmp_path / "run"))
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* update 4; stopped\. Last good checkpoint: "
                                                      r".*step-00000004"):
        loop.train(config)
    good = _latest(tmp_path / "run")
    assert good.name == "step-00000004"
    assert all(torch.isfinite(t).all() for t in _weights(good).values())


@needs_fashion_mnist
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_mixed_precision_runs_and_checkpoints(tmp_path: Path, precision: str) -> None:
    """bf16 / fp16 autocast (CPU here) trains, evaluates and writes finite fp32 master weights."""
    from vitzoo.train.config import load_config
    from vitzoo.train.loop import train

    tiny = [a for a in TINY if not a.startswith("precision=")]
    config = load_config(None, [*tiny, *FASHION, "train_subset=96", "batch_size=32", "max_steps=3", "workers=0",
                                f"precision={precision}"], model=MODEL, output=str(tmp_path / "r"))
    metrics = train(config)
    # All 200 val samples are scored, so top-1 is a multiple of 0.5%.
    assert (metrics["num_updates"], metrics["eval_count"]) == (3, 200) and (2 * metrics["eval_top1"]).is_integer()
    weights = _weights(_latest(tmp_path / "r"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


@needs_fashion_mnist
def test_fashion_mnist_is_downloaded_when_the_debian_package_is_missing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the Debian files, torchvision's downloader fills the cache (stood in for here: no network in CI)."""
    import torchvision.datasets

    from vitzoo.train import data

    class FakeTorchvisionFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for name in data._FASHION_MNIST_FILES["train" if train else "val"]:
                shutil.copy(Path(FASHION_MNIST_DIR) / f"{name}.gz", raw)

    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "not-installed"))
    monkeypatch.setattr(data, "FASHION_MNIST_CACHE", tmp_path / "cache" / "fashion-mnist")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeTorchvisionFashionMNIST)
    val = data.build_dataset("fashion_mnist", None, "val", transform=None, seed=0)
    assert len(val) == 10000
    assert data.fashion_mnist_folder(None) == tmp_path / "cache" / "fashion-mnist" / "FashionMNIST" / "raw"

    def failing(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(data, "FASHION_MNIST_CACHE", tmp_path / "other-cache" / "fashion-mnist")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", failing)
    with pytest.raises(ValueError, match="download failed .*no network.*install dataset-fashion-mnist"):
        data.check_dataset_path("fashion_mnist", None, ("train",))


@needs_fashion_mnist
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    """compile=default trains the same weights as eager (fp32) and checkpoints the plain module's keys."""
    from vitzoo.train.config import load_config
    from vitzoo.train.data import seed_everything
    from vitzoo.train.factories import create_model_from_config
    from vitzoo.train.loop import train

    weights = {}
    for mode in ("null", "default"):
        config = load_config(None, [*TINY, *FASHION, "train_subset=64", "batch_size=32", "max_steps=2", "workers=0",
                                    "mixup=0", "cutmix=0", "drop_path=0", f"compile={mode}"],
                             model=MODEL, output=str(tmp_path / mode))
        assert train(config)["num_updates"] == 2
        weights[mode] = _weights(_latest(tmp_path / mode))
    assert weights["default"].keys() == weights["null"].keys()
    assert not any("_orig_mod" in key for key in weights["default"])
    for key, value in weights["null"].items():
        torch.testing.assert_close(weights["default"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    seed_everything(config.seed)  # as train() seeds before building the model: the initial weights
    initial = create_model_from_config(config, 10, 1).state_dict()
    assert any(not torch.equal(initial[key], value) for key, value in weights["null"].items()), "nothing was trained"
