"""Sphinx configuration for the xanysat documentation.

Build it with ``bash scripts/docs.sh``, which runs
``sphinx-build -W --keep-going -E -b html docs docs/_build/html``.

Why Sphinx + myst-nb: the pages stay Markdown (MyST), notebooks are executed at build time and
rendered with their outputs, autodoc + napoleon turn the Google-style docstrings into the API
reference, and ``-W`` makes every warning (a broken link, a bad docstring, a failing notebook)
fail the build. It is the stack of many Pangeo projects (xarray, dask, rioxarray, odc-stac).
"""

import sys
from pathlib import Path

from sphinx.ext.napoleon.docstring import GoogleDocstring

import xanysat

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))  # the local extension xanysat_docs

project = "xanysat"
author = "the xanysat developers"
copyright = "the xanysat developers"
version = release = xanysat.__version__

extensions = [
    "myst_nb",  # Markdown pages and executed notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "xanysat_docs",  # docs/_ext: the sensor table and the notebook copies, written at build start
]

# .rst first: autosummary writes its stubs with the first suffix, and they are reST
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# -- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # links such as embedding.md#writing-zarr

# -- notebooks (copied from notebooks/ by xanysat_docs, stored there without outputs) ----------
nb_execution_mode = "force"  # always run: the docs show what the code does today
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_timeout = 600  # seconds per cell
nb_execution_in_temp = True  # run in a temporary folder: outputs written by a notebook stay out of docs/
nb_merge_streams = True

# -- API reference ---------------------------------------------------------------------------
autosummary_generate = True  # writes docs/api/generated/*.rst (gitignored)
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented"  # no bare parameter lists for dataclasses
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not as duplicate attribute entries
napoleon_use_rtype = False


def _attribute_docstring(self):
    # xanysat's attribute and constant docstrings are sentences, often with a colon ("classes
    # masked by ``cloud_mask``: no data, ..."), not napoleon's "type: description" form.
    return type(self)(self._consume_to_end(), self._config).lines()


GoogleDocstring._parse_attribute_docstring = _attribute_docstring

# -- HTML ------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xanysat {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_show_sourcelink = False
html_sidebars = {"index": [], "getting-started": [], "examples": []}  # their text lists what they hold
