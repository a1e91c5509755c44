"""Equation numbers: what docstrings cite exists in the book, and renders with that number."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.book

CITE = re.compile(r"\b[Ee]qs?\.\s*\(?(\d+)\.(\d+)\)?")
LABEL = re.compile(r"^\$\$\s*\((eq-(\d+)-(\d+))\)\s*$", re.M)


def book_labels() -> dict[str, Path]:
    labels = {}
    for md in ROOT.glob("book/**/*.md"):
        for m in LABEL.finditer(md.read_text("utf-8")):
            assert m.group(1) not in labels, f"label {m.group(1)} defined twice ({labels.get(m.group(1))}, {md})"
            labels[m.group(1)] = md
    return labels


def cited_equations() -> dict[str, list[str]]:
    cites: dict[str, list[str]] = {}
    for py in sorted((ROOT / "ppo_lab").rglob("*.py")):
        for lineno, line in enumerate(py.read_text("utf-8").splitlines(), 1):
            for m in CITE.finditer(line):
                cites.setdefault(f"eq-{m.group(1)}-{m.group(2)}", []).append(f"{py.relative_to(ROOT)}:{lineno}")
    return cites


def test_every_cited_equation_is_a_label_in_the_book():
    labels = book_labels()
    missing = {label: where for label, where in cited_equations().items() if label not in labels}
    assert not missing, "docstrings cite equations the book does not label:\n" + "\n".join(
        f"  {label}: {', '.join(where)}" for label, where in sorted(missing.items())
    )


def test_labels_live_in_their_chapter_and_are_numbered_in_order():
    by_chapter: dict[Path, list[int]] = {}
    for label, md in book_labels().items():
        chapter = int(label.split("-")[1])
        assert md.parent.name.startswith(f"{chapter:02d}_"), f"{label} is defined in {md}, not chapter {chapter}"
    for md in ROOT.glob("book/**/*.md"):
        ks = [int(m.group(3)) for m in LABEL.finditer(md.read_text("utf-8"))]
        assert ks == list(range(1, len(ks) + 1)), f"{md}: equation labels not numbered 1, 2, … in order: {ks}"


def test_rendered_numbers_match_labels(built_html):
    labels = book_labels()
    eqno = re.compile(r'id="equation-(eq-\d+-\d+)">\s*<span class="eqno">\(([\d.]+)\)')
    seen = {}
    for html in built_html.rglob("*.html"):
        for m in eqno.finditer(html.read_text("utf-8")):
            seen[m.group(1)] = m.group(2)
    for label in labels:
        _, n, k = label.split("-")
        assert seen.get(label) == f"{n}.{k}", f"{label} renders as ({seen.get(label)}), expected ({n}.{k})"
