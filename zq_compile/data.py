"""Real text that ships inside installed packages (nothing is downloaded at run time).

The Pang & Lee movie-review polarity sentences (200, labelled) and Wikipedia prose come with the
gensim wheel under ``gensim/test/test_data``.
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import os
import re


def _gensim_test_data() -> str:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the real-text data ships in the gensim wheel: pip install 'zq_compile[data]' (or gensim)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")


def polarity_sentences() -> list[tuple[str, int]]:
    """(sentence, label) pairs, label 1 = positive, in file order."""
    path = os.path.join(_gensim_test_data(), "pang_lee_polarity.cor")
    out = []
    with open(path, encoding="latin-1") as f:  # the file holds cp1252 punctuation bytes
        for line in f:
            label, _, text = line.partition(" ")
            text = " ".join(text.split())
            if text:
                out.append((text, 1 if label == "__label__pos" else 0))
    return out


_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_MARKUP = [
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), " "),  # footnotes
    (re.compile(r"<!--.*?-->", re.S), " "),  # comments
    (re.compile(r"<[^>]+>"), " "),  # remaining tags
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),  # [[link|text]] -> text
    (re.compile(r"\[https?://[^\s\]]+\s?([^\]]*)\]"), r"\1"),  # external links
    (re.compile(r"'{2,}"), ""),  # bold / italics
    (re.compile(r"^[=*#:;|!{}].*$", re.M), " "),  # headings, lists, tables
]


def wikipedia_prose(min_chars: int = 200) -> list[str]:
    """Paragraphs of English Wikipedia prose with the wiki markup stripped."""
    path = os.path.join(_gensim_test_data(), "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    with bz2.open(path, "rt", encoding="utf8") as f:
        raw = f.read()
    texts = re.findall(r"<text[^>]*>(.*?)</text>", raw, flags=re.S)
    paragraphs = []
    for text in texts:
        text = html.unescape(text)  # the dump escapes the article's own markup once
        for _ in range(3):  # nested templates, innermost first
            text = _TEMPLATE.sub(" ", text)
        for pattern, repl in _MARKUP:
            text = pattern.sub(repl, text)
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= min_chars and not para.lower().startswith(("redirect", "#redirect")):
                paragraphs.append(para)
    return paragraphs
