"""Sphinx configuration of the rl_as_inference documentation (``make docs`` builds it).

Pages are MyST Markdown; the tutorials are the notebooks of ``notebooks/``, copied here at build
time and executed by myst-nb at their small size (``RLAI_NOTEBOOK_SMALL=1``), so the site shows
real outputs while the repository keeps them stored without outputs. The API reference is
generated from the docstrings by autodoc.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import rl_as_inference

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))  # config_keys: the config tables, read from the dataclasses

project = "rl_as_inference"
author = "rl_as_inference contributors"
release = rl_as_inference.__version__
version = release

extensions = [
    "myst_nb",  # MyST Markdown pages and executed notebooks (it loads myst_parser itself)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the NumPy/Google sections some docstrings use
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "config_keys",
]

# The notebooks live in notebooks/ (the repository's top level); Sphinx reads only its source
# folder, so they are copied into the git-ignored tutorials/ folder before every build.
TUTORIALS = DOCS / "tutorials"
shutil.rmtree(TUTORIALS, ignore_errors=True)
TUTORIALS.mkdir()
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(notebook, TUTORIALS / notebook.name)

# The notebooks run at the small size the test suite uses, one thread each (the figures are
# those of a short run; the notebooks say how to run them at full size).
os.environ.setdefault("RLAI_NOTEBOOK_SMALL", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures into the page
nb_execution_mode = os.environ.get("RLAI_DOCS_EXECUTE", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True  # a failing tutorial fails the build, never renders a traceback
nb_execution_show_tb = True
nb_merge_streams = True

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # links to a page's section as page.md#section-title

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**/.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # a method without a docstring of its own shows none, not its base's
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}  # members: named per module in api.md
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are documented once, by autodoc

nitpicky = False  # type hints name torch and Pyro classes that have no inventory here (offline)

html_theme = "furo"
html_title = "rl_as_inference"
html_static_path: list[str] = []


def _plain_bars(app, what, name, obj, options, lines):
    """The docstrings write conditional densities as plain text, q(a|s); a bar outside a literal
    would start an RST substitution reference, so it is escaped (the text renders as written)."""
    for i, line in enumerate(lines):
        parts = line.split("``")
        for j in range(0, len(parts), 2):  # the even parts lie outside ``literals``
            parts[j] = parts[j].replace("|", "\\|")
        lines[i] = "``".join(parts)


def setup(app):
    app.connect("autodoc-process-docstring", _plain_bars)
