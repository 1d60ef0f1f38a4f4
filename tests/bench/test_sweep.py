"""vitzoo.bench.sweep on tiny models on the CPU: row format, failure rows, MACs against the analytic formula."""
from __future__ import annotations

import csv

import pytest
import timm
import torch

from vitzoo.bench import sweep as bench

TINY = ["linear_deit_tiny_patch16_224", "softmax_deit_tiny_patch16_224"]
FAST = ["--device", "cpu", "--batch-size", "2", "--num-warm-iter", "1", "--num-bench-iter", "2",
        "--latency-iters", "3", "--no-progress"]


def _read(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def linear_vit_macs(depth: int, img_size: int, dim: int = 192, heads: int = 3, patch: int = 16,
                    classes: int = 1000) -> int:
    """MACs of a DeiT with ReLU linear attention, derived by hand (batch 1, cls token, MLP ratio 4).

    Per block, N tokens of C channels, head dim d: qkv 3NC^2 + proj NC^2 + MLP 8NC^2 = 12NC^2; the linear attention
    state sum_i phi(k_i) v_i^T and its read phi(q_t)^T S are N*C*d each, the normaliser z and phi(q)^T z N*C each.
    fvcore also counts each affine LayerNorm as 5 operations per element (2 per block, 1 final): 5NC each.
    """
    grid = (img_size // patch) ** 2
    n, c, d = grid + 1, dim, dim // heads
    block = 12 * n * c * c + 2 * n * c * d + 2 * n * c + 2 * 5 * n * c
    patch_embed = grid * c * 3 * patch * patch
    return depth * block + patch_embed + 5 * n * c + c * classes


def test_rows_have_timm_columns_and_positive_numbers(tmp_path):
    out = tmp_path / "bench.csv"
    bench.main(["--models", *TINY, "--img-sizes", "32", "64", "--model-kwargs", "depth=2",
                "--results-file", str(out), *FAST])
    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header[:8]) == ("model", "infer_img_size", "infer_samples_per_sec", "infer_step_time",
                                 "infer_batch_size", "param_count", "infer_gmacs", "infer_macts")
    assert tuple(header) == bench.COLUMNS
    rows = _read(out)
    assert [(r["model"], r["infer_img_size"]) for r in rows] == [(m, s) for s in ("32", "64") for m in TINY]
    for row in rows:
        assert row["status"] == "ok", row["status"]
        for key in ("infer_samples_per_sec", "infer_step_time", "param_count", "infer_gmacs", "infer_latency_p50_ms",
                    "train_samples_per_sec", "train_step_time"):
            assert float(row[key]) > 0, key
        assert float(row["infer_latency_p90_ms"]) >= float(row["infer_latency_p50_ms"])
        assert row["peak_mem_mb"] == "" and row["device"] == "CPU"  # no peak-memory counter on the CPU
        assert row["infer_batch_size"] == "2" and row["train_batch_size"] == "2"
        assert row["precision"] == "fp32" and row["compile"] == "none" and row["model_kwargs"] == "depth=2"
        assert row["kernel_backend"] == "reference" and row["torch"] == torch.__version__ and row["timm"]
        # the model's own count, in millions, as the row records it (timm's benchmark rounds to 2 decimals)
        model = timm.create_model(row["model"], depth=2, img_size=int(row["infer_img_size"]))
        assert float(row["param_count"]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=6e-3)


@pytest.mark.parametrize("img_size", [32, 64, 224])
def test_gmacs_of_linear_model_match_the_formula(img_size, monkeypatch):
    monkeypatch.setattr(bench, "run_inference", lambda *args, **kwargs: {})  # only the count matters here
    config = bench.BenchConfig(bench="infer", model_kwargs={"depth": 2})
    (row,) = bench.bench_model("linear_deit_tiny_patch16_224", img_size, config)
    expected = linear_vit_macs(depth=2, img_size=img_size) / 1e9
    assert float(row["infer_gmacs"]) == pytest.approx(expected, rel=0.01)


def test_oom_and_errors_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real_inference, real_training = bench.run_inference, bench.run_training

    def inference(model, img_size, *args, **kwargs):
        if img_size == 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_inference(model, img_size, *args, **kwargs)

    def training(model, img_size, *args, **kwargs):
        if img_size == 48:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        if img_size == 32:
            raise ValueError("simulated failure\nsecond line")
        return real_training(model, img_size, *args, **kwargs)

    monkeypatch.setattr(bench, "run_inference", inference)
    monkeypatch.setattr(bench, "run_training", training)
    out = tmp_path / "bench.csv"
    bench.main(["--models", TINY[0], "--img-sizes", "64", "48", "32", "16", "--model-kwargs", "depth=1",
                "--no-macs", "--results-file", str(out), *FAST])
    rows = {int(r["infer_img_size"]): r for r in _read(out)}
    assert rows[64]["status"] == "oom" and rows[64]["infer_samples_per_sec"] == ""
    assert rows[48]["status"] == "oom (train)"
    assert float(rows[48]["infer_samples_per_sec"]) > 0 and rows[48]["train_samples_per_sec"] == ""
    assert rows[32]["status"] == "error (train): ValueError: simulated failure second line"
    assert rows[16]["status"] == "ok" and float(rows[16]["train_samples_per_sec"]) > 0


def test_model_build_error_and_time_budget():
    config = bench.BenchConfig(model_kwargs={"no_such_option": 1})
    (row,) = bench.bench_model("linear_deit_tiny_patch16_224", 32, config)
    assert row["status"].startswith("error: TypeError")
    rows = bench.run_benchmark(TINY, [32, 64], bench.BenchConfig(), time_budget=-1.0, progress=False)
    assert len(rows) == 4 and all(r["status"] == "skipped: time budget" for r in rows)


def test_helpers():
    assert bench.resolve_models(["linear_deit_tiny_*", "deit_tiny_patch16_224", "linear_deit_tiny_patch16_224"]) == [
        "linear_deit_tiny_patch16_224", "deit_tiny_patch16_224"]
    assert len(bench.resolve_models([bench.ALL_VITZOO])) >= 30
    with pytest.raises(ValueError, match="unknown model"):
        bench.resolve_models(["no_such_model"])
    # a misspelt name is told the closest registered ones, the closest first
    with pytest.raises(ValueError, match=r"unknown model 'inline_deit_tny_patch16_224' \(similar: "
                                         r"inline_deit_tiny_patch16_224, "):
        bench.resolve_models(["inline_deit_tny_patch16_224"])
    names = bench.resolve_models([bench.ALL_VITZOO])
    shards = [bench.shard(names, f"{i}/3") for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(names) and max(map(len, shards)) - min(map(len, shards)) <= 1
    assert bench.shard(names, None) == names
    for bad in ("3/3", "1", "a/2", "-1/2"):
        with pytest.raises(ValueError, match="--shard must be I/N"):
            bench.shard(names, bad)
    assert bench.parse_model_kwargs(["depth=2", "mixer=linear", "drop_path_rate=0.1"]) == {
        "depth": 2, "mixer": "linear", "drop_path_rate": 0.1}
    assert bench._scaled_batch(256, 1024, True) == 12 and bench._scaled_batch(256, 1024, False) == 256
    assert bench._scaled_batch(8, 32, True) == 8


def test_failed_mac_count_keeps_the_timings(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("trace failed")

    monkeypatch.setattr(bench, "count_gmacs", fail)
    monkeypatch.setattr(bench, "run_inference", lambda *args, **kwargs: {"infer_samples_per_sec": 1.0})
    (row,) = bench.bench_model("linear_deit_tiny_patch16_224", 32, bench.BenchConfig(bench="infer",
                                                                                      model_kwargs={"depth": 1}))
    assert row["status"] == "ok; gmacs: RuntimeError: trace failed"
    assert row["infer_gmacs"] == "" and row["infer_samples_per_sec"] == 1.0


def test_resume_benchmarks_only_the_pairs_the_file_lacks(tmp_path, monkeypatch):
    """A sweep cut off by its time budget is completed by a second call with --resume; measured rows are kept."""
    out = tmp_path / "bench.csv"
    args = ["--models", *TINY, "--img-sizes", "32", "--model-kwargs", "depth=1", "--results-file", str(out), *FAST]
    bench.main(args)
    first = _read(out)
    bench.main([*args[:4], "32", "48", *args[5:], "--time-budget", "0", "--resume"])  # nothing new is measured
    assert _read(out)[:2] == first and [r["status"] for r in _read(out)[2:]] == ["skipped: time budget"] * 2
    measured = []
    real_bench_model = bench.bench_model
    monkeypatch.setattr(bench, "bench_model", lambda name, size, config: measured.append((name, size))
                        or real_bench_model(name, size, config))
    bench.main([*args[:4], "32", "48", *args[5:], "--resume"])
    assert measured == [(name, 48) for name in TINY]
    rows = _read(out)
    assert rows[:2] == first and [(r["model"], r["infer_img_size"], r["status"]) for r in rows[2:]] == [
        (name, "48", "ok") for name in TINY]


@pytest.mark.parametrize("content", ["name,value\nx,1\n", "name,value\n"])
def test_resume_rejects_a_foreign_csv(tmp_path, capsys, content):
    out = tmp_path / "other.csv"
    out.write_text(content)
    with pytest.raises(SystemExit):
        bench.main(["--models", TINY[0], "--img-sizes", "32", "--results-file", str(out), "--resume", *FAST])
    assert "is not a vitzoo-bench CSV (no model, " in capsys.readouterr().err
    assert out.read_text() == content  # a file with only its header is someone's too


def _refused(argv, capsys) -> str:
    """The one stderr line of a ``vitzoo-bench`` call that must exit with status 2 before measuring anything."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vitzoo-bench: error: ") and err.count("\n") == 1, err  # no usage block
    return err


@pytest.fixture
def no_measuring(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("measured before the arguments were checked")

    monkeypatch.setattr(bench, "bench_model", fail)


@pytest.mark.usefixtures("no_measuring")
def test_an_existing_results_file_is_kept_unless_resumed(tmp_path, capsys):
    out = tmp_path / "important.csv"
    out.write_text("name,score\nmy important,1\n")
    err = _refused(["--models", TINY[0], "--img-sizes", "32", "--results-file", str(out), *FAST], capsys)
    assert f"{out} exists; pass --resume to keep its rows and add the missing ones, or name a new --results-file" in err
    assert out.read_text() == "name,score\nmy important,1\n"
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path, message in ((tmp_path, "is a folder"), (blocker / "bench.csv", f"{blocker} is a file")):
        assert message in _refused(["--models", TINY[0], "--img-sizes", "32", "--results-file", str(path), *FAST],
                                   capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "important.csv"]  # no stray .tmp


@pytest.mark.usefixtures("no_measuring")
@pytest.mark.parametrize("bad, message", [
    (["-b", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
    (["--train-batch-size", "0"], "--train-batch-size must be >= 1"),
    (["--img-sizes", "32", "0"], "--img-sizes must be >= 1, got 0"),
    (["--img-sizes", "-32"], "--img-sizes must be >= 1, got -32"),
    (["--num-bench-iter", "0"], "--num-bench-iter must be >= 1"),
    (["--num-warm-iter", "-1"], "--num-warm-iter must be >= 0"),
    (["--latency-iters", "0"], "--latency-iters must be >= 1"),
    (["--time-budget", "-1"], "--time-budget must be >= 0"),
    (["--time-budget", "nan"], "--time-budget must be >= 0"),
    (["--max-phase-seconds", "0"], "--max-phase-seconds must be > 0"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--device", "foo"], "--device foo"),
    (["--device", "cuda:x"], "--device cuda:x"),
    (["--shard", "3/2"], "--shard must be I/N"),
    (["--batch-size", "x"], "invalid int value"),
])
def test_bad_arguments_are_one_line_errors(bad, message, capsys):
    err = _refused(["--models", TINY[0], "--img-sizes", "32", "--device", "cpu", "--no-progress", *bad], capsys)
    assert message in err


@pytest.mark.usefixtures("no_measuring")
def test_cuda_device_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:1"):
        err = _refused(["--models", TINY[0], "--img-sizes", "32", "--device", device, "--no-progress"], capsys)
        assert f"--device {device}: no CUDA device available" in err
