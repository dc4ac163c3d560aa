"""The intersphinx inventories shipped in docs/_inventories (read by the offline docs build)."""

from __future__ import annotations

import builtins
import importlib
import runpy
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
inventories = runpy.run_path(str(DOCS / "_inventories" / "make_inventories.py"))
INVENTORIES = inventories["INVENTORIES"]


def resolve(name: str):
    """The Python object called ``name`` (a builtin, or a dotted path into a module)."""
    if "." not in name:
        return getattr(builtins, name)
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(name)


@pytest.mark.parametrize("project", sorted(INVENTORIES))
def test_shipped_file_is_in_sync(project):
    """The .inv file is what make_inventories.py writes (rerun the script after editing it)."""
    shipped = (DOCS / "_inventories" / f"{project}.inv").read_bytes()
    assert shipped == inventories["inventory_bytes"](project), "run: python docs/_inventories/make_inventories.py"


@pytest.mark.parametrize("project", sorted(INVENTORIES))
def test_entries_round_trip_and_name_real_objects(project):
    _, _, base, entries = INVENTORIES[project]
    assert base.startswith("https://") and base.endswith("/")
    parsed = inventories["read_inventory"]((DOCS / "_inventories" / f"{project}.inv").read_bytes())
    assert len(parsed) == len(entries)
    for name, role, uri in entries:
        assert parsed[(name, role)] == (uri[:-1] + name if uri.endswith("$") else uri)
        assert "#" in uri, f"{name}: link to the object's anchor, not just its page"
        resolve(name)  # a misspelt name (or one the installed version lacks) raises here


def test_read_inventory_rejects_other_files():
    with pytest.raises(ValueError, match="not a version-2 Sphinx inventory"):
        inventories["read_inventory"](b"<html>not found</html>\n")


def test_docs_configuration_reads_the_shipped_files_first():
    namespace = runpy.run_path(str(DOCS / "conf.py"))
    mapping = namespace["intersphinx_mapping"]
    assert set(mapping) == set(INVENTORIES)
    for project, (url, locations) in mapping.items():
        assert url == INVENTORIES[project][2]
        assert Path(locations[0]) == DOCS / "_inventories" / f"{project}.inv"  # local file first: no network
