"""``vitzoo-convert`` and ``vitzoo-eval`` on official-layout checkpoints (built here, no download)."""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.convert import main as convert_main
from vitzoo.train.data import FASHION_MNIST_DIR

TINY = "inline_deit_tiny_patch16_224"


def _official_inline(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the official InLine names (``attn.residual.*``), in the training wrapper."""
    return {"model": {k.replace(".attn.residual_predictor.", ".attn.residual."): v
                      for k, v in model.state_dict().items()}}


def _save_as_training_script(checkpoint: dict, path: Path) -> None:
    """Save as InLine's Swin-based script does: the yacs run config pickled beside the weights (plus an argparse
    Namespace, as DeiT-style scripts add). yacs exists only while saving, as on a machine without it."""

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module = types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "yacs.config", module)
        config = CfgNode(MODEL=CfgNode(TYPE="inline_deit_t"), OUTPUT="runs/x")
        config.__dict__["__immutable__"] = True
        torch.save({**checkpoint, "config": config, "args": argparse.Namespace(lr=5e-4), "epoch": 299}, path)


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        convert_main(argv)
    return info.value.code, capsys.readouterr().err


def test_convert_writes_safetensors_and_cfg_that_timm_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    source = timm.create_model(TINY)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    checkpoint = tmp_path / "inline_deit_t.pth"
    _save_as_training_script(_official_inline(source), checkpoint)
    with pytest.raises(Exception, match="Weights only load failed"):  # what plain weights-only loading does
        torch.load(checkpoint, weights_only=True)
    output = tmp_path / "inline_t.safetensors"
    convert_main(["--model", TINY, "--checkpoint", str(checkpoint), "--output", str(output)])
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inline_deit_t.pth", "inline_t.json", "inline_t.safetensors"]

    weights = load_file(str(output))
    assert weights.keys() == source.state_dict().keys()
    cfg = json.loads(output.with_suffix(".json").read_text())
    assert cfg["architecture"] == TINY and cfg["input_size"] == [3, 224, 224]
    assert any("published top-1: 74.5" in note for note in cfg["notes"])

    model = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(output))).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model(x), source.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(("case", "expected"), [
    ("missing", "does not exist or is not a file"),
    ("garbage", "cannot read"),
    ("text", "notes.txt is not a PyTorch (.pth / .pt) or safetensors checkpoint"),
    ("model", "unknown vitzoo model 'nosuch_model'"),
    ("foreign", "does not fit the model: missing"),
    ("outdir", "output folder"),
    ("ema", "has no EMA weights"),
])
def test_convert_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                                                    expected: str) -> None:
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, checkpoint)
    if case == "garbage":
        checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint")  # a zip header: read as PyTorch's format, and fails
    (tmp_path / "notes.txt").write_text("my notes\n")
    argv = {
        "missing": ["--model", TINY, "--checkpoint", str(tmp_path / "nope.pth")],
        "garbage": ["--model", TINY, "--checkpoint", str(checkpoint)],
        "text": ["--model", TINY, "--checkpoint", str(tmp_path / "notes.txt")],
        "model": ["--model", "nosuch_model", "--checkpoint", str(checkpoint)],
        "foreign": ["--model", "qtvit_1", "--checkpoint", str(checkpoint)],
        "outdir": ["--model", TINY, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "no" / "w")],
        "ema": ["--model", TINY, "--checkpoint", str(checkpoint), "--ema"],
    }[case]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out.safetensors")]
    code, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


@pytest.mark.parametrize("existing", ["precious.safetensors", "precious.json"])
def test_convert_refuses_to_overwrite_an_output(tmp_path: Path, capsys: pytest.CaptureFixture, existing: str) -> None:
    """An existing weights file, or the pretrained_cfg JSON that would be written beside it, is kept and named."""
    checkpoint = tmp_path / "ckpt.pth"
    torch.save(_official_inline(timm.create_model(TINY, depth=1)), checkpoint)
    (tmp_path / existing).write_text("precious")
    code, err = _run(["--model", TINY, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "precious")],
                     capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / existing} exists" in err and "--output" in err
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", existing]


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="needs the Debian Fashion-MNIST files")
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_eval_accepts_an_official_checkpoint(tmp_path: Path) -> None:
    """An official-layout file evaluates as the zoo-layout file of the same weights; a truncated one is one line."""
    from vitzoo.train.config import ConfigError
    from vitzoo.train.evaluate import evaluate_model

    kwargs = {"embed_dim": 24, "depth": 1, "num_heads": 2}
    torch.manual_seed(1)
    source = timm.create_model(TINY, img_size=28, patch_size=7, in_chans=1, num_classes=10, **kwargs)
    official, zoo = tmp_path / "official.pth", tmp_path / "zoo.pth"
    _save_as_training_script(_official_inline(source), official)
    torch.save(source.state_dict(), zoo)

    def evaluate(path: Path) -> dict:
        return evaluate_model(TINY, str(path), "fashion_mnist", None, batch_size=50, workers=0, val_subset=100,
                              model_kwargs=kwargs, img_size=28, patch_size=7, count_macs=False)

    rows = [evaluate(official), evaluate(zoo)]
    assert rows[0]["count"] == 100
    assert (rows[0]["top1"], rows[0]["top5"]) == (rows[1]["top1"], rows[1]["top5"])

    truncated = _official_inline(source)
    del truncated["model"]["head.weight"]
    torch.save(truncated, official)
    with pytest.raises(ConfigError, match=r"official InLine layout.*missing 1 \(head\.weight\)") as info:
        evaluate(official)
    assert "\n" not in str(info.value)
