"""The paper's cleaning pipeline (SPEC.md §5), step by step and end to end."""

import random

from bs4 import BeautifulSoup

from seqep.data.clean import (
    TextCleaner,
    delete_special_characters,
    drop_square_brackets,
    space_sentence_punct,
    strip_html,
)


def test_html_and_square_brackets_removed():
    clean = TextCleaner()
    assert clean("I loved it!<br /><br />Great film.") == ["i", "loved", "it", "!", "great", "film", "."]
    assert clean("Great movie [SPOILER: he dies] and great plot.") == ["great", "movie", "and", "great", "plot", "."]
    assert clean("Fun &amp; great") == ["fun", "great"]  # entity decoded to "&", then deleted


def test_br_removal_joins_words_like_the_paper():
    # get_text() drops <br /> without a space: "it.<br />Bad" becomes one token (then usually OOV), as in the paper.
    assert TextCleaner()("I hated it.<br />Bad, boring.") == ["i", "hated", "it.bad", ",", "boring", "."]


def test_special_characters_and_the_a_z_typo():
    assert delete_special_characters("don't 10/10 (wow) é ok.") == "dont 1010 wow  ok."
    # the faithful A-z range keeps [ \ ] ^ _ and backtick; the fixed one deletes them
    assert delete_special_characters("a_b^c`d\\e") == "a_b^c`d\\e"
    assert delete_special_characters("a_b^c`d\\e", fix_az_range=True) == "abcde"
    assert TextCleaner()("snake_case") == ["snake_case"]
    assert TextCleaner(fix_az_range=True)("snake_case") == ["snakecase"]


def test_lowercase_strip_and_tokenize():
    assert TextCleaner()("  The MOVIE, Was GREAT!!\r\n") == ["the", "movie", ",", "was", "great", "!", "!"]
    # Toktok writes a tab as the token "&#9;" (no word vector has it, so it is dropped later), as in the paper
    assert TextCleaner()("a\tb") == ["a", "&#9;", "b"]


def test_snli_rule_spaces_sentence_punctuation_and_drops_commas():
    assert space_sentence_punct("a.b?c!") == "a . b ? c ! "
    snli = TextCleaner(snli=True)
    assert snli("Two people, a man.And a woman?") == ["two", "people", "a", "man", ".", "and", "a", "woman", "?"]
    assert TextCleaner()("Two people, a man.And") == ["two", "people", ",", "a", "man.and"]


def test_non_string_gives_no_tokens():
    assert TextCleaner()(None) == []
    assert TextCleaner()(float("nan")) == []
    assert drop_square_brackets("a [b] c [d") == "a  c [d"


def test_html_shortcut_matches_beautifulsoup():
    rng = random.Random(0)
    pieces = ["a", "b c", " ", "\n", "\t", "\r\n", "\x0c", "\x0b", "\x85", "\u00a0", "é", ".", "  ", ">", "<br />",
              "<br/>", "<br>", "<BR />", "<br  />", "<br\n/>", "<br/ >", "<br", "</br>", "<b>", "<p>a</p>", "&amp;",
              "<br\u00a0/>"]
    samples = ["", " ", "\t", "plain text", "a\r\nb", "x > y", "I loved it!<br /><br />Great film."]
    samples += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(4000)]
    for text in samples:
        assert strip_html(text) == BeautifulSoup(text, "html.parser").get_text(), repr(text)
