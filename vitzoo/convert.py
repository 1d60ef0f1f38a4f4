"""``vitzoo-convert``: the authors' InLine / QT-ViT checkpoints (or any checkpoint a zoo model's filter accepts) as
zoo safetensors, with the model's pretrained_cfg in a JSON file beside them.

    vitzoo-convert --model inline_deit_tiny_patch16_224 --checkpoint inline_deit_t.pth --output inline_t.safetensors

writes ``inline_t.safetensors`` and ``inline_t.json``; then
``timm.create_model("inline_deit_tiny_patch16_224", pretrained=True,
pretrained_cfg_overlay=dict(file="inline_t.safetensors"))``. Errors (bad paths, an existing output, unknown model, a
checkpoint that does not fit) exit with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from vitzoo.models._helpers import checkpoint_format

_EMA_WRAPPERS = ("model_ema", "state_dict_ema")


class _TrainingConfig:
    """Stand-in for the run configuration some training scripts pickle beside the weights (InLine's Swin-based
    scripts save their yacs ``CfgNode``, DeiT-style ones an argparse ``Namespace``). ``weights_only`` loading refuses
    unknown classes; this one is allowlisted under those names and becomes an empty-or-filled ``OrderedDict``, the
    one container type the weights-only unpickler both fills and builds. Nothing of it is executed or used."""

    def __new__(cls, *args, **kwargs) -> OrderedDict:
        return OrderedDict()


_TRAINING_CONFIG_GLOBALS = [(_TrainingConfig, "yacs.config.CfgNode"), (_TrainingConfig, "argparse.Namespace")]


class ConvertError(ValueError):
    """A conversion that cannot be done; the message is one line."""


def _first_line(error: Exception) -> str:
    """The informative line of a reader error (torch's weights-only message puts it after a long preamble)."""
    text = str(error).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_checkpoint_file(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` / ``.pt`` / ``.safetensors`` file with ``weights_only=True`` (the format is told from the file's
    first bytes; any other file is a one-line :class:`ConvertError`).

    A pickled training configuration (yacs ``CfgNode``, argparse ``Namespace``) beside the weights is read as a
    plain dict instead of failing the weights-only load; any other non-tensor class still fails.

    Args:
        path: the checkpoint file.
        use_ema: take the EMA weights of a training checkpoint that holds both (``model_ema`` / ``state_dict_ema``);
            by default the plain ones, as the authors' evaluation scripts do.
    """
    path = Path(path)
    try:
        file_format = checkpoint_format(path)
    except ValueError as error:
        raise ConvertError(str(error)) from None
    try:
        if file_format == "safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path))
        else:
            with torch.serialization.safe_globals(_TRAINING_CONFIG_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure becomes one line naming the file
        raise ConvertError(f"cannot read {path} as a weights-only checkpoint: {_first_line(error)}") from None
    if not isinstance(checkpoint, dict):
        raise ConvertError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    if use_ema:
        found = [key for key in _EMA_WRAPPERS if isinstance(checkpoint.get(key), dict)]
        if not found:
            raise ConvertError(f"{path} has no EMA weights ({' / '.join(_EMA_WRAPPERS)})")
        checkpoint = checkpoint[found[0]]
    return checkpoint


def convert_checkpoint(model_name: str, checkpoint: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Map ``checkpoint`` to the layout of the vitzoo model ``model_name``.

    Returns:
        The zoo state dict (contiguous CPU tensors) and the model's pretrained_cfg.

    Raises:
        ConvertError: unknown model, or keys / shapes that do not fit (the filter's one-line message).
    """
    import timm

    import vitzoo

    if model_name not in vitzoo.list_models():
        raise ConvertError(f"unknown vitzoo model {model_name!r}; vitzoo.list_models() lists them")
    model = timm.create_model(model_name, device="meta")  # shapes only: no memory, no init
    filter_fn = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    state_dict = filter_fn(checkpoint, model)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state_dict.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ConvertError(f"{model_name}: {len(wrong)} tensor(s) of the wrong shape: {', '.join(wrong[:3])}")
    state_dict = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return state_dict, dict(model.pretrained_cfg)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, convert, write ``<output>.safetensors`` and ``<output>.json``."""
    parser = argparse.ArgumentParser(description="Convert an official InLine / QT-ViT checkpoint (or any checkpoint "
                                                 "a vitzoo model accepts) to vitzoo safetensors.")
    parser.add_argument("--model", required=True, help="vitzoo model name, e.g. inline_deit_tiny_patch16_224")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint file (.pth, .pt or .safetensors)")
    parser.add_argument("--output", required=True, help="output weights file; a .json of the pretrained_cfg is "
                                                        "written beside it")
    parser.add_argument("--ema", action="store_true", help="take the checkpoint's EMA weights")
    args = parser.parse_args(argv)
    from safetensors.torch import save

    from vitzoo.models._helpers import CheckpointLayoutError
    from vitzoo.train.checkpoint import write_atomic

    output = Path(args.output)
    if output.suffix != ".safetensors":
        output = output.with_name(output.name + ".safetensors")
    cfg_path = output.with_suffix(".json")
    try:
        if not output.parent.is_dir():
            raise ConvertError(f"output folder {output.parent} does not exist")
        for path in (output, cfg_path):
            if path.exists():
                raise ConvertError(f"{path} exists; remove it or pass another --output")
        state_dict, cfg = convert_checkpoint(args.model, load_checkpoint_file(args.checkpoint, use_ema=args.ema))
    except (ConvertError, CheckpointLayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    # atomically: a run cut off midway leaves no half-written file
    write_atomic(output, save(state_dict, metadata={"format": "pt", "architecture": args.model}))
    write_atomic(cfg_path, json.dumps(cfg, indent=2, default=str) + "\n")
    print(f"wrote {output} ({len(state_dict)} tensors) and {cfg_path}")
