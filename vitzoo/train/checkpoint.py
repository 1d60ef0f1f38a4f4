"""Checkpoints of a training run: atomic writes, rotation, and a resume that reads only tensors and plain data.

A checkpoint folder ``<output>/checkpoints/step-<updates>`` is written to a temporary folder and moved into place with
``os.replace``, so a killed run never leaves a half-written one. Every file is read with
``torch.load(weights_only=True)`` or safetensors and checked against the run (``meta.json``) before anything is
restored.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from vitzoo.train.config import ConfigError, TrainConfig, first_line

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"


@dataclass
class RunState:
    """Mutable state of one training run: what a checkpoint saves and a resume restores."""

    config: TrainConfig
    accelerator: Any
    output: str
    model: nn.Module
    optimizer: Any
    ema: Any
    identity: dict  # run_identity(): model, dataset, processes, channels, classes (meta.json, checked on resume)
    data_config: dict
    epoch: int = 0
    batches_done: int = 0
    num_updates: int = 0
    best: dict = field(default_factory=dict)
    last_finite_update: int = 0  # the last update after which the loss was checked finite (not saved)



def _step_folders(output: str | os.PathLike) -> list[Path]:
    """Every ``step-<updates>`` folder under ``<output>/checkpoints``, oldest first, complete or not (temporary
    folders are not step folders)."""
    folder = Path(output) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def list_checkpoints(output: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (with their meta.json) under ``<output>/checkpoints``, oldest first."""
    return [p for p in _step_folders(output) if (p / "meta.json").is_file()]


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, unreadable or holds more than tensors and plain data."""


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers, so that ``torch.load(weights_only=True)`` reads them."""
    version, python_state, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {"python_version": version, "python": torch.tensor(python_state, dtype=torch.int64),
             "python_gauss": python_gauss, "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
             "numpy_pos": int(numpy_pos), "numpy_has_gauss": int(numpy_has_gauss), "numpy_gauss": float(numpy_gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file and ``os.replace``: readers see the old or
    the new file, never a partial one, and a failed write leaves no temporary file behind."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _point(link: Path, target_name: str) -> None:
    """Make ``link`` a relative symlink to the sibling ``target_name``, replacing any old link atomically."""
    tmp = link.with_name(f".tmp-{link.name}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target_name)
    os.replace(tmp, link)


def remove_temporary_checkpoints(output: str | os.PathLike) -> None:
    """Delete the ``.tmp-*`` folders that a run killed while writing a checkpoint leaves behind."""
    folder = Path(output) / "checkpoints"
    if folder.is_dir():
        for tmp in folder.glob(".tmp-*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def save_checkpoint(run: RunState, tag_updates: int) -> Path:
    """Write ``<output>/checkpoints/step-<updates>`` atomically: all files go to a temp folder moved by ``os.replace``.

    Contents: ``model.safetensors`` (and ``ema.safetensors``), ``training_state.pt`` (optimizer, grad scaler, epoch,
    batch and update counters), ``rng-<rank>.pt`` per process (tensors and numbers only), and ``meta.json`` (model
    name, config, class names, counters). Rotation keeps the newest ``checkpoint_keep`` checkpoints and the best
    epoch's; the symlinks ``checkpoints/last`` and ``checkpoints/best`` name them.
    """
    from safetensors.torch import save_model

    acc = run.accelerator
    folder = Path(run.output) / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{tag_updates:08d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{tag_updates:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        save_model(acc.unwrap_model(run.model), str(tmp / "model.safetensors"))
        if run.ema is not None:
            save_model(run.ema.module, str(tmp / "ema.safetensors"))
        state = {"optimizer": run.optimizer.state_dict(), "epoch": run.epoch, "batches_done": run.batches_done,
                 "num_updates": run.num_updates, "best": run.best}
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        torch.save(state, tmp / "training_state.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        meta = {**run.identity, "epoch": run.epoch, "batches_done": run.batches_done, "num_updates": run.num_updates,
                "data_config": run.data_config, "config": run.config.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        keep = set(list_checkpoints(run.output)[-run.config.checkpoint_keep:])
        best = run.best.get("checkpoint")
        if best and (folder / best).is_dir():
            keep.add(folder / best)
            _point(folder / "best", best)
        for old in list_checkpoints(run.output):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
        _point(folder / "last", final.name)
    acc.wait_for_everyone()
    return final


# What a resumed run must share with the checkpoint's run: a difference changes the model, the data or the schedule.
RESUME_CONFIG_KEYS = ("model", "model_kwargs", "img_size", "patch_size", "dataset", "data_dir", "batch_size",
                      "grad_accum", "train_subset", "aug_repeats")


def run_identity(config: TrainConfig, num_processes: int, in_chans: int, num_classes: int,
                 classes: list[str]) -> dict[str, Any]:
    """The facts of a run that ``meta.json`` records and a resume must match (see :func:`check_resume_matches`)."""
    return {"model": config.model, "dataset": config.dataset, "num_processes": num_processes, "in_chans": in_chans,
            "num_classes": num_classes, "classes": list(classes)}


def first_difference(saved_config: dict, config: TrainConfig) -> tuple[str, Any, Any] | None:
    """(key, saved value, this run's) for the first of :data:`RESUME_CONFIG_KEYS` in which ``config`` differs from a
    run's saved config; None when they agree."""
    defaults = TrainConfig()
    for key in RESUME_CONFIG_KEYS:
        # a key the saved config lacks (a run from before the key existed) had its default
        saved, now = saved_config.get(key, getattr(defaults, key)), getattr(config, key)
        if key == "data_dir" and saved and now:
            saved, now = os.path.abspath(saved), os.path.abspath(now)
        if saved != now:
            return key, saved, now
    return None


def check_resume_matches(folder: Path, meta: dict, identity: dict, config: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first setting in which this run differs from the checkpoint's."""
    saved_config = meta.get("config", {})
    difference = first_difference(saved_config if isinstance(saved_config, dict) else {}, config)
    pairs = [difference] if difference else []
    pairs += [(key, meta.get(key), identity[key]) for key in ("num_processes", "in_chans", "num_classes", "classes")]
    for key, saved, now in pairs:
        if saved != now:
            if key == "classes":
                saved = f"{len(saved or [])} classes {(saved or [])[:3]}..."
                now = f"{len(now)} classes {now[:3]}..."
            raise ConfigError(f"cannot resume from {folder}: its {key} is {saved!r}, this run's is {now!r}; "
                              "use the checkpoint's settings or start a new run in another --output")


@dataclass
class CheckpointFiles:
    """The decoded files of one checkpoint folder, read in full before anything is restored."""

    folder: Path
    meta: dict
    state: dict
    rng: dict


def read_checkpoint_file(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with a missing, corrupt or refused file reported as one :class:`CheckpointError` line."""
    import pickle

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return reader(path)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global (a class or function) that is not a tensor type: a pickle that would run
        # code names one, plain garbage fails earlier.
        detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
        if detail:
            raise CheckpointError(f"{path} refused: it would load objects other than tensors and plain data "
                                  f"({detail[:120]})") from None
        raise CheckpointError(f"{path} is unreadable (not a torch.save file of tensors and plain data)") from None
    except Exception as error:  # noqa: BLE001 - any decoding failure means the file is unusable
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {first_line(error)[:120]})") from None


def _load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(folder: Path, identity: dict, config: TrainConfig, process_index: int) -> CheckpointFiles:
    """Read and check every file of a checkpoint folder; nothing of the run is changed.

    Raises:
        CheckpointError: a file is missing, corrupt or holds more than tensors and plain data.
        ConfigError: the checkpoint belongs to a run with other settings (:func:`check_resume_matches`).
    """
    from safetensors.torch import load_file

    meta = read_checkpoint_file(folder / "meta.json", lambda path: json.loads(path.read_text()))
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / 'meta.json'} is not a JSON object")
    check_resume_matches(folder, meta, identity, config)
    state = read_checkpoint_file(folder / "training_state.pt", _load_tensors)
    missing = {"optimizer", "epoch", "batches_done", "num_updates"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{folder / 'training_state.pt'} lacks {', '.join(sorted(missing))}")
    rng = read_checkpoint_file(folder / f"rng-{process_index}.pt", _load_tensors)
    for name in ("model.safetensors", "ema.safetensors"):
        if name == "model.safetensors" or (folder / name).exists():
            read_checkpoint_file(folder / name, load_file)
    return CheckpointFiles(folder, meta, state, rng)


def find_resume_checkpoint(config: TrainConfig, output: Path, identity: dict,
                           accelerator: Accelerator) -> CheckpointFiles | None:
    """The checkpoint to resume from: ``config.resume``'s folder, or with ``'auto'`` the newest intact one under
    ``output`` (older ones are tried when newer ones are damaged, with a warning); None for 'auto' without any.

    Raises:
        ConfigError: a damaged explicit checkpoint, no intact checkpoint for 'auto', or settings that differ.
    """
    if config.resume != "auto":
        return read_checkpoint(Path(config.resume), identity, config, accelerator.process_index)
    damaged: list[str] = []
    # every step folder, complete or not: one that lost its meta.json is damaged like one with a truncated file
    for folder in reversed(_step_folders(output)):
        try:
            files = read_checkpoint(folder, identity, config, accelerator.process_index)
        except CheckpointError as error:
            damaged.append(str(error))
            continue
        if damaged and accelerator.is_main_process:
            _logger.warning("resume auto: skipped %d damaged newer checkpoint(s) (%s); resuming from %s",
                            len(damaged), "; ".join(damaged), folder.name)
        return files
    if damaged:
        raise ConfigError(f"no intact checkpoint under {output}/checkpoints (newest: {damaged[0]}); remove the "
                          "damaged ones to start afresh, or pass another --output")
    return None


def load_checkpoint_into(run: RunState, files: CheckpointFiles) -> None:
    """Restore model, EMA, optimizer, scaler, counters and (this process's) RNG state from a checked checkpoint.

    Raises:
        ConfigError: weights or optimizer state whose shapes do not fit this run's model.
    """
    from safetensors.torch import load_model

    acc = run.accelerator
    targets = [(acc.unwrap_model(run.model), "model.safetensors")]
    if run.ema is not None and (files.folder / "ema.safetensors").is_file():
        targets.append((run.ema.module, "ema.safetensors"))
    try:
        for module, name in targets:
            load_model(module, str(files.folder / name))
        run.optimizer.load_state_dict(files.state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot resume from {files.folder}: its weights or optimizer state do not fit "
                          f"{run.config.model} ({first_line(error)[:200]})") from None
    if acc.scaler is not None and "scaler" in files.state:
        acc.scaler.load_state_dict(files.state["scaler"])
    state = files.state
    run.epoch, run.batches_done, run.num_updates = state["epoch"], state["batches_done"], state["num_updates"]
    run.best = state.get("best", run.best)
    set_rng_state(files.rng)
