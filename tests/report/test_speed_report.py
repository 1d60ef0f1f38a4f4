"""The speed tables say what the comparison's rows say (tests/report/test_main.py checks the committed page)."""
from pathlib import Path

import pytest

from vitzoo.report.speed_report import inference_table, main

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
