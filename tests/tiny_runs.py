"""Helpers shared by the checkpoint and bad-input tests: a tiny PNG image folder, a tiny Fashion-MNIST-format
folder, and a tiny finished run on the image folder.

The run (a DeiT-shaped model of width 16 and depth 1 on 16x16 RGB images of 3 classes, 12 training images, 2 epochs
of 3 updates) takes about 2 s on one core and needs no installed dataset.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "softmax_deit_tiny_patch16_224"
CLASSES = ("ant", "bee", "cat")


def write_image_folder(root: Path, train_per_class: int = 4, val_per_class: int = 2, seed: int = 0,
                       suffix: str = ".png") -> Path:
    """Write ``root/{train,val}/<class>/<n><suffix>``: 16x16 RGB noise whose mean brightness depends on the class
    (``suffix`` ``".jpg"``: quality-95 baseline JPEGs, which ``decode_on_device`` hands to the decoder as they are)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                pixels = rng.integers(0, 96, size=(16, 16, 3)) + 64 * index
                Image.fromarray(pixels.astype(np.uint8), mode="RGB").save(folder / f"{n}{suffix}", quality=95)
    return root


def write_fashion_mnist_idx(root: Path, train: int = 12, val: int = 8, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST idx files (uncompressed) into ``root``: random 28x28 grey images whose labels
    (0-9) set their mean brightness, ``train`` and ``val`` of them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for (images_name, labels_name), count in ((("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), train),
                                              (("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"), val)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = (rng.integers(0, 64, size=(count, 28, 28)) + 19 * labels[:, None, None]).astype(np.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
        (root / images_name).write_bytes(header + images.tobytes())
        (root / labels_name).write_bytes(bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + labels.tobytes())
    return root


def train_args(output: Path, data: Path, *extra: str) -> list[str]:
    """vitzoo-train arguments of the tiny run (more ``key=value`` or flags in ``extra``)."""
    return ["--model", MODEL, "--output", str(output), "--data-dir", str(data), "img_size=16", "patch_size=8",
            "model_kwargs={embed_dim: 16, depth: 1, num_heads: 2}", "precision=fp32", "progress=false", "workers=0",
            "mixup=0", "cutmix=0", "batch_size=4", "epochs=2", "warmup_epochs=0", "lr=0.001", "auto_augment=null",
            "re_prob=0", "log_interval=1", *extra]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and symlink under ``folder``: relative path -> sha256 of the bytes (or the link target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "dir"
    return found


class Evil:
    """Unpickling this calls ``open(path, 'w')``: a payload that ``torch.load(weights_only=False)`` would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
