"""Sphinx configuration: MyST Markdown pages, the furo theme, warnings are errors (tox -e docs)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from pytest_memguard import __version__  # noqa: E402

project = "pytest-memguard"
author = "pytest-memguard developers"
release = version = __version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
myst_heading_anchors = 3
html_theme = "furo"
html_title = f"pytest-memguard {version}"
autodoc_typehints = "description"
autodoc_member_order = "bysource"
nitpicky = False
exclude_patterns = ["_build"]
