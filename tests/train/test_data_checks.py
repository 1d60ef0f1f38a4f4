"""Data and evaluation checks: one class map for every split, 16-bit images, unreadable files never scored, the
results CSV's header, the checkpoint's dataset, and ``vitzoo-timm`` for timm's own scripts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_runs import CLASSES, train_args, write_image_folder

from vitzoo.train import data as vdata
from vitzoo.train.checkpoint import list_checkpoints
from vitzoo.train.cli import eval_main, timm_main, train_main
from vitzoo.train.evaluate import RESULT_COLUMNS, evaluate_model

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = Path(__file__).parents[1] / "timm_script_stand_in.py"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    from accelerate.state import AcceleratorState

    output = tmp_path_factory.mktemp("runs") / "finished"
    AcceleratorState._reset_state(reset_partial_state=True)
    train_main(train_args(output, images))
    AcceleratorState._reset_state(reset_partial_state=True)
    return output


def test_val_without_a_class_keeps_the_train_class_indices(tmp_path: Path, images: Path) -> None:
    """val/ lacking 'bee' still labels 'cat' 2 (its own folder list would say 1); a foreign class is refused."""
    data = tmp_path / "data"
    shutil.copytree(images, data)
    shutil.rmtree(data / "val" / "bee")
    classes = vdata.folder_classes(data / "train")
    val = vdata.build_dataset("folder", data, "val", None, seed=0, classes=classes)
    labels = {Path(path).parent.name: target for path, target in val.dataset.samples}
    assert labels == {"ant": 0, "cat": 2}
    (data / "val" / "dog").mkdir()
    shutil.copy(data / "val" / "ant" / "0.png", data / "val" / "dog" / "0.png")
    with pytest.raises(vdata.DataError, match="class folder.*dog.*lacks"):
        vdata.build_dataset("folder", data, "val", None, seed=0, classes=classes)


def test_checkpoint_stores_the_class_map(finished_run: Path) -> None:
    import json

    meta = json.loads((list_checkpoints(finished_run)[-1] / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["num_classes"] == 3


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    """A 16-bit grey PNG of mean ~33000 decodes to mean ~128 (value / 257); PIL's own convert clips it to ~255."""
    pixels = np.random.default_rng(0).integers(16576, 49344, size=(32, 32)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 250  # the saturation load_image avoids
    decoded = np.asarray(vdata.load_image(str(path)), dtype=np.float64)
    assert decoded.shape == (32, 32, 3)
    assert decoded.mean() == pytest.approx(pixels.mean() / 257, abs=0.5)


def test_unreadable_eval_files_are_skipped_counted_and_not_scored(tmp_path: Path, images: Path,
                                                                  finished_run: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "val" / "bee" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    val = vdata.build_dataset("folder", data, "val", None, seed=0, classes=list(CLASSES), score_substitutes=False)
    corrupt = [i for i, (path, _) in enumerate(val.dataset.samples) if path.endswith("bee/0.png")][0]
    assert val[corrupt][1] == vdata.UNREADABLE_TARGET
    row = evaluate_model(checkpoint=str(finished_run), data_dir=str(data), workers=0, count_macs=False)
    assert row["count"] == 5 and row["skipped_files"] == 1


def test_a_failing_transform_raises_instead_of_marking_the_file_unreadable(images: Path) -> None:
    """Only a file that cannot be read is skipped; an exception from the transform is a bug and reaches the caller."""
    def broken(image):
        raise RuntimeError("transform bug")

    train = vdata.build_dataset("folder", images, "train", broken, seed=0, classes=list(CLASSES))
    with pytest.raises(RuntimeError, match="transform bug"):
        train[0]
    assert not train.unreadable.any()


def test_zero_bit_posterize_gives_a_black_image_on_every_pillow() -> None:
    """timm's increasing posterize asks for 0 bits at the top magnitude, which Pillow 13 rejects; the zoo's train
    transform maps it to a black image, as Pillow up to 12 did, and leaves other bit counts to timm."""
    from timm.data.auto_augment import AugmentOp, RandAugment, posterize
    from torchvision.transforms import Compose

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    transform = Compose([RandAugment([AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)], num_layers=1)])
    vdata._allow_zero_bit_posterize(transform)
    assert np.asarray(transform(image)).max() == 0
    assert np.array_equal(np.asarray(vdata._posterize(image, 3)), np.asarray(posterize(image, 3)))
    train_tf, _, _ = vdata.folder_transforms({"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0,
                                              "mean": (0.5,) * 3, "std": (0.5,) * 3}, vdata.AugmentConfig())
    augment = [step for step in train_tf.transforms if isinstance(step, RandAugment)][0]
    assert [op.aug_fn for op in augment.ops if op.name.startswith("Posterize")] == [vdata._posterize]


def test_eval_uses_the_checkpoint_dataset_and_refuses_a_foreign_csv(tmp_path: Path, finished_run: Path,
                                                                    images: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results.csv"
    eval_main(["--checkpoint", str(finished_run), "--results-file", str(results), "--workers", "0", "--no-macs"])
    lines = results.read_text().splitlines()
    assert lines[0] == ",".join(RESULT_COLUMNS) and f",{images}," in lines[1]

    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,accuracy\nresnet,76.1\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        eval_main(["--checkpoint", str(finished_run), "--results-file", str(foreign), "--workers", "0"])
    assert exited.value.code == 2
    assert "has another header (name,accuracy)" in capsys.readouterr().err
    assert foreign.read_text() == "name,accuracy\nresnet,76.1\n"


def test_vitzoo_timm_runs_a_timm_script_with_the_zoo_registered(capsys: pytest.CaptureFixture) -> None:
    """In-process: the script runs as __main__ with the remaining arguments; sys.argv is restored."""
    argv = list(sys.argv)
    timm_main([str(STAND_IN), "--model", "inline_deit_tiny_patch16_224", "--num-classes", "7"])
    assert "created inline_deit_tiny_patch16_224 with 7 classes" in capsys.readouterr().out
    assert sys.argv == argv
    with pytest.raises(SystemExit) as exited:
        timm_main(["/nonexistent/train.py"])
    assert exited.value.code == 2


def test_timm_script_alone_cannot_see_the_zoo_but_vitzoo_timm_can() -> None:
    """In fresh interpreters: plain ``python script.py`` fails on a zoo model, ``vitzoo-timm script.py`` works."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = [str(STAND_IN), "--model", "inline_deit_tiny_patch16_224"]
    alone = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
    assert alone.returncode != 0 and "Unknown model" in alone.stderr
    wrapped = subprocess.run([sys.executable, "-c", "from vitzoo.train.cli import timm_main; timm_main()", *args],
                             capture_output=True, text=True, env=env, timeout=120)
    assert wrapped.returncode == 0, wrapped.stderr[-2000:]
    assert "created inline_deit_tiny_patch16_224" in wrapped.stdout


def test_console_script_is_declared() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vitzoo-timm"] == "vitzoo.train.cli:timm_main"


def test_image_folder_samples_are_the_same_through_forkserver_workers(images: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The training pipeline of image folders (timm's RandAugment and erasing, per-sample seeds) pickles into workers
    started by forkserver, which a process that has initialised CUDA uses, and draws the same samples there."""
    import torch
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    transform = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    dataset = vdata.build_dataset("folder", images, "train", transform, seed=0, classes=list(CLASSES))
    expected = torch.stack([dataset[i][0] for i in range(len(dataset))])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    arguments = vdata.loader_workers(1)
    assert arguments["multiprocessing_context"].get_start_method() == "forkserver"
    ((batch, _),) = list(DataLoader(dataset, batch_size=len(dataset), **arguments))
    torch.testing.assert_close(batch, expected, rtol=0, atol=0)
