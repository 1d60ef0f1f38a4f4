"""Checkpoints, run folders and metrics a user can trust: one test per failure that used to pass silently.

All runs are the tiny run of ``tiny_runs.py`` (about 2 s each on one core), in-process.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import MODEL, Evil, snapshot, train_args, write_fashion_mnist_idx, write_image_folder

from vitzoo.train import checkpoint, loop
from vitzoo.train.cli import train_main
from vitzoo.train.config import ConfigError, TrainConfig, load_config

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def _train(output: Path, data: Path, *extra: str) -> dict:
    config = load_config(None, train_args(output, data, *extra)[6:], model=MODEL, output=str(output),
                         data_dir=str(data))
    return loop.train(config)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A finished tiny run with checkpoints after updates 3 and 6 (its epoch ends)."""
    from accelerate.state import AcceleratorState

    output = tmp_path_factory.mktemp("runs") / "finished"
    _train(output, data)
    AcceleratorState._reset_state(reset_partial_state=True)
    return output


def test_malicious_pickle_is_refused_not_run(tmp_path: Path, finished_run: Path, data: Path) -> None:
    """A training_state.pt / rng-0.pt that would run code on unpickling is refused, and the code never runs."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    marker = tmp_path / "payload-ran"
    step = run / "checkpoints" / "step-00000006"
    for name in ("training_state.pt", "rng-0.pt"):
        backup = (step / name).read_bytes()
        torch.save({"payload": Evil(marker)}, step / name)
        with pytest.raises(ConfigError, match=f"{name} refused: it would load objects other than tensors"):
            _train(run, data, f"resume={step}")
        assert not marker.exists(), "the pickle payload ran"
        (step / name).write_bytes(backup)
    # The saved files themselves load with weights_only=True: RNG states are tensors and numbers.
    state = torch.load(step / "rng-0.pt", weights_only=True)
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["python"], torch.Tensor)
    torch.load(step / "training_state.pt", weights_only=True)


def test_rng_state_round_trips() -> None:
    """The tensor form of the RNG state restores python, numpy and torch generators exactly."""
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = checkpoint.rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(()).item())
    checkpoint.set_rng_state(state)
    assert (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(()).item()) == expected


def test_second_run_cannot_destroy_the_first(tmp_path: Path, finished_run: Path, data: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """A new run into a used folder is refused (status 2) and leaves every file; no --output gives a fresh folder."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    before = snapshot(run)
    with pytest.raises(SystemExit) as exited:
        train_main(train_args(run, data, "epochs=1"))
    assert exited.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert snapshot(run) == before

    first = loop.fresh_output(TrainConfig(model=MODEL), root=tmp_path / "out")
    second = loop.fresh_output(TrainConfig(model=MODEL), root=tmp_path / "out")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.endswith(f"-{MODEL}-folder")


def test_rotation_keeps_best_and_last(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_keep=1: the best epoch's checkpoint survives later, worse ones; best/last links name them."""
    scores = iter([90.0, 10.0, 20.0])  # epoch 0 is the best

    real_evaluate = loop.evaluate

    def scripted(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        return {**metrics, "top1": next(scores)}

    monkeypatch.setattr(loop, "evaluate", scripted)
    output = tmp_path / "run"
    metrics = _train(output, data, "epochs=3", "checkpoint_keep=1")
    names = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert names == ["best", "last", "step-00000003", "step-00000009"]
    assert (output / "checkpoints" / "best").resolve().name == "step-00000003"
    assert (output / "checkpoints" / "last").resolve().name == "step-00000009"
    assert metrics["best"]["checkpoint"] == "step-00000003"
    assert Path(metrics["checkpoint"]).name == "step-00000009" and Path(metrics["checkpoint"]).is_dir()


def test_summary_csv_in_timm_format(finished_run: Path) -> None:
    with (finished_run / "summary.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    assert [row[0] for row in rows[1:]] == ["0", "1"]


def test_resume_with_other_settings_is_refused(tmp_path: Path, finished_run: Path, data: Path) -> None:
    """Another model with the same parameter names, or another batch size, is named in the error."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    before = snapshot(run)
    config = load_config(None, train_args(run, data)[6:] + ["resume=auto", "epochs=3"],
                         model="linear_deit_tiny_patch16_224", output=str(run), data_dir=str(data))
    with pytest.raises(ConfigError, match="its model is 'softmax_deit_tiny_patch16_224', this run's is "
                                          "'linear_deit_tiny_patch16_224'"):
        loop.train(config)
    with pytest.raises(ConfigError, match="its batch_size is 4, this run's is 2"):
        _train(run, data, "resume=auto", "batch_size=2", "epochs=3")
    with pytest.raises(ConfigError, match="its aug_repeats is 0, this run's is 3"):
        _train(run, data, "resume=auto", "aug_repeats=3", "epochs=3")
    assert snapshot(run) == before


def test_a_checkpoint_saved_before_a_setting_existed_resumes_with_its_default(tmp_path: Path, finished_run: Path,
                                                                              data: Path) -> None:
    """A run's saved config without aug_repeats (it had none) had aug_repeats 0: resuming it with 0 continues."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    meta_path = run / "checkpoints" / "step-00000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["aug_repeats"]
    meta_path.write_text(json.dumps(meta))
    assert _train(run, data, "resume=auto", "epochs=3")["num_updates"] == 9


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path, finished_run: Path, data: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    (run / "checkpoints" / "step-00000006" / "model.safetensors").write_bytes(b"\x00" * 20)  # truncated
    lost = run / "checkpoints" / "step-00000005"  # a step folder that lost its meta.json
    shutil.copytree(run / "checkpoints" / "step-00000003", lost)
    (lost / "meta.json").unlink()
    leftover = run / "checkpoints" / ".tmp-step-00000007"  # as a run killed while writing a checkpoint leaves it
    leftover.mkdir()
    metrics = _train(run, data, "resume=auto", "epochs=3")
    assert not leftover.exists()
    assert "skipped 2 damaged newer checkpoint(s)" in caplog.text and "resuming from step-00000003" in caplog.text
    assert "step-00000005/meta.json is missing" in caplog.text
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"][-1]
    assert resume["checkpoint"].endswith("step-00000003") and resume["num_updates"] == 3
    assert metrics["num_updates"] == 9


@pytest.mark.parametrize("device_stage", [
    ("re_prob=1.0",),
    ("auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true", "re_prob=0.5"),
    ("auto_augment=rand-m9-mstd0.5-inc1", "augment_on_device=true", "decode_on_device=true", "re_prob=0.5"),
], ids=["random-erasing", "randaugment-on-device", "decode-on-device"])
def test_mid_epoch_resume_replays_the_device_stage(tmp_path: Path, data: Path, device_stage: tuple[str, ...]) -> None:
    """An image-folder run whose device stage draws per batch (random erasing of every image; RandAugment with
    augment_on_device) with one loader worker, resumed from a mid-epoch checkpoint, ends with the uninterrupted run's
    weights: the draws follow the per-batch seed, not the generator state the resume restores."""
    # A worker, not the main process, runs the per-sample seeding: in the main process it would reseed the generators
    # before every batch and hide a draw made outside the per-batch seed.
    _assert_mid_epoch_resume_is_exact(tmp_path, data, *device_stage, "workers=1")


def _assert_mid_epoch_resume_is_exact(tmp_path: Path, data: Path, *extra: str) -> None:
    """Train 2 epochs of 3 updates, resume a copy from its checkpoint after update 1, and require the same weights."""
    extra = (*extra, "checkpoint_interval=1", "checkpoint_keep=50")
    full = tmp_path / "full"
    _train(full, data, *extra)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed, symlinks=True)
    for later in (resumed / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > 1:  # keep update 1 of the 3 in epoch 0
            shutil.rmtree(later)
    metrics = _train(resumed, data, *extra, "resume=auto")
    events = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [e["num_updates"] for e in events if e["event"] == "resume"] == [1]
    assert metrics["num_updates"] == 6
    a = load_file(str(full / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-00000006" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


def test_mid_epoch_resume_replays_repeated_augmentation(tmp_path: Path, data: Path) -> None:
    """aug_repeats=3 with one loader worker: the copies' per-draw seeds replay after a mid-epoch resume."""
    _assert_mid_epoch_resume_is_exact(tmp_path, data, "aug_repeats=3", "workers=1")


def test_mid_epoch_resume_replays_fashion_mnists_crops_on_the_device(tmp_path: Path) -> None:
    """Fashion-MNIST with augment_on_device (crop and flip per batch on the device, GreyBatchAugment) and one loader
    worker, resumed from a mid-epoch checkpoint, ends with the uninterrupted run's weights."""
    data = write_fashion_mnist_idx(tmp_path / "fm")
    _assert_mid_epoch_resume_is_exact(tmp_path, data, "dataset=fashion_mnist", "img_size=28", "patch_size=7",
                                      "augment_on_device=true", "crop_pad=2", "hflip=0.5", "workers=1")


class _FakeAccelerator:
    """Stands in for a 2-process accelerator: ``reduce`` adds the other process's tensor."""

    num_processes = 2

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor + self.other


def test_training_loss_is_the_mean_over_all_processes() -> None:
    """Process 0 saw 3 losses summing to 3.0, process 1 saw 1 loss of 5.0: the mean is 8/4, not rank 0's 1.0."""
    accelerator = _FakeAccelerator(torch.tensor([5.0, 1.0]))
    assert loop.mean_over_processes(torch.tensor(3.0), 3, accelerator) == pytest.approx(2.0)


def test_warns_when_the_device_or_launcher_changes_the_request(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    class OneCpuProcess:
        is_main_process = True
        num_processes = 1
        device = torch.device("cpu")

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what accelerate launch --num_processes 2 (no --multi_cpu) sets
    loop.warn_about_changed_settings(TrainConfig(precision="fp16"), OneCpuProcess())
    assert "precision=fp16 has no effect on CPU" in caplog.text
    assert "accelerate launch --cpu started one process" in caplog.text


def test_a_channels_last_run_trains_the_default_runs_weights(tmp_path: Path, data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """channels_last=true puts the model's 4-d weights in channels-last memory (seen by the evaluation), writes the
    same checkpoint keys and, on the CPU, the weights of the default run."""
    layouts = []
    evaluate = loop.evaluate

    def spy(model, *args, **kwargs):
        weight = next(p for p in model.parameters() if p.dim() == 4)
        layouts.append(weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", spy)
    _train(tmp_path / "default", data, "epochs=1")
    _train(tmp_path / "channels_last", data, "epochs=1", "channels_last=true")
    assert layouts == [False, True]
    a = load_file(str(tmp_path / "default" / "checkpoints" / "step-00000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "channels_last" / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path: Path, finished_run: Path, data: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    before = snapshot(run / "checkpoints")
    capsys.readouterr()
    metrics = _train(run, data, "resume=auto")
    assert "is already finished (epoch 2 of 2, 6 updates); nothing to train" in capsys.readouterr().out
    assert snapshot(run / "checkpoints") == before and metrics["checkpoint"].endswith("step-00000006")
    assert metrics["num_updates"] == 6


def test_write_atomic_writes_text_or_bytes_and_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    checkpoint.write_atomic(tmp_path / "a.txt", "text")
    checkpoint.write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text() == "text" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # a file cannot replace a folder
        checkpoint.write_atomic(tmp_path / "folder", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "folder"]
