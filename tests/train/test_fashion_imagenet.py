"""ImageNet-shaped Fashion-MNIST: the folder builder, the per-family configs and one training step on a tiny copy."""
from __future__ import annotations

import csv
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_runs import snapshot

from vitzoo.registry import DEIT_FAMILIES, FAMILIES
from vitzoo.train.cli import train_main
from vitzoo.train.config import load_config
from vitzoo.train.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_fashion_imagenet", ROOT / "scripts" / "make_fashion_imagenet.py")
maker = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = maker  # --jobs workers pickle its functions by module name
spec.loader.exec_module(maker)
collector_spec = importlib.util.spec_from_file_location("fashion_imagenet_results",
                                                        ROOT / "scripts" / "fashion_imagenet_results.py")
collector = importlib.util.module_from_spec(collector_spec)
collector_spec.loader.exec_module(collector)

# (fashion_imagenet config, the ImageNet recipe it follows, model)
CONFIGS = [(f, f, FAMILIES[f].model_name("tiny")) for f in DEIT_FAMILIES] + [("qtvit_1", "qt", "qtvit_1")]
# The recipe's run length, classes, batch and data folder are all that may change, and the model, which each test
# pins: qt.yaml's recipe serves qtvit_1 and, by its own comment, the DeiT-shaped qt_deit_tiny_patch16_224.
ALLOWED = {"epochs", "warmup_epochs", "cooldown_epochs", "num_classes", "batch_size", "data_dir", "model"}

needs_fashion_mnist = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist missing")


@pytest.mark.parametrize(("name", "recipe", "model"), CONFIGS)
def test_configs_change_only_the_run_length_classes_batch_and_data(name: str, recipe: str, model: str):
    ours = load_config(ROOT / "configs" / "fashion_imagenet" / f"{name}.yaml").to_dict()
    imagenet = load_config(ROOT / "configs" / "imagenet" / f"{recipe}.yaml").to_dict()
    changed = {key for key in ours if ours[key] != imagenet[key]}
    assert changed <= ALLOWED, f"{name}: {sorted(changed - ALLOWED)} differ from configs/imagenet/{recipe}.yaml"
    assert ours["model"] == model and ours["num_classes"] == 10 and ours["epochs"] == 30
    ratio = ours["epochs"] / imagenet["epochs"]
    assert ours["warmup_epochs"] == pytest.approx(imagenet["warmup_epochs"] * ratio)
    assert ours["cooldown_epochs"] == round(imagenet["cooldown_epochs"] * ratio)


def test_every_imagenet_recipe_has_a_fashion_imagenet_config():
    recipes = {path.stem for path in (ROOT / "configs" / "imagenet").glob("*.yaml")}
    ours = {path.stem for path in (ROOT / "configs" / "fashion_imagenet").glob("*.yaml")}
    assert recipes == set(DEIT_FAMILIES) and ours == recipes | {"qtvit_1"}


@needs_fashion_mnist
def test_two_builds_write_the_same_bytes(tmp_path: Path):
    maker.build(Path(FASHION_MNIST_DIR), tmp_path / "a", size=48, per_class=3, progress=False)
    # The second build is another process, through the command line, with 2 encoder processes.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_fashion_imagenet.py"), "--out", str(tmp_path / "b"),
                    "--size", "48", "--per-class", "3", "--jobs", "2", "--no-progress"], check=True, timeout=120)
    first, second = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert first == second
    images = [key for key in first if key.endswith(".jpg")]
    assert len(images) == 2 * 10 * 3
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == list(maker.CLASS_FOLDERS)
    from PIL import Image

    with Image.open(tmp_path / "a" / images[0]) as image:
        assert image.size == (48, 48) and image.mode == "RGB"


@needs_fashion_mnist
def test_a_non_empty_output_is_kept_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "out"
    maker.build(Path(FASHION_MNIST_DIR), out, size=32, per_class=2, progress=False)
    (out / "train" / "stale.jpg").write_bytes(b"old")
    with pytest.raises(SystemExit) as stopped:
        maker.main(["--out", str(out), "--size", "32", "--per-class", "1", "--no-progress"])
    assert stopped.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "train" / "stale.jpg").is_file()
    maker.main(["--out", str(out), "--size", "32", "--per-class", "1", "--no-progress", "--overwrite"])
    assert not (out / "train" / "stale.jpg").exists() and len(list(out.rglob("*.jpg"))) == 2 * 10


def _truncated_copy(folder: Path) -> Path:
    for path in Path(FASHION_MNIST_DIR).glob("*.gz"):
        shutil.copy(path, folder / path.name)
    broken = folder / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:5000])
    return folder


@needs_fashion_mnist
@pytest.mark.parametrize(("args", "message"), [
    (["--source", "{tmp}/missing"], "is not a folder"),
    (["--size", "8"], "--size must be in"),
    (["--size", "4096"], "--size must be in"),
    (["--per-class", "0"], "--per-class must be"),
    (["--source", "{truncated}"], "corrupt or truncated"),
    (["--out", "{tmp}/file.txt"], "is a file"),
])
def test_bad_arguments_stop_with_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       args: list[str], message: str):
    (tmp_path / "file.txt").write_text("x")
    truncated = tmp_path / "gz"
    truncated.mkdir()
    if "{truncated}" in args:
        _truncated_copy(truncated)
    argv = ["--out", str(tmp_path / "out"), "--no-progress"]
    argv += [a.format(tmp=tmp_path, truncated=truncated) for a in args]
    with pytest.raises(SystemExit) as stopped:
        maker.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 images per class and split at 64 px."""
    data = tmp_path_factory.mktemp("fashion_imagenet")
    maker.build(Path(FASHION_MNIST_DIR), data, size=64, per_class=2, progress=False)
    return data


@needs_fashion_mnist
@pytest.mark.parametrize(("name", "model"), [(name, model) for name, _, model in CONFIGS])
def test_one_recipe_step_on_a_tiny_copy_writes_the_run_outputs(tiny_copy: Path, tmp_path: Path, name: str,
                                                                model: str):
    run = tmp_path / "run"
    # The whole recipe (RandAugment, mixup/cutmix, random erasing, EMA, the schedule), one update; the DeiT models
    # at 64 px, qtvit_1 (no img_size argument) at its 224.
    size = [] if name == "qtvit_1" else ["img_size=64"]
    train_main(["--config", str(ROOT / "configs" / "fashion_imagenet" / f"{name}.yaml"), "--data-dir", str(tiny_copy),
                "--output", str(run), "--precision", "fp32", *size, "batch_size=4", "max_steps=1", "workers=0",
                "progress=false", "log_interval=1"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == model and saved["num_classes"] == 10
    with open(run / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # One evaluation of the 20 val images (2 per class): top-1 is a multiple of 5%.
    assert len(rows) == 1 and (float(rows[0]["eval_top1"]) / 5).is_integer()
    weights = {path.name for path in (run / "checkpoints" / "last").iterdir()}
    assert "model.safetensors" in weights and ("ema.safetensors" in weights) == saved["model_ema"]


def test_the_run_script_trains_every_config_by_default():
    planned = subprocess.run(["bash", str(ROOT / "scripts" / "fashion_imagenet_run.sh"), "--dry-run", "--seeds", "0 1"],
                             env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    names = [name for name, _, _ in CONFIGS]
    assert planned.stdout.split() == [f"{name}-seed{seed}" for seed in (0, 1) for name in names]


def _stand_in_python(folder: Path, training: str = "") -> Path:
    """A stand-in interpreter for the run script (``PYTHON``) in ``folder``: it logs every command line to
    ``folder/calls.log``, runs ``training`` (a shell command; nothing by default) for ``accelerate launch``, does
    nothing for eval.py, and hands everything else to the real Python."""
    stand_in = folder / "python"
    stand_in.write_text(f"""#!/bin/bash
echo "$*" >> {folder / "calls.log"}
case "$*" in
    *accelerate.commands.launch*) {training or ":"} ;;
    *eval.py*) ;;
    *) exec {sys.executable} "$@" ;;
esac
""")
    stand_in.chmod(0o755)
    return stand_in


@pytest.mark.parametrize(("runs_per_gpu", "order"), [("1", ["start", "done", "start", "done"]),
                                                    ("2", ["start", "start", "done", "done"])])
def test_the_run_script_shares_a_gpu_between_runs_per_gpu_runs(tmp_path: Path, runs_per_gpu: str, order: list[str]):
    stand_in = _stand_in_python(tmp_path, training="sleep 2")
    # A stand-in nvidia-smi: its utilisation query prints a sample every 0.1 s until it is stopped.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text("""#!/bin/bash
case "$*" in
    *--query-gpu*) while true; do echo "$TZ 2026/12/07 16:00:00.000, 42 % $*"; sleep 0.1; done ;;
esac
""")
    (tools / "nvidia-smi").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / "COMPLETE").write_text("per_class=all\n")
    command = ["bash", str(ROOT / "scripts" / "fashion_imagenet_run.sh"), "--families", "linear softmax", "--gpus", "1",
               "--runs-per-gpu", runs_per_gpu, "--data", str(data), "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "results.csv")]
    env = {**os.environ, "PYTHON": str(stand_in), "PATH": f"{tools}:{os.environ['PATH']}"}
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    events = [line.split()[0] for line in ran.stdout.splitlines() if line.startswith(("start", "done"))]
    assert events == order
    assert all(" on GPU 0 " in line for line in ran.stdout.splitlines() if line.startswith("start"))
    # Each run's GPU samples, in UTC, from the GPU it ran on, taken while it trained and stopped after.
    samples = {name: tmp_path / "runs" / f"{name}-seed0.util.csv" for name in ("linear", "softmax")}
    sizes = {name: path.stat().st_size for name, path in samples.items()}
    for path in samples.values():
        lines = path.read_text().splitlines()
        assert len(lines) >= 5 and all(line.startswith("UTC ") and "--id=0 " in line for line in lines)
    time.sleep(0.5)
    assert {name: path.stat().st_size for name, path in samples.items()} == sizes


@needs_fashion_mnist
def test_the_run_script_packs_the_folder_once_and_trains_and_evaluates_from_the_store(tiny_copy: Path,
                                                                                       tmp_path: Path):
    # A stand-in interpreter records the training and evaluation commands (tests/train/test_packed.py trains and
    # evaluates from a store for real); the pack runs for real, on a copy of a finished 2-per-class build.
    shutil.copytree(tiny_copy, tmp_path / "data")
    (tmp_path / "data" / "COMPLETE").write_text("per_class=2\n")
    stand_in = _stand_in_python(tmp_path)
    store = tmp_path / "data_packed"
    command = ["bash", str(ROOT / "scripts" / "fashion_imagenet_run.sh"), "--epochs", "3", "--per-class", "2",
               "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--results",
               str(tmp_path / "results.csv"), "--packed", "--families"]
    env = {**os.environ, "PYTHON": str(stand_in), "OMP_NUM_THREADS": "1"}
    for family in ("linear", "softmax"):
        done = subprocess.run([*command, family, "--", "crop_on_device=true"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"done  {family}-seed0" in done.stdout
    assert json.loads((store / "store.json").read_text())["splits"]["train"]["images"] == 20
    lines = (tmp_path / "calls.log").read_text().splitlines()
    assert not any("make_fashion_imagenet" in line for line in lines)
    assert sum("vitzoo.train.pack" in line for line in lines) == 1  # the second call reads the first one's store
    trains = [line.split() for line in lines if "accelerate.commands.launch" in line]
    evals = [line.split() for line in lines if "eval.py" in line]
    assert len(trains) == len(evals) == 2
    for words in trains:
        assert words[words.index("--data-dir") + 1] == str(store)
        assert "dataset=packed" in words and "crop_on_device=true" in words
    for words in evals:
        assert (words[words.index("--data-dir") + 1], words[words.index("--dataset") + 1]) == (str(store), "packed")


def test_the_run_script_builds_trains_evaluates_and_then_skips_finished_runs(tmp_path: Path):
    # CPU stand-in for the GPU command: a 2-per-class 64 px build, one update of the linear model at 64 px.
    command = ["bash", str(ROOT / "scripts" / "fashion_imagenet_run.sh"), "--families", "linear", "--epochs", "3",
               "--per-class", "2", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
               "--results", str(tmp_path / "results.csv"), "--", "img_size=64", "batch_size=4", "max_steps=1",
               "workers=0", "precision=fp32"]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr + (tmp_path / "runs" / "linear-seed0.log").read_text()
    assert "done  linear-seed0" in first.stdout
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == ["linear_deit_tiny_patch16_224"]
    assert "linear-seed0" in rows[0]["checkpoint"] and Path(rows[0]["dataset"]).name == "data"
    saved = yaml.safe_load((tmp_path / "runs" / "linear-seed0" / "config.yaml").read_text())
    assert (saved["epochs"], saved["warmup_epochs"], saved["cooldown_epochs"]) == (3, 0.05, 0)  # 0.5 and 1 x 3/30
    assert (tmp_path / "runs" / "linear-seed0" / "summary.csv").is_file()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skip  linear-seed0 (done)" in again.stdout
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 2

    # The results file: the run's evaluation, its log's speed and the model's benchmark row, merged by run.
    bench = tmp_path / "bench.csv"
    bench.write_text("model,infer_img_size,infer_samples_per_sec,train_samples_per_sec,precision,compile,device\n"
                     "linear_deit_tiny_patch16_224,224,900.0,300.0,bf16,none,NVIDIA H200\n")
    out = tmp_path / "fim.json"
    args = ["--runs", str(tmp_path / "runs"), "--eval", str(tmp_path / "results.csv"), "--bench", str(bench),
            "--out", str(out), "--git-revision", "abc1234", "--command", "the run"]
    collector.main(args)
    collector.main(args)  # collecting the same runs again replaces their rows
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert (row["model"], row["seed"], row["epochs"], row["epochs_done"]) == ("linear_deit_tiny_patch16_224", 0, 3, 1)
    assert row["status"] == "unfinished"  # max_steps=1 stopped it in epoch 0 of 3
    assert row["final_eval"]["top1"] == float(rows[0]["top1"]) and row["final_eval"]["weights"] == "model"
    assert row["model_only_train_img_per_s"] == 300.0 and row["infer_img_per_s"] == 900.0
    (epoch,) = row["per_epoch"]
    # the rate is rounded to 0.1 img/s, a visible step at this run's 4 images
    assert epoch["end_to_end_img_per_s"] == pytest.approx(4 / epoch["epoch_time_s"], rel=0.01, abs=0.05)
    assert row["end_to_end_over_model_only"] == pytest.approx(epoch["end_to_end_img_per_s"] / 300.0, abs=1e-3)
    assert data["info"]["commands"] == ["the run"]
    with open(out.with_suffix(".csv"), newline="") as handle:
        assert [r["top1"] for r in csv.DictReader(handle)] == [rows[0]["top1"]]
    # runs of another length: a section of their own, beside the main rows, which stay as they were
    collector.main([*args, "--section", "long", "--command", "the long run"])
    sectioned = json.loads(out.read_text())
    assert sectioned["rows"] == data["rows"] and sectioned["info"]["commands"] == ["the run"]
    assert [r["model"] for r in sectioned["long"]["rows"]] == ["linear_deit_tiny_patch16_224"]
    assert sectioned["long"]["info"]["commands"] == ["the run", "the long run"]
    with open(out.with_suffix(".csv"), newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 1

    # The same run as if made with RandAugment on the device and graphed steps: a row of its own pipeline beside
    # the first, its model-only speed from the graphed training rows of a --compare JSON at the runs' batch.
    shutil.copytree(tmp_path / "runs" / "linear-seed0", tmp_path / "graphed" / "linear-seed0")
    config_file = tmp_path / "graphed" / "linear-seed0" / "config.yaml"
    config_file.write_text(config_file.read_text().replace("augment_on_device: false", "augment_on_device: true")
                           .replace("cuda_graph: false", "cuda_graph: true"))
    compare = tmp_path / "compare.json"
    row_of = {"model": "linear_deit_tiny_patch16_224", "status": "ok", "img_size": 224}
    compare.write_text(json.dumps({"info": {"device": "NVIDIA H200", "precision": "bf16"}, "rows": [
        {**row_of, "phase": "train", "compile": "cuda-graph", "batch": 4, "img_per_s": 700.0},
        {**row_of, "phase": "train", "compile": "cuda-graph", "batch": 8, "img_per_s": 900.0},
        {**row_of, "phase": "train", "compile": "cuda-graph", "batch": 4, "img_per_s": 50.0, "img_size": 512},
        {**row_of, "phase": "train", "compile": "none", "batch": 4, "img_per_s": 250.0}]}))
    # a comparison in two parts: the inference rows in a file of their own
    compare_infer = tmp_path / "compare_infer.json"
    compare_infer.write_text(json.dumps({"info": {"device": "NVIDIA H200", "precision": "bf16"}, "rows": [
        {**row_of, "phase": "infer", "compile": "cuda-graph", "batch": 4, "img_per_s": 2100.0}]}))
    collector.main(["--runs", str(tmp_path / "graphed"), "--eval", str(tmp_path / "results.csv"),
                    "--bench-graphed", str(compare), str(compare_infer), "--out", str(out),
                    "--git-revision", "abc1234"])
    rows_now = {row["pipeline"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows_now) == {"loader RandAugment, eager steps", "device RandAugment, CUDA-graph steps"}
    assert rows_now["loader RandAugment, eager steps"]["model_only_train_img_per_s"] == 300.0
    graphed = rows_now["device RandAugment, CUDA-graph steps"]
    assert (graphed["model_only_train_img_per_s"], graphed["infer_img_per_s"]) == (700.0, 2100.0)
    assert graphed["bench"]["compile"] == "cuda-graph" and graphed["bench"]["device"] == "NVIDIA H200"
    assert graphed["end_to_end_over_model_only"] is not None and graphed["runs_per_gpu"] == 1

    # Runs that shared their GPU: the end-to-end speed stays, marked, and is not set against the model-only one.
    collector.main(["--runs", str(tmp_path / "graphed"), "--eval", str(tmp_path / "results.csv"),
                    "--bench-graphed", str(compare), "--out", str(out), "--git-revision", "abc1234",
                    "--runs-per-gpu", "3"])
    shared = {row["pipeline"]: row for row in json.loads(out.read_text())["rows"]}[graphed["pipeline"]]
    assert shared["runs_per_gpu"] == 3 and shared["end_to_end_over_model_only"] is None
    assert shared["end_to_end_img_per_s"] == graphed["end_to_end_img_per_s"]
    with pytest.raises(SystemExit):
        collector.main(["--runs", str(tmp_path / "graphed"), "--eval", str(tmp_path / "results.csv"),
                        "--out", str(out), "--git-revision", "abc1234"])  # neither benchmark


def test_a_run_is_finished_after_its_cool_down_epochs_too(tmp_path: Path):
    run = tmp_path / "long" / "h3-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: h3_deit_tiny_patch16_224\nseed: 0\nepochs: 2\ncooldown_epochs: 1\n")
    events = [{"event": "start", "global_batch": 8}]
    for epoch in range(3):
        events.append({"event": "train", "epoch": epoch, "num_updates": 2 * epoch + 1, "loss": 2.0 - epoch / 10,
                       "time": 10.0 * epoch + 1})
        events.append({"event": "eval", "epoch": epoch, "num_updates": 2 * epoch + 2, "train_loss": 2.0,
                       "eval_top1": 50.0, "eval_top5": 90.0, "epoch_time": 4.0})
    evaluation = {("long", "h3-seed0"): {"top1": "50.0", "top5": "90.0", "checkpoint": str(run)}}

    def status(evals: int) -> str:
        with open(run / "log.jsonl", "w") as log:
            log.writelines(json.dumps(event) + "\n" for event in events[:1 + 2 * evals])
        return collector.run_row(run, evaluation, {}, {})["status"]

    assert status(3) == "ok"  # two epochs and one cool-down epoch
    assert status(2) == "unfinished"  # the recipe's epochs done, its cool-down not


def test_gpu_utilisation_is_the_median_over_the_last_epochs_steady_part(tmp_path: Path):
    samples = tmp_path / "run.util.csv"

    def stamp(seconds: float) -> str:  # nvidia-smi's timestamp (UTC, as the run script asks) of a time.time()
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]

    # Epoch 0 ran, then epoch 1 until the process stopped at 1010 s; a new process resumed at 1020 s.
    events = [{"event": "train", "epoch": 0, "time": 1000.0}, {"event": "train", "epoch": 1, "time": 1005.0},
              {"event": "train", "epoch": 1, "time": 1010.0}, {"event": "resume", "epoch": 1, "time": 1020.0},
              {"event": "train", "epoch": 1, "time": 1030.0}, {"event": "train", "epoch": 1, "time": 1032.0},
              {"event": "eval", "epoch": 1, "time": 1040.0}]
    lines = [f"{stamp(t)}, {p} %" for t, p in [(1006.0, 1), (1008.0, 2), (1029.0, 3), (1030.0, 60), (1031.0, 70),
                                               (1031.5, 80), (1032.0, 90), (1033.0, 4)]]
    samples.write_text("\n".join([*lines, f"{stamp(1031.2)}, [N/A]", "2026/12/07 16:0"]) + "\n")
    assert collector.gpu_utilisation(samples, events) == 75.0  # 60, 70, 80, 90: the resumed part of epoch 1
    assert collector.gpu_utilisation(samples, events[:3]) == 1.5  # no resume: epoch 1 from 1005 to 1010 s
    assert collector.gpu_utilisation(samples, events[:1]) is None  # nothing sampled in epoch 0's window
    assert collector.gpu_utilisation(tmp_path / "missing.csv", events) is None


def test_steady_rate_leaves_out_each_epochs_start():
    events = [{"epoch": 0, "num_updates": 50, "time": 10.0}, {"epoch": 0, "num_updates": 100, "time": 12.0},
              {"epoch": 0, "num_updates": 150, "time": 14.5}, {"epoch": 1, "num_updates": 250, "time": 30.0},
              {"epoch": 1, "num_updates": 300, "time": 32.0}]
    # 50 updates x 4 images in 2, 2.5 and 2 s (the pair across the epoch boundary does not count)
    assert collector.steady_rate(events, 4) == 100.0
    assert collector.steady_rate(events[:1], 4) is None


def test_steady_rate_leaves_out_the_records_a_resumed_run_repeats():
    # a run stopped after its record of update 150 and resumed from update 120 logs update 150 again, later
    events = [{"epoch": 0, "num_updates": 100, "time": 10.0}, {"epoch": 0, "num_updates": 150, "time": 12.0},
              {"epoch": 0, "num_updates": 150, "time": 40.0}, {"epoch": 0, "num_updates": 200, "time": 42.5}]
    assert collector.steady_rate(events, 4) == 90.0  # 200 images in 2 s and 2.5 s; the repeat gives no rate
