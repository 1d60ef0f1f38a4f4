"""The zoo's model table: every registered model with params, GMACs at its native resolution and published top-1.

``python -m vitzoo.report.model_table`` prints it; ``--readme README.md`` rewrites the table between the README's
``<!-- model-table:start -->`` / ``<!-- model-table:end -->`` markers, so the README never holds hand-typed numbers.
"""
from __future__ import annotations

import argparse
import csv
import importlib.resources
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import vitzoo  # noqa: F401  (registers the models)
from vitzoo.flops import count_gmacs
from vitzoo.models import list_models
from vitzoo.report._readme import replace_between_markers
from vitzoo.report.pareto import family

_MARKERS = ("<!-- model-table:start -->", "<!-- model-table:end -->")


@dataclass
class PublishedResult:
    top1: float
    top5: float | None
    params_m: float
    gmacs: float
    source: str


def load_published() -> dict[str, PublishedResult]:
    """The papers' published ImageNet-1k numbers (``published_imagenet.csv``, each row with its source)."""
    text = importlib.resources.files("vitzoo.report").joinpath("published_imagenet.csv").read_text()
    rows = csv.DictReader(text.splitlines())
    return {
        row["model"]: PublishedResult(
            float(row["top1"]), float(row["top5"]) if row["top5"] else None, float(row["params_m"]),
            float(row["gmacs"]), row["source"],
        )
        for row in rows
    }


def build_rows(names: list[str]) -> list[dict]:
    published = load_published()
    rows = []
    for name in tqdm(names, desc="models", file=sys.stderr):
        torch.manual_seed(0)
        model = timm.create_model(name)
        res = model.pretrained_cfg["input_size"][-1]
        pub = published.get(name)
        rows.append(dict(
            model=name, family=family(name), img_size=res,
            params_m=sum(p.numel() for p in model.parameters()) / 1e6, gmacs=count_gmacs(model),
            published=pub, weights=weights_link(model.pretrained_cfg),
        ))
    return rows


_AUTHORS_CHECKPOINT = "authors' checkpoint"


def weights_link(pretrained_cfg: dict) -> str:
    """The README's weights cell: a link to the authors' checkpoint named in the model's notes, or 'none'."""
    for note in pretrained_cfg.get("notes") or ():
        if note.startswith(_AUTHORS_CHECKPOINT) and "http" in note:
            return f"[authors']({note[note.index('http'):].split()[0]}), converted on load"
    return "none"


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | family | res | params (M) | GMACs | published params / GMACs | published top-1 | source | weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pub = row["published"]
        published_size = f"{pub.params_m:g} / {pub.gmacs:g}" if pub else ""
        top1 = f"{pub.top1:.1f} (published)" if pub else "none published"
        lines.append(
            f"| `{row['model']}` | {row['family']} | {row['img_size']} | {row['params_m']:.2f} | {row['gmacs']:.2f} "
            f"| {published_size} | {top1} | {pub.source if pub else ''} | {row['weights']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="fnmatch pattern of model names, e.g. 'inline_*'")
    parser.add_argument("--readme", type=Path, help="rewrite the table in this README between the markers")
    args = parser.parse_args(argv)
    names = list_models(args.filter)
    if not names:
        parser.error(f"no vitzoo model matches {args.filter!r}")
    table = to_markdown(build_rows(names))
    print(table)
    if args.readme:
        replace_between_markers(args.readme, _MARKERS, table)


if __name__ == "__main__":
    main()
