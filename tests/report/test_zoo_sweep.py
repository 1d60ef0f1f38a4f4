"""The zoo sweep's tables: newest eager row per pair, ratios to the softmax twin at the same resolution, '-' where a
row is missing."""
from vitzoo.bench.common import write_csv
from vitzoo.bench.sweep import COLUMNS
from vitzoo.report import zoo_sweep


def _row(model, size, infer, train="", compile_mode="none", date="2026-11-29T19:00:00Z"):
    return dict(model=model, infer_img_size=size, infer_samples_per_sec=infer, train_samples_per_sec=train,
                precision="bf16", compile=compile_mode, device="NVIDIA H200", date=date, status="ok")


def test_tables_from_a_small_sweep(tmp_path):
    path = tmp_path / "h200.csv"
    write_csv(path, [
        _row("softmax_deit_tiny_patch16_224", 224, 1000.0, 300.0),
        _row("softmax_deit_tiny_patch16_224", 224, 2000.0, 400.0, date="2026-11-29T20:00:00Z"),  # newer: wins
        _row("softmax_deit_tiny_patch16_224", 1024, 100.0, 10.0),
        _row("linear_deit_tiny_patch16_224", 224, 3000.0, 500.0),
        _row("linear_deit_tiny_patch16_224", 1024, 9999.0, compile_mode="default"),  # compiled: left out
    ], COLUMNS)
    results = zoo_sweep.load(path)
    table = zoo_sweep.size_table(results, ["softmax_deit_tiny_patch16_224", "linear_deit_tiny_patch16_224",
                                           "deit_tiny_patch16_224"], "softmax_deit_tiny_patch16_224")
    assert "| `linear_deit_tiny_patch16_224` | 3,000 / - / - / - / - | 1.50 / - / - / - / - | 500 / - |" in table
    assert "| `softmax_deit_tiny_patch16_224` | 2,000 / - / - / - / 100 | 1.00 / - / - / - / 1.00 | 400 / 10 |" in table
    assert "| `deit_tiny_patch16_224` (timm) | - / - / - / - / - | - / - / - / - / - | - / - |" in table
    families = zoo_sweep.family_table(results)
    assert "| linear | 3,000 (1.50x) | - | - | 500 / - / - |" in families
