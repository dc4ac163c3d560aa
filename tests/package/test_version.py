"""so2nn.__version__ is the version the package is installed as, and that pyproject.toml declares."""

import re
from importlib import metadata
from pathlib import Path

import so2nn

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
DECLARED = re.search(r'(?m)^version = "([^"]+)"', PYPROJECT.read_text()).group(1)  # tomllib is 3.11+


def test_version_matches_the_metadata_and_pyproject():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+-].*)?", so2nn.__version__)
    assert so2nn.__version__ == DECLARED
    assert so2nn.__version__ == metadata.version("so2nn")


def test_fallback_reads_pyproject_when_not_installed(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert so2nn._version() == DECLARED
