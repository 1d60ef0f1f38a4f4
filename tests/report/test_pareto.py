"""vitzoo.report.pareto: the front on a hand-made table, the join with its labels, and the plots it writes."""
from __future__ import annotations

import statistics

import pytest

from vitzoo.bench.common import read_csvs, write_csv
from vitzoo.bench.sweep import COLUMNS
from vitzoo.report import pareto


def test_pareto_mask_on_a_known_table():
    # (throughput, top-1): a, c, e are on the front; b is dominated by c, d by c, f equals e (both stay).
    xs = [1000.0, 1500.0, 2000.0, 1800.0, 5000.0, 5000.0, 100.0]
    ys = [82.0, 79.0, 80.0, 79.5, 75.0, 75.0, 81.0]
    assert pareto.pareto_mask(xs, ys) == [True, False, True, False, True, True, False]
    assert pareto.pareto_mask([], []) == []
    assert pareto.pareto_mask([1.0], [1.0]) == [True]


def _bench_row(model, size, speed, latency, gmacs, precision="bf16", compile_mode="none", status="ok"):
    row = dict.fromkeys(COLUMNS, "")
    row.update(model=model, infer_img_size=size, infer_samples_per_sec=speed, infer_latency_p50_ms=latency,
               infer_gmacs=gmacs, param_count=5.7, precision=precision, compile=compile_mode, device="NVIDIA H200",
               status=status, date="2026-11-29T00:00:00Z")
    return row


@pytest.fixture
def tables(tmp_path):
    rows = []
    speeds = {"softmax": 30000.0, "linear": 32000.0, "inline": 28000.0, "qt": 26000.0}
    for fam, speed in speeds.items():
        for size in (224, 512):
            scale = (224 / size) ** 2
            rows.append(_bench_row(f"{fam}_deit_tiny_patch16_224", size, speed * scale, 2.0 / scale, 1.2 / scale))
    rows.append(_bench_row("qtvit_1", 224, 40000.0, 3.0, 0.5))
    rows.append(_bench_row("deit_tiny_patch16_224", 224, 31000.0, 2.1, 1.3))
    rows.append(_bench_row("softmax_deit_tiny_patch16_224", 224, 99999.0, 1.0, 1.3, compile_mode="default"))
    rows.append(_bench_row("linear_deit_tiny_patch16_224", 1024, "", "", 25.0, status="oom"))
    bench_file = tmp_path / "bench" / "bench-a.csv"
    write_csv(bench_file, rows, COLUMNS)
    eval_file = tmp_path / "eval.csv"
    top1 = {"softmax": 88.0, "linear": 89.5, "inline": 90.5, "qt": 89.0}
    write_csv(eval_file, [dict(model=f"{fam}_deit_tiny_patch16_224", top1=value, top5=99.0, img_size=224,
                               dataset="fashion_mnist") for fam, value in top1.items()],
              ("model", "top1", "top5", "img_size", "dataset"))
    return bench_file.parent, eval_file


def test_report_joins_labels_and_fronts(tables, tmp_path):
    bench_dir, eval_file = tables
    report = pareto.make_report([bench_dir], [eval_file], tmp_path / "out")
    assert report["setting"] == {"precision": "bf16", "compile": "none", "device": "NVIDIA H200"}
    measured = {r["model"]: r for r in report["joined"] if r["accuracy"] == "measured"}
    assert set(measured) == {f"{f}_deit_tiny_patch16_224" for f in ("softmax", "linear", "inline", "qt")}
    # eager row, not the compiled one at 99999 img/s
    assert float(measured["softmax_deit_tiny_patch16_224"]["infer_samples_per_sec"]) == 30000.0
    front = {(r["group"], r["model"]) for r in report["front"]}
    measured_group = "Fashion-MNIST top-1 (measured)"
    assert {m for g, m in front if g == measured_group} == {"linear_deit_tiny_patch16_224",
                                                            "inline_deit_tiny_patch16_224"}
    published = [r for r in report["joined"] if r["accuracy"] == "published"]
    assert {r["model"] for r in published} >= {"softmax_deit_tiny_patch16_224", "qtvit_1"}
    assert all(r["group"] == "ImageNet-1k top-1 (published)" for r in published)
    rows = read_csvs([tmp_path / "out" / "pareto_front.csv"])
    assert tuple(rows[0]) == pareto.FRONT_COLUMNS and len(rows) == len(report["front"])
    assert all(row["on_front"] == "True" for row in rows)


def test_plots_are_written_as_png_and_svg(tables, tmp_path):
    bench_dir, eval_file = tables
    out = tmp_path / "plots"
    pareto.main(["--bench", str(bench_dir), "--results", str(eval_file), "--out", str(out)])
    for stem in ("top1_vs_throughput", "throughput_vs_resolution", "latency_vs_resolution", "throughput_vs_gmacs"):
        for ext, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
            path = out / f"{stem}.{ext}"
            assert path.is_file() and path.read_bytes().startswith(magic), path
    assert "published" in (out / "top1_vs_throughput.svg").read_text()


def test_spread_over_seeds_and_reference_line(tables, tmp_path):
    bench_dir, _ = tables
    summary = tmp_path / "summary.csv"
    summary.write_text("model,top1,top1_std,img_size,dataset\n"
                       "softmax_deit_tiny_patch16_224,88.0,0.5,224,fashion_mnist\n"
                       "linear_deit_tiny_patch16_224,89.5,,224,fashion_mnist\n")
    out = tmp_path / "plots"
    report = pareto.make_report([bench_dir], [summary], out, use_published=False, reference="softmax")
    assert {r["model"]: r["top1_std"] for r in report["joined"]} == {"softmax_deit_tiny_patch16_224": 0.5,
                                                                      "linear_deit_tiny_patch16_224": ""}
    svg = (out / "top1_vs_throughput.svg").read_text()
    assert "softmax (reference)" in svg and "1 std over seeds" in svg


def test_names():
    assert pareto.short_label("inline_deit_small_patch16_288", 288) == "inline-S@288"
    assert pareto.short_label("deit_base_patch16_224", 224) == "DeiT-B (timm)"
    assert pareto.short_label("efficientvit_b2") == "EffViT-B2 (timm)"
    assert pareto.short_label("qtvit_3") == "QT-ViT-3"
    assert pareto.size_group("qtvit_1") == "hybrid"
    assert pareto.native_resolution("inline_deit_base_patch16_448") == 448


@pytest.mark.parametrize("flag", ["--bench", "--results"])
def test_a_missing_input_file_is_a_one_line_error(tmp_path, capsys, flag):
    bench_file = tmp_path / "bench.csv"
    write_csv(bench_file, [_bench_row("softmax_deit_tiny_patch16_224", 224, 1000.0, 1.0, 1.0)], COLUMNS)
    files = {"--bench": [str(bench_file)], "--results": []}
    files[flag] = [*files[flag], str(tmp_path / "nope.csv")]
    with pytest.raises(SystemExit) as exit_info:
        pareto.main(["--bench", *files["--bench"], "--results", *files["--results"], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{tmp_path / 'nope.csv'} does not exist" in err
    assert not (tmp_path / "out").exists()


def test_summarize_seeds_means_and_spreads_each_model_over_its_seeds():
    rows = [dict(seed=str(seed), model="m", dataset="fashion_mnist", img_size="28", epochs="60", top1=str(top1))
            for seed, top1 in enumerate((80.0, 82.0, 87.0))]
    rows.append(dict(seed="0", model="n", dataset="fashion_mnist", img_size="28", epochs="60", top1="70.0"))
    m, n = pareto.summarize_seeds(rows)
    assert m["top1"] == pytest.approx(83.0) and m["epochs"] == "60"
    assert m["top1_std"] == pytest.approx(statistics.stdev([80, 82, 87]), abs=1e-3)
    assert (m["top1_min"], m["top1_max"], m["seeds"]) == (80.0, 87.0, 3)
    assert (n["top1"], n["top1_std"], n["seeds"]) == (70.0, "", 1)


def test_measured_points_average_seeds_but_let_the_newest_eval_win():
    seeds = [dict(seed=str(seed), model="m", dataset="fashion_mnist", img_size="28", top1=str(top1))
             for seed, top1 in enumerate((80.0, 84.0))]
    (point,) = pareto.measured_points(seeds)
    assert point.top1 == pytest.approx(82.0) and point.top1_std == pytest.approx(statistics.stdev([80, 84]), abs=1e-3)
    evals = [{key: value for key, value in row.items() if key != "seed"} for row in seeds]
    (point,) = pareto.measured_points(evals)
    assert point.top1 == 84.0 and point.top1_std is None
