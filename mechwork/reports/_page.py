"""One self-contained HTML page (plotly.js inlined once, sortable tables), shared by circuit reports
and the leaderboard page. Callers escape their text; figures carry theirs as JSON."""

from __future__ import annotations

import html

import plotly.offline

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th.sortable { cursor: pointer; background: #f3f3f3; user-select: none; }
th.sortable:after { content: " \\2195"; color: #999; }
tr.in-circuit { background: #eef5ff; font-weight: 600; }
code, .tokens { font-family: ui-monospace, monospace; }
.tokens span { border: 1px solid #ccc; border-radius: 3px; padding: 0 .2em; margin-right: 2px; white-space: pre; }
.note { color: #666; font-size: .9em; }
"""

# Sorting by clicking a header: numbers numerically, text alphabetically; a second click reverses.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.dataset.dir !== "asc"; th.dataset.dir = up ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value || a.cells[col].textContent;
        var y = b.cells[col].dataset.value || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""



def figure_html(fig) -> str:
    """A figure's div and script, without plotly.js (the page inlines it once)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """``sections`` are (heading, HTML) pairs; the title and headings are escaped here."""
    body = "".join(f"<section><h2>{html.escape(name)}</h2>{content}</section>" for name, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}<script>{_SORT_JS}</script></body></html>")
