"""Generated README sections: text between a start and an end marker, rewritten by the commands that own them."""
from __future__ import annotations

import re
from pathlib import Path


def replace_between_markers(path: Path, markers: tuple[str, str], text: str) -> None:
    """Put ``text`` between the two ``markers`` lines of the file at ``path``; ValueError when they are missing."""
    content = path.read_text()
    start, end = markers
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise ValueError(f"{path} has no {start} ... {end} markers to put the generated text between")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
