"""The paper's text cleaning (SPEC.md §5), one function per step.

`html.parser` text -> drop `[...]` -> delete characters outside a keep-set -> NLTK `ToktokTokenizer` -> strip ->
lowercase. The keep-set regex of the old code is `[^a-zA-z0-9.!?,\\s]`: the `A-z` range is a typo that also keeps
`[ \\ ] ^ _` and the backtick. The faithful preset keeps the typo; `fix_az_range=True` uses `A-Z`.
SNLI first puts spaces around `.`, `?`, `!` and its keep-set has no comma (so commas are dropped).
No NLTK data is needed (`ToktokTokenizer` is pure regex).
"""

from __future__ import annotations

import functools
import re

from bs4 import BeautifulSoup

SQUARE_BRACKETS = re.compile(r"\[[^]]*\]")
KEEP = {  # (snli, fix_az_range) -> regex of the characters to delete
    (False, False): re.compile(r"[^a-zA-z0-9.!?,\s]"),
    (False, True): re.compile(r"[^a-zA-Z0-9.!?,\s]"),
    (True, False): re.compile(r"[^a-zA-z0-9.?!\s]"),
    (True, True): re.compile(r"[^a-zA-Z0-9.?!\s]"),
}
SNLI_SENTENCE_PUNCT = re.compile(r"([.?!])")
BR_TAG = re.compile(r"<br[ \t\n\r\f]*/?>", re.IGNORECASE)
ASCII_SPACES = " \n\t\f\r"  # what BeautifulSoup collapses in whitespace-only strings


def strip_html(text: str) -> str:
    """BeautifulSoup `html.parser` `get_text()`: tags removed, entities decoded.

    Shortcut, same result (tests compare it with the parser on random texts): when the only markup is `<br>`
    tags (IMDB's line breaks) and there is no `&`, the text between tags is kept as is, except that a piece made
    only of ASCII whitespace becomes one newline (if it has one) or one space, as BeautifulSoup does.
    """
    if "&" in text:
        return BeautifulSoup(text, "html.parser").get_text()
    pieces = BR_TAG.split(text) if "<" in text else [text]
    if any("<" in piece for piece in pieces):
        return BeautifulSoup(text, "html.parser").get_text()
    return "".join(_collapse_blank(piece) for piece in pieces)


def _collapse_blank(piece: str) -> str:
    if piece and not piece.strip(ASCII_SPACES):
        return "\n" if "\n" in piece else " "
    return piece


def drop_square_brackets(text: str) -> str:
    """Delete every `[...]` span (no nesting)."""
    return SQUARE_BRACKETS.sub("", text)


def space_sentence_punct(text: str) -> str:
    """SNLI only: spaces around `.`, `?` and `!` so the tokenizer splits them off mid-sentence."""
    return SNLI_SENTENCE_PUNCT.sub(r" \1 ", text)


def delete_special_characters(text: str, *, snli: bool = False, fix_az_range: bool = False) -> str:
    """Delete the characters outside the keep-set (see the module docstring)."""
    return KEEP[(snli, fix_az_range)].sub("", text)


@functools.cache
def _toktok():
    """Imported on first use: `import nltk` pulls in scipy and costs seconds on every `run.py --help`."""
    from nltk.tokenize.toktok import ToktokTokenizer

    return ToktokTokenizer()


def tokenize(text: str) -> list[str]:
    """ToktokTokenizer, each token stripped and lowercased; empty tokens dropped."""
    tokens = (t.strip().lower() for t in _toktok().tokenize(text))
    return [t for t in tokens if t]


class TextCleaner:
    """Callable `text -> list[str]` running the whole pipeline with fixed settings.

    `snli=True` adds the SNLI punctuation rule. A non-string (a missing CSV cell) gives `[]`.
    """

    def __init__(self, *, snli: bool = False, fix_az_range: bool = False) -> None:
        self.snli = snli
        self.fix_az_range = fix_az_range

    def __call__(self, text: object) -> list[str]:
        if not isinstance(text, str):
            return []
        text = drop_square_brackets(strip_html(text))
        if self.snli:
            text = space_sentence_punct(text)
        text = delete_special_characters(text, snli=self.snli, fix_az_range=self.fix_az_range)
        return tokenize(text)

    def settings(self) -> dict[str, bool]:
        """What goes into the cache key."""
        return {"snli": self.snli, "fix_az_range": self.fix_az_range}
