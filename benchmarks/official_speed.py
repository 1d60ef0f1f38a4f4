"""The authors' own code beside the zoo's models, their softmax twins and timm's models, in one process.

The official code is not part of vitzoo: pass a checkout of it. ``--inline-repo`` takes the official InLine code
(the folder holding ``models/inline_deit.py``): its ``VisionTransformer`` is registered as
``official_inline_deit_<size>`` with the official size's width and heads. ``--qtvit-repo`` takes the official
QT-ViT code (the folder holding the ``efficientvit`` package): its EfficientViT classifiers are registered as
``official_qtvit_<n>``, the size of the zoo's ``qtvit_<n>``. Both are registered with timm for this process only, and
every model is measured by ``vitzoo-bench --compare``'s machinery (interleaved repeats, host and device ms, launches,
peak memory), each official model beside the zoo model of its size::

    python benchmarks/official_speed.py --inline-repo ../InLine --img-sizes 224 512 1024 --phases infer train \\
        --modes none cuda-graph --results-file benchmarks/results/official_speed/h100.json
    python benchmarks/official_speed.py --qtvit-repo ../AMD_QTViT --qtvit-models qtvit_1 qtvit_2 qtvit_3 \\
        --phases infer train --results-file qtvit_official.json
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from timm.models import register_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench import compare  # noqa: E402
from vitzoo.registry import FAMILIES  # noqa: E402

# the official InLine entry points' widths and heads (``inline_deit_tiny/small/base``); depth 12, patch 16
OFFICIAL_SIZES = {"tiny": (192, 6), "small": (320, 10), "base": (384, 12)}
# the official QT-ViT classifier of each zoo size (EfficientViT-B1..B3, L1..L3 with quadratic-Taylor attention)
QTVIT_BUILDERS = {"qtvit_1": "efficientvit_cls_b1", "qtvit_2": "efficientvit_cls_b2", "qtvit_3": "efficientvit_cls_b3",
                  "qtvit_4": "efficientvit_cls_l1", "qtvit_5": "efficientvit_cls_l2", "qtvit_6": "efficientvit_cls_l3"}
# timm reads a registered model's pretrained config from its module's ``default_cfgs``: a fixed input size makes the
# benchmark build each model for the measured resolution, as it does the zoo's DeiTs
default_cfgs: dict[str, dict] = {}


def official_name(size: str) -> str:
    """The registered name of the official InLine DeiT of one size, e.g. ``official_inline_deit_tiny``."""
    return f"official_inline_deit_{size}"


def load_official_inline(repo: Path) -> ModuleType:
    """The official ``models/inline_deit.py`` of the checkout ``repo``, imported under a private name."""
    path = repo / "models" / "inline_deit.py"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; --inline-repo takes a checkout of the official InLine code")
    spec = importlib.util.spec_from_file_location("official_inline_deit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its own @register_model looks itself up there
    spec.loader.exec_module(module)
    return module


# packages the official QT-ViT code imports at module level for its trainer (distributed helpers, ONNX export) and its
# classifiers never call: a stand-in where one is not installed, so the classifiers import without that environment
TRAINING_ONLY_PACKAGES = ("torchpack", "torchpack.distributed", "onnx", "onnxsim")


class _StandIn(types.ModuleType):
    """A training-only package that is not installed: its attributes are stand-ins too, and calling one raises."""

    def __getattr__(self, name: str) -> _StandIn:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs) -> None:
        raise RuntimeError(f"{self.__name__} is not installed (official_speed.py stands in for it)")


def load_official_qtvit(repo: Path) -> ModuleType:
    """The official QT-ViT classifiers (``efficientvit/models/efficientvit/cls.py``) of the checkout ``repo``; the
    checkout's ``efficientvit`` package imports itself by that name, so ``repo`` goes on ``sys.path``."""
    if not (repo / "efficientvit" / "models" / "efficientvit" / "cls.py").is_file():
        raise ValueError(f"{repo} holds no efficientvit/models/efficientvit/cls.py; --qtvit-repo takes a checkout "
                         "of the official QT-ViT code")
    for name in TRAINING_ONLY_PACKAGES:
        top = name.partition(".")[0]
        if name not in sys.modules and (isinstance(sys.modules.get(top), _StandIn)
                                        or importlib.util.find_spec(top) is None):
            sys.modules[name] = _StandIn(name)
    sys.path.insert(0, str(repo))
    return importlib.import_module("efficientvit.models.efficientvit.cls")


def _register(name: str, build: Callable[..., torch.nn.Module]) -> str:
    """Register ``build`` with timm as ``name``, for the measured resolution (timm passes its pretrained-config
    arguments too, which the official classes do not take)."""
    default_cfgs[name] = {"fixed_input_size": True, "num_classes": 1000, "input_size": (3, 224, 224)}

    def entry(pretrained: bool = False, img_size: int = 224, **timm_kwargs) -> torch.nn.Module:
        return build(img_size=img_size)

    entry.__name__ = name
    register_model(entry)
    return name


def register_official(module: ModuleType, sizes: list[str]) -> list[str]:
    """Register the official InLine DeiT of each of ``sizes`` with timm (``official_inline_deit_<size>``); return
    their names."""
    names = []
    for size in sizes:
        width, heads = OFFICIAL_SIZES[size]
        build = functools.partial(module.VisionTransformer, patch_size=16, embed_dim=width, depth=12, num_heads=heads)
        names.append(_register(official_name(size), build))
    return names


def float_attention_input(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the official attention's half-precision rule applied to bfloat16 as well. The official
    ``relu_linear_att`` runs outside autocast and casts a float16 ``qkv`` to float32, but not a bfloat16 one, which
    then meets its float32 parameters and fails; the benchmark measures every model under bf16 autocast, so a
    bfloat16 ``qkv`` is cast the way the official code casts a float16 one."""
    for module in model.modules():
        attention = getattr(module, "relu_linear_att", None)
        if callable(attention):
            module.relu_linear_att = functools.partial(_float_input, attention)
    return model


def _float_input(attention: Callable[[torch.Tensor], torch.Tensor], qkv: torch.Tensor) -> torch.Tensor:
    return attention(qkv.float() if qkv.dtype == torch.bfloat16 else qkv)


def register_official_qtvit(module: ModuleType, models: list[str]) -> list[str]:
    """Register the official QT-ViT classifier of each zoo model in ``models`` (``official_<zoo name>``); return
    their names. It takes any square input (its attention interpolates the position encoding), so the resolution
    is not passed."""
    names = []
    for model in models:
        builder = getattr(module, QTVIT_BUILDERS[model])
        names.append(_register(f"official_{model}",
                               lambda img_size, builder=builder: float_attention_input(builder(n_classes=1000))))
    return names


def with_official(zoo: str, official: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The models measured for one zoo model, in order, and their roles: ``--compare``'s set for it (it, its softmax
    twin where it has one, timm's model) with the official model second."""
    ordered, roles = compare.comparison_set([zoo])
    ordered.insert(1, official)
    roles[zoo]["official_model"] = official
    roles[official] = {"role": "official"}
    return ordered, roles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline-repo", type=Path, help="a checkout of the official InLine code")
    parser.add_argument("--sizes", nargs="+", choices=list(OFFICIAL_SIZES), default=list(OFFICIAL_SIZES),
                        help="InLine sizes (with --inline-repo)")
    parser.add_argument("--qtvit-repo", type=Path, help="a checkout of the official QT-ViT code")
    parser.add_argument("--qtvit-models", nargs="+", choices=list(QTVIT_BUILDERS),
                        default=["qtvit_1", "qtvit_2", "qtvit_3"], help="QT-ViT sizes (with --qtvit-repo)")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--phases", nargs="+", choices=compare.PHASES, default=["infer"])
    parser.add_argument("--modes", nargs="+", choices=[*compare.COMPILE_MODES, compare.CUDA_GRAPH], default=["none"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch at 224 (scaled above)")
    parser.add_argument("--train-batch-size", type=int, default=128, help="training batch at 224 (scaled above)")
    parser.add_argument("--warm-steps", type=int, default=10)
    parser.add_argument("--timed-steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--results-file", type=Path, help="the JSON written after each (model, size, phase, mode)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.inline_repo is None and args.qtvit_repo is None:
        parser.error("pass --inline-repo, --qtvit-repo or both: the checkouts of the official code to measure")
    pairs: list[tuple[str, str]] = []  # (zoo model, official model)
    try:
        if args.inline_repo is not None:
            names = register_official(load_official_inline(args.inline_repo), args.sizes)
            pairs += list(zip((FAMILIES["inline"].model_name(size) for size in args.sizes), names, strict=True))
        if args.qtvit_repo is not None:
            names = register_official_qtvit(load_official_qtvit(args.qtvit_repo), args.qtvit_models)
            pairs += list(zip(args.qtvit_models, names, strict=True))
    except (ValueError, ImportError, SyntaxError) as error:
        parser.error(str(error).splitlines()[0])
    config = compare.CompareConfig(batch_size=args.batch_size, train_batch_size=args.train_batch_size,
                                   repeats=args.repeats, warm_steps=args.warm_steps, timed_steps=args.timed_steps,
                                   device=args.device)
    device = torch.device(args.device)
    command = "python benchmarks/official_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"info": compare.provenance(command, device) | {"config": vars(config),
                                                             "official": [official for _, official in pairs]},
              "rows": []}
    for zoo, official in pairs:
        ordered, roles = with_official(zoo, official)
        compare.measure_all(ordered, roles, args.img_sizes, args.phases, args.modes, config, result, args.results_file,
                            lambda line: print(line, flush=True), progress=not args.no_progress)


if __name__ == "__main__":
    main()
