"""docs/errors.md stays true: every message it quotes is still in so2nn's source, and every test
it names exists (that test is what checks the message is raised)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<what>[^|]+) \| (?P<message>[^|]+) \| `(?P<test>tests/[^`]+)` \|$")


def _rows():
    rows = [ROW.match(line) for line in (ROOT / "docs" / "errors.md").read_text().splitlines()]
    return [row for row in rows if row is not None]


def _source() -> str:
    return "\n".join(path.read_text() for path in (ROOT / "so2nn").rglob("*.py"))


def test_the_page_has_its_tables():
    assert len(_rows()) >= 30


@pytest.mark.parametrize("row", _rows(), ids=lambda row: row["what"].strip()[:40])
def test_each_row_is_backed_by_a_test_and_the_source(row):
    path, name = row["test"].split("::")
    test_file = ROOT / path
    assert test_file.is_file(), f"{path} does not exist"
    assert re.search(rf"^def {re.escape(name)}\(", test_file.read_text(), re.MULTILINE), f"no test {name} in {path}"
    quoted = re.findall(r"`([^`]+)`", row["message"])
    if row["message"].strip().startswith("no "):  # a case that is valid input, not an error
        return
    assert quoted, f"row {row['what']!r} quotes no message"
    source = _source()
    for message in quoted:
        assert message in source, f"the message {message!r} is no longer in so2nn's source"
