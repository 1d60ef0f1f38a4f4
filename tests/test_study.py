"""The Fashion-MNIST study pipeline (issue 7) end to end in its --quick form, and its aggregation over seeds."""
from __future__ import annotations

import csv
import importlib.util
import statistics
from pathlib import Path

import pytest

from vitzoo.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fashion_mnist_study", ROOT / "scripts" / "fashion_mnist_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_summarize_means_and_spreads_over_seeds():
    rows = [
        dict(model="m", family="f", dataset="fashion_mnist", img_size="28", top1=str(t), top5="99", updates="10",
             train_seconds=str(s))
        for t, s in ((80.0, 10), (82.0, 12), (87.0, 14))
    ]
    (row,) = study.summarize(rows)
    assert row["top1"] == pytest.approx(83.0)
    assert row["top1_std"] == pytest.approx(statistics.stdev([80, 82, 87]), abs=1e-3)
    assert (row["top1_min"], row["top1_max"], row["seeds"], row["train_seconds"]) == (80.0, 87.0, 3, 12.0)


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_quick_study_writes_summary_bench_and_front(tmp_path: Path):
    # --jobs 2: the seeds train in two child processes, which must receive the key=value override too
    study.main(["--quick", "--seeds", "0", "1", "--jobs", "2", "--families", "softmax", "linear",
                "--out", str(tmp_path), "batch_size=16"])
    with (tmp_path / "summary.csv").open() as handle:
        summary = {row["family"]: row for row in csv.DictReader(handle)}
    assert set(summary) == {"softmax", "linear"}
    for family, row in summary.items():
        with (tmp_path / "seed0.csv").open() as a, (tmp_path / "seed1.csv").open() as b:
            seeds = [float(r["top1"]) for r in [*csv.DictReader(a), *csv.DictReader(b)] if r["family"] == family]
        assert float(row["top1"]) == pytest.approx(statistics.fmean(seeds), abs=1e-3) and row["seeds"] == "2"
        assert row["updates"] == "16"  # 256 images at batch_size=16 (the override), not the recipe's 32
    with (tmp_path / "bench.csv").open() as handle:
        bench = list(csv.DictReader(handle))
    assert {r["status"] for r in bench} == {"ok"} and all(float(r["infer_samples_per_sec"]) > 0 for r in bench)
    assert (tmp_path / "plots" / "top1_vs_throughput.png").stat().st_size > 0
    with (tmp_path / "plots" / "pareto_front.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) >= 1


def test_an_interrupted_seed_resumes_without_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    columns = study.fashion_mnist_zoo.COLUMNS
    finished = dict.fromkeys(columns, "1") | {"family": "softmax", "model": "softmax_deit_tiny_patch16_224",
                                              "status": "ok"}
    cut_off = dict.fromkeys(columns, "2") | {"family": "linear", "model": "linear_deit_tiny_patch16_224",
                                             "status": "ok"}
    study.pareto.write_csv(tmp_path / "seed0.csv", [finished], columns)
    study.pareto.write_csv(tmp_path / "seed0.part.csv", [cut_off], columns)  # the row a killed run had flushed
    trained = []

    def fake_zoo(argv):
        families = argv[argv.index("--families") + 1:argv.index("--results")]
        trained.extend(families)
        part = Path(argv[argv.index("--results") + 1])
        rows = [dict.fromkeys(columns, "3") | {"family": f, "model": f, "status": "ok"} for f in families]
        study.pareto.write_csv(part, rows, columns)

    monkeypatch.setattr(study.fashion_mnist_zoo, "main", fake_zoo)
    rows = study.train_seed(tmp_path, 0, ["softmax", "linear", "h3"], [])
    assert trained == ["h3"]
    assert {r["family"]: r["top1"] for r in rows} == {"softmax": "1", "linear": "2", "h3": "3"}
    assert not (tmp_path / "seed0.part.csv").exists()
    with (tmp_path / "seed0.csv").open() as handle:
        assert [r["family"] for r in csv.DictReader(handle)] == ["softmax", "linear", "h3"]


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
        "--time-budget", "0", "--results", str(tmp_path / "seed0.part.csv"), "--output", str(tmp_path / "runs"),
        "batch_size=32"])
    assert failed == ["linear"]
    with (tmp_path / "seed0.part.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["family"], r["status"]) for r in rows] == [("linear", "error: RuntimeError: boom"), ("softmax", "ok")]
    assert float(rows[1]["top1"]) >= 0.0
    # the failed family is not "done": a resumed study trains it again
    assert [r["family"] for r in study._seed_rows(tmp_path, 0)] == ["softmax"]
