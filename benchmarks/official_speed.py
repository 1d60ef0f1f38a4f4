"""The official InLine DeiT code beside the zoo's InLine models, their softmax twins and timm's DeiTs, in one process.

The official code is not part of vitzoo: pass a checkout of it (``--inline-repo``, the folder holding
``models/inline_deit.py``). Its ``VisionTransformer`` is registered with timm for this process only, as
``official_inline_deit_<size>`` with the official size's width and heads, and every model is measured by
``vitzoo-bench --compare``'s machinery: interleaved repeats, host and device ms, launches, peak memory::

    python benchmarks/official_speed.py --inline-repo ../InLine --img-sizes 224 512 1024 --phases infer train \\
        --modes none cuda-graph --results-file benchmarks/results/official_speed/h100.json
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from timm.models import register_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitzoo.bench import compare  # noqa: E402
from vitzoo.registry import FAMILIES  # noqa: E402

# the official entry points' widths and heads (``inline_deit_tiny/small/base``); depth 12, patch 16
OFFICIAL_SIZES = {"tiny": (192, 6), "small": (320, 10), "base": (384, 12)}
# timm reads a registered model's pretrained config from its module's ``default_cfgs``: a fixed input size makes the
# benchmark build each model for the measured resolution, as it does the zoo's DeiTs
default_cfgs: dict[str, dict] = {}


def official_name(size: str) -> str:
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


def register_official(module: ModuleType) -> list[str]:
    """Register the official DeiT of every size with timm (``official_inline_deit_<size>``); return their names."""
    names = []
    for size, (width, heads) in OFFICIAL_SIZES.items():
        name = official_name(size)
        default_cfgs[name] = {"fixed_input_size": True, "num_classes": 1000, "input_size": (3, 224, 224)}

        # timm also passes its pretrained-config arguments, which the official class does not take
        def build(pretrained: bool = False, img_size: int = 224, width: int = width, heads: int = heads,
                  **timm_kwargs) -> torch.nn.Module:
            return module.VisionTransformer(img_size=img_size, patch_size=16, embed_dim=width, depth=12,
                                            num_heads=heads)

        build.__name__ = name
        register_model(build)
        names.append(name)
    return names


def comparison_roles(size: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The models measured for one size, in order, and their roles: ``--compare``'s set for the zoo's InLine model
    (it, its softmax twin and timm's DeiT) with the official model second."""
    zoo, official = FAMILIES["inline"].model_name(size), official_name(size)
    ordered, roles = compare.comparison_set([zoo])
    ordered.insert(1, official)
    roles[zoo]["official_model"] = official
    roles[official] = {"role": "official"}
    return ordered, roles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline-repo", type=Path, required=True, help="a checkout of the official InLine code")
    parser.add_argument("--sizes", nargs="+", choices=list(OFFICIAL_SIZES), default=list(OFFICIAL_SIZES))
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[224])
    parser.add_argument("--phases", nargs="+", choices=compare.PHASES, default=["infer"])
    parser.add_argument("--modes", nargs="+", choices=[*compare.COMPILE_MODES, compare.CUDA_GRAPH], default=["none"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch at 224 (scaled above)")
    parser.add_argument("--train-batch-size", type=int, default=128, help="training batch at 224 (scaled above)")
    parser.add_argument("--warm-steps", type=int, default=10)
    parser.add_argument("--timed-steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--results-file", type=Path, help="the JSON written after each (size, phase, mode)")
    args = parser.parse_args(argv)
    try:
        names = register_official(load_official_inline(args.inline_repo))
    except (ValueError, ImportError, SyntaxError) as error:
        parser.error(str(error).splitlines()[0])
    config = compare.CompareConfig(batch_size=args.batch_size, train_batch_size=args.train_batch_size,
                                   repeats=args.repeats, warm_steps=args.warm_steps, timed_steps=args.timed_steps,
                                   device=args.device)
    device = torch.device(args.device)
    command = "python benchmarks/official_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"info": compare.provenance(command, device) | {"config": vars(config), "official": names}, "rows": []}
    for size in args.sizes:
        ordered, roles = comparison_roles(size)
        compare.measure_all(ordered, roles, args.img_sizes, args.phases, args.modes, config, result, args.results_file,
                            lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
