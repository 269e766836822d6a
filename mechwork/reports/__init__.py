"""Layer 4: shared circuit reports (self-contained HTML that opens offline)."""

from ._page import figure_html, html_page
from ._report import circuit_report, report_tokenizer, write_report
from ._shared import SHARED_METHODS, build_shared_circuits

__all__ = ["SHARED_METHODS", "build_shared_circuits", "circuit_report", "figure_html", "html_page", "report_tokenizer",
           "write_report"]
