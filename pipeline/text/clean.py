"""From marked-up documentation text to clean English sentences (the rules of docs/text.md).

1. Lines: doctest sessions (a `>>>` line and every line after it up to a blank line), reST
   directives (`.. note::`), section titles (a line underlined with one repeated punctuation
   character, the underline too) and table rules/rows (`+---`, `| ... |`) are dropped.
2. Paragraphs (blocks between blank lines): a reST literal block (every paragraph indented deeper
   than a paragraph ending in `::`) and BNF grammar (`::=`) are dropped; the rest is joined into one
   line, inline markup removed (`:role:`x`` -> x, ``` ``x`` ``` -> x, `*x*` -> x, footnote marks
   `[1]`, field markers `:param x:`, list bullets).
3. Sentences: a paragraph is cut after `.`, `!` or `?` (and any closing quotes or brackets) followed by
   whitespace and an upper-case letter, a digit, or a quote or bracket, unless the word before is a known
   abbreviation (`ABBREVIATIONS`: e.g., i.e., etc., ...).
4. Only English prose is kept (`is_prose`): 4 to 80 words, starts with an upper-case letter or a
   quote or bracket (a quoted name: `"__new__()" is a static method.`), ends with `.`, `!`, `?` or
   `:` (a sentence that introduces an example; closing quotes or brackets allowed),
   and at least 60% of its words are plain words (letters, apostrophes and hyphens, with trailing
   punctuation). Code, signatures and table cells fail one of these.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    {"e.g.", "i.e.", "etc.", "vs.", "cf.", "viz.", "mr.", "mrs.", "dr.", "no.", "approx.", "resp.", "al."}
)
MIN_WORDS, MAX_WORDS, MIN_PLAIN_FRACTION = 4, 80, 0.6

_UNDERLINE = re.compile(r"^\s*([=\-~^*#+`'\".:_])\1{2,}\s*$")
_TABLE = re.compile(r"^\s*(\+[-=+]+\+?|\|.*\|)\s*$")
_ROLE = re.compile(r":[\w:.-]+:`~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_INTERPRETED = re.compile(r"`([^`]+?)`_{0,2}")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s?\[(?:\d+|#\w*|\*)\]_?")
_FIELD = re.compile(r"^:[\w ()\[\],.*|-]+:\s*")
_BULLET = re.compile(r"^(?:[*\-+\u2022]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[A-Z0-9]|[\"'\u201c\u2018(\[]\S)")
_PLAIN_WORD = re.compile(r"^[\"'\u201c\u2018(\[]*[A-Za-z][A-Za-z'\u2019-]*[\"'\u201d\u2019)\].,;:!?]*$")
_STARTS = re.compile(r"^(?:[A-Z]|[\"'\u201c\u2018(\[]\S)")
_ENDS = re.compile(r"[.!?:][\"'\u201d\u2019)\]]*$")


def _drop_lines(text: str) -> list[str]:
    """Step 1: the lines left after doctests, directives, titles and tables are dropped."""
    lines = [line.rstrip() for line in text.expandtabs(8).splitlines()]
    kept: list[str] = []
    in_doctest = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_doctest = True
        if in_doctest:
            in_doctest = bool(stripped)
            continue
        if stripped.startswith(".. ") or _TABLE.match(line) or _UNDERLINE.match(line):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if stripped and _UNDERLINE.match(following) and len(following.strip()) >= len(stripped) - 1:
            continue  # a section title: its underline is at least as long as it
        kept.append(line)
    return kept


def _paragraphs(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Blocks of non-blank lines as (indentation of the first line, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append((len(current[0]) - len(current[0].lstrip()), current))
            current = []
    return blocks


def clean_paragraphs(text: str) -> list[str]:
    """Steps 1 and 2: `text` (reST docstring or Sphinx text) -> its prose paragraphs, each one line
    of plain text without markup (not yet filtered for prose)."""
    result: list[str] = []
    literal_indent: int | None = None
    for indent, block in _paragraphs(_drop_lines(text)):
        if literal_indent is not None and indent > literal_indent:
            continue
        literal_indent = None
        joined = " ".join(line.strip() for line in block)
        if "::=" in joined:
            continue
        if joined.endswith("::"):
            literal_indent = indent
            joined = joined[:-1]  # "Example::" reads as "Example:"
        paragraph = _strip_markup(joined)
        if paragraph:
            result.append(paragraph)
    return result


def _strip_markup(paragraph: str) -> str:
    paragraph = _FIELD.sub("", paragraph)
    paragraph = _BULLET.sub("", paragraph)
    paragraph = _ROLE.sub(
        lambda m: m.group(1).strip().split(".")[-1] if "~" in m.group(0) else m.group(1), paragraph
    )
    paragraph = _LITERAL.sub(r"\1", paragraph)
    paragraph = _INTERPRETED.sub(r"\1", paragraph)
    paragraph = _STRONG.sub(r"\1", paragraph)
    paragraph = _EMPHASIS.sub(r"\1", paragraph)
    paragraph = _FOOTNOTE.sub("", paragraph)
    return " ".join(paragraph.split())


def split_sentences(paragraph: str) -> list[str]:
    """Step 3: one paragraph (one line of plain text) -> its sentences, in order, stripped."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        head = paragraph[start : match.end()].rstrip()
        last_word = head.split()[-1].lower().lstrip("(\"'") if head.split() else ""
        if last_word in ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last_word):
            continue  # "e.g. Foo", or an initial "A. Smith"
        sentences.append(head)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def is_prose(sentence: str) -> bool:
    """Step 4: True when `sentence` reads as English prose rather than code, a signature or a table
    cell (word count, capital start, terminal punctuation, share of plain words; module docstring)."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not _STARTS.match(sentence) or not _ENDS.search(sentence):
        return False
    plain = sum(1 for word in words if _PLAIN_WORD.match(word))
    return plain >= MIN_PLAIN_FRACTION * len(words)


def document_sentences(text: str) -> list[str]:
    """Steps 1-4: the prose sentences of one document's text, in reading order."""
    return [
        sentence
        for paragraph in clean_paragraphs(text)
        for sentence in split_sentences(paragraph)
        if is_prose(sentence)
    ]


def dedup_key(sentence: str) -> str:
    """The key under which two sentences are the same: whitespace collapsed, case folded."""
    return " ".join(sentence.split()).casefold()
