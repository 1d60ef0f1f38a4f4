"""python -m vitzoo.report: the committed README.md and docs/benchmarks.md are what the committed results give."""
import shutil
from pathlib import Path

import pytest

from vitzoo.bench.common import read_csvs, write_csv
from vitzoo.report.__main__ import FASHION_MNIST_ZOO, render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_equal_the_regenerated_ones():
    for page, text in render(ROOT).items():
        assert page.read_text() == text, f"{page.relative_to(ROOT)} differs: run python -m vitzoo.report"


def test_a_changed_result_changes_its_page(tmp_path):
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    (tmp_path / "docs").mkdir()
    for page in ("README.md", "docs/benchmarks.md"):
        shutil.copy(ROOT / page, tmp_path / page)
    rows = read_csvs([tmp_path / FASHION_MNIST_ZOO])
    rows[0]["top1"] = "12.34"
    write_csv(tmp_path / FASHION_MNIST_ZOO, rows, list(rows[0]))
    pages = render(tmp_path)
    assert "| softmax | `softmax_deit_tiny_patch16_224` | 12.34 |" in pages[tmp_path / "README.md"]
    assert pages[tmp_path / "docs" / "benchmarks.md"] == (ROOT / "docs" / "benchmarks.md").read_text()


def test_a_page_without_its_markers_is_an_error(tmp_path):
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "benchmarks.md", tmp_path / "docs" / "benchmarks.md")
    (tmp_path / "README.md").write_text("# no generated sections\n")
    with pytest.raises(ValueError, match="model-table:start"):
        render(tmp_path)
