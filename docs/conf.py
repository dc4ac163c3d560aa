"""Sphinx configuration of so2nn's documentation.

Build (warnings are errors, no network needed)::

    python -m sphinx -W -b html docs docs/_build/html

The built pages need no network either: MathJax comes from the ``sphinx-mathjax-offline``
package and is copied into the build (``tests/docs/test_offline.py`` checks that no page
loads a script or stylesheet from the network).

The API pages are generated at build time from each package's ``__all__`` (see
``_ext/so2nn_docs.py``), so a new public name or a new subpackage appears without editing
these pages; figures are drawn at build time by the scripts in ``figures/``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # so2nn from this checkout, installed or not

import so2nn  # noqa: E402

try:  # sphinx-autodoc-typehints calls an API that Sphinx 9 deprecates, once per page: not ours to fix
    from sphinx.deprecation import RemovedInSphinx10Warning

    warnings.filterwarnings("ignore", category=RemovedInSphinx10Warning, module="sphinx_autodoc_typehints.*")
except ImportError:  # another Sphinx version: nothing to silence
    pass

project = "so2nn"
author = "so2nn developers"
copyright = "so2nn developers"
release = version = so2nn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax's files from a package, copied into the build, instead of MathJax from a CDN:
    # formulas render offline and on machines without outbound access (tests/docs checks
    # that no page loads a script or stylesheet from the network).
    "sphinx-mathjax-offline",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_parser",
    "so2nn_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "figures", "_ext", "README.md"]
templates_path = ["_templates"]

# --------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"so2nn {release}"
html_static_path = ["_static"]
html_css_files = ["so2nn.css"]
pygments_style = "friendly"
pygments_dark_style = "monokai"

# -------------------------------------------------------------- autodoc & co
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autoclass_content = "class"
# torch's generic "Define the computation performed at every call" is no documentation of
# a layer; an undocumented forward still shows its signature (see so2nn_docs.skip_member).
autodoc_inherit_docstrings = False
# Types go into the parameter list, where they read as "x (Tensor) - ..."; the signature
# stays short enough to read.
autodoc_typehints = "none"
typehints_use_signature = False
typehints_use_signature_return = False
typehints_defaults = None
always_document_param_types = False
typehints_document_rtype = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_custom_sections = ["Shapes"]

# ------------------------------------------------------------------ MyST
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ---------------------------------------------------------------- intersphinx
# The build never touches the network: each project's inventory is read from the small
# subset shipped in _inventories/ (written by _inventories/make_inventories.py, which a
# test keeps in sync). The links point at the projects' online docs, so they resolve for
# a reader who is online. The online inventory is listed second, as a fallback only used
# if the shipped file is missing.
_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "e3nn": "https://docs.e3nn.org/en/stable/",
    "torch_geometric": "https://pytorch-geometric.readthedocs.io/en/latest/",
    "numpy": "https://numpy.org/doc/stable/",
}
intersphinx_mapping = {
    name: (url, (str(DOCS / "_inventories" / f"{name}.inv"), None)) for name, url in _INVENTORIES.items()
}
intersphinx_timeout = 5
