"""The README model table: its counts file, and the weights column (a link where the authors publish a checkpoint)."""
import json

import pytest
import timm

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.report.model_table import load_counts, main, recount, to_markdown, weights_link


def test_weights_column_links_the_authors_checkpoints_only():
    inline = weights_link(timm.models.get_pretrained_cfg("inline_deit_tiny_patch16_224").to_dict())
    assert inline.startswith("[authors'](https://cloud.tsinghua.edu.cn/") and inline.endswith("converted on load")
    assert "drive.google.com" in weights_link(timm.models.get_pretrained_cfg("qtvit_1").to_dict())
    for name in ("qtvit_4", "linear_deit_tiny_patch16_224", "softmax_deit_tiny_patch16_224"):
        assert weights_link(timm.models.get_pretrained_cfg(name).to_dict()) == "none"


def test_table_rows_come_from_the_counts_and_the_published_numbers():
    table = to_markdown([dict(model="qtvit_1", img_size="224", params_m="9.354", gmacs="0.5251"),
                         dict(model="zeros_deit_tiny_patch16_224", img_size="224", params_m="6.18", gmacs="1.349")])
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| `qtvit_1` | qtvit | 224 | 9.35 | 0.53 | 9.4 / 0.52 | 79.6 (published) | QT-ViT paper")
    assert rows[1] == ("| `zeros_deit_tiny_patch16_224` | zeros | 224 | 6.18 | 1.35 |  | none published |  | none |")


def test_recount_writes_one_file_with_provenance_and_rows(tmp_path):
    path = tmp_path / "counts.json"
    recount(path, ["linear_deit_tiny_patch16_224"])
    assert json.loads(path.read_text())["command"] == "python -m vitzoo.report.model_table --recount"
    (row,) = load_counts(path)
    assert row["model"] == "linear_deit_tiny_patch16_224" and row["img_size"] == 224
    assert round(row["params_m"], 2) == 5.72 and round(row["gmacs"], 2) == 1.14


@pytest.mark.parametrize("content, message", [(None, "does not exist; pass a file written by vitzoo-models --recount"),
                                              ("model,gmacs\n", "is not JSON"),
                                              ('{"device": "CPU"}', "(no 'rows')")])
def test_a_missing_or_foreign_counts_file_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "counts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit):
        main(["--counts", str(path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and ": error: " in error
