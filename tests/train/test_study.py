"""The Fashion-MNIST study pipeline end to end in its --quick form, and its aggregation over seeds."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from vitzoo.train.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("fashion_mnist_study", ROOT / "scripts" / "fashion_mnist_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_quick_study_writes_summary_bench_and_front(tmp_path: Path):
    # --jobs 2: the two seeds train at once in child processes, which must receive the key=value override too (one
    # family: each child imports torch anew; tests/report/test_pareto.py covers fronts of several models)
    study.main(["--quick", "--seeds", "0", "1", "--jobs", "2", "--families", "linear",
                "--out", str(tmp_path), "--runs", str(tmp_path / "runs"), "batch_size=16"])
    assert not (tmp_path / "summary.csv").exists()  # the tables and plots average runs.csv themselves
    with (tmp_path / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert sorted((r["family"], r["seed"]) for r in runs) == [("linear", "0"), ("linear", "1")]
    assert {r["updates"] for r in runs} == {"16"}  # 256 images at batch_size=16 (the override), not the recipe's 32
    mean_top1 = {r["model"]: statistics.fmean(float(s["top1"]) for s in runs if s["model"] == r["model"])
                 for r in runs}
    with (tmp_path / "bench.csv").open() as handle:
        bench = list(csv.DictReader(handle))
    assert {r["status"] for r in bench} == {"ok"} and all(float(r["infer_samples_per_sec"]) > 0 for r in bench)
    assert (tmp_path / "plots" / "top1_vs_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every trained model is joined with its benchmark row under its mean top-1 over the seeds.
    with (tmp_path / "plots" / "joined.csv").open() as handle:
        joined = {row["model"]: float(row["top1"]) for row in csv.DictReader(handle)}
    assert joined == pytest.approx(mean_top1, abs=1e-3) and len(joined) == 1
    with (tmp_path / "plots" / "pareto_front.csv").open() as handle:
        front = [row["model"] for row in csv.DictReader(handle)]
    assert front == list(mean_top1)


def test_an_interrupted_study_resumes_without_retraining(tmp_path: Path):
    columns = study.fashion_mnist_zoo.COLUMNS

    def row(family: str, top1: str, status: str = "ok") -> dict[str, str]:
        return dict.fromkeys(columns, top1) | {"family": family, "model": family, "status": status, "epochs": "60",
                                               "patch_size": "4"}

    study.pareto.write_csv(tmp_path / "runs.csv", [row("softmax", "1") | {"seed": "0"}], study.RUN_COLUMNS)
    study.pareto.write_csv(tmp_path / "seed0.linear.part.csv", [row("linear", "2")], columns)  # flushed, then killed
    study.pareto.write_csv(tmp_path / "seed0.h3.part.csv", [row("h3", "", "error: RuntimeError: boom")], columns)
    study.pareto.write_csv(tmp_path / "seed1.h3.part.csv", [row("h3", "3")], columns)
    assert study.pending_units(tmp_path, [0, 1], study.recipes(["softmax", "linear", "h3"])) == [
        (0, "h3"), (1, "softmax"), (1, "linear")]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.csv"]  # part files folded in
    with (tmp_path / "runs.csv").open() as handle:
        assert [(r["seed"], r["family"], r["top1"]) for r in csv.DictReader(handle)] == [
            ("0", "softmax", "1"), ("0", "linear", "2"), ("1", "h3", "3")]


def test_rows_of_another_recipe_are_trained_again(tmp_path: Path):
    columns = study.fashion_mnist_zoo.COLUMNS
    study.pareto.write_csv(tmp_path / "runs.csv", [
        dict.fromkeys(columns, "1") | {"seed": "0", "family": family, "status": "ok", "epochs": "60", "patch_size": "4"}
        for family in ("softmax", "qt", "deltanet")], study.RUN_COLUMNS)
    chosen = study.recipes(["softmax", "qt", "deltanet"])
    assert chosen == {"softmax": (study.EPOCHS, study.PATCH_SIZE), "qt": (study.FAMILY_RECIPES["qt"]["epochs"], 4),
                      "deltanet": (study.FAMILY_RECIPES["deltanet"]["epochs"],
                                   study.FAMILY_RECIPES["deltanet"]["patch_size"])}
    assert chosen["qt"].epochs != 60 and chosen["deltanet"] != (60, 4)
    # the 60-epoch QT row and the 60-epoch patch-4 DeltaNet row are from an older recipe
    assert study.pending_units(tmp_path, [0], chosen) == [(0, "qt"), (0, "deltanet")]
    assert study.pending_units(tmp_path, [0], study.recipes(["softmax", "qt", "deltanet"], 60, ["patch_size=4"])) == []
    assert study.recipes(["qtvit"])["qtvit"].patch_size is None  # its own architecture has no patches


def test_units_run_in_parallel_processes_until_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started = []

    class FinishedProcess:
        def __init__(self, command, env):
            started.append((command[command.index("--unit") + 1:], env.get("CUDA_VISIBLE_DEVICES")))
            assert command[command.index("--runs") + 1] == str(tmp_path / "runs")  # the children's run folders

        def poll(self):
            return 0

    monkeypatch.setattr(study.subprocess, "Popen", FinishedProcess)
    monkeypatch.setattr(study, "_visible_gpus", lambda: ["0", "1"])
    args = study.argparse.Namespace(overrides=["lr=1e-3"], out=tmp_path, runs=tmp_path / "runs", epochs=None,
                                    quick=False, jobs=2, no_new_after=None)
    study.run_units(args, [(0, "softmax"), (0, "h3"), (1, "softmax")])
    assert started == [(["0", "softmax"], "0"), (["0", "h3"], "1"), (["1", "softmax"], "0")]
    started.clear()
    args.no_new_after = -1.0
    study.run_units(args, [(0, "softmax")])
    assert started == []


def test_a_stopped_study_stops_its_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    processes = []

    class RunningProcess:
        def __init__(self, command, env):
            self.terminated = self.waited = False
            processes.append(self)

        def poll(self):
            raise KeyboardInterrupt  # the study is stopped while its runs are still going

        def terminate(self):
            self.terminated = True

        def wait(self):
            self.waited = True

    monkeypatch.setattr(study.subprocess, "Popen", RunningProcess)
    monkeypatch.setattr(study, "_visible_gpus", lambda: [])
    args = study.argparse.Namespace(overrides=[], out=tmp_path, runs=tmp_path / "runs", epochs=1, quick=False,
                                    jobs=2, no_new_after=None)
    with pytest.raises(KeyboardInterrupt):
        study.run_units(args, [(0, "softmax"), (0, "h3"), (1, "softmax")])
    assert len(processes) == 2 and all(p.terminated and p.waited for p in processes)


def test_a_unit_trains_one_family_into_its_part_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    monkeypatch.setattr(study.fashion_mnist_zoo, "main", calls.append)
    study.main(["--unit", "2", "h3", "--out", str(tmp_path), "--runs", str(tmp_path / "runs"), "--epochs", "3",
                "lr=1e-3"])
    (argv,) = calls
    assert argv[argv.index("--families") + 1] == "h3" and "seed=2" in argv and "lr=1e-3" in argv
    assert argv[argv.index("--results") + 1] == str(tmp_path / "seed2.h3.part.csv")
    # its run folder is under --runs, and a cut-off run there is continued
    assert argv[argv.index("--output") + 1] == str(tmp_path / "runs" / "seed2") and "--resume" in argv
    assert argv[argv.index("--epochs") + 1] == "3"
    calls.clear()
    study.main(["--unit", "0", "qt", "--out", str(tmp_path)])  # without --epochs: the family's own recipe
    assert calls[0][calls[0].index("--epochs") + 1] == str(study.FAMILY_RECIPES["qt"]["epochs"])
    calls.clear()
    study.main(["--unit", "0", "deltanet", "--out", str(tmp_path)])
    assert "patch_size=2" in calls[0] and "patch_size=4" not in calls[0]
    assert calls[0][calls[0].index("--epochs") + 1] == "100"
    calls.clear()
    study.main(["--unit", "0", "deltanet", "--out", str(tmp_path), "patch_size=7"])  # the user's patch size wins
    (argv,) = calls
    assert "patch_size=7" in argv and "patch_size=2" not in argv


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_a_failing_family_is_recorded_and_the_zoo_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_train = study.fashion_mnist_zoo.train

    def train(config):
        if config.model.startswith("linear"):
            raise RuntimeError("boom\nsecond line")
        return real_train(config)

    monkeypatch.setattr(study.fashion_mnist_zoo, "train", train)
    failed = study.fashion_mnist_zoo.main([
        "--families", "linear", "softmax", "--train-samples", "64", "--epochs", "1", "--val-samples", "100",
        "--time-budget", "0", "--results", str(tmp_path / "seed0.zoo.part.csv"), "--output", str(tmp_path / "runs"),
        "batch_size=32"])
    assert failed == ["linear"]
    with (tmp_path / "seed0.zoo.part.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["family"], r["status"]) for r in rows] == [("linear", "error: RuntimeError: boom"), ("softmax", "ok")]
    # softmax's row is its real evaluation: 64 samples at batch 32 for one epoch, scored on the first 100 test images
    # (so top-1 is a whole percentage).
    softmax = rows[1]
    assert softmax["model"] == "softmax_deit_tiny_patch16_224"
    assert (softmax["updates"], softmax["eval_samples"]) == ("2", "100")
    assert float(softmax["top1"]).is_integer()
    # the failed family is not "done": a resumed study trains it again
    assert [r["family"] for r in study._finished_rows(tmp_path, study._part_files(tmp_path))] == ["softmax"]


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_a_cut_off_run_continues_from_its_checkpoint_to_the_same_result(tmp_path: Path):
    zoo = study.fashion_mnist_zoo

    def run(name: str, *extra: str) -> tuple[dict[str, str], list[dict]]:
        zoo.main(["--families", "softmax", "--train-samples", "64", "--epochs", "2", "--val-samples", "100",
                  "--results", str(tmp_path / f"{name}.csv"), "--output", str(tmp_path / "runs"), "batch_size=32",
                  *extra])
        with (tmp_path / f"{name}.csv").open() as handle:
            (row,) = csv.DictReader(handle)
        log = [json.loads(line) for line in (tmp_path / "runs" / "softmax" / "log.jsonl").read_text().splitlines()]
        return row, log

    whole, _ = run("whole")
    checkpoints = tmp_path / "runs" / "softmax" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000002", "step-00000004"]
    # cut off after its first epoch: the last epoch's checkpoint is gone
    shutil.rmtree(checkpoints / "step-00000004")
    (checkpoints / "last").unlink(missing_ok=True)
    continued, log = run("continued", "--resume")
    (resume,) = [record for record in log if record["event"] == "resume"]
    assert resume["num_updates"] == 2 and resume["checkpoint"].endswith("step-00000002")
    # the first epoch's time, trained before the cut, is part of the run's training time
    first_epoch = [record["epoch_time"] for record in log if record["event"] == "eval" and record["epoch"] == 0]
    assert float(continued["train_seconds"]) >= first_epoch[-1]
    # training resumes exactly: the same weights, so the same evaluation
    assert continued["updates"] == whole["updates"] == "4"
    assert (continued["top1"], continued["top5"]) == (whole["top1"], whole["top5"])
    # another learning rate is another run: replaced, not continued
    _, log = run("other", "--resume", "lr=1e-3")
    assert [record["event"] for record in log].count("resume") == 0


def test_the_epochs_before_a_resume_count_once_each(tmp_path: Path):
    records = [{"event": "start"}, {"event": "eval", "epoch": 0, "epoch_time": 2.0},
               {"event": "eval", "epoch": 1, "epoch_time": 9.0},  # epoch 1 was trained again after a first resume
               {"event": "resume", "epoch": 1}, {"event": "eval", "epoch": 1, "epoch_time": 3.0},
               {"event": "eval", "epoch": 2, "epoch_time": 4.0}, {"event": "resume", "epoch": 3},
               {"event": "eval", "epoch": 3, "epoch_time": 100.0}]
    log = "\n".join(json.dumps(record) for record in records) + '\n{"event": "ev'  # a line cut by a stop
    (tmp_path / "log.jsonl").write_text(log)
    assert study.fashion_mnist_zoo.seconds_before_resume(tmp_path) == 2.0 + 3.0 + 4.0
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(record) for record in records[:3]))
    assert study.fashion_mnist_zoo.seconds_before_resume(tmp_path) == 0.0
    (tmp_path / "log.jsonl").unlink()
    assert study.fashion_mnist_zoo.seconds_before_resume(tmp_path) == 0.0


def test_only_a_readable_run_of_the_same_settings_is_the_same_run(tmp_path: Path):
    zoo = study.fashion_mnist_zoo
    config = zoo.load_config(zoo.ROOT / "configs" / "fashion_mnist.yaml", ["lr=2e-3"],
                             model=zoo.MODELS["softmax"], output=str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    saved = yaml.safe_dump(config.to_dict(), sort_keys=False)
    assert "lr: 0.002\n" in saved
    (tmp_path / "config.yaml").write_text(saved)
    assert zoo.same_run(tmp_path, config)
    (tmp_path / "config.yaml").write_text(saved.replace("lr: 0.002", "lr: 0.001"))
    assert not zoo.same_run(tmp_path, config)
    (tmp_path / "config.yaml").write_bytes(b"model: [\xff")
    assert not zoo.same_run(tmp_path, config)


def test_the_benchmark_measures_each_family_at_its_patch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    zoo = study.fashion_mnist_zoo
    chosen = study.recipes(["softmax", "deltanet"])
    study.pareto.write_csv(tmp_path / "runs.csv", [
        dict.fromkeys(zoo.COLUMNS, "90") | {"seed": "0", "family": family, "model": zoo.MODELS[family], "status": "ok",
                                            "epochs": str(recipe.epochs), "patch_size": str(recipe.patch_size)}
        for family, recipe in chosen.items()], study.RUN_COLUMNS)
    calls = []

    def bench(argv: list[str]) -> None:
        calls.append(argv)
        models = argv[argv.index("--models") + 1:argv.index("--img-sizes")]
        study.pareto.write_csv(Path(argv[argv.index("--results-file") + 1]),
                               [{"model": model, "infer_samples_per_sec": "1"} for model in models],
                               ("model", "infer_samples_per_sec"))

    monkeypatch.setattr(study.bench, "main", bench)
    monkeypatch.setattr(study.pareto, "main", lambda argv: None)
    study.main(["--seeds", "0", "--families", "softmax", "deltanet", "--out", str(tmp_path)])  # nothing to train
    kwargs = {argv[argv.index("--models") + 1]: argv[argv.index("--model-kwargs") + 1:argv.index("--results-file")]
              for argv in calls}
    assert len(calls) == 2
    assert "patch_size=4" in kwargs[zoo.MODELS["softmax"]] and "patch_size=2" in kwargs[zoo.MODELS["deltanet"]]
    assert not (tmp_path / "summary.csv").exists()


def test_a_wrong_override_stops_the_study_and_the_zoo_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]):
    def fail(*args, **kwargs):
        raise AssertionError("nothing may run")

    monkeypatch.setattr(study, "run_units", fail)
    monkeypatch.setattr(study.fashion_mnist_zoo, "train", fail)
    with pytest.raises(SystemExit) as stopped:
        study.main(["--quick", "--families", "softmax", "--out", str(tmp_path), "patch_size=0"])
    assert stopped.value.code == 2 and "patch_size must be a positive integer or null, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        study.fashion_mnist_zoo.main(["--families", "softmax", "--results", str(tmp_path / "zoo.csv"), "lrr=1"])
    assert stopped.value.code == 2 and "did you mean 'lr'?" in capsys.readouterr().err
    assert not (tmp_path / "zoo.csv").exists()


def test_a_study_without_a_finished_run_benchmarks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(study, "run_units", lambda args, units: None)  # every run failed

    def bench(argv):
        raise AssertionError("no model to benchmark")

    monkeypatch.setattr(study.bench, "main", bench)
    with pytest.raises(SystemExit, match="not trained yet .*softmax seed 0"):
        study.main(["--seeds", "0", "--families", "softmax", "--out", str(tmp_path)])
