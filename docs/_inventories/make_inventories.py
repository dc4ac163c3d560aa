"""Write the small intersphinx inventories that the docs build reads instead of the network.

The docs link to the documentation of Python, PyTorch, e3nn, PyTorch Geometric and NumPy. Sphinx
normally downloads each project's full ``objects.inv`` at build time; so2nn's build must work
without a network, so it reads these files instead: the names so2nn's pages and signatures
refer to, each with the page and anchor it has in that project's online documentation. The
links in the built HTML therefore go to the real online pages.

Regenerate after editing :data:`INVENTORIES` (a test checks the files are in sync)::

    python docs/_inventories/make_inventories.py

When online, compare every entry with the project's real inventory (exit status 1 on a
mismatch)::

    python docs/_inventories/make_inventories.py --check

The file format is Sphinx's inventory version 2: four header lines, then zlib-compressed lines
``name domain:role priority uri display-name`` (``$`` in the uri stands for the name, ``-`` as
display name for the name itself).
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
_LINE = re.compile(r"(.+?)\s+(\S+)\s+(-?\d+)\s+?(\S*)\s+(.*)")  # Sphinx's own pattern

# project -> (project name, version, base url, [(name, role, uri relative to the base url)])
INVENTORIES: dict[str, tuple[str, str, str, list[tuple[str, str, str]]]] = {
    "python": ("Python", "3", "https://docs.python.org/3/", [
        ("AssertionError", "py:exception", "library/exceptions.html#$"),
        ("ValueError", "py:exception", "library/exceptions.html#$"),
        ("None", "py:data", "library/constants.html#$"),
        ("bool", "py:class", "library/functions.html#$"),
        ("float", "py:class", "library/functions.html#$"),
        ("int", "py:class", "library/functions.html#$"),
        ("object", "py:class", "library/functions.html#$"),
        ("slice", "py:class", "library/functions.html#$"),
        ("dict", "py:class", "library/stdtypes.html#$"),
        ("list", "py:class", "library/stdtypes.html#$"),
        ("str", "py:class", "library/stdtypes.html#$"),
        ("tuple", "py:class", "library/stdtypes.html#$"),
        ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
        ("dataclasses.dataclass", "py:function", "library/dataclasses.html#$"),
        ("os.PathLike", "py:class", "library/os.html#$"),
        ("pathlib.Path", "py:class", "library/pathlib.html#$"),
        ("typing.Any", "py:data", "library/typing.html#$"),
    ]),
    "torch": ("PyTorch", "stable", "https://docs.pytorch.org/docs/stable/", [
        ("torch.Tensor", "py:class", "tensors.html#$"),
        ("torch.device", "py:class", "tensor_attributes.html#$"),
        ("torch.dtype", "py:class", "tensor_attributes.html#$"),
        ("torch.Generator", "py:class", "generated/torch.Generator.html#$"),
        ("torch.no_grad", "py:class", "generated/torch.no_grad.html#$"),
        ("torch.enable_grad", "py:class", "generated/torch.enable_grad.html#$"),
        ("torch.autocast", "py:class", "amp.html#$"),
        ("torch.compile", "py:function", "generated/torch.compile.html#$"),
        ("torch.einsum", "py:function", "generated/torch.einsum.html#$"),
        ("torch.load", "py:function", "generated/torch.load.html#$"),
        ("torch.save", "py:function", "generated/torch.save.html#$"),
        ("torch.autograd.grad", "py:function", "generated/torch.autograd.grad.html#$"),
        ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#$"),
        # How autodoc spells the base class of every layer (the class's __module__).
        ("torch.nn.modules.module.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
        ("torch.nn.Dropout", "py:class", "generated/torch.nn.Dropout.html#$"),
        ("torch.nn.Embedding", "py:class", "generated/torch.nn.Embedding.html#$"),
        ("torch.nn.LayerNorm", "py:class", "generated/torch.nn.LayerNorm.html#$"),
        ("torch.nn.Linear", "py:class", "generated/torch.nn.Linear.html#$"),
        ("torch.nn.ModuleList", "py:class", "generated/torch.nn.ModuleList.html#$"),
        ("torch.nn.Sequential", "py:class", "generated/torch.nn.Sequential.html#$"),
        ("torch.nn.SiLU", "py:class", "generated/torch.nn.SiLU.html#$"),
        ("torch.nn.functional.silu", "py:function", "generated/torch.nn.functional.silu.html#$"),
        ("torch.nn.parallel.DistributedDataParallel", "py:class",
         "generated/torch.nn.parallel.DistributedDataParallel.html#$"),
        ("torch.optim.AdamW", "py:class", "generated/torch.optim.AdamW.html#$"),
        ("torch.optim.Optimizer", "py:class", "optim.html#$"),
        ("torch.utils.checkpoint.checkpoint", "py:function", "checkpoint.html#$"),
        ("torch.utils.data.DataLoader", "py:class", "data.html#$"),
        ("torch.utils.data.Dataset", "py:class", "data.html#$"),
        ("torch.utils.data.dataset.Dataset", "py:class", "data.html#torch.utils.data.Dataset"),
    ]),
    "e3nn": ("e3nn", "stable", "https://docs.e3nn.org/en/stable/", [
        ("e3nn.o3.Irrep", "py:class", "api/o3/o3_irreps.html#$"),
        ("e3nn.o3.Irreps", "py:class", "api/o3/o3_irreps.html#$"),
        ("e3nn.o3.spherical_harmonics", "py:function", "api/o3/o3_sh.html#$"),
        ("e3nn.o3.wigner_D", "py:function", "api/o3/o3_wigner.html#$"),
        ("e3nn.o3.wigner_3j", "py:function", "api/o3/o3_wigner.html#$"),
    ]),
    "numpy": ("NumPy", "stable", "https://numpy.org/doc/stable/", [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
    ]),
    "torch_geometric": ("pytorch_geometric", "latest", "https://pytorch-geometric.readthedocs.io/en/latest/", [
        ("torch_geometric.data.Batch", "py:class", "generated/torch_geometric.data.Batch.html#$"),
        ("torch_geometric.data.Data", "py:class", "generated/torch_geometric.data.Data.html#$"),
        ("torch_geometric.data.data.Data", "py:class",
         "generated/torch_geometric.data.Data.html#torch_geometric.data.Data"),
        ("torch_geometric.loader.DataLoader", "py:class", "generated/torch_geometric.loader.DataLoader.html#$"),
    ]),
}


# Entries under the name autodoc uses (the defining module) for a class the project documents
# under its public name; --check compares them with the public name's entry.
_ALIASES = {
    "torch.nn.modules.module.Module": "torch.nn.Module",
    "torch.utils.data.dataset.Dataset": "torch.utils.data.Dataset",
    "torch_geometric.data.data.Data": "torch_geometric.data.Data",
}


def inventory_bytes(project: str) -> bytes:
    """The ``objects.inv`` content of ``project`` (deterministic: entries sorted)."""
    name, version, _, entries = INVENTORIES[project]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {name}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    lines = "".join(f"{entry} {role} 1 {uri} -\n" for entry, role, uri in sorted(entries))
    return header + zlib.compress(lines.encode(), 9)


def read_inventory(data: bytes) -> dict[tuple[str, str], str]:
    """``{(name, role): uri}`` of a version-2 inventory (``$`` expanded)."""
    lines = data.split(b"\n", 4)
    if lines[0].rstrip() != b"# Sphinx inventory version 2":
        raise ValueError(f"not a version-2 Sphinx inventory: {lines[0][:60]!r}")
    out = {}
    for line in zlib.decompress(lines[4]).decode().splitlines():
        match = _LINE.match(line.rstrip())
        if match is None:
            continue
        name, role, _priority, uri, _display = match.groups()
        out[(name, role)] = uri[:-1] + name if uri.endswith("$") else uri
    return out


def write_all() -> None:
    for project in INVENTORIES:
        (HERE / f"{project}.inv").write_bytes(inventory_bytes(project))


def check_online() -> int:
    """Compare every entry with the live inventory of its project; return the number of mismatches."""
    mismatches = 0
    for project, (_, _, base, entries) in INVENTORIES.items():
        with urllib.request.urlopen(base + "objects.inv", timeout=30) as response:
            live = read_inventory(response.read())
        for name, role, uri in entries:
            expected = uri[:-1] + name if uri.endswith("$") else uri
            actual = live.get((name, role))
            if actual is None and name in _ALIASES:  # how autodoc spells a class: its __module__ path
                actual = live.get((_ALIASES[name], role))
            if actual != expected:
                mismatches += 1
                print(f"{project}: {name} ({role}): shipped {expected!r}, online {actual!r}")
    print(f"{mismatches} mismatches")
    return mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the online inventories (needs network)")
    args = parser.parse_args(argv)
    if args.check:
        return 1 if check_online() else 0
    write_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
