"""Data folders and files that cannot train a classifier stop with one line that says what to fix: Fashion-MNIST
idx files that do not belong together, hidden folders taken for classes, a train split of one class, and a class
whose every training image is unreadable. Each test builds its data in ``tmp_path`` (16x16 PNGs, idx files of a few
images), so the file runs in a few seconds."""
from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_runs import CLASSES, train_args, write_fashion_mnist_idx, write_image_folder

from vitzoo.train import data as vdata
from vitzoo.train.cli import train_main

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
VAL_IMAGES, VAL_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as a gzipped idx file: magic 0x0800 + ndim, then each dimension as big-endian int32."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))
    return path


def idx_folder(folder: Path, train: int = 12, val: int = 8) -> Path:
    """The four idx files, gzipped, with ``train`` and ``val`` images and labels that belong together."""
    folder.mkdir(parents=True)
    for images_name, labels_name, count in ((TRAIN_IMAGES, TRAIN_LABELS, train), (VAL_IMAGES, VAL_LABELS, val)):
        write_idx(folder / f"{images_name}.gz", np.zeros((count, 28, 28), np.uint8))
        write_idx(folder / f"{labels_name}.gz", np.arange(count) % 10)
    return folder


def corrupt(path: Path) -> None:
    """A PNG signature followed by noise: Pillow fails to decode it."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(32))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), train_per_class=3, val_per_class=1)


@pytest.fixture
def data(tmp_path: Path, images: Path) -> Path:
    """A copy of the 3-class image folder that a test may change."""
    return Path(shutil.copytree(images, tmp_path / "data"))


# Fashion-MNIST


def test_fashion_mnist_refuses_labels_that_do_not_match_the_images_in_count(tmp_path: Path) -> None:
    """The review's case: the 10k test labels beside the train images trained on the wrong labels."""
    folder = idx_folder(tmp_path / "fm")
    shutil.copy(folder / f"{VAL_LABELS}.gz", folder / f"{TRAIN_LABELS}.gz")
    expected = r"train labels \(8\) and images \(12\) differ in count; replace"
    with pytest.raises(vdata.DataError, match=expected) as error:
        vdata.FashionMNIST(folder, "train")
    assert str(folder / f"{TRAIN_LABELS}.gz") in str(error.value)


def test_fashion_mnist_count_error_names_the_file_that_lacks_the_standard_count(tmp_path: Path) -> None:
    """With the standard 10000 test images, the labels file is the one to replace."""
    folder = idx_folder(tmp_path / "fm")
    write_idx(folder / f"{VAL_IMAGES}.gz", np.zeros((10000, 28, 28), np.uint8))
    with pytest.raises(vdata.DataError, match=rf"val labels \(8\) and images \(10000\) differ in count; replace "
                                              rf"\S*{VAL_LABELS}\.gz$"):
        vdata.FashionMNIST(folder, "val")


@pytest.mark.parametrize(("source", "target", "found"), [(TRAIN_IMAGES, TRAIN_LABELS, "images"),
                                                         (TRAIN_LABELS, TRAIN_IMAGES, "labels")])
def test_fashion_mnist_refuses_an_images_file_for_labels_and_back(tmp_path: Path, source: str, target: str,
                                                                  found: str) -> None:
    """An images file (magic 2051) where the labels file (2049) belongs, or the reverse, is named with what it holds;
    an images file for labels used to crash in the loader with a traceback."""
    folder = idx_folder(tmp_path / "fm")
    shutil.copy(folder / f"{source}.gz", folder / f"{target}.gz")
    wanted = re.escape("labels (magic 2049)" if found == "images" else "images (magic 2051)")
    with pytest.raises(vdata.DataError, match=rf"{target}\.gz holds {found} \(idx magic 20\d\d\), not {wanted}; "
                                              rf"replace it with Fashion-MNIST's {target}$"):
        vdata.FashionMNIST(folder, "train")


def test_fashion_mnist_refuses_images_that_are_not_28x28(tmp_path: Path) -> None:
    folder = idx_folder(tmp_path / "fm")
    write_idx(folder / f"{TRAIN_IMAGES}.gz", np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(vdata.DataError, match=rf"{TRAIN_IMAGES}\.gz holds 32x32 images; Fashion-MNIST's are 28x28"):
        vdata.FashionMNIST(folder, "train")


def test_fashion_mnist_refuses_labels_outside_its_ten_classes(tmp_path: Path) -> None:
    folder = idx_folder(tmp_path / "fm")
    write_idx(folder / f"{TRAIN_LABELS}.gz", np.full(12, 57))
    with pytest.raises(vdata.DataError, match=rf"{TRAIN_LABELS}\.gz holds label 57; Fashion-MNIST's labels are 0-9"):
        vdata.FashionMNIST(folder, "train")


def test_fashion_mnist_files_that_belong_together_still_load(tmp_path: Path) -> None:
    for folder in (idx_folder(tmp_path / "gz"), write_fashion_mnist_idx(tmp_path / "plain", train=12, val=8)):
        train, val = vdata.FashionMNIST(folder, "train"), vdata.FashionMNIST(folder, "val")
        assert (len(train), len(val)) == (12, 8) and train.images.shape == (12, 1, 28, 28)
        assert train[3][0].dtype == torch.uint8 and 0 <= train[3][1] < 10


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_fashion_mnist_count_mismatch_is_one_cli_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = idx_folder(tmp_path / "fm")
    shutil.copy(folder / f"{VAL_LABELS}.gz", folder / f"{TRAIN_LABELS}.gz")
    _assert_one_error_line(train_args(tmp_path / "run", folder, "dataset=fashion_mnist"), capsys,
                           "Fashion-MNIST train labels (8) and images (12) differ in count")
    assert not (tmp_path / "run").exists()


# Image folders: hidden folders


def test_hidden_folders_are_not_classes(data: Path) -> None:
    """A Jupyter checkpoint folder (or any name starting with '.') in train/ is neither a class nor a source of
    training images, and the same kind of folder in val/ alone is not a class that train lacks."""
    for split in ("train", "val"):
        hidden = data / split / ".ipynb_checkpoints"
        hidden.mkdir()
        shutil.copy(data / split / "ant" / "0.png", hidden / "0-checkpoint.png")
    (data / "train" / ".DS_Store").write_bytes(b"\0")  # a hidden file, not a folder: never a class anyway
    classes = vdata.folder_classes(data / "train")
    assert classes == list(CLASSES)
    train = vdata.build_dataset("folder", data, "train", None, seed=0, classes=classes)
    val = vdata.build_dataset("folder", data, "val", None, seed=0, classes=classes)
    for split in (train, val):
        assert not any(".ipynb_checkpoints" in path for path, _ in split.dataset.samples)
    assert len(train) == 9 and len(val) == 3


def test_a_hidden_folder_only_in_val_is_not_a_foreign_class(data: Path) -> None:
    hidden = data / "val" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(data / "val" / "bee" / "0.png", hidden / "0.png")
    assert vdata.folder_classes(data / "val") == list(CLASSES)
    val = vdata.build_dataset("folder", data, "val", None, seed=0, classes=vdata.folder_classes(data / "train"))
    assert len(val) == 3


# Image folders: one class


def test_a_train_split_of_one_class_is_refused(data: Path) -> None:
    for split in ("train", "val"):
        for name in ("bee", "cat"):
            shutil.rmtree(data / split / name)
    (data / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder does not count as a second class
    message = f"the train split of {data} has 1 class folder; a classifier needs at least 2"
    with pytest.raises(vdata.DataError, match="^" + re.escape(message) + "$"):
        vdata.check_dataset_path("folder", data, ("train", "val"))
    with pytest.raises(vdata.DataError, match="has 1 class folder"):
        vdata.build_dataset("folder", data, "train", None, seed=0)
    # Evaluation reads val only, and a val split of one class is fine.
    assert vdata.check_dataset_path("folder", data, ("val",)) == data
    assert len(vdata.build_dataset("folder", data, "val", None, seed=0, classes=["ant", "bee"])) == 1


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_train_split_of_one_class_is_one_cli_line(tmp_path: Path, data: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    for split in ("train", "val"):
        for name in ("bee", "cat"):
            shutil.rmtree(data / split / name)
    _assert_one_error_line(train_args(tmp_path / "run", data), capsys,
                           f"the train split of {data} has 1 class folder; a classifier needs at least 2")
    assert not (tmp_path / "run").exists()


# Image folders: a class without a readable training image


def test_a_class_whose_every_training_image_is_unreadable_is_refused(data: Path) -> None:
    for image in (data / "train" / "bee").iterdir():
        corrupt(image)
    train = vdata.build_dataset("folder", data, "train", None, seed=0)
    folder = re.escape(str(data / "train" / "bee"))
    expected = (rf"class bee has no readable training image: all 3 image files in {folder} are "
                r"unreadable \(cannot be opened or decoded\); replace them or remove the folder$")
    with pytest.raises(vdata.DataError, match=expected):
        train.check_readable()


def test_a_class_of_unreadable_images_in_val_only_is_skipped_as_before(data: Path) -> None:
    """Evaluation skips unreadable files without scoring them, so a val class may have no readable image."""
    corrupt(data / "val" / "bee" / "0.png")
    val = vdata.build_dataset("folder", data, "val", None, seed=0, classes=list(CLASSES), score_substitutes=False)
    val.check_readable()


def test_a_train_class_folder_without_image_files_is_refused(data: Path) -> None:
    for image in (data / "train" / "cat").iterdir():
        image.rename(image.with_suffix(".txt"))
    train = vdata.build_dataset("folder", data, "train", None, seed=0)
    folder = re.escape(str(data / "train" / "cat"))
    with pytest.raises(vdata.DataError, match=rf"class cat has no training image: {folder} holds no image files"):
        train.check_readable()


def test_single_unreadable_training_files_are_still_skipped_with_a_named_warning(
        data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One bad file in a class (its first, which the class check meets) passes the check and is reported once,
    by name, at epoch end."""
    bad = data / "train" / "bee" / "0.png"
    corrupt(bad)
    train = vdata.build_dataset("folder", data, "train", None, seed=0)
    train.check_readable()
    for index in range(len(train)):
        train[index]
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    with caplog.at_level(logging.WARNING, logger="vitzoo.train.data"):
        assert vdata.report_unreadable(train, accelerator) == 1
    assert f"skipped unreadable image {bad} (replaced by the next readable sample)" in caplog.text


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_class_of_unreadable_training_images_is_one_cli_line(tmp_path: Path, data: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    for image in (data / "train" / "ant").iterdir():
        corrupt(image)
    _assert_one_error_line(train_args(tmp_path / "run", data), capsys, "class ant has no readable training image")
    assert not (tmp_path / "run").exists()


def _assert_one_error_line(args: list[str], capsys: pytest.CaptureFixture, expected: str) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        train_main(args)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.parametrize(("splits", "named"), [(("train", "val"), "train/ and val/"), (("val",), "val/")])
def test_unset_data_dir_names_the_splits_the_caller_reads(splits, named):
    with pytest.raises(vdata.DataError, match=f"pass --data-dir pointing at a folder with {named} class folders"):
        vdata.check_dataset_path("folder", None, splits)
