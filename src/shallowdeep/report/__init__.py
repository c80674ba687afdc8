"""The report layer: draws and lays out typed results, computes nothing.

``figures`` (charts and image grids), ``run_page`` (a run's report.html, one function per section),
``reproduction_page`` (the reproduction table as markdown and HTML).
"""

from .figures import explanation_grid, figures, png_bytes
from .reproduction_page import reproduction_html, reproduction_markdown
from .run_page import backdoor_section, explanations_section, render_html

__all__ = [
    "backdoor_section",
    "explanation_grid",
    "explanations_section",
    "figures",
    "png_bytes",
    "render_html",
    "reproduction_html",
    "reproduction_markdown",
]
