"""The one exception type of the data package.

`DataError` subclasses `ValueError`; the suite catches it and prints its message as one line with exit code 2,
so every message must say what is wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing, malformed or empty; the message is one actionable line."""


def missing_file_error(what: str, names: Iterable[str], searched: Iterable[Path | str], how: str) -> DataError:
    """A `DataError` naming the expected file names, the paths searched and how to obtain the file."""
    names_txt = ", ".join(names)
    searched_txt = ", ".join(str(p) for p in searched) or "(nowhere)"
    return DataError(f"{what} not found: expected {names_txt}; searched {searched_txt}; {how}")
