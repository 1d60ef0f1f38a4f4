"""What the sweep (``vitzoo.bench.sweep``) and the side-by-side comparison (``vitzoo.bench.compare``) share: the
compile modes they measure, building a model for a resolution, percentiles, failure handling, provenance, and
writing result files atomically (the reports in ``vitzoo.report`` read and write CSVs with the same helpers).
"""
from __future__ import annotations

import csv
import datetime
import gc
import io
import json
import math
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from vitzoo.train.checkpoint import write_atomic

# Eager ('none') and torch.compile's modes; a benchmark row records which one it was measured with.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def has_fixed_input_size(name: str) -> bool:
    """True for models whose position embedding fixes the input size (ViT/DeiT): they are built with ``img_size``."""
    cfg = timm.models.get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.fixed_input_size)


def create_model(name: str, img_size: int, device: torch.device, model_kwargs: dict[str, Any] | None = None
                 ) -> nn.Module:
    """Build ``name`` for ``img_size`` inputs directly on ``device`` (fp32, eval mode).

    Fixed-size models (ViT) get ``img_size=`` so their position embedding is sized for it; convolutional / hybrid
    models (EfficientViT, QT-ViT) take any size as built.
    """
    kwargs = dict(model_kwargs or {})
    if has_fixed_input_size(name):
        kwargs.setdefault("img_size", img_size)
    torch.manual_seed(0)
    # Building under the device context allocates and initialises the weights there: a ViT-B init on the host
    # costs seconds per (model, size) in a sweep of hundreds.
    with torch.device(device):
        model = timm.create_model(name, **kwargs)
    return model.to(device).eval()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def is_oom(error: BaseException) -> bool:
    """True when ``error`` means the device (or the host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def one_line(error: BaseException) -> str:
    """``error`` as one line of at most 300 characters, for a row's status."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]


def release_memory(device: torch.device) -> None:
    """Free what the last model left: Python garbage first, then the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, str]:
    """Device name, torch / triton / timm versions and the UTC date: what every result records."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "triton": triton_version, "timm": timm.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def git_revision() -> str:
    """The ``VITZOO_GIT_REVISION`` environment variable where set (a copy of the tree on a benchmark machine, whose
    git metadata, if any, need not be the code's), else the checkout's HEAD with '+local changes' when tracked files
    differ from it; '' outside a git checkout."""
    given = os.environ.get("VITZOO_GIT_REVISION")
    if given:
        return given
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  cwd=here).stdout.strip()
    except FileNotFoundError:  # no git installed
        return ""
    if not revision:
        return ""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=here).stdout.strip()
    return revision + ("+local changes" if dirty else "")


def read_csvs(paths: Iterable[str | Path]) -> list[dict[str, str]]:
    """Rows of every CSV given; a folder stands for the ``*.csv`` files directly inside it."""
    rows: list[dict[str, str]] = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        for file in files:
            with file.open(newline="") as handle:
                rows.extend(csv.DictReader(handle))
    return rows


def check_results_file(path: Path | None, resume: bool = False, resumable: bool = True) -> None:
    """Before measuring: raise ``ValueError`` (one line, saying what to pass instead) for a ``--results-file`` that
    would replace an existing file without ``resume`` (``resumable``: whether the command can resume), that is a
    folder, or whose folder cannot be created. ``None`` (no results file) passes."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--results-file {path} is a folder; name a file (in it or elsewhere)")
    if path.exists() and not resume:
        if resumable:
            raise ValueError(f"{path} exists; pass --resume to keep its rows and add the missing ones, or name a new "
                             "--results-file")
        raise ValueError(f"{path} exists; name a new --results-file (or remove it to measure again)")
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot create the folder of --results-file {path}: {existing} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the folder of --results-file {path}: {error.strerror or error}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write --results-file {path}: its folder {path.parent} is not writable")


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` with ``columns`` (extra keys ignored, missing ones empty), atomically: a reader never sees
    half a file, and a run rewriting it after each row keeps every finished row if it is cut off."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode())


def read_json_result(path: str | Path, keys: tuple[str, ...], expected: str) -> dict[str, Any]:
    """A JSON results file that holds ``keys``; ValueError with one line when it is missing, is not JSON or lacks
    them. ``expected`` names what the file should be, e.g. ``'a vitzoo-bench --compare JSON'``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; pass {expected}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}); pass {expected}") from None
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(f"{path} is not {expected} (no {' and '.join(repr(key) for key in missing)})")
    return data


def merge_run(path: Path, run: dict[str, Any], key: Sequence[str]) -> dict[str, Any]:
    """The ``{"runs": [...]}`` results file at ``path`` (if any) with ``run`` added last, replacing the runs that
    have its values of the ``key`` fields (a field a run lacks counts as empty)."""
    runs = json.loads(Path(path).read_text())["runs"] if Path(path).exists() else []
    same = tuple(run.get(field, "") for field in key)
    return {"runs": [r for r in runs if tuple(r.get(field, "") for field in key) != same] + [run]}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")
