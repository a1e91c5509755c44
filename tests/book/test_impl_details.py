"""The implementation-details appendix covers every "detail N" the code cites, and each entry says
where the detail lives with a file:function that exists."""

from __future__ import annotations

import ast
import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.book

APPENDIX = ROOT / "book" / "appendix" / "implementation_details.md"
CITED = re.compile(r"\b(continuous )?[Dd]etail (\d+)\b")
HEADING = re.compile(r"^### (continuous )?detail (\d+)：", re.M)
LOCATION = re.compile(r"`(ppo_lab/[\w/]+\.py):([\w.]+)`")


def cited_details() -> dict[str, list[str]]:
    cites: dict[str, list[str]] = {}
    for py in sorted((ROOT / "ppo_lab").rglob("*.py")):
        for lineno, line in enumerate(py.read_text("utf-8").splitlines(), 1):
            for m in CITED.finditer(line):
                cites.setdefault(f"{m.group(1) or ''}detail {m.group(2)}", []).append(
                    f"{py.relative_to(ROOT)}:{lineno}")
    return cites


def test_every_detail_the_code_cites_has_an_entry():
    cites = cited_details()
    assert "detail 7" in cites and "continuous detail 8" in cites  # the scan finds the comments
    headings = {f"{m.group(1) or ''}detail {m.group(2)}" for m in HEADING.finditer(APPENDIX.read_text("utf-8"))}
    missing = {d: where for d, where in cites.items() if d not in headings}
    assert not missing, f"details cited in ppo_lab but not in {APPENDIX.name}: {missing}"
    # Huang et al.'s whole list: 13 core details and 9 for continuous actions, in order
    order = [f"{m.group(1) or ''}detail {m.group(2)}" for m in HEADING.finditer(APPENDIX.read_text("utf-8"))]
    assert order == [f"detail {n}" for n in range(1, 14)] + [f"continuous detail {n}" for n in range(1, 10)]


def test_every_location_names_a_function_that_exists():
    text = APPENDIX.read_text("utf-8")
    locations = LOCATION.findall(text)
    assert len(locations) >= 25
    for path, name in locations:
        tree = ast.parse((ROOT / path).read_text("utf-8"))
        defined = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
                if isinstance(node, ast.ClassDef):
                    defined |= {f"{node.name}.{item.name}" for item in node.body
                                if isinstance(item, ast.FunctionDef)}
        assert name in defined, f"{path}:{name} is cited in {APPENDIX.name} but not defined there"
