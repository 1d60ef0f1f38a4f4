"""Generated sections of markdown files: the text between a start and an end marker line."""
from __future__ import annotations

import re
from pathlib import Path


def replace_between_markers(content: str, markers: tuple[str, str], text: str) -> str:
    """``content`` with ``text`` between the two ``markers`` lines; ValueError when they are missing."""
    start, end = markers
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise ValueError(f"no {start} ... {end} markers to put the generated text between")
    return pattern.sub(lambda _: f"{start}\n{text}\n{end}", content)


def rewrite_between_markers(path: Path, markers: tuple[str, str], text: str) -> None:
    """Put ``text`` between the ``markers`` lines of the file at ``path``; ValueError naming the file when they are
    missing."""
    try:
        path.write_text(replace_between_markers(path.read_text(), markers, text))
    except ValueError as error:
        raise ValueError(f"{path} has {error}") from None
