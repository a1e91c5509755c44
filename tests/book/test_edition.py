"""The Colab / plain-Jupyter edition (notebooks/*.ipynb): in sync with the chapters, free of MyST
markup, listings as Markdown, solutions collapsed, no outputs, the install cell first; and the
post-step of book/_ext/edition.py on small inputs."""

from __future__ import annotations

import ast
import re

import jupytext
import nbformat
import pytest
from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.utils import new_document

import edition  # book/_ext/edition.py (conftest puts book/_ext on sys.path)
from conftest import ROOT
from test_chapters import colab_install_problems

pytestmark = pytest.mark.book

EDITION = ROOT / "notebooks"


@pytest.fixture(scope="module")
def committed() -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(EDITION.glob("*.ipynb"))}


def test_edition_has_one_notebook_per_chapter_with_code(committed):
    expected = {f"{name}.ipynb" for name in edition.edition_docs().values()}
    assert set(committed) == expected, "run `make edition` and commit notebooks/"


def test_edition_is_in_sync_with_the_chapters(tmp_path, committed):
    """Regenerate the edition (the sphinx-tojupyter build, ~15-30 s) and compare byte for byte."""
    fresh = {p.name: p.read_bytes() for p in edition.build(tmp_path / "notebooks")}
    stale = sorted(name for name, data in fresh.items() if (EDITION / name).read_bytes() != data) if EDITION.exists() else []
    missing = sorted(set(fresh) - set(committed))
    assert not stale and not missing, f"notebooks/ is out of date ({stale + missing}): run `make edition` and commit it"


def test_edition_is_free_of_myst_markup(committed):
    problems = [p for name, nb in committed.items() for p in edition.markup_problems(nb, name, committed)]
    assert not problems, "\n".join(problems[:30])


def _sphinx_source(docname: str) -> nbformat.NotebookNode:
    """What the book (and so the edition) is rendered from: the executed pair, else the .md."""
    ipynb = ROOT / f"{docname}.ipynb"
    return nbformat.read(ipynb, as_version=4) if ipynb.exists() else jupytext.read(ROOT / f"{docname}.md")


def test_edition_cells_run_as_the_chapter_does(committed):
    """Code cells: the chapter's code cells in order, minus the solutions (collapsed in the
    markdown) and the listings (fenced markdown); no outputs; the Colab install cell first."""
    docs = edition.edition_docs()
    for docname, name in docs.items():
        if f"{name}.ipynb" not in committed:
            continue  # reported by test_edition_has_one_notebook_per_chapter_with_code
        nb = committed[f"{name}.ipynb"]
        chapter = _sphinx_source(docname)
        expected = [c.source.strip() for c in chapter.cells
                    if c.cell_type == "code" and "hide-input" not in c.metadata.get("tags", [])]
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert [c.source.strip() for c in code if c.source != edition.YOUR_SOLUTION] == expected, name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{name} has outputs"
        assert nb.cells[0].cell_type == "code", f"{name}: the first cell is not the install cell"
        assert not colab_install_problems(nb.cells[0].source, name), colab_install_problems(nb.cells[0].source, name)
        solutions = sum("hide-input" in c.metadata.get("tags", []) for c in chapter.cells)
        assert sum(c.source.startswith("<details>") for c in nb.cells if c.cell_type == "markdown") >= solutions
        assert nb.metadata["kernelspec"]["name"] == "python3"


def test_every_listing_is_valid_python_markdown(committed):
    """literalinclude listings are fenced Markdown whose code parses (a :pyobject: method is
    dedented) — and there is at least one per chapter that had one."""
    for docname, name in edition.edition_docs().items():
        if f"{name}.ipynb" not in committed:
            continue  # reported by test_edition_has_one_notebook_per_chapter_with_code
        source = "".join(c.source for c in _sphinx_source(docname).cells if c.cell_type == "markdown")
        listings = [c.source for c in committed[f"{name}.ipynb"].cells
                    if c.cell_type == "markdown" and c.source.startswith("```python\n")]
        assert len(listings) >= source.count("{literalinclude}"), name
        for listing in listings:
            ast.parse(listing.removeprefix("```python\n").removesuffix("\n```"))


# ------------------------------------------------------------------------------------------
# The post-step on small inputs
# ------------------------------------------------------------------------------------------

DOCS = {"book/01_intro/intro": "01_intro", "book/02_next/next": "02_next", "book/appendix/errata": "appendix_errata"}
BIB = {"id7": "A. Author. A paper. 2020."}


def _tojupyter(*cells) -> nbformat.NotebookNode:
    """A notebook as sphinx-tojupyter writes it: ("md", text) / ("code", text) cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(s) if kind == "md" else nbformat.v4.new_code_cell(s) for kind, s in cells]
    nb.metadata = {"date": 1.0, "filename": "intro.ipynb", "title": "Intro",
                   "kernelspec": {"display_name": "Python", "language": "python3", "name": "python3"}}
    return nb


def test_postprocess_listing_solution_admonition_links_and_first_cell():
    start, end = edition.ADMONITION_START, edition.ADMONITION_END
    nb = _tojupyter(
        ("md", "\n<a id='ch-1'></a>"),
        ("md", "# Intro"),
        ("code", 'import sys\nif "google.colab" in sys.modules:\n    %pip install x'),
        ("md", f"See [Next](../02_next/next.ipynb#sec-2), [(2.1)](../02_next/next.ipynb#equation-eq-2-1), "
               f"[Errata](../appendix/errata.ipynb#e-1), [API](../appendix/api.ipynb#m) and "
               f"[[Author, 2020](../appendix/bibliography.ipynb#id7)].\n\n{start}tip⟧ Exercise 1.1\n\nDo it.\n\n{end}\n\nAfter."),
        ("code", "x = 1"),
        ("md", f"```{edition.LISTING_LANG}\ndef f():\n    return 1\n```\n"),
        ("md", f"```{edition.SOLUTION_LANG}\nprint(2)\n```\n"),
        ("md", f"{start}dropdown⟧ Hint\n\nA *hint*.\n\n{end}"),
    )
    out = edition.postprocess(nb, "book/01_intro/intro", DOCS, BIB)
    sources = [(c.cell_type, c.source) for c in out.cells]
    assert sources[0] == ("code", 'import sys\nif "google.colab" in sys.modules:\n    %pip install x')
    assert sources[1] == ("markdown", "<a id='ch-1'></a>\n# Intro")  # the anchor-only cell joins its heading
    prose = sources[2][1]
    assert "[Next](02_next.ipynb#sec-2)" in prose and "[(2.1)](02_next.ipynb#equation-eq-2-1)" in prose
    assert "[Errata](appendix_errata.ipynb#e-1)" in prose
    assert " API and " in prose  # a page outside the edition: the words stay, the link goes
    assert "[[Author, 2020](#cite-id7)]" in prose
    assert "> **Exercise 1.1**\n>\n> Do it." in prose and prose.endswith("After.")
    assert sources[3] == ("code", "x = 1")
    assert sources[4] == ("markdown", "```python\ndef f():\n    return 1\n```")
    assert sources[5] == ("markdown", "<details>\n<summary>参考解答</summary>\n\n```python\nprint(2)\n```\n\n</details>")
    assert sources[6] == ("code", edition.YOUR_SOLUTION)
    assert sources[7] == ("markdown", "<details>\n<summary><b>Hint</b></summary>\n\nA *hint*.\n\n</details>")
    assert sources[8] == ("markdown", "## 参考文献\n\n<a id='cite-id7'></a>\nA. Author. A paper. 2020.")
    assert out.metadata == {"kernelspec": edition.KERNELSPEC, "language_info": {"name": "python"}, "title": "Intro"}
    assert [c.id for c in out.cells] == [f"cell-{i}" for i in range(len(out.cells))]
    assert not any(c.get("outputs") for c in out.cells if c.cell_type == "code")
    assert edition.markup_problems(out, "out", {"02_next.ipynb": _tagged("2.1")}) == []


def _tagged(number: str) -> nbformat.NotebookNode:
    return _tojupyter(("md", f"$$\nx \\tag{{{number}}}\n$$"))


def test_postprocess_merges_an_admonition_split_by_a_code_block():
    start, end = edition.ADMONITION_START, edition.ADMONITION_END
    nb = _tojupyter(("code", "import sys"), ("md", f"{start}note⟧ 注\n\nBefore:"), ("code", "y = 2"), ("md", f"after.\n\n{end}"))
    out = edition.postprocess(nb, "book/01_intro/intro", DOCS)
    assert [c.cell_type for c in out.cells] == ["code", "markdown"]
    assert out.cells[1].source == "> **注**\n>\n> Before:\n>\n> ```python\n> y = 2\n> ```\n>\n> after."


def test_postprocess_refuses_an_unclosed_admonition():
    nb = _tojupyter(("md", f"{edition.ADMONITION_START}tip⟧ T\n\nbody"))
    with pytest.raises(ValueError, match="admonition"):
        edition.postprocess(nb, "book/01_intro/intro", DOCS)


@pytest.mark.parametrize("text", [
    "see {eq}`eq-1-2`", "{ref}`ch-1`", "{numref}`fig`", "{cite}`key`", "{cite:p}`key`", "(ch-1)=",
    "$$\nx\n$$ (eq-1-1)", "```{note}\nx\n```", ":::{admonition} T\nx\n:::", "as in (3.4), x", "[(3.4)](other.ipynb#eq)",
])
def test_markup_check_catches_each_leftover(text):
    nb = _tojupyter(("md", text))
    assert edition.markup_problems(nb, "nb", {"other.ipynb": _tojupyter(("md", "no tags"))})


def test_markup_check_passes_math_code_and_resolved_references():
    nb = _tojupyter(
        ("md", "$ \\pi_\\text{ref} $ and `code`, [(1.2)](#equation-eq-1-2), (1.2) again, "
               "[(2.1)](other.ipynb#equation-eq-2-1)\n\n```python\n# Eq. (9.9)\n```\n\n$$\nx \\tag{1.2}\n$$"),
    )
    assert edition.markup_problems(nb, "nb", {"other.ipynb": _tagged("2.1")}) == []


def test_edition_names_and_bad_docnames():
    assert edition.edition_name("book/04_gae/gae") == "04_gae"
    assert edition.edition_name("book/appendix/errata") == "appendix_errata"
    with pytest.raises(ValueError, match="docname"):
        edition.edition_name("index")


class _App:
    class builder:  # noqa: N801 (a stand-in for app.builder)
        name = "jupyter"


def _doctree(*children) -> nodes.document:
    doc = new_document("test", get_default_settings(Parser))
    doc.extend(children)
    return doc


def test_doctree_marks_listings_solutions_and_admonitions():
    listing = nodes.literal_block("", "    def step(self):\n        return 1\n", source="/x/ppo_lab/a.py", language="python")
    cell_block = nodes.literal_block("", "print(1)", source="/x/book/a.ipynb", language="ipython3")
    cell = nodes.container("", nodes.container("", cell_block), classes=["cell", "tag_hide-input"])
    title = nodes.title("", "", nodes.Text("练习 "), nodes.math("", "x"))
    admonition = nodes.admonition("", title, nodes.paragraph("", "body"), classes=["tip"])
    note = nodes.note("", nodes.paragraph("", "careful"))
    doc = _doctree(listing, cell, admonition, note)
    edition._mark_doctree(_App, doc, "book/01_intro/intro")
    assert listing.astext() == "def step(self):\n    return 1\n" and listing["language"] == edition.LISTING_LANG
    assert cell_block["language"] == edition.SOLUTION_LANG
    texts = [p.astext() for p in doc.children if isinstance(p, nodes.paragraph)]
    assert texts == [f"{edition.ADMONITION_START}tip⟧ 练习 x", "body", edition.ADMONITION_END,
                     f"{edition.ADMONITION_START}note⟧ 注", "careful", edition.ADMONITION_END]
    assert not list(doc.findall(nodes.Admonition))


def test_doctree_is_left_alone_by_the_html_builder():
    listing = nodes.literal_block("", "    x = 1\n", source="/x/a.py", language="python")
    doc = _doctree(listing)

    class Html:
        class builder:  # noqa: N801
            name = "html"

    edition._mark_doctree(Html, doc, "d")
    assert listing["language"] == "python" and listing.astext() == "    x = 1\n"


def test_edition_config_adds_the_builder_and_keeps_the_book_config():
    config = edition.edition_config()
    assert "sphinx_tojupyter" in config["sphinx"]["extra_extensions"]
    assert config["sphinx"]["config"]["tojupyter_lang_synonyms"] == ["ipython3", "python"]
    assert set(config["sphinx"]["local_extensions"]) >= {"ppo_book_ext", "edition"}
    import yaml

    html_config = yaml.safe_load((ROOT / "_config.yml").read_text("utf-8"))
    assert "sphinx_tojupyter" not in (html_config["sphinx"].get("extra_extensions") or [])
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", __import__("ppo_lab").__version__)


def test_edition_holds_the_toc_chapters_with_code(tmp_path):
    """A chapter with code that _toc.yml does not list yet (the book skips it) is not in the
    edition; a page without code cells is not either."""
    for folder, body in (("01_a", "```{code-cell} ipython3\nx = 1\n```"), ("02_b", "```{code-cell} ipython3\ny = 2\n```"),
                         ("appendix", "no code")):
        (tmp_path / "book" / folder).mkdir(parents=True)
        (tmp_path / "book" / folder / "page.md").write_text(f"# T\n\n{body}\n", "utf-8")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/01_a/page\nparts:\n  - chapters:\n      - file: book/appendix/page\n", "utf-8")
    assert edition.edition_docs(tmp_path) == {"book/01_a/page": "01_a"}
