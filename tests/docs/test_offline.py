"""The built HTML documentation needs no network: no page loads a script or stylesheet from it.

Math is rendered by MathJax copied into the build (``sphinx-mathjax-offline``), so formulas show
on a machine without outbound access. The pages checked are those of a fresh Sphinx build into
a temporary folder, or, where ``SO2NN_DOCS_HTML`` names a folder, that already-built HTML (CI
checks its own ``python -m sphinx -W -b html docs docs/_build/html`` this way). Without the docs
extra (``pip install -e ".[docs]"``) and no built HTML named, the build test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
_REMOTE = ("http://", "https://", "//")


class _Loads(HTMLParser):
    """The URLs an HTML page loads as scripts and stylesheets (also preloads and CSS @imports)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower().split()
            if {"stylesheet", "preload", "modulepreload"} & set(rel):
                self.stylesheets.append(attrs["href"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.stylesheets.extend(_css_imports(data))


def _css_imports(css: str) -> list[str]:
    """The targets of ``@import`` rules in a stylesheet (``@import url(x)`` or ``@import "x"``)."""
    targets = []
    for rule in css.split("@import")[1:]:
        target = rule.strip().removeprefix("url(").lstrip("'\"")
        targets.append(target.split(")")[0].split(";")[0].strip().strip("'\""))
    return targets


def network_loads(html: str) -> list[str]:
    """The scripts and stylesheets a page would fetch from the network."""
    parser = _Loads()
    parser.feed(html)
    return [url for url in parser.scripts + parser.stylesheets if url.strip().lower().startswith(_REMOTE)]


def test_the_check_sees_remote_scripts_and_stylesheets():
    """The checker flags each way a page can load from a CDN (else the page tests would pass vacuously)."""
    page = """<html><head>
      <script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>
      <script src="_static/local.js"></script>
      <link rel="stylesheet" href="//fonts.example.org/font.css">
      <link rel="preload" as="script" href="HTTP://example.org/x.js">
      <link rel="stylesheet" href="_static/ok.css">
      <style>@import url("https://example.org/theme.css"); body {}</style>
      <a href="https://docs.python.org/3/">a link is not a load</a>
    </head></html>"""
    assert network_loads(page) == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
        "//fonts.example.org/font.css",
        "HTTP://example.org/x.js",
        "https://example.org/theme.css",
    ]


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    built = os.environ.get("SO2NN_DOCS_HTML")
    if built:
        path = Path(built)
        assert (path / "index.html").is_file(), f"SO2NN_DOCS_HTML={built}: no index.html there"
        return path
    for module in ("sphinx", "furo", "myst_parser", "sphinx_autodoc_typehints"):
        pytest.importorskip(module, reason='the docs extra is not installed (pip install -e ".[docs]")')
    out = tmp_path_factory.mktemp("html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-d", str(doctrees), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=3600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_no_page_loads_from_the_network(html_dir):
    pages = sorted(html_dir.rglob("*.html"))
    assert len(pages) > 10
    offending = {str(p.relative_to(html_dir)): network_loads(p.read_text()) for p in pages}
    assert not {page: urls for page, urls in offending.items() if urls}
    for css in html_dir.rglob("*.css"):
        remote = [url for url in _css_imports(css.read_text()) if url.lower().startswith(_REMOTE)]
        assert not remote, f"{css.relative_to(html_dir)} imports {remote}"


def test_math_renders_from_the_bundled_mathjax(html_dir):
    """Pages with math load MathJax from the build itself, and its fonts are there too."""
    page = html_dir / "conventions.html"
    parser = _Loads()
    parser.feed(page.read_text())
    mathjax = [src for src in parser.scripts if "mathjax" in src.lower()]
    assert mathjax, "conventions.html has math but loads no MathJax"
    for src in mathjax:
        assert (page.parent / src.split("?")[0]).is_file(), f"{src} is not in the build"
    fonts = html_dir / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (fonts / "MathJax_Main-Regular.woff").is_file()


def test_every_local_script_and_stylesheet_is_in_the_build(html_dir):
    missing = set()
    for page in html_dir.rglob("*.html"):
        parser = _Loads()
        parser.feed(page.read_text())
        for url in parser.scripts + parser.stylesheets:
            if url.lower().startswith(_REMOTE):
                continue  # test_no_page_loads_from_the_network names these
            if not (page.parent / url.split("?")[0].split("#")[0]).is_file():
                missing.add(f"{page.relative_to(html_dir)}: {url}")
    assert not missing, sorted(missing)[:10]
