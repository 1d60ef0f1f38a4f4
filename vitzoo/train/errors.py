"""The data errors every data module raises (here, below them all, so that none imports another for them)."""
from __future__ import annotations


class UnreadableImage(OSError):
    """An image file that could not be read or decoded (the file's fault, not the pipeline's)."""


class DataError(ValueError):
    """A dataset that cannot be used as given; the message is one line that says what to fix."""
