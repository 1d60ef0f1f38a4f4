"""vitzoo-bench --compare: the comparison groups, batch scaling, and a small interleaved run on the CPU."""
import json
from pathlib import Path

import pytest
import timm
import torch

import vitzoo
from vitzoo.bench.compare import comparison_set, reference_models, scaled_batch, source_digest
from vitzoo.bench.sweep import main
from vitzoo.layers.kept import KeepsAutocastCopies


def test_groups_name_twin_and_timm_model():
    assert reference_models("inline_deit_small_patch16_288") == {
        "zoo": "inline_deit_small_patch16_288", "twin": "softmax_deit_small_patch16_224",
        "timm": "deit_small_patch16_224"}
    assert reference_models("softmax_deit_tiny_patch16_224") == {
        "zoo": "softmax_deit_tiny_patch16_224", "timm": "deit_tiny_patch16_224"}
    assert reference_models("qtvit_2") == {"zoo": "qtvit_2", "timm": "efficientvit_b2"}
    assert reference_models("qtvit_5") == {"zoo": "qtvit_5", "timm": "efficientvit_l2"}
    assert reference_models("deltanet_deit_base_patch16_224")["twin"] == "softmax_deit_base_patch16_224"


def test_scaled_batch_keeps_tokens_per_batch():
    assert scaled_batch(256, 224) == 256
    assert scaled_batch(256, 448) == 64
    assert scaled_batch(256, 1024) == 12
    assert scaled_batch(2, 4096) == 1
    assert scaled_batch(8, 32) == 8


def test_source_digest_covers_every_module_of_the_package(tmp_path: Path):
    (tmp_path / "ops" / "kernel").mkdir(parents=True)
    (tmp_path / "__init__.py").write_text("")
    nested = tmp_path / "ops" / "kernel" / "function.py"
    nested.write_text("BLOCK = 64\n")
    before = source_digest(tmp_path)
    nested.write_text("BLOCK = 128\n")  # a change deep inside, far from the benchmark's own modules
    assert source_digest(tmp_path) != before
    nested.write_text("BLOCK = 64\n")
    assert source_digest(tmp_path) == before
    nested.rename(tmp_path / "ops" / "kernel" / "kernels.py")  # same bytes, another module
    assert source_digest(tmp_path) != before
    assert source_digest() == source_digest(Path(vitzoo.__file__).parent)


def test_compare_run_writes_interleaved_rows_with_provenance(tmp_path, capsys):
    out = tmp_path / "compare.json"
    main(["--compare", "--models", "linear_deit_tiny_patch16_224", "--device", "cpu", "--img-sizes", "32",
          "--phases", "infer", "latency", "--repeats", "2", "--num-warm-iter", "1", "--num-bench-iter", "1",
          "--latency-iters", "3", "-b", "2", "--results-file", str(out)])
    # the builds (compiling can take minutes) and the repeats show on a bar on stderr
    assert "infer 32px none: " in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert {"device", "torch", "timm", "date", "command", "git_revision"} <= set(result["info"])
    assert result["info"]["precision"] == "bf16"  # what the results scripts and the plots group rows by
    assert result["info"]["source_sha256"] == source_digest()
    infer = [r for r in result["rows"] if r["phase"] == "infer"]
    assert [r["role"] for r in infer] == ["zoo", "twin", "timm"]
    assert infer[0]["twin_model"] == "softmax_deit_tiny_patch16_224"
    assert infer[0]["timm_model"] == "deit_tiny_patch16_224"
    assert [r["model"] for r in infer] == ["linear_deit_tiny_patch16_224", "softmax_deit_tiny_patch16_224",
                                           "deit_tiny_patch16_224"]
    for row in infer:
        assert row["status"] == "ok" and row["batch"] == 2 and len(row["repeats"]) == 2
        assert row["img_per_s_min"] <= row["img_per_s"] <= row["img_per_s_max"] and row["host_ms"] > 0
    latency = [r for r in result["rows"] if r["phase"] == "latency"]
    assert len(latency) == 3 and all(r["latency_p50_ms"] <= r["latency_p90_ms"] for r in latency)


@pytest.mark.parametrize("argv, message", [
    (["--models", "deit_tiny_patch16_224"], "unknown: deit_tiny_patch16_224"),
    (["--models", "linear_deit_tiny_patch16_224", "--compile", "max-autotune"], "--compile none, default"),
    (["--models", "linear_deit_tiny_patch16_224", "--repeats", "0"], "--repeats must be >= 1"),
    (["--models", "linear_deit_tiny_patch16_224", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
])
def test_compare_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--compare", "--device", "cpu", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_keeps_an_existing_results_file(tmp_path, monkeypatch, capsys):
    from vitzoo.bench import sweep

    monkeypatch.setattr(sweep, "run_compare", lambda *args, **kwargs: pytest.fail("measured"))
    out = tmp_path / "compare.json"
    out.write_text('{"rows": []}\n')
    argv = ["--compare", "--device", "cpu", "--models", "linear_deit_tiny_patch16_224", "--results-file", str(out)]
    for extra, message in (([], f"{out} exists; name a new --results-file"),
                           (["--resume"], "--resume continues a sweep; --compare measures")):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert out.read_text() == '{"rows": []}\n'


def test_comparison_set_measures_each_model_once():
    ordered, roles = comparison_set(["linear_deit_tiny_patch16_224", "inline_deit_tiny_patch16_224",
                                     "softmax_deit_tiny_patch16_224"])
    assert ordered == ["linear_deit_tiny_patch16_224", "inline_deit_tiny_patch16_224", "softmax_deit_tiny_patch16_224",
                       "deit_tiny_patch16_224"]
    assert roles["inline_deit_tiny_patch16_224"] == {"role": "zoo", "twin_model": "softmax_deit_tiny_patch16_224",
                                                     "timm_model": "deit_tiny_patch16_224"}
    assert roles["deit_tiny_patch16_224"] == {"role": "timm"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
def test_cuda_graph_rows_replay_the_eager_inference_step(tmp_path):
    out = tmp_path / "compare.json"
    main(["--compare", "--models", "inline_deit_tiny_patch16_224", "--img-sizes", "64", "--phases", "infer", "train",
          "--cuda-graph", "--repeats", "1", "--num-warm-iter", "1", "--num-bench-iter", "2", "-b", "4",
          "--train-batch-size", "2", "--results-file", str(out)])
    rows = json.loads(out.read_text())["rows"]
    graphed = [r for r in rows if r["compile"] == "cuda-graph"]
    assert sorted(r["phase"] for r in graphed) == ["infer"] * 3 + ["train"] * 3
    eager = {(r["model"], r["phase"]): r for r in rows if r["compile"] == "none"}
    for row in graphed:
        assert row["status"] == "ok"
        assert row["host_ms"] < eager[row["model"], row["phase"]]["host_ms"]  # almost no host time
        if row["phase"] == "infer":
            # the eager step's kernels, plus a cast of every parameter whose 16-bit copy eager inference keeps (a
            # captured graph reads the fp32 parameters, which a later update changes in place)
            assert row["launches"] == eager[row["model"], "infer"]["launches"] + _kept_copies(row["model"])


def _kept_copies(name: str) -> int:
    """How many fp32 parameters the modules of ``name`` keep 16-bit copies of in eager inference."""
    model = timm.create_model(name, img_size=64)
    holders = [getattr(m, "proj", m) for m in model.modules() if isinstance(m, KeepsAutocastCopies)]
    return sum(p is not None for m in holders for p in (m.weight, m.bias))


def test_host_time_is_per_step_of_steps_enqueued_back_to_back(monkeypatch):
    """As many steps as keep the pending launches within the queue run back to back; the time is per step."""
    from vitzoo.bench import compare

    clock = iter(range(1000))
    monkeypatch.setattr(compare.time, "perf_counter", lambda: next(clock) * 0.001)
    calls = []
    # reading the clock and each step take a tick (1 ms): 4 steps of 200 launches fit the queue, (1 + 4) ms / 4; one
    # step of 1000, (1 + 1) ms
    def step():
        calls.append(next(clock))

    assert compare.host_ms(step, torch.device("cpu"), 200, samples=3) == pytest.approx(1.25)
    assert len(calls) == 12
    calls.clear()
    assert compare.host_ms(step, torch.device("cpu"), 1000, samples=3) == pytest.approx(2.0)
    assert len(calls) == 3


def test_channels_last_puts_models_and_inputs_in_channels_last_memory(tmp_path, monkeypatch):
    from vitzoo.bench import compare

    layouts = []
    step_init = compare.Step.__init__

    def spy(self, model, *args, **kwargs):
        step_init(self, model, *args, **kwargs)
        weight = model.patch_embed.proj.weight
        layouts.append((weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous(),
                        self.x.is_contiguous(memory_format=torch.channels_last) and not self.x.is_contiguous()))

    monkeypatch.setattr(compare.Step, "__init__", spy)
    out = tmp_path / "compare.json"
    main(["--compare", "--models", "linear_deit_tiny_patch16_224", "--device", "cpu", "--img-sizes", "32",
          "--phases", "infer", "--repeats", "1", "--num-warm-iter", "1", "--num-bench-iter", "1", "-b", "2",
          "--channels-last", "--results-file", str(out)])
    result = json.loads(out.read_text())
    assert result["info"]["config"]["channels_last"] is True
    assert [r["status"] for r in result["rows"]] == ["ok"] * 3
    assert layouts == [(True, True)] * 3
