"""The HTML reports in a real headless Chromium (Debian `chromium`, which `make test` installs where it
can; without it these tests are skipped by the ``chromium_path`` fixture, see tests/conftest.py): plots
draw, no JavaScript error is logged, injected script never runs, the edge table sorts. Screenshots go
to test-artifacts/ (kept by CI as artefacts)."""

from pathlib import Path

import pytest

import mechwork
from mechwork.cli._main import main
from mechwork.discovery import find_circuit

from ..browser import open_page
from .test_viz_reports import XSS, hostile_circuit

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


pytestmark = pytest.mark.usefixtures("chromium_path")


def test_report_renders_in_chromium_without_errors(induction, tmp_path):
    entry = mechwork.zoo.get_entry("induction")
    circuit = hostile_circuit(find_circuit(induction, entry.task.data(8), "eap-ig", truth=entry.ground_truth()))
    circuit.save(tmp_path / "c.json")
    assert main(["report", str(tmp_path / "c.json"), "-o", str(tmp_path / "report.html")]) == 0
    sort_and_read = """(() => {
        const th = document.querySelectorAll('#edge-table th')[2];
        th.click();
        const rows = Array.from(document.querySelectorAll('#edge-table tbody tr'));
        return rows.map(r => parseFloat(r.cells[2].dataset.value));
    })()"""
    page = open_page(tmp_path / "report.html", screenshot=ARTIFACTS / "report.png",
                     evaluate={"scores": sort_and_read, "title": "document.title"})
    assert page.plot_divs >= 3 and page.drawn_plots == page.plot_divs
    assert page.errors == [] and page.dialogs == []
    assert page.values["title"].startswith("eap-ig circuit for " + XSS)  # shown as text, never run
    scores = page.values["scores"]
    assert len(scores) == len(circuit.edges) and scores == sorted(scores)
    assert (ARTIFACTS / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_shared_circuit_report_renders(tmp_path):
    page = open_page(ROOT / "circuits" / "induction-acdc.html", screenshot=ARTIFACTS / "induction-acdc.png")
    assert page.plot_divs >= 3 and page.drawn_plots == page.plot_divs and page.errors == []
