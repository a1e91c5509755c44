"""Chapter pairs: each ``book/<folder>/name.md`` (MyST, the source) has an executed ``name.ipynb``.

Used by ``make notebooks`` (``python book/_ext/notebooks.py normalize NB...``) and by
``tests/book/test_pairs.py`` (``pair_problems``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[2]


def chapter_sources(root: Path = ROOT) -> list[Path]:
    """Every chapter source: a MyST ``.md`` under ``book/*/`` that holds code cells."""
    return sorted(p for p in root.glob("book/*/*.md") if "{code-cell}" in p.read_text("utf-8"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", [])))
        for c in nb.cells
    ]


def pair_problems(md: Path) -> list[str]:
    """What is wrong with the pair of ``md``: missing, out of sync, or not fully executed."""
    ipynb = md.with_suffix(".ipynb")
    if not ipynb.exists():
        return [f"{md}: missing pair {ipynb.name} (run `make notebooks`)"]
    problems = []
    expected = _cells(jupytext.read(md))
    actual_nb = nbformat.read(ipynb, as_version=4)
    actual = _cells(actual_nb)
    if expected != actual:
        for i, (e, a) in enumerate(zip(expected, actual)):
            if e != a:
                problems.append(f"{ipynb}: cell {i} differs from {md.name} (run `make notebooks`)")
                break
        else:
            problems.append(f"{ipynb}: {len(actual)} cells, {md.name} has {len(expected)}")
    for i, cell in enumerate(actual_nb.cells):
        if cell.cell_type == "code" and cell.source.strip() and cell.get("execution_count") is None:
            problems.append(f"{ipynb}: code cell {i} was never executed (run `make notebooks`)")
            break
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"{ipynb}: code cell {i} raised {out.get('ename')}")
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                problems.append(f"{ipynb}: code cell {i} wrote to stderr: {out.get('text', '')[:200]!r}")
    return problems


def normalize(ipynb: Path) -> None:
    """Drop per-run noise (execution timestamps) so re-executing a chapter gives small diffs."""
    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, ipynb)


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    if command == "normalize":
        for path in paths:
            normalize(Path(path))
    elif command == "check":
        bad = [p for md in (map(Path, paths) if paths else chapter_sources()) for p in pair_problems(md)]
        print("\n".join(bad) or "all chapter pairs in sync and executed")
        sys.exit(1 if bad else 0)
    else:
        sys.exit(f"unknown command {command!r}; use normalize NB... | check [MD...]")
