"""The papers' published ImageNet-1k numbers, each with its source (``published_imagenet.csv`` beside this file)."""
from __future__ import annotations

import csv
import importlib.resources
from dataclasses import dataclass


@dataclass
class PublishedResult:
    top1: float
    top5: float | None
    params_m: float
    gmacs: float
    source: str


def load_published() -> dict[str, PublishedResult]:
    """``{model name: PublishedResult}`` for every model a paper reports."""
    text = importlib.resources.files("vitzoo.report").joinpath("published_imagenet.csv").read_text()
    rows = csv.DictReader(text.splitlines())
    return {
        row["model"]: PublishedResult(
            float(row["top1"]), float(row["top5"]) if row["top5"] else None, float(row["params_m"]),
            float(row["gmacs"]), row["source"],
        )
        for row in rows
    }
