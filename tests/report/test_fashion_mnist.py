"""The Fashion-MNIST tables: one row per family with the provenance line, and the study's ranking."""
import json
from pathlib import Path

import pytest

from vitzoo.bench.common import read_csvs, write_csv
from vitzoo.report import fashion_mnist
from vitzoo.report.fashion_mnist import budget_table, study_table


def test_budget_table_rows_and_provenance(tmp_path):
    columns = ("model", "family", "top1", "top5", "param_count", "updates", "train_seconds", "eval_seconds")
    write_csv(tmp_path / "cpu.csv", [
        dict(model="softmax_deit_tiny_patch16_224", family="softmax", top1=81.27, top5=99.38, param_count=0.21,
             updates=800, train_seconds=22.8, eval_seconds=1.8),
        dict(model="h3_deit_tiny_patch16_224", family="h3", top1=84.7, top5=99.0, param_count=0.214, updates=800,
             train_seconds=31.1, eval_seconds=1.7),
    ], columns)
    (tmp_path / "cpu.json").write_text(json.dumps({
        "machine": "a 2-core CPU", "torch": "2.14.1", "kernel_backend": "reference", "date": "2026-12-04T14:47Z",
        "command": "bash scripts/run.sh", "wall_time_s": {"zoo": 354, "whole command": 368}}))
    table = budget_table(tmp_path.relative_to(tmp_path) / "cpu.csv", tmp_path)
    assert "| h3 | `h3_deit_tiny_patch16_224` | 84.70 | 99.00 | 0.21 | 800 | 31.1 | 1.7 |" in table
    assert ("Measured on a 2-core CPU, on 2026-12-04 (torch 2.14.1, reference kernels) from a clean clone: 354 s for "
            "the 2 families, 6 min 8 s with the set-up check (`bash scripts/run.sh`); results file `cpu.csv`.") in table


def _seed_rows(model: str, family: str, top1: list[float], **columns) -> list[dict]:
    return [dict(seed=seed, model=model, family=family, top1=value, **columns) for seed, value in enumerate(top1)]


def test_study_table_averages_the_seeds_ranks_by_mean_top1_and_rounds_half_up(tmp_path):
    columns = ("seed", "model", "family", "patch_size", "epochs", "top1")
    write_csv(tmp_path / "runs.csv", [
        *_seed_rows("softmax_deit_tiny_patch16_224", "softmax", [85.0, 86.0, 86.5], patch_size=4, epochs=60),
        *_seed_rows("inline_deit_tiny_patch16_224", "inline", [88.3, 88.45, 88.5], patch_size=2, epochs=100),
    ], columns)
    write_csv(tmp_path / "bench.csv", [
        dict(model="softmax_deit_tiny_patch16_224", infer_samples_per_sec=352176.62, train_samples_per_sec=76807.68),
        dict(model="inline_deit_tiny_patch16_224", infer_samples_per_sec=101812.4, train_samples_per_sec=35175.0),
    ], ("model", "infer_samples_per_sec", "train_samples_per_sec"))
    lines = study_table(tmp_path / "runs.csv", [tmp_path / "bench.csv"]).splitlines()
    assert lines[0].startswith("| family | patch | epochs | seeds | top-1 (mean +- std) |")
    # inline: mean 88.41667 -> 88.417 -> 88.42; std 0.1041 -> 0.104 -> 0.10
    assert lines[2] == "| inline | 2 | 100 | 3 | 88.42 +- 0.10 | 88.30 / 88.50 | 101,812 | 35,175 |"
    # softmax: mean 85.8333 -> 85.833 -> 85.83; std 0.7638 -> 0.764 -> 0.76
    assert lines[3] == "| softmax (reference line) | 4 | 60 | 3 | 85.83 +- 0.76 | 85.00 / 86.50 | 352,177 | 76,808 |"


def test_two_places_rounds_the_written_decimal_half_up():
    assert fashion_mnist._two_places(0.125) == "0.13" and fashion_mnist._two_places("0.125") == "0.13"
    assert fashion_mnist._two_places(0.145) == "0.15"  # 0.14499... as a binary float


def test_study_table_shows_one_seed_without_a_spread_and_a_missing_benchmark_as_dashes(tmp_path):
    write_csv(tmp_path / "runs.csv", _seed_rows("qtvit_1", "qtvit", [93.5], epochs=60),
              ("seed", "model", "family", "epochs", "top1"))
    write_csv(tmp_path / "bench.csv", [], ("model", "infer_samples_per_sec", "train_samples_per_sec"))
    lines = study_table(tmp_path / "runs.csv", [tmp_path / "bench.csv"]).splitlines()
    assert lines[2] == "| QT-ViT-1 | - | 60 | 1 | 93.50 | 93.50 / 93.50 | - | - |"


def _imagenet_shape_run(model, seed, top1, weights="model", finished=True):
    bench = {"infer_img_size": "224", "infer_samples_per_sec": "1000.0", "precision": "bf16", "compile": "none",
             "device": "NVIDIA H200"}
    return {"model": model, "seed": seed, "per_epoch": [{"top1": top1 - 5, "top5": 90.0}],
            "final_eval": {"top1": top1, "top5": 99.0, "weights": weights} if finished else None,
            "end_to_end_img_per_s": 900.0, "steady_end_to_end_img_per_s": 950.0, "model_only_train_img_per_s": 1000.0,
            "end_to_end_over_model_only": 0.9, "infer_img_per_s": 1000.0, "bench": bench,
            "status": "ok" if finished else "unfinished", "git_revision": "abc1234",
            "pipeline": fashion_mnist.DEFAULT_PIPELINE}


def test_imagenet_shape_points_average_finished_seeds_and_table_marks_ema(tmp_path):
    data = {"info": {"device": "NVIDIA H200", "cpu_count": 16, "torch": "2", "torchvision": "0", "pillow": "12",
                     "date": "2026-12-04", "dataset": "d", "recipe": "r", "end_to_end": "e", "model_only": "m",
                     "commands": ["c"]},
            "rows": [_imagenet_shape_run("softmax_deit_tiny_patch16_224", 0, 50.0),
                     _imagenet_shape_run("softmax_deit_tiny_patch16_224", 1, 54.0),
                     _imagenet_shape_run("qt_deit_tiny_patch16_224", 0, 48.0, weights="ema"),
                     _imagenet_shape_run("qtvit_1", 0, 70.0, finished=False),
                     # seed 0 again through another pipeline: shown in the table, not averaged into the plot
                     _imagenet_shape_run("softmax_deit_tiny_patch16_224", 0, 80.0)
                     | {"pipeline": "device RandAugment, CUDA-graph steps"}]}
    accuracy, bench = fashion_mnist.imagenet_shape_points(data)
    by_model = {row["model"]: row for row in accuracy}
    assert set(by_model) == {"softmax_deit_tiny_patch16_224", "qt_deit_tiny_patch16_224"}  # unfinished left out
    assert by_model["softmax_deit_tiny_patch16_224"]["top1"] == 52.0
    assert by_model["softmax_deit_tiny_patch16_224"]["top1_std"] == round(2 * 2 ** 0.5, 3)
    assert [row["infer_samples_per_sec"] for row in bench] == ["1000.0", "1000.0"]
    # two seeds through another pipeline outnumber the recipe's one: the plot takes that pipeline's mean
    faster = {"pipeline": "device RandAugment, CUDA-graph steps"}
    data_more = {**data, "rows": [*data["rows"], _imagenet_shape_run("qt_deit_tiny_patch16_224", 1, 60.0) | faster,
                                  _imagenet_shape_run("qt_deit_tiny_patch16_224", 2, 62.0) | faster]}
    by_model = {row["model"]: row for row in fashion_mnist.imagenet_shape_points(data_more)[0]}
    assert by_model["qt_deit_tiny_patch16_224"]["top1"] == 61.0
    assert by_model["softmax_deit_tiny_patch16_224"]["top1"] == 52.0
    results = tmp_path / "h200.json"
    results.write_text(json.dumps(data))
    table = fashion_mnist.imagenet_shape_table(results)
    assert "48.00 / 99.00 (EMA)" in table and "| unfinished |" in table and "abc1234" not in table
    assert "| device RandAugment, CUDA-graph steps |" in table and "| loader RandAugment, eager steps |" in table
    summary = fashion_mnist.imagenet_shape_summary(data_more | {"rows": [
        *data_more["rows"], _imagenet_shape_run("qt_deit_tiny_patch16_224", 3, 61.0) | faster | {
            "runs_per_gpu": 3, "end_to_end_img_per_s": 300.0, "end_to_end_over_model_only": None}]})
    assert "| `softmax_deit_tiny_patch16_224` | loader RandAugment, eager steps | 2 of 2 | 52.00 +- 2.83 | " \
           "50.00 / 54.00 | 900, 900 | 1,000 | 0.90, 0.90 |" in summary
    assert "| `qtvit_1` | loader RandAugment, eager steps | 0 of 1 | - | - |" in summary
    # the run that shared its GPU counts for accuracy, not speed
    assert "| `qt_deit_tiny_patch16_224` | device RandAugment, CUDA-graph steps | 3 of 3 | 61.00 +- 1.00 | " \
           "60.00 / 62.00 | 900, 900 | 1,000 | 0.90, 0.90 |" in summary
    assert fashion_mnist.imagenet_shape_plot(results, tmp_path / "plot.png")[0].stat().st_size > 0


def test_imagenet_shape_plot_takes_the_given_speeds_and_names_a_model_without_one(tmp_path, monkeypatch):
    data = {"info": {}, "rows": [_imagenet_shape_run("softmax_deit_tiny_patch16_224", 0, 50.0),
                                 _imagenet_shape_run("qt_deit_tiny_patch16_224", 0, 48.0)]}
    results = tmp_path / "h200.json"
    results.write_text(json.dumps(data))
    plotted = []
    monkeypatch.setattr(fashion_mnist.pareto, "save_plots",
                        lambda bench, accuracy, targets, **options: plotted.extend(read_csvs(bench)) or [])
    fashion_mnist.imagenet_shape_plot(results, tmp_path / "plot.png",
                                      {"softmax_deit_tiny_patch16_224": 7.0e4, "qt_deit_tiny_patch16_224": 6.0e4})
    assert {(row["model"], float(row["infer_samples_per_sec"]), row["compile"]) for row in plotted} == {
        ("softmax_deit_tiny_patch16_224", 7.0e4, "cuda-graph"), ("qt_deit_tiny_patch16_224", 6.0e4, "cuda-graph")}
    with pytest.raises(ValueError, match="qt_deit_tiny_patch16_224"):
        fashion_mnist.imagenet_shape_plot(results, tmp_path / "plot.png", {"softmax_deit_tiny_patch16_224": 7.0e4})


def test_run_pipeline_names_where_randaugment_and_the_steps_ran():
    assert fashion_mnist.run_pipeline({}) == fashion_mnist.DEFAULT_PIPELINE
    assert fashion_mnist.run_pipeline({"augment_on_device": True, "cuda_graph": True}) == \
        "device RandAugment, CUDA-graph steps"
    assert fashion_mnist.run_pipeline({"augment_on_device": True}) == "device RandAugment, eager steps"
    assert fashion_mnist.run_pipeline({"augment_on_device": True, "decode_on_device": True, "cuda_graph": True,
                                       "channels_last": True}) == \
        "device RandAugment, CUDA-graph steps, device decoding, channels-last"
    assert fashion_mnist.run_pipeline({"augment_on_device": True, "crop_on_device": True, "cuda_graph": True}) == \
        "device RandAugment, CUDA-graph steps, device crops"
    assert fashion_mnist.run_pipeline({"augment_on_device": True, "crop_on_device": True, "cuda_graph": True,
                                       "dataset": "packed"}) == \
        "device RandAugment, CUDA-graph steps, device crops, packed store"


def test_training_profile_table_has_a_row_per_run_and_the_runs_provenance(tmp_path):
    info = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "date": "2026-12-07T06:00:00Z",
            "cpu_count": 16, "git_revision": "abcdef0123", "command": "python benchmarks/profile_training.py ..."}
    profile = {"updates": 39, "wall_ms": 20.5, "img_per_s_from_wall": 12487.8, "loop_other_ms": 1.25,
               "device_busy_ms": 18.04, "device_kernel_ms": 18.5, "launches": 312.4, "kernels": [],
               "stages": {"load": {"ranges": 39, "host_ms": 3.21, "device_ms": 0.0},
                          "decode": {"ranges": 39, "host_ms": 2.5, "device_ms": 0.72},
                          "augment": {"ranges": 39, "host_ms": 2.04, "device_ms": 1.3},
                          "step": {"ranges": 39, "host_ms": 4.4, "device_ms": 16.9}}}
    path = tmp_path / "h100.json"
    path.write_text(json.dumps({"runs": [
        {"config_file": "configs/fashion_imagenet/softmax.yaml", "model": "softmax_deit_tiny_patch16_224",
         "overrides": ["workers=12", "cuda_graph=true"], "info": info, "profile": profile},
        {"config_file": "configs/fashion_imagenet/linear.yaml", "model": "linear_deit_tiny_patch16_224",
         "overrides": [], "info": {**info, "git_revision": ""},
         "profile": {**profile, "stages": {"step": profile["stages"]["step"]}, "launches": None,
                     "device_busy_ms": None}},
    ]}))
    table = fashion_mnist.training_profile_table([path], [Path("results/h100.json")])
    assert ("| NVIDIA H100 80GB HBM3 | `softmax_deit_tiny_patch16_224` | workers=12 cuda_graph=true | 12,488 (20.5) "
            "| 3.2 / 0.0 | 2.5 / 0.7 | 2.0 / 1.3 | 4.4 / 16.9 | 1.2 | 18.0 | 312 | abcdef0 |") in table
    assert ("| NVIDIA H100 80GB HBM3 | `linear_deit_tiny_patch16_224` | - | 12,488 (20.5) | - | - | - "
            "| 4.4 / 16.9 | 1.2 | - | - | - |") in table
    assert ("NVIDIA H100 80GB HBM3, torch 2.11.0, triton 3.6.0, 2026-12-07, 16 CPU cores; each run's command is in "
            "`results/h100.json`") in table


def test_the_recipe_length_table_shows_each_runs_course_and_its_loss(tmp_path):
    finished = _imagenet_shape_run("h3_deit_tiny_patch16_224", 0, 76.05) | {
        "per_epoch": [{"epoch": e, "top1": 40.0 + e, "top5": 90.0} for e in range(31)], "epochs_done": 31,
        "train_loss_log": [[50, 2.2], [100, 2.4], [1200, 1.8]]}
    stopped = _imagenet_shape_run("qtvit_1", 0, 0.0, finished=False) | {
        "per_epoch": [{"epoch": e, "top1": 10.0 + e, "top5": 90.0} for e in range(17)], "epochs_done": 17,
        "train_loss_log": [[50, 0.29], [650, 0.21]]}
    results = tmp_path / "h100.json"
    section = {"info": {"device": "NVIDIA H100", "cpu_count": 16, "torch": "2", "date": "d", "dataset": "ds",
                        "recipe": "r", "pipelines": "p", "commands": ["c"]}, "rows": [stopped, finished]}
    results.write_text(json.dumps({"info": {}, "rows": [], "long": section}))
    lines = fashion_mnist.recipe_length_table(results, "long").splitlines()
    assert lines[2] == ("| `h3_deit_tiny_patch16_224` | ok | 31 | 40.0 / 49.0 / 59.0 / 70.0 (epoch 30) | "
                        "76.05 / 99.00 | 2.200 / 2.400 / 1.800 | 3 |")  # the spike at update 100 is the highest
    assert lines[3] == ("| `qtvit_1` | unfinished | 17 | 10.0 / 19.0 / - / 26.0 (epoch 16) | - | "
                        "0.290 / 0.290 / 0.210 | 2 |")
    assert lines[-1].startswith("Measured on NVIDIA H100 (16 CPU cores)") and lines[-1].endswith("Commands: `c`.")
