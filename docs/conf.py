"""Sphinx configuration of the flask-signal-metrics docs."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import flask_signal_metrics  # noqa: E402

project = "flask-signal-metrics"
copyright = "the flask-signal-metrics authors"
release = flask_signal_metrics.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "docs._ext.configtable",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_title = f"flask-signal-metrics {release}"
