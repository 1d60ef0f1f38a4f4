"""Bad input table: every case exits with status 2 and one line on stderr that says what to fix, and leaves an
existing run folder byte-for-byte unchanged.

Each case gets its own copy of one finished tiny run (``tiny_runs.py``) and of its image folder. Training cases point
``--output`` at the run with ``--resume auto``, so a bad value that slipped through would train on and change it.
Cases call ``train_main`` / ``eval_main`` in-process (catching ``SystemExit``); two run the real scripts in a
subprocess to prove the process exit status.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_runs import Evil, snapshot, train_args, write_image_folder

from vitzoo.train.cli import eval_main, train_main

ROOT = Path(__file__).resolve().parents[2]
LAST = "checkpoints/step-00000006"  # the finished run's checkpoints: after updates 3 and 6
FIRST = "checkpoints/step-00000003"


@dataclass
class Paths:
    run: Path  # a copy of the finished run
    data: Path  # the image folder the run was trained on (meta.json names it)
    spare: Path  # a copy of that folder that a case may damage
    tmp: Path


@dataclass
class Case:
    id: str
    args: Callable[[Paths], list[str]]
    expected: str
    prepare: Callable[[Paths], None] | None = None
    command: str = "train"  # or "eval"


def resume(*extra: str) -> Callable[[Paths], list[str]]:
    """Train args continuing the run, plus ``extra`` (formatted with the paths: {run}, {data}, {spare}, {tmp})."""
    return lambda p: train_args(p.run, p.data, "--resume", "auto", *_fill(extra, p))


def on(data: str, *extra: str) -> Callable[[Paths], list[str]]:
    """Train args continuing the run, with --data-dir replaced by ``data`` (formatted)."""
    def build(p: Paths) -> list[str]:
        args = train_args(p.run, p.data, "--resume", "auto", *_fill(extra, p))
        args[args.index("--data-dir") + 1] = _fill((data,), p)[0]
        return args
    return build


def evaluate(*extra: str) -> Callable[[Paths], list[str]]:
    return lambda p: ["--checkpoint", str(p.run), "--results-file", str(p.tmp / "results.csv"), "--workers", "0",
                      "--no-macs", *_fill(extra, p)]


def _fill(items: tuple[str, ...], p: Paths) -> list[str]:
    places = {"{run}": p.run, "{data}": p.data, "{spare}": p.spare, "{tmp}": p.tmp}
    filled = []
    for item in items:
        for place, path in places.items():
            item = item.replace(place, str(path))
        filled.append(item)
    return filled


def write(relative: str, content: bytes | str) -> Callable[[Paths], None]:
    def prepare(p: Paths) -> None:
        path = p.run / relative if not relative.startswith("{") else Path(_fill((relative,), p)[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return prepare


def each_checkpoint(name: str, content: Callable[[Path], None]) -> Callable[[Paths], None]:
    def prepare(p: Paths) -> None:
        for step in (FIRST, LAST):
            content(p.run / step / name)
    return prepare


def garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint\n")


def payload(path: Path) -> None:
    torch.save({"payload": Evil(path.with_name("payload-ran"))}, path)


def remove(path: Path) -> None:
    path.unlink()


def fashion_mnist_files(truncate: bool) -> Callable[[Paths], None]:
    """The four idx files in {tmp}/fm: the images of each split truncated, or missing entirely."""
    def prepare(p: Paths) -> None:
        folder = p.tmp / "fm"
        folder.mkdir()
        if not truncate:
            return
        for images, labels, count in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
                                      ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)):
            header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
            (folder / f"{images}.gz").write_bytes(gzip.compress(header + bytes(1000)))
            label_header = b"\x00\x00\x08\x01" + count.to_bytes(4, "big")
            (folder / f"{labels}.gz").write_bytes(gzip.compress(label_header + bytes(count)))
    return prepare


def spare_edit(edit: Callable[[Path], None]) -> Callable[[Paths], None]:
    return lambda p: edit(p.spare)


def no_class_folders(spare: Path) -> None:
    shutil.rmtree(spare / "train")
    (spare / "train").mkdir()
    (spare / "train" / "readme.txt").write_text("images go in class folders")


def empty_class_folders(spare: Path) -> None:
    for folder in (spare / "train").iterdir():
        for image in folder.iterdir():
            image.rename(image.with_suffix(".txt"))


def all_corrupt(spare: Path) -> None:
    for image in (spare / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(32))


def extra_val_class(spare: Path) -> None:
    shutil.copytree(spare / "val" / "ant", spare / "val" / "dog")


def other_run(p: Paths) -> None:
    shutil.copytree(p.run, p.tmp / "other", symlinks=True)


def crashed_run(p: Paths) -> None:
    """A run folder left by a run of the same settings that stopped before its first checkpoint."""
    (p.tmp / "crashed").mkdir()
    for name in ("config.yaml", "log.jsonl"):
        shutil.copy(p.run / name, p.tmp / "crashed" / name)


def crashed_run_corrupt_config(p: Paths) -> None:
    """The same, with its config.yaml cut inside a character."""
    crashed_run(p)
    (p.tmp / "crashed" / "config.yaml").write_bytes(b"model: [\xff")


CASES = [
    # config values
    Case("negative-lr", resume("lr=-0.1"), "lr must be a positive finite number or null, got -0.1"),
    Case("nan-lr", resume("lr=.nan"), "lr must be a positive finite number or null, got nan"),
    Case("unknown-optimizer", resume("opt=adamx"), "opt must be a timm optimizer"),
    Case("log-interval-0", resume("log_interval=0"), "log_interval must be a positive integer, got 0"),
    Case("img-size-0", resume("img_size=0"), "img_size must be a positive integer or null, got 0"),
    Case("smoothing-1.5", resume("smoothing=1.5"), "smoothing must be in [0, 1), got 1.5"),
    Case("negative-workers", resume("workers=-1"), "workers must be an integer >= 0, got -1"),
    Case("negative-train-subset", resume("train_subset=-5"), "train_subset must be a positive integer or null"),
    Case("negative-aug-repeats", resume("aug_repeats=-3"), "aug_repeats must be an integer >= 0 (0: off), got -3"),
    Case("fractional-aug-repeats", resume("aug_repeats=2.5"), "config key 'aug_repeats' must be an integer, got 2.5"),
    Case("batch-size-0", resume("batch_size=0"), "batch_size must be a positive integer, got 0"),
    Case("batch-size-text", resume("batch_size=abc"), "config key 'batch_size' must be an integer, got 'abc'"),
    Case("epochs-0", resume("epochs=0"), "epochs must be a positive integer, got 0"),
    Case("negative-weight-decay", resume("weight_decay=-0.1"), "weight_decay must be a finite number >= 0"),
    Case("drop-path-1", resume("drop_path=1.0"), "drop_path must be in [0, 1), got 1.0"),
    Case("mixup-prob-2", resume("mixup_prob=2"), "mixup_prob must be in [0, 1], got 2.0"),
    Case("grad-accum-0", resume("grad_accum=0"), "grad_accum must be a positive integer, got 0"),
    Case("clip-grad-0", resume("clip_grad=0"), "clip_grad must be a positive finite number or null, got 0.0"),
    Case("checkpoint-keep-0", resume("checkpoint_keep=0"), "checkpoint_keep must be a positive integer, got 0"),
    Case("one-beta", resume("opt_betas=[0.9]"), "opt_betas must be two numbers in [0, 1)"),
    Case("scale-reversed", resume("scale=[0.5, 0.1]"), "scale must be [min, max] with 0 < min <= max <= 1"),
    Case("unknown-scheduler", resume("sched=linear"), "sched must be one of cosine, tanh"),
    Case("unknown-precision-key", resume("precision=fp8"), "precision must be one of"),
    Case("unknown-compile-mode", resume("compile=fast"), "compile must be one of default"),
    Case("unknown-key", resume("nosuchkey=1"), "unknown config key 'nosuchkey' in overrides; valid keys:"),
    Case("misspelt-key", resume("grad_acum=2"), "unknown config key 'grad_acum' in overrides; did you mean "
         "'grad_accum'? valid keys:"),
    Case("override-not-key-value", resume("justtext"), "override 'justtext' is not key=value"),
    Case("override-yaml-syntax", resume("scale=[0.1, 1"), "override 'scale=[0.1, 1' is not valid YAML"),
    Case("config-yaml-syntax", resume("--config", "{tmp}/bad.yaml"), "bad.yaml is not valid YAML at line 3",
         write("{tmp}/bad.yaml", "epochs: 3\nlr: [0.1\n")),
    Case("config-not-mapping", resume("--config", "{tmp}/list.yaml"), "must hold a mapping of key: value",
         write("{tmp}/list.yaml", "- epochs\n- lr\n")),
    Case("misspelt-model-kwarg", resume("model_kwargs={embed_dimm: 16}"),
         "does not accept model_kwargs {'embed_dimm': 16}"),
    Case("model-kwargs-no-space", resume("model_kwargs={embed_dim:16}"),
         "model_kwargs key 'embed_dim:16' is not an argument name"),
    Case("model-kwargs-null", resume("model_kwargs={embed_dim: null}"), "model_kwargs.embed_dim has no value"),
    Case("model-kwargs-indivisible", resume("model_kwargs={embed_dim: 17, depth: 1, num_heads: 2}"),
         "embed_dim=17 is not divisible by num_heads=2"),
    Case("model-kwargs-negative-depth", resume("model_kwargs={embed_dim: 16, depth: -1, num_heads: 2}"),
         "depth must be an integer >= 1, got -1"),
    Case("img-size-twice", resume("model_kwargs={embed_dim: 16, depth: 1, num_heads: 2, img_size: 32}"),
         "img_size is set both as a config key and in model_kwargs"),
    Case("img-size-not-multiple", resume("img_size=15"), "img_size=15 is not divisible by patch_size=8"),
    Case("in-chans-for-rgb-folder", resume("in_chans=1"), "in_chans=1, but dataset 'folder' gives 3-channel"),
    Case("epochs-inf", resume("epochs=.inf"), "config key 'epochs' must be an integer, got inf"),
    Case("seed-too-large", resume("seed=1e30"), "seed must be an integer in [0, 2**63)"),
    Case("optimizer-not-text", resume("opt=123"), "config key 'opt' must be a string, got 123"),
    Case("auto-augment-unknown-section", resume("auto_augment=rand-zz"), "auto_augment 'rand-zz' is not a timm"),
    Case("auto-augment-bad-number", resume("auto_augment=rand-m9x-n2"), "auto_augment 'rand-m9x-n2' is not a timm"),
    Case("min-lr-above-lr", resume("min_lr=1"), "min_lr (1.0) must not exceed lr (0.001)"),
    Case("config-binary", resume("--config", "{tmp}/binary.yaml"), "is not a UTF-8 text file",
         write("{tmp}/binary.yaml", bytes(range(128, 256)))),
    Case("config-duplicate-key", resume("--config", "{tmp}/twice.yaml"), "key 'epochs' is given twice",
         write("{tmp}/twice.yaml", "epochs: 1\nlr: 0.1\nepochs: 2\n")),
    Case("config-is-a-folder", resume("--config", "{tmp}"), "is a folder; pass a YAML file"),
    Case("missing-pretrained-overlay-file",
         resume("model_kwargs={pretrained: true, pretrained_cfg_overlay: {file: /nonexistent/w.pth}}"),
         "pretrained_cfg_overlay file /nonexistent/w.pth does not exist"),
    Case("num-classes-below-folders", resume("num_classes=2"), "num_classes=2 is smaller than the dataset's 3"),
    Case("unknown-model", resume("--model", "nosuch_deit_tiny"), "unknown model 'nosuch_deit_tiny'"),
    Case("misspelt-model", resume("--model", "qt_deit_tiny_patch16_24"),
         "unknown model 'qt_deit_tiny_patch16_24' (similar: qt_deit_tiny_patch16_224, "),
    # command-line flags
    Case("precision-flag", resume("--precision", "fp64"), "argument --precision: invalid choice: 'fp64'"),
    Case("dataset-flag", resume("--dataset", "mnist"), "argument --dataset: invalid choice: 'mnist'"),
    Case("unknown-flag", resume("--bogus"), "unrecognized arguments: --bogus"),
    Case("resume-missing-path", resume("--resume", "{tmp}/nope/step-00000001"), "nope/step-00000001 does not exist"),
    # data folders
    Case("no-train-split", on("{tmp}"), "train does not exist"),
    Case("no-class-folders", on("{spare}"), "train holds no class folders", spare_edit(no_class_folders)),
    Case("no-images", on("{spare}"), "train holds no image files", spare_edit(empty_class_folders)),
    Case("all-corrupt-images", on("{spare}"), "no readable image in", spare_edit(all_corrupt)),
    Case("val-class-not-in-train", on("{spare}"), "val has class folder(s) dog that the run's class map",
         spare_edit(extra_val_class)),
    Case("fashion-mnist-truncated", on("{tmp}/fm", "dataset=fashion_mnist"), "truncated",
         fashion_mnist_files(truncate=True)),
    Case("fashion-mnist-missing", on("{tmp}/fm", "dataset=fashion_mnist"), "train-images-idx3-ubyte.gz not found",
         fashion_mnist_files(truncate=False)),
    # run folders and checkpoint files
    Case("occupied-output", lambda p: train_args(p.run, p.data), "already holds a run"),
    Case("output-is-a-file", lambda p: train_args(p.run / "config.yaml", p.data, "--resume", "auto"),
         "config.yaml is a file, not a folder"),
    Case("all-states-corrupt", resume(), "no intact checkpoint", each_checkpoint("training_state.pt", garbage)),
    Case("all-states-malicious", resume(), "refused: it would load objects other than tensors",
         each_checkpoint("training_state.pt", payload)),
    Case("malicious-rng", resume("--resume", "{run}/" + LAST), "rng-0.pt refused",
         each_checkpoint("rng-0.pt", payload)),
    Case("missing-weights", resume("--resume", "{run}/" + LAST), "model.safetensors is missing",
         each_checkpoint("model.safetensors", remove)),
    Case("truncated-weights", resume("--resume", "{run}/" + LAST), "model.safetensors is unreadable",
         write(f"{LAST}/model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{")),
    Case("corrupt-meta", resume("--resume", "{run}/" + LAST), "meta.json is unreadable",
         write(f"{LAST}/meta.json", "{not json")),
    Case("other-batch-size", resume("batch_size=2"), "its batch_size is 4, this run's is 2"),
    Case("other-model", resume("--model", "linear_deit_tiny_patch16_224"), "its model is 'softmax_deit_tiny"),
    Case("resume-from-another-run", resume("--resume", "{tmp}/other/" + FIRST), "belongs to", other_run),
    Case("resume-auto-into-foreign-folder", lambda p: train_args(p.tmp / "notes", p.data, "--resume", "auto"),
         "holds files that are not a run's", write("{tmp}/notes/notes.txt", "mine")),
    Case("resume-auto-crashed-corrupt-config", lambda p: train_args(p.tmp / "crashed", p.data, "--resume", "auto"),
         "cannot read", crashed_run_corrupt_config),
    Case("resume-auto-crashed-other-model",
         lambda p: train_args(p.tmp / "crashed", p.data, "--resume", "auto", "--model", "linear_deit_tiny_patch16_224"),
         "its model is 'softmax_deit_tiny_patch16_224'", crashed_run),
    # evaluation
    Case("eval-num-classes", evaluate("--num-classes", "5"), "--num-classes 5 differs from the checkpoint's 3",
         command="eval"),
    Case("eval-results-is-a-folder", evaluate("--results-file", "{tmp}"), "is a folder; pass a .csv file path",
         command="eval"),
    Case("eval-foreign-csv", evaluate("--results-file", "{tmp}/other.csv"), "has another header (a,b)",
         write("{tmp}/other.csv", "a,b\n1,2\n"), command="eval"),
    Case("eval-model-kwargs-not-mapping", evaluate("--model-kwargs", "depth=2"), "'depth=2' is not a YAML mapping",
         command="eval"),
    Case("eval-misspelt-model-kwarg", evaluate("--model-kwargs", "{depthh: 2}"), "does not accept model_kwargs",
         command="eval"),
    Case("eval-missing-checkpoint", lambda p: ["--checkpoint", str(p.tmp / "nope"), "--workers", "0"],
         "checkpoint", command="eval"),
    Case("eval-corrupt-weights", evaluate(), "model.safetensors is unreadable",
         write(f"{LAST}/model.safetensors", b"garbage"), command="eval"),
    Case("eval-foreign-val-class", evaluate("--data-dir", "{spare}"), "val has class folder(s) dog",
         spare_edit(extra_val_class), command="eval"),
    Case("eval-batch-size-0", evaluate("--batch-size", "0"), "batch_size must be a positive integer, got 0",
         command="eval"),
    Case("eval-other-model", evaluate("--model", "linear_deit_tiny_patch16_224"),
         "--model linear_deit_tiny_patch16_224 differs from the checkpoint's softmax_deit_tiny_patch16_224",
         command="eval"),
    Case("eval-weights-of-other-model",
         lambda p: ["--checkpoint", str(p.run / LAST / "model.safetensors"), "--model", "linear_deit_tiny_patch16_224",
                    "--workers", "0", "--no-macs", "--results-file", str(p.tmp / "results.csv")],
         "--model linear_deit_tiny_patch16_224 differs from the checkpoint's softmax_deit_tiny_patch16_224 (",
         command="eval"),
    Case("eval-binary-results-file", evaluate("--results-file", "{tmp}/binary.csv"), "is not a CSV text file",
         write("{tmp}/binary.csv", bytes(range(128, 256))), command="eval"),
    Case("eval-img-size-not-multiple", evaluate("--img-size", "17"), "img_size=17 is not divisible by patch_size=8",
         command="eval"),
    Case("eval-nothing-to-evaluate", lambda p: ["--dataset", "fashion_mnist"], "give a model name", command="eval"),
]


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(finished run, its image folder), made once for the whole table."""
    from accelerate.state import AcceleratorState

    data = write_image_folder(tmp_path_factory.mktemp("images"))
    run = tmp_path_factory.mktemp("runs") / "finished"
    AcceleratorState._reset_state(reset_partial_state=True)
    train_main(train_args(run, data))
    AcceleratorState._reset_state(reset_partial_state=True)
    return run, data


@pytest.fixture
def paths(tmp_path: Path, originals: tuple[Path, Path]) -> Paths:
    run, data = originals
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    # The copy's checkpoints must still name the same data folder: meta.json is checked on resume.
    spare = tmp_path / "spare"
    shutil.copytree(data, spare)
    work = tmp_path / "work"
    work.mkdir()
    return Paths(copy, data, spare, work)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2_with_one_line(case: Case, paths: Paths, capsys: pytest.CaptureFixture) -> None:
    if case.prepare is not None:
        case.prepare(paths)
    before = snapshot(paths.run)
    data_before = snapshot(paths.data)
    main = train_main if case.command == "train" else eval_main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(case.args(paths))
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and case.expected in lines[0], lines[0]
    assert snapshot(paths.run) == before, "the existing run folder changed"
    assert snapshot(paths.data) == data_before
    assert not list(paths.run.rglob("payload-ran")), "a pickle payload ran"
    assert not (paths.tmp / "results.csv").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.parametrize(("script", "case_id"), [("train.py", "negative-lr"),
                                                 ("eval.py", "eval-model-kwargs-not-mapping")])
def test_real_process_exit_status(script: str, case_id: str, paths: Paths) -> None:
    """The console scripts' process exits with status 2 and prints one line, no traceback."""
    case = next(case for case in CASES if case.id == case_id)
    before = snapshot(paths.run)
    done = subprocess.run([sys.executable, str(ROOT / script), *case.args(paths)], capture_output=True, text=True,
                          env=_env(), timeout=120, cwd=paths.tmp)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and case.expected in lines[0], lines
    assert snapshot(paths.run) == before


def test_meta_json_names_the_data_folder(originals: tuple[Path, Path]) -> None:
    """The resume cases rely on the run's checkpoints recording its data folder."""
    run, data = originals
    meta = json.loads((run / LAST / "meta.json").read_text())
    assert meta["config"]["data_dir"] == str(data)
