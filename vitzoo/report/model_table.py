"""The zoo's model table: every registered model with params, GMACs at its native resolution and published top-1.

The counts (params and fvcore GMACs, batch 1, native resolution) are measured once and committed as
``benchmarks/results/model_table/cpu.json`` (their provenance and one row per model); ``python -m
vitzoo.report.model_table --recount`` measures them again (about five minutes on two CPU cores) and rewrites it.
The table itself is built from that file, the published numbers (``published_imagenet.csv``) and each model's
``pretrained_cfg``; ``python -m vitzoo.report`` puts it into the README between the ``model-table`` markers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.bench.common import environment, git_revision, read_json_result, write_json
from vitzoo.flops import count_gmacs
from vitzoo.models import list_models
from vitzoo.registry import family_of
from vitzoo.report.published import load_published

MARKERS = ("<!-- model-table:start -->", "<!-- model-table:end -->")
COUNTS = Path("benchmarks/results/model_table/cpu.json")
_AUTHORS_CHECKPOINT = "authors' checkpoint"


def count_models(names: list[str]) -> list[dict[str, str | int | float]]:
    """Params (M) and fvcore GMACs of each model at its native resolution, built with seed 0 on the CPU."""
    rows = []
    for name in tqdm(names, desc="models", file=sys.stderr):
        torch.manual_seed(0)
        model = timm.create_model(name)
        rows.append(dict(
            model=name, img_size=model.pretrained_cfg["input_size"][-1],
            params_m=sum(p.numel() for p in model.parameters()) / 1e6, gmacs=count_gmacs(model),
        ))
    return rows


def weights_link(pretrained_cfg: dict) -> str:
    """The README's weights cell: a link to the authors' checkpoint named in the model's notes, or 'none'."""
    for note in pretrained_cfg.get("notes") or ():
        if note.startswith(_AUTHORS_CHECKPOINT) and "http" in note:
            return f"[authors']({note[note.index('http'):].split()[0]}), converted on load"
    return "none"


def to_markdown(counts: list[dict]) -> str:
    """The table of the counted models, with the published numbers and the weights column."""
    published = load_published()
    lines = [
        "| model | family | res | params (M) | GMACs | published params / GMACs | published top-1 | source | weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in counts:
        name = row["model"]
        pub = published.get(name)
        published_size = f"{pub.params_m:g} / {pub.gmacs:g}" if pub else ""
        top1 = f"{pub.top1:.1f} (published)" if pub else "none published"
        weights = weights_link(timm.models.get_pretrained_cfg(name).to_dict())
        lines.append(
            f"| `{name}` | {family_of(name)} | {row['img_size']} | {float(row['params_m']):.2f} | "
            f"{float(row['gmacs']):.2f} | {published_size} | {top1} | {pub.source if pub else ''} | {weights} |"
        )
    return "\n".join(lines)


def recount(path: Path, names: list[str]) -> None:
    """Measure the counts of ``names`` and write them to ``path`` (a JSON file: provenance and ``rows``)."""
    rows = count_models(names)
    import fvcore

    write_json(path, environment(torch.device("cpu")) | {
        "what": "params and fvcore GMACs (1 MAC = 1 fused multiply-add, batch 1, native resolution, attention "
                "included) of every registered vitzoo model",
        "fvcore": getattr(fvcore, "__version__", ""),
        "command": "python -m vitzoo.report.model_table --recount", "git_revision": git_revision(), "rows": rows,
    })


def load_counts(path: Path) -> list[dict]:
    """The counted rows of a ``--recount`` file; ValueError with one line when it is missing or not one."""
    return read_json_result(path, ("rows",), "a file written by vitzoo-models --recount")["rows"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``vitzoo-models``: print the table (``--recount`` measures the counts first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="fnmatch pattern of model names, e.g. 'inline_*'")
    parser.add_argument("--counts", type=Path, default=COUNTS, help=f"the counts file (default {COUNTS})")
    parser.add_argument("--recount", action="store_true", help="measure every model's counts and rewrite --counts")
    args = parser.parse_args(argv)
    names = list_models(args.filter)
    if not names:
        parser.error(f"no vitzoo model matches {args.filter!r}")
    if args.recount:
        recount(args.counts, list_models())
    try:
        counts = [row for row in load_counts(args.counts) if row["model"] in names]
    except ValueError as error:
        parser.error(str(error))
    print(to_markdown(counts))


if __name__ == "__main__":
    main()
