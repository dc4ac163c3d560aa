"""Each extra in pyproject.toml holds what its command needs: ``pip install -e ".[examples]"`` is
enough for every script under examples/ (a package that only another extra brings would go
unseen in an environment that holds several)."""

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: so2nn's packages whose use needs a package that so2nn itself does not depend on
NEEDS = {"so2nn.integrations.torch_sim": {"torch_sim"}, "so2nn.data": {"lmdb"}}
#: import names whose distribution is named otherwise (where it is not installed to ask)
DISTRIBUTIONS = {"torch_sim": "torch-sim-atomistic", "torch_geometric": "torch-geometric", "opt_einsum": "opt-einsum",
                 "PIL": "pillow", "yaml": "pyyaml"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _distribution(module: str) -> str:
    installed = metadata.packages_distributions().get(module)
    return _name(installed[0] if installed else DISTRIBUTIONS.get(module, module))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def needed(path: Path) -> set[str]:
    """The third-party modules the script at ``path`` needs, directly or through so2nn."""
    modules = set()
    for name in imports(path):
        top = name.split(".")[0]
        if top == "so2nn":
            modules.update(*(extra for package, extra in NEEDS.items() if (name + ".").startswith(package + ".")))
        elif top not in sys.stdlib_module_names and top != "__future__":
            modules.add(top)
    return modules


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_the_examples_extra_holds_what_each_example_imports(script):
    provided = {_name(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["examples"]}
    missing = sorted(m for m in needed(script) if _distribution(m) not in provided)
    assert not missing, f"{script.name} imports {missing}, which neither so2nn nor its [examples] extra installs"


def test_the_check_sees_an_import_inside_a_function_and_through_so2nn(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom so2nn.cli import set_threads\n\ndef run():\n"
                      "    from so2nn.integrations.torch_sim import relax_batch\n    import tqdm.auto\n")
    assert needed(script) == {"torch_sim", "tqdm"}
    assert _distribution("torch_sim") == "torch-sim-atomistic"
