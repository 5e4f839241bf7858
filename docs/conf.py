"""
Sphinx configuration of the esmtpkit documentation: the Markdown pages
(MyST) and an API reference from the docstrings (autodoc, with the epytext
markup converted by docs/_ext/epytext.py).

Build: sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here / "_ext"))
sys.path.insert(0, str(here.parent))

project = "esmtpkit"
author = "the esmtpkit authors"
copyright = "the esmtpkit authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "epytext",
    "replytable",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"
autodoc_inherit_docstrings = True

html_theme = "alabaster"
html_title = "esmtpkit"
