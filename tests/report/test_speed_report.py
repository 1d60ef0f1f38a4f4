"""The speed tables say what the comparison's rows say (tests/report/test_main.py checks the committed page)."""
from pathlib import Path

import pytest

from vitzoo.report.speed_report import inference_table, main, summary_table, to_markdown

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "compare" / "h200.json"


def _row(model, size, img_per_s, role, **extra):
    return dict(model=model, img_size=size, phase="infer", compile="none", status="ok", img_per_s=img_per_s,
                role=role, device_ms=1e3 / img_per_s, **extra)


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
