"""Every test here runs an example script end to end: marked ``examples``, so that
``python -m pytest -m "not examples"`` is a quick first check of the library."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.examples)
