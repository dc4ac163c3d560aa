"""A local Sphinx extension: the parts of so2nn's docs that are generated at build time.

*API pages.* One page per public module: each package of :data:`API_PACKAGES` that exists
in the checkout, and its public (non-underscore) submodules. A page shows the module's
docstring and an autosummary table of its ``__all__``, from which autosummary writes one
page per name. Packages that are still being written simply appear once they exist; a
package that exists but fails to import fails the build (as it should).

*Figures.* Every ``figures/*.py`` script defines ``make_figure(path)``; it is run before
reading, and writes ``_generated/<script name>.svg``.

Generated files are written only when their content changes (so incremental builds stay
incremental), and stale ones are removed (a name dropped from ``__all__`` would otherwise
leave an orphan page, which ``-W`` turns into an error).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import runpy
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: so2nn's public packages, in the order of the API reference.
API_PACKAGES = ["so3", "layers", "kernels", "models", "graph", "testing", "data", "calculators", "training",
                "integrations", "cli"]

API_DIR = Path("api") / "generated"
FIGURE_DIR = Path("_generated")


def present_packages() -> list[str]:
    """Full names of the packages of :data:`API_PACKAGES` that exist in this checkout."""
    return [f"so2nn.{name}" for name in API_PACKAGES if importlib.util.find_spec(f"so2nn.{name}") is not None]


def public_names(module) -> list[str]:
    """``module.__all__``, or else the public names defined in ``module`` itself."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", "").startswith(module.__name__)
        ]
    return list(names)


def public_submodules(module) -> list[str]:
    """Public submodules of a package (not starting with ``_``), in alphabetical order."""
    if not hasattr(module, "__path__"):
        return []
    return sorted(
        f"{module.__name__}.{info.name}"
        for info in pkgutil.iter_modules(module.__path__)
        if not info.name.startswith("_")
    )


def module_page(module, submodules: list[str]) -> str:
    """The reStructuredText of a module's API page."""
    name = module.__name__
    names = [n for n in public_names(module) if not inspect.ismodule(getattr(module, n, None))]
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", "   :no-members:", "",
             f".. currentmodule:: {name}", ""]
    if names:
        lines += [".. autosummary::", "   :toctree: .", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in sorted(names, key=str.lower)]
        lines.append("")
    if submodules:
        lines += [".. rubric:: Submodules", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {sub}" for sub in submodules]
        lines.append("")
    return "\n".join(lines)


def api_pages() -> dict[str, str]:
    """``{module name: page content}`` of every public module (packages, then submodules)."""
    pages: dict[str, str] = {}
    queue = present_packages()
    while queue:
        name = queue.pop(0)
        module = importlib.import_module(name)
        submodules = public_submodules(module)
        pages[name] = module_page(module, submodules)
        queue.extend(submodules)
    return pages


def expected_stubs(pages: dict[str, str]) -> set[str]:
    """Names of the per-object pages autosummary writes for ``pages``."""
    stubs = set()
    for name in pages:
        module = importlib.import_module(name)
        stubs |= {f"{name}.{n}" for n in public_names(module) if not inspect.ismodule(getattr(module, n, None))}
    return stubs


def api_index(pages: dict[str, str]) -> str:
    """The package list of ``api/index.rst``: each top-level package with the first line of
    its docstring, and the (hidden) toctree that puts the pages in the navigation."""
    top = [name for name in pages if name.count(".") == 1]
    lines = []
    for name in top:
        doc = inspect.getdoc(importlib.import_module(name)) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ").strip()
        lines.append(f"* :doc:`{name} <generated/{name}>`" + (f" -- {summary}" if summary else ""))
    lines += ["", ".. toctree::", "   :hidden:", "   :maxdepth: 1", ""] + [f"   generated/{name}" for name in top]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, content: str) -> None:
    if not path.exists() or path.read_text() != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def generate_api(app: Sphinx, config=None) -> None:
    out = Path(app.srcdir) / API_DIR
    pages = api_pages()
    for name, content in pages.items():
        _write_if_changed(out / f"{name}.rst", content)
    _write_if_changed(out / "packages.rst.inc", api_index(pages))
    keep = {f"{name}.rst" for name in pages} | {f"{name}.rst" for name in expected_stubs(pages)} | {"packages.rst.inc"}
    for path in out.glob("*"):
        if path.name not in keep:
            path.unlink()
    missing = sorted(set(f"so2nn.{p}" for p in API_PACKAGES) - set(pages))
    if missing:
        logger.info("so2nn_docs: not (yet) in this checkout, left out of the API reference: %s", ", ".join(missing))


def generate_figures(app: Sphinx, config=None) -> None:
    srcdir = Path(app.srcdir)
    for script in sorted((srcdir / "figures").glob("*.py")):
        target = srcdir / FIGURE_DIR / f"{script.stem}.svg"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".svg.tmp")
        runpy.run_path(str(script))["make_figure"](tmp)
        if target.exists() and target.read_bytes() == tmp.read_bytes():
            tmp.unlink()
        else:
            tmp.replace(target)


def _attribute_doc(package: str, name: str) -> list[str] | None:
    """The ``#:`` doc comment of ``name`` in the module of ``package`` that assigns it."""
    from sphinx.pycode import ModuleAnalyzer

    module = importlib.import_module(package)
    # the package's modules and those of its subpackages (so2nn.models.fairchem._keys)
    inner = pkgutil.walk_packages(getattr(module, "__path__", []), f"{package}.")
    candidates = [package] + [info.name for info in inner]
    for candidate in candidates:
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # a module without source (compiled): no comments to find
            continue
        if ("", name) in docs:
            return list(docs[("", name)])
    return None


def document_data(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    """Module-level data re-exported by a package (``so2nn.models.PRESETS``) has its ``#:``
    comment in the private module that defines it, which autodoc does not look at: without
    this, the page would show the docstring of ``dict``."""
    if what != "data" or "." not in name:
        return
    package, attribute = name.rsplit(".", 1)
    doc = _attribute_doc(package, attribute)
    if doc is not None:
        lines[:] = doc
    elif type(obj).__doc__ and "\n".join(lines).strip() == inspect.cleandoc(type(obj).__doc__).strip():
        lines[:] = []


_RESULTS_INCLUDE = "```{include} ../benchmarks/RESULTS.md"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _docs_markdown(text: str, source: Path, docs: Path, heading_offset: int) -> str:
    """``text`` (Markdown written for GitHub, next to ``source``) made fit for a page in ``docs``:
    headings shifted down by ``heading_offset`` levels; relative image paths rebased; relative
    links to repository files (scripts, the README), which are no pages of the docs, turned
    into the file's path as code."""
    root = docs.parent

    def link(match: re.Match) -> str:
        bang, label, target = match.groups()
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path = (source.parent / target.split("#")[0]).resolve()
        if bang:  # an image: the same file, seen from the docs page
            return f"![{label}]({os.path.relpath(path, docs)})"
        if path.suffix == ".md" and path.is_relative_to(docs):
            return f"[{label}]({os.path.relpath(path, docs)})"
        return f"{label} (`{path.relative_to(root) if path.is_relative_to(root) else target}`)"

    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            if line.startswith("#"):
                line = "#" * heading_offset + line
            line = _LINK.sub(link, line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def include_results(app: Sphinx, docname: str, source: list[str]) -> None:
    """The performance page includes ``benchmarks/RESULTS.md`` as it stands, at every build.

    Done here rather than by MyST's ``include``: RESULTS.md is written for GitHub, and its
    relative links to scripts would be broken references (errors under ``-W``) in the docs.
    In a checkout without it (the benchmarks not yet run and recorded), the page says so."""
    if docname != "performance" or _RESULTS_INCLUDE not in source[0]:
        return
    start = source[0].index(_RESULTS_INCLUDE)
    end = source[0].index("```", start + len(_RESULTS_INCLUDE)) + 3
    block = source[0][start:end]
    offset = re.search(r":heading-offset:\s*(\d+)", block)
    docs = Path(app.srcdir)
    results = docs.parent / "benchmarks" / "RESULTS.md"
    if results.is_file():
        app.env.note_dependency(str(results))
        text = _docs_markdown(results.read_text(), results, docs, int(offset.group(1)) if offset else 0)
    else:
        text = (
            "```{note}\n`benchmarks/RESULTS.md` is not in this checkout: run the benchmarks below "
            "to produce the numbers.\n```"
        )
    source[0] = source[0][:start] + text + source[0][end:]


def skip_member(app: Sphinx, what: str, name: str, obj, skip: bool, options) -> bool | None:
    """A layer's ``forward`` is shown even without a docstring (its signature is the API);
    ``extra_repr`` (what ``print(module)`` shows) is not API."""
    if what == "class" and name == "forward":
        return False
    if what == "class" and name == "extra_repr":
        return True
    return None


def _is_public(cls: type) -> bool:
    """A class of so2nn is public when the package its private module sits in exports it."""
    parts = cls.__module__.split(".")
    if parts[0] != "so2nn":
        return True
    package = ".".join(p for p in parts if not p.startswith("_"))  # so2nn.layers._norm -> so2nn.layers
    return cls.__name__ in getattr(importlib.import_module(package), "__all__", ())


def public_bases(app: Sphinx, name: str, obj, options, bases: list) -> None:
    """"Bases:" lists public classes only: a private helper base (``ConstantsModule``) is
    replaced by its own public bases."""
    result: list = []
    pending = list(bases)
    while pending:
        base = pending.pop(0)
        if _is_public(base):
            if base not in result:
                result.append(base)
        else:
            pending = list(base.__bases__) + pending
    bases[:] = result


def refresh_found_docs(app: Sphinx) -> None:
    """In an incremental build Sphinx lists the source files only after ``builder-inited``, so
    autosummary would not see an API page written for a package that is new since the last
    build; list them now."""
    if not app.fresh_env_used:
        app.env.find_files(app.config, app.builder)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", refresh_found_docs, priority=100)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("source-read", include_results)
    app.connect("autodoc-process-docstring", document_data)
    app.connect("autodoc-skip-member", skip_member)
    # At config time: before Sphinx lists the source files, and so before autosummary scans
    # them for the pages it must stub.
    app.connect("config-inited", generate_api)
    app.connect("config-inited", generate_figures)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
