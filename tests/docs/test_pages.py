"""The code on the documentation's pages runs, and prints what the pages say it prints.

Every ```` ```pycon ```` block of a page under ``docs/`` is a doctest; a page's blocks run in
order in one namespace (like a reader pasting them into one session), with the output
compared as doctest does (``ELLIPSIS`` and ``NORMALIZE_WHITESPACE`` on). So a tutorial's
printed outputs are checked-in text that this test keeps true.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```pycon[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def pages_with_code() -> list[Path]:
    pages = [p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts]
    return [p for p in pages if _BLOCK.search(p.read_text())]


def page_doctest(page: Path) -> doctest.DocTest:
    """All pycon blocks of ``page`` as one doctest, with line numbers of the page."""
    text = page.read_text()
    parser = doctest.DocTestParser()
    examples = []
    for match in _BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start(1))
        for example in parser.get_examples(match.group(1), name=str(page)):
            example.lineno += first_line
            examples.append(example)
    return doctest.DocTest(examples, {"__name__": "__main__"}, page.stem, str(page), 0, text)


def test_pycon_blocks_are_found():
    """The extraction sees the blocks (else every page test would pass vacuously)."""
    conventions = page_doctest(DOCS / "conventions.md")
    assert len(conventions.examples) > 20
    assert all(e.source.strip() for e in conventions.examples)


@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page(page: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # pages that write files (checkpoints) write them here
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    try:
        result = runner.run(page_doctest(page), out=report.append)
    finally:
        torch.set_default_dtype(dtype)
    assert result.failed == 0, "".join(report)
