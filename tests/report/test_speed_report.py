"""The speed tables say what the comparison's rows say (tests/report/test_main.py checks the committed page)."""
from pathlib import Path

import pytest

from vitzoo.report.speed_report import (
    graphed_inference,
    inference_table,
    latency_series,
    main,
    official_table,
    plot_latency,
    processes_table,
    sizes_table,
    summary_table,
    to_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "compare" / "h200.json"


def _row(model, size, img_per_s, role, **extra):
    return dict(model=model, img_size=size, phase="infer", compile="none", status="ok", img_per_s=img_per_s,
                role=role, device_ms=1e3 / img_per_s, **extra)


def test_graphed_inference_takes_the_replayed_rows_of_one_resolution():
    rows = [_row("linear_deit_tiny_patch16_224", 224, 400.0, "zoo") | {"compile": "cuda-graph"},
            _row("linear_deit_tiny_patch16_224", 224, 300.0, "zoo"),
            _row("linear_deit_tiny_patch16_224", 1024, 40.0, "zoo") | {"compile": "cuda-graph"},
            _row("qtvit_1", 224, 90.0, "zoo") | {"compile": "cuda-graph", "status": "failed"}]
    assert graphed_inference({"rows": rows}, 224) == {"linear_deit_tiny_patch16_224": 400.0}


def test_inference_table_ratios_use_the_same_resolution():
    rows = [
        _row("linear_deit_tiny_patch16_224", 224, 300.0, "zoo", twin_model="softmax_deit_tiny_patch16_224",
             timm_model="deit_tiny_patch16_224"),
        _row("linear_deit_tiny_patch16_224", 1024, 30.0, "zoo", twin_model="softmax_deit_tiny_patch16_224",
             timm_model="deit_tiny_patch16_224"),
        _row("softmax_deit_tiny_patch16_224", 224, 200.0, "twin"),
        _row("softmax_deit_tiny_patch16_224", 1024, 10.0, "twin"),
        _row("deit_tiny_patch16_224", 224, 150.0, "timm"),
        _row("deit_tiny_patch16_224", 1024, 60.0, "timm"),
    ]
    table = inference_table(rows)
    assert "| `linear_deit_tiny_patch16_224` | 300 (1.50x, 2.00x; 1.50x) | 30 (3.00x, 0.50x; 3.00x) |" in table


def test_readme_without_markers_is_a_one_line_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--results", str(RESULTS), "--readme", str(readme)])
    assert exit_info.value.code == 2
    assert "has no <!-- speed-tables:start -->" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist; pass a vitzoo-bench --compare JSON"),
    ("{not json", "is not JSON (Expecting property name"),
    ("[1, 2]", "is not a vitzoo-bench --compare JSON (no 'info' and 'rows')"),
])
def test_a_missing_or_foreign_results_file_is_a_one_line_error(tmp_path, capsys, content, message):
    results = tmp_path / "compare.json"
    if content is not None:
        results.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["--results", str(results)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_compiled_rows_get_their_own_table_and_stay_out_of_the_eager_ones():
    extra = dict(host_ms=0.5, launches=10.0, peak_mem_mb=100.0, batch=256, img_per_s_min=1.0, img_per_s_max=2.0)
    rows = [
        _row("linear_deit_tiny_patch16_224", 224, 300.0, "zoo", twin_model="softmax_deit_tiny_patch16_224", **extra),
        _row("softmax_deit_tiny_patch16_224", 224, 200.0, "twin", **extra),
        _row("linear_deit_tiny_patch16_224", 224, 900.0, "zoo", twin_model="softmax_deit_tiny_patch16_224",
             **extra) | {"compile": "reduce-overhead"},
        _row("softmax_deit_tiny_patch16_224", 224, 450.0, "twin", **extra) | {"compile": "reduce-overhead"},
    ]
    page = to_markdown({"info": dict(device="GPU", cpu_count="16", torch="t", triton="tr", timm="ti",
                                     date="2026-12-04", git_revision="abc"), "rows": rows})
    eager, compiled = page.split("compiled** (`torch.compile(mode='reduce-overhead', fullgraph=True)`) at 224 px:")
    assert "| 300 (1.50x" in eager and "900" not in eager
    assert "| `linear_deit_tiny_patch16_224` | 256 | 900 (1-2) | 2.00x |" in compiled


def test_summary_table_puts_eager_and_graphed_rows_side_by_side():
    extra = dict(host_ms=9.0, launches=10.0, peak_mem_mb=1.0, batch=256, img_per_s_min=1.0, img_per_s_max=2.0)
    group = dict(twin_model="softmax_deit_tiny_patch16_224", timm_model="deit_tiny_patch16_224")
    rows = [
        _row("linear_deit_tiny_patch16_224", 224, 300.0, "zoo", **group, **extra),
        _row("softmax_deit_tiny_patch16_224", 224, 600.0, "twin", **extra),
        _row("linear_deit_tiny_patch16_224", 224, 900.0, "zoo", **group, **extra) | {"compile": "cuda-graph"},
        _row("softmax_deit_tiny_patch16_224", 224, 450.0, "twin", **extra) | {"compile": "cuda-graph"},
        _row("deit_tiny_patch16_224", 224, 300.0, "timm", **extra) | {"compile": "cuda-graph"},
    ]
    table = summary_table({"info": dict(device="GPU", torch="t", triton="tr", date="2026-12-04", git_revision="abc"),
                           "rows": rows})
    assert "| `linear_deit_tiny` | 300, 0.50x (9.0 / 3.3) | 900, 2.00x, 3.00x |" in table


def test_sizes_table_pairs_each_model_with_the_references_of_its_own_part():
    """One part per size; a zoo row's ratios come from its own part's twin and timm rows, graphed and eager."""
    info = dict(device="GPU", torch="2", triton="3", date="2026-01-02T00:00:00Z", git_revision="abc1234")

    def part(size_name, zoo, twin, timm_model, host_ms):
        refs = dict(twin_model=f"softmax_deit_{size_name}_patch16_224", timm_model=f"deit_{size_name}_patch16_224")
        rows, name = [], f"linear_deit_{size_name}_patch16_224"
        for mode, scale in (("cuda-graph", 2.0), ("none", 1.0)):
            rows += [dict(_row(name, 224, zoo * scale, "zoo", host_ms=host_ms, **refs), compile=mode),
                     dict(_row(f"softmax_deit_{size_name}_patch16_224", 224, twin * scale, "twin"), compile=mode),
                     dict(_row(f"deit_{size_name}_patch16_224", 224, timm_model * scale, "timm"), compile=mode)]
        return dict(info=info, rows=rows)

    table = sizes_table(dict(parts=[part("small", 300.0, 200.0, 100.0, 4.0), part("base", 100.0, 200.0, 400.0, 6.0)]))
    assert "| `linear_deit_small_patch16_224` | 224 | 600 | 1.50x | 3.00x | 1.67 | 300, 1.50x (4.0 / 3.3) |" in table
    assert "| `linear_deit_base_patch16_224` | 224 | 200 | 0.50x | 0.25x | 5.00 | 100, 0.50x (6.0 / 10.0) |" in table
    assert "`softmax_deit" not in table and "`deit_" not in table  # the references are no rows of their own
    assert "GPU, torch 2, triton 3, 2026-01-02:" in table and "abc1234" not in table  # revisions stay in the file


def _timed(row, host_ms, launches=100.0):
    return dict(row, img_per_s_min=row["img_per_s"] * 0.9, img_per_s_max=row["img_per_s"] * 1.1, host_ms=host_ms,
                launches=launches, batch=128)


def test_processes_table_takes_each_ratio_from_its_own_process():
    """Host-bound references move between processes: a zoo row is divided by its own process's twin and timm rows."""
    info = dict(device="GPU", torch="2", triton="3", date="2026-01-02T00:00:00Z", git_revision="abc1234")
    refs = dict(twin_model="softmax_deit_tiny_patch16_224", timm_model="deit_tiny_patch16_224")

    def part(zoo_model, zoo, twin, timm_model):
        rows = [_timed(_row(zoo_model, 224, zoo, "zoo", **refs), 20.0),
                _timed(_row("softmax_deit_tiny_patch16_224", 224, twin, "twin"), 10.0),
                _timed(_row("deit_tiny_patch16_224", 224, timm_model, "timm"), 10.0)]
        return dict(info=info, rows=[dict(row, phase="train", compile="default") for row in rows])

    table = processes_table(dict(parts=[part("linear_deit_tiny_patch16_224", 300.0, 200.0, 100.0),
                                        part("zeros_deit_tiny_patch16_224", 300.0, 600.0, 300.0)]),
                            "train", "default", Path("results/compare/gpu.json"), "compiled_train_224")
    assert "| `linear_deit_tiny_patch16_224` | 300 (270-330) | 1.50x | 3.00x | 20.0 / 3.3 | 100 | 1: " in table
    assert "| `zeros_deit_tiny_patch16_224` | 300 (270-330) | 0.50x | 1.00x | 20.0 / 3.3 | 100 | 2: " in table
    assert "2: `softmax_deit_tiny_patch16_224` 600, `deit_tiny_patch16_224` 300 |" in table
    assert "| `softmax_deit" not in table  # the references are no rows of their own
    assert "2 processes" in table and "GPU, torch 2, triton 3, 2026-01-02:" in table and "abc1234" not in table
    alone = processes_table(dict(parts=[part("linear_deit_tiny_patch16_224", 300.0, 200.0, 100.0)]), "train", "default",
                            Path("results/compare/gpu.json"), "one_process")
    assert "batch 128, one process, median" in alone
    assert "(`results/compare/gpu.json`, section `one_process`)" in alone


def test_official_table_pairs_each_zoo_row_with_the_official_row_of_its_size_and_mode():
    info = dict(device="GPU", cpu_count="16", torch="2", triton="3", timm="1", date="2026-01-02T00:00:00Z",
                git_revision="abc1234")
    rows = []
    for mode, scale, official_scale in (("none", 1.0, 1.0), ("cuda-graph", 2.0, 1.5)):
        for size, zoo, official in ((224, 300.0, 100.0), (1024, 30.0, 20.0)):
            rows += [dict(_timed(_row("inline_deit_tiny_patch16_224", size, zoo * scale, "zoo",
                                      official_model="official_inline_deit_tiny"), 5.0), compile=mode),
                     dict(_timed(_row("official_inline_deit_tiny", size, official * official_scale, "official"), 8.0),
                          compile=mode)]
    rows += [dict(_timed(_row("inline_deit_tiny_patch16_224", 224, 50.0, "zoo",
                              official_model="official_inline_deit_tiny"), 5.0), phase="train"),
             dict(_timed(_row("official_inline_deit_tiny", 224, 200.0, "official"), 8.0), phase="train")]
    table = official_table(dict(info=info, rows=rows), Path("results.json"))
    assert ("| `inline_deit_tiny_patch16_224` | infer | 224 | eager | 128 | 300 | 100 | 3.00x | 5.0 / 8.0 | "
            "3.33 / 10.00 |" in table)
    assert "| `inline_deit_tiny_patch16_224` | infer | 1024 | eager | 128 | 30 | 20 | 1.50x |" in table
    assert "| `inline_deit_tiny_patch16_224` | infer | 1024 | CUDA graph | 128 | 60 | 30 | 2.00x |" in table
    assert "| `inline_deit_tiny_patch16_224` | train | 224 | eager | 128 | 50 | 200 | 0.25x |" in table
    assert "| `official_inline" not in table and "`results.json`" in table


def _latency(model, size, p50, p90, graphed=None, **extra):
    row = dict(model=model, img_size=size, phase="latency", compile="none", status="ok", role="zoo",
               latency_p50_ms=p50, latency_p90_ms=p90, **extra)
    if graphed is not None:
        row |= {"graphed_p50_ms": graphed[0], "graphed_p90_ms": graphed[1]}
    return row


def test_latency_series_sort_by_resolution_and_keep_eager_and_graphed_apart():
    rows = [_latency("a", 1024, 20.0, 22.0, (1.0, 1.1)), _latency("a", 224, 8.0, 9.0, (0.6, 0.7)),
            _latency("b", 224, 5.0, 6.0), dict(_latency("a", 512, 7.0, 8.0), status="error"),
            dict(_latency("b", 512, 9.0, 9.5), phase="infer")]
    assert latency_series(rows, graphed=False) == {"a": [(224, 8.0, 9.0), (1024, 20.0, 22.0)], "b": [(224, 5.0, 6.0)]}
    # b has no graphed numbers: it is not in the graphed panel
    assert latency_series(rows, graphed=True) == {"a": [(224, 0.6, 0.7), (1024, 1.0, 1.1)]}


def test_latency_plot_of_a_result_and_a_one_line_error_without_latency_rows(tmp_path, capsys):
    out = tmp_path / "latency.png"
    main(["--results", str(RESULTS), "--latency-plot", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no batch-1 latency rows"):
        plot_latency({"info": {"device": "GPU", "date": "2026-01-02", "git_revision": "x"}, "rows": []}, out)
