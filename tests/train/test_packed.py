"""Packed stores (vitzoo-pack, dataset=packed): the folder's pixels, order and classes; runs that train as on the
folder; bad stores and settings in one line."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import MODEL, train_args, write_image_folder

from vitzoo.train.data import DataError, build_dataset, class_map_image_folder, folder_classes, load_image
from vitzoo.train.pack import main, pack_image_folder
from vitzoo.train.packed import PackedImages, read_store


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A JPEG image folder with a PNG, a greyscale JPEG of another size and an unreadable file among its images."""
    data = write_image_folder(tmp_path / "images", train_per_class=5, val_per_class=2, suffix=".jpg")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 13, 3), dtype=np.uint8)).save(data / "train" / "bee" / "wide.png")
    Image.fromarray(rng.integers(0, 255, (9, 30), dtype=np.uint8), mode="L").save(data / "train" / "cat" / "g.jpg")
    (data / "train" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8 not a picture")
    return data


def test_a_store_holds_the_folders_pixels_in_its_order_with_its_classes(tmp_path: Path, folder: Path) -> None:
    manifest = pack_image_folder(folder, tmp_path / "store", workers=0, progress=False)
    assert manifest["classes"] == folder_classes(folder / "train") == read_store(tmp_path / "store")["classes"]
    assert manifest["splits"]["train"]["unreadable_files"] == ["train/ant/broken.jpg"]
    for split in ("train", "val"):
        samples = [(path, target) for path, target in class_map_image_folder(folder / split, manifest["classes"],
                                                                                None).samples
                   if not path.endswith("broken.jpg")]
        packed = PackedImages(tmp_path / "store", split)
        assert len(packed) == len(samples) == manifest["splits"][split]["images"]
        assert packed.targets == [target for _, target in samples]
        for index, (path, target) in enumerate(samples):
            image, label = packed[index]
            assert label == target and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), np.asarray(load_image(path))), path


def test_a_store_maps_its_classes_onto_the_runs_by_name(tmp_path: Path, folder: Path) -> None:
    pack_image_folder(folder, tmp_path / "store", workers=0, progress=False)
    plain = PackedImages(tmp_path / "store", "val")
    mapped = PackedImages(tmp_path / "store", "val", classes=["cat", "zebra", "bee", "ant"])
    names = {0: "ant", 1: "bee", 2: "cat"}
    assert [mapped.classes[target] for target in mapped.targets] == [names[target] for target in plain.targets]
    with pytest.raises(DataError, match="class\\(es\\) ant that the run's class map"):
        PackedImages(tmp_path / "store", "val", classes=["bee", "cat"])


def test_max_size_shrinks_only_the_larger_images_keeping_their_shape(tmp_path: Path) -> None:
    source = tmp_path / "images"
    for name, size in (("big", (90, 60)), ("small", (30, 20))):
        (source / "train" / name).mkdir(parents=True)
        Image.fromarray(np.full((size[1], size[0], 3), 100, dtype=np.uint8)).save(source / "train" / name / "a.png")
    pack_image_folder(source, tmp_path / "store", max_size=40, workers=0, progress=False)
    packed = PackedImages(tmp_path / "store", "train")
    assert [packed[index][0].size for index in range(2)] == [(60, 40), (30, 20)]


def test_packing_runs_in_worker_processes_and_a_pickled_split_maps_its_file_anew(tmp_path: Path,
                                                                                 folder: Path) -> None:
    pack_image_folder(folder, tmp_path / "spawned", workers=2, progress=False)
    pack_image_folder(folder, tmp_path / "inline", workers=0, progress=False)
    for name in ("train.pixels", "train.index.npy", "val.pixels"):
        assert (tmp_path / "spawned" / name).read_bytes() == (tmp_path / "inline" / name).read_bytes()
    packed = PackedImages(tmp_path / "spawned", "train")
    first = np.asarray(packed[0][0])
    copy = pickle.loads(pickle.dumps(packed))
    assert copy._pixels is None and np.array_equal(np.asarray(copy[0][0]), first)


def test_bad_stores_and_folders_fail_in_one_line(tmp_path: Path, folder: Path, capsys) -> None:
    store = tmp_path / "store"
    assert main([str(folder), str(store), "--workers", "0", "--no-progress"]) == 0
    assert "train: 17 images" in capsys.readouterr().out
    assert main([str(folder), str(store), "--workers", "0"]) == 2  # nothing overwritten
    assert "exists; give a new folder" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "other")]) == 2
    assert "has no train/ or val/ folder" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other*"))
    with pytest.raises(DataError, match="is not a packed image store"):
        read_store(folder)
    with pytest.raises(DataError, match="has no test split"):
        PackedImages(store, "test")
    manifest = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(DataError, match="version 99; this vitzoo reads"):
        read_store(store)
    (store / "store.json").write_text(json.dumps(manifest))
    index = np.load(store / "val.index.npy")
    np.save(store / "val.index.npy", np.concatenate([index[:-1], [[*index[-1, :3], 3]]]))  # a fourth class
    with pytest.raises(DataError, match="does not describe images back to back of 3 classes"):
        PackedImages(store, "val")
    np.save(store / "val.index.npy", index[::-1].copy())  # offsets out of order
    with pytest.raises(DataError, match="the store is damaged"):
        PackedImages(store, "val")
    pixels = store / "train.pixels"
    pixels.write_bytes(pixels.read_bytes()[:-1])
    with pytest.raises(DataError, match="the store is incomplete"):
        PackedImages(store, "train")
    with pytest.raises(DataError, match="positive number of pixels"):
        pack_image_folder(folder, tmp_path / "x", max_size=0, workers=0)
    with pytest.raises(DataError, match="workers must be 0"):
        pack_image_folder(folder, tmp_path / "x", workers=-1)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))


def test_a_full_disk_stops_the_pack_in_one_line_and_leaves_nothing(tmp_path: Path, folder: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import vitzoo.train.pack as pack

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pack, "_pack_split", full_disk)
    assert main([str(folder), str(tmp_path / "store"), "--workers", "0", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "(No space left on device); free space or pick another folder" in error
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".store*"))


def test_a_train_class_without_a_readable_image_stops_the_pack(tmp_path: Path) -> None:
    source = write_image_folder(tmp_path / "images", train_per_class=1, suffix=".jpg")
    (source / "train" / "bee" / "0.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match="1 class\\(es\\) have no readable training image \\(.*/train/bee first\\)"):
        pack_image_folder(source, tmp_path / "store", workers=0, progress=False)
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".store*"))


def test_build_dataset_reads_a_store_and_a_run_needs_its_splits(tmp_path: Path, folder: Path) -> None:
    from vitzoo.train.config import ConfigError, load_config
    from vitzoo.train.data import check_dataset_path

    pack_image_folder(folder, tmp_path / "store", workers=0, progress=False)
    dataset = build_dataset("packed", tmp_path / "store", "val", lambda image: image.size, seed=0)
    assert len(dataset) == 6 and dataset[0][0] == (16, 16)
    (tmp_path / "val_only").mkdir()
    (folder / "val").rename(tmp_path / "val_only" / "val")
    pack_image_folder(tmp_path / "val_only", tmp_path / "val_store", workers=0, progress=False)
    assert check_dataset_path("packed", tmp_path / "val_store", ("val",)) == tmp_path / "val_store"
    with pytest.raises(DataError, match="has no train split; pack an image folder that has train/"):
        check_dataset_path("packed", tmp_path / "val_store", ("train", "val"))
    with pytest.raises(DataError, match="data_dir is not set"):
        check_dataset_path("packed", None, ("train",))
    with pytest.raises(ConfigError, match="a packed store holds decoded pixels"):
        load_config(None, ["dataset=packed", "decode_on_device=true", "augment_on_device=true",
                           "auto_augment=rand-m9-mstd0.5-inc1"], model=MODEL, data_dir=str(tmp_path / "store"))


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_run_on_the_store_trains_as_the_same_run_on_the_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """crop_on_device on a store: the workers copy pixels instead of decoding, the crops and every other draw are
    the folder run's, so both runs end with the same weights. On the CPU also where there is a GPU: the test is
    about the data, and a GPU's attention backward may sum in any order."""
    from safetensors.torch import load_file

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    from vitzoo.train.config import load_config
    from vitzoo.train.evaluate import evaluate_model
    from vitzoo.train.loop import train

    data = write_image_folder(tmp_path / "images", train_per_class=8, suffix=".jpg")
    pack_image_folder(data, tmp_path / "store", workers=0, progress=False)

    def run(name: str, *dataset: str) -> dict[str, torch.Tensor]:
        output = tmp_path / name
        args = train_args(output, data, "auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true",
                          "crop_on_device=true", "re_prob=0.5", "mixup=0.8", "workers=1", "epochs=2", *dataset)
        metrics = train(load_config(None, args[6:], model=MODEL, output=str(output), data_dir=str(
            tmp_path / "store" if dataset else data)))
        assert metrics["num_updates"] == 12
        return load_file(str(max((output / "checkpoints").glob("step-*")) / "model.safetensors"))

    folder_run, packed_run = run("folder"), run("packed", "dataset=packed")
    assert folder_run.keys() == packed_run.keys()
    for key in folder_run:
        assert torch.equal(folder_run[key], packed_run[key]), f"{key} differs"
    # vitzoo-eval reads the store's val split as the folder's
    on_store = evaluate_model(checkpoint=str(tmp_path / "packed"), dataset="packed", data_dir=str(tmp_path / "store"),
                              workers=0, count_macs=False)
    on_folder = evaluate_model(checkpoint=str(tmp_path / "packed"), dataset="folder", data_dir=str(data), workers=0,
                               count_macs=False)
    assert on_store["count"] == on_folder["count"] == 6
    assert (on_store["top1"], on_store["top5"]) == (on_folder["top1"], on_folder["top5"])
