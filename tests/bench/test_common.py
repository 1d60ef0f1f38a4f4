"""The helpers the sweep and the comparison share: model building, percentiles, failures, result files."""
import json
import subprocess

import pytest
import torch

from vitzoo.bench import common


def test_fixed_size_models_are_built_for_the_resolution():
    assert common.has_fixed_input_size("deit_tiny_patch16_224")
    assert not common.has_fixed_input_size("efficientvit_b1")
    model = common.create_model("linear_deit_tiny_patch16_224", 32, torch.device("cpu"), {"depth": 1})
    assert not model.training and model.patch_embed.img_size == (32, 32)


def test_percentile_interpolates_between_order_statistics():
    assert common.percentile([4.0, 1.0, 3.0, 2.0, 5.0], 50) == 3.0
    assert common.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90) == 10.0
    assert common.percentile([1.0, 2.0], 50) == 1.5


def test_failures_become_one_line_statuses():
    assert common.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert common.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not common.is_oom(RuntimeError("shape mismatch"))
    status = common.one_line(ValueError("first line\n   second " + "x" * 400))
    assert status.startswith("ValueError: first line second x") and "\n" not in status and len(status) == 300


def test_compile_modes_are_eager_and_torch_compile_modes():
    assert common.COMPILE_MODES[0] == "none" and "reduce-overhead" in common.COMPILE_MODES


def test_result_files_are_written_whole(tmp_path):
    path = tmp_path / "deep" / "rows.csv"
    common.write_csv(path, [{"a": 1, "b": 2, "extra": 3}, {"a": 4}], ("a", "b"))
    assert path.read_text().splitlines() == ["a,b", "1,2", "4,"]
    assert common.read_csvs([tmp_path / "deep"]) == [{"a": "1", "b": "2"}, {"a": "4", "b": ""}]
    assert not list(path.parent.glob("*.tmp"))
    common.write_json(tmp_path / "info.json", {"device": "CPU"})
    assert json.loads((tmp_path / "info.json").read_text()) == {"device": "CPU"}


def test_a_write_cut_off_midway_keeps_the_previous_file(tmp_path):
    path = tmp_path / "rows.csv"
    common.write_csv(path, [{"a": 1}], ("a",))

    def rows_then_failure():
        yield {"a": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        common.write_csv(path, rows_then_failure(), ("a",))
    assert path.read_text().splitlines() == ["a", "1"]


def test_git_revision_is_the_environments_where_set_else_the_checkouts(monkeypatch):
    monkeypatch.delenv("VITZOO_GIT_REVISION", raising=False)
    head = common.git_revision()
    assert head and len(head.split("+")[0]) == 40  # this test runs in a checkout
    monkeypatch.setenv("VITZOO_GIT_REVISION", "abc1234")
    assert common.git_revision() == "abc1234"

    # a copy of the tree without .git: git prints nothing on stdout
    def no_checkout(*_args, **_kwargs):
        return subprocess.CompletedProcess([], 128, stdout="", stderr="fatal: not a git repository")

    monkeypatch.setattr(common.subprocess, "run", no_checkout)
    monkeypatch.delenv("VITZOO_GIT_REVISION")
    assert common.git_revision() == ""
