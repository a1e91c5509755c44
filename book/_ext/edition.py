"""The Colab / plain-Jupyter edition: ``notebooks/NN_name.ipynb``, CommonMark, generated from the book.

``python book/_ext/edition.py build [OUT]`` (``make edition``) runs the book's own Sphinx build
with the ``sphinx-tojupyter`` builder (``jupyter-book build . --builder custom --custom-builder
jupyter`` with ``sphinx_tojupyter`` in ``extra_extensions`` and ``tojupyter_lang_synonyms:
[ipython3, python]``, set in a derived copy of ``_config.yml`` so the HTML build is untouched).
That resolves what plain Jupyter cannot render: ``{eq}``/``{ref}``/``{numref}`` become links,
labelled equations get ``\\tag{N.k}``, ``{cite}`` becomes an author–year link, and the
``literalinclude`` listings are read from ``ppo_lab``.

What the tool does not do, this module does, in two steps:

* at Sphinx time (``setup``, only for the ``jupyter`` builder), it marks the doctree: a
  ``literalinclude`` listing is dedented (a ``:pyobject:`` method keeps its class indentation)
  and given the language ``LISTING_LANG``, so it becomes fenced Markdown, not an executable cell;
  a code cell tagged ``hide-input`` (an exercise solution: code hidden, output shown in the book)
  gets ``SOLUTION_LANG``; an admonition is replaced by its body between two marker paragraphs
  that carry its class and title;
* after the build (:func:`postprocess`), each notebook is rewritten: listings become ```` ```python
  ```` fences, admonitions blockquotes with a bold title (``dropdown`` ones a ``<details>``),
  solutions a collapsed ``<details>`` followed by an empty code cell, links point to the edition's own notebooks (a citation to
  a "参考文献" cell appended to the notebook; a link to a page without code keeps its text only),
  outputs and build metadata are dropped, and the Colab install cell comes first.

The edition holds every chapter and appendix with code (``notebooks.chapter_sources``); it is
committed and ``tests/book/test_edition.py`` checks that it is in sync and free of MyST markup.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path, PurePosixPath

import nbformat

ROOT = Path(__file__).resolve().parents[2]
EDITION = ROOT / "notebooks"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from notebooks import chapter_sources  # noqa: E402  (book/_ext/notebooks.py)

LISTING_LANG = "python-edition-listing"
SOLUTION_LANG = "python-edition-solution"
ADMONITION_START = "⟦edition-admonition "  # followed by "<classes>⟧ <title>"
ADMONITION_END = "⟦/edition-admonition⟧"
# Titles of the untitled admonitions (``:::{note}``), in the book's language.
ADMONITION_LABELS = {
    "note": "注", "warning": "警告", "tip": "提示", "important": "重要", "hint": "提示",
    "caution": "注意", "attention": "注意", "danger": "危险", "error": "错误", "seealso": "参见",
}
SOLUTION_SUMMARY = "参考解答"
YOUR_SOLUTION = "# 你的解答"
REFERENCES_TITLE = "参考文献"
BIBLIOGRAPHY_DOC = "book/appendix/bibliography"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


# ---------------------------------------------------------------------------------------------
# Names and the derived configuration
# ---------------------------------------------------------------------------------------------


def edition_name(docname: str) -> str:
    """``book/04_gae/gae`` -> ``04_gae``; ``book/appendix/errata`` -> ``appendix_errata``."""
    parts = PurePosixPath(docname).parts
    if len(parts) != 3 or parts[0] != "book":
        raise ValueError(f"docname must look like book/<folder>/<name>, got {docname!r}")
    return f"appendix_{parts[2]}" if parts[1] == "appendix" else parts[1]


def _toc_docs(root: Path) -> set[str]:
    """Every document ``_toc.yml`` lists (the book builds only those: only_build_toc_files)."""
    import yaml

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                yield entry["file"]
            yield from walk(entry.get("chapters"))
            yield from walk(entry.get("sections"))

    toc = yaml.safe_load((root / "_toc.yml").read_text("utf-8"))
    return {toc["root"], *walk(toc.get("parts")), *walk(toc.get("chapters"))}


def edition_docs(root: Path = ROOT) -> dict[str, str]:
    """Every document of the edition, ``{docname: edition name}``: the chapters and appendices
    in ``_toc.yml`` that hold code, in the order of their folders."""
    listed = _toc_docs(root)
    return {
        d: edition_name(d)
        for md in chapter_sources(root)
        if (d := md.relative_to(root).with_suffix("").as_posix()) in listed
    }


def edition_config(root: Path = ROOT) -> dict:
    """``_config.yml`` plus the tojupyter builder and this module as Sphinx extensions."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text("utf-8"))
    sphinx = config.setdefault("sphinx", {})
    # Paths in local_extensions are relative to the config file, which is written elsewhere.
    sphinx["local_extensions"] = {
        name: str((root / path).resolve()) for name, path in (sphinx.get("local_extensions") or {}).items()
    }
    sphinx["local_extensions"]["edition"] = str(Path(__file__).resolve().parent)
    sphinx["extra_extensions"] = [*(sphinx.get("extra_extensions") or []), "sphinx_tojupyter"]
    sphinx.setdefault("config", {})["tojupyter_lang_synonyms"] = ["ipython3", "python"]
    return config


# ---------------------------------------------------------------------------------------------
# Sphinx side: mark listings, solutions and admonitions in the doctree (jupyter builder only)
# ---------------------------------------------------------------------------------------------


def _is_listing(node) -> bool:
    """A ``literalinclude`` block (Sphinx sets ``source`` to the included file), outside cells."""
    from docutils import nodes

    if not isinstance(node, nodes.literal_block) or not node.get("source"):
        return False
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.container) and "cell" in parent.get("classes", []):
            return False
        parent = parent.parent
    return True


def _mark_doctree(app, doctree, docname) -> None:
    from docutils import nodes

    if app.builder.name != "jupyter":
        return
    for block in list(doctree.findall(nodes.literal_block)):
        if _is_listing(block):
            text = textwrap.dedent(block.astext())
            block.children = [nodes.Text(text)]
            block.rawsource = text
            block["language"] = LISTING_LANG
    for cell in list(doctree.findall(nodes.container)):
        if "cell" in cell.get("classes", []) and "tag_hide-input" in cell.get("classes", []):
            for block in cell.findall(nodes.literal_block):
                block["language"] = SOLUTION_LANG
    for admonition in list(doctree.findall(nodes.Admonition)):
        kind = admonition.tagname if admonition.tagname != "admonition" else ""
        classes = [c for c in admonition.get("classes", []) if not c.startswith("admonition-")]
        classes = [c for c in dict.fromkeys([kind, *classes]) if c]
        titles = [c for c in admonition.children if isinstance(c, nodes.title)]
        start = nodes.paragraph()
        start += nodes.Text(f"{ADMONITION_START}{' '.join(classes) or 'admonition'}⟧ ")
        if titles:
            start.extend(titles[0].children)
        else:
            start += nodes.Text(ADMONITION_LABELS.get(kind, kind or "注"))
        body = [c for c in admonition.children if not isinstance(c, nodes.title)]
        end = nodes.paragraph()
        end += nodes.Text(ADMONITION_END)
        admonition.replace_self([start, *body, end])


def setup(app):
    app.connect("doctree-resolved", _mark_doctree)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}


# ---------------------------------------------------------------------------------------------
# Notebook side: the post-step
# ---------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"\A```([\w-]*)\n(.*?)\n?```\s*\Z", re.S)
_ANCHOR_ONLY_RE = re.compile(r"\A(\s*<a id='[^']*'></a>\s*)+\Z")
_LINK_RE = re.compile(r"\[([^\[\]]*)\]\(([^()\s]+)\)")
_ADMONITION_RE = re.compile(
    re.escape(ADMONITION_START) + r"([^⟧]*)⟧ ?([^\n]*)\n(.*?)" + re.escape(ADMONITION_END), re.S
)


def _fenced(cell) -> tuple[str, str] | None:
    """``(language, code)`` of a markdown cell that is one fenced block, else None."""
    if cell.cell_type != "markdown":
        return None
    match = _FENCE_RE.match(cell.source.strip("\n"))
    return (match.group(1), match.group(2)) if match else None


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.strip("\n").split("\n"))


def _admonition(match: re.Match) -> str:
    classes, title, body = match.group(1).split(), match.group(2).strip(), match.group(3).strip("\n")
    if "dropdown" in classes:
        return f"<details>\n<summary><b>{title}</b></summary>\n\n{body}\n\n</details>\n"
    return _quote(f"**{title}**\n\n{body}") + "\n"


def _merge_admonitions(cells: list) -> list:
    """One markdown cell from an admonition's start marker to its end marker (a code block
    inside an admonition splits it over cells); code cells inside become fenced code."""
    out, open_cell = [], None
    for cell in cells:
        source = cell.source if cell.cell_type == "markdown" else f"```python\n{cell.source}\n```"
        if open_cell is not None:
            open_cell.source += "\n\n" + source
        elif cell.cell_type == "markdown":
            open_cell = cell
            out.append(cell)
        else:
            out.append(cell)
            continue
        if open_cell.source.count(ADMONITION_START) <= open_cell.source.count(ADMONITION_END):
            open_cell = None
    return out


def _rewrite_links(text: str, docname: str, docs: dict[str, str], cited: dict[str, None],
                   bibliography: dict[str, str]) -> str:
    here = PurePosixPath(docname).parent

    def replace(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return match.group()
        path, _, anchor = target.partition("#")
        parts = []
        for part in (here / path).parts:  # resolve ".." without touching the file system
            if part == "..":
                parts.pop()
            elif part != ".":
                parts.append(part)
        doc = str(PurePosixPath(*parts).with_suffix(""))
        if doc == BIBLIOGRAPHY_DOC and anchor in bibliography:
            cited[anchor] = None
            return f"[{label}](#cite-{anchor})"
        if doc in docs:
            return f"[{label}]({docs[doc]}.ipynb{'#' + anchor if anchor else ''})"
        return label  # a page without code is not in the edition: keep the words only

    return _LINK_RE.sub(replace, text)


def bibliography_entries(bibliography_nb) -> dict[str, str]:
    """``{anchor: entry}`` from the tojupyter build of the bibliography page (the ``[KEY]``
    label dropped: the edition cites author–year)."""
    entries = {}
    for cell in bibliography_nb.cells:
        for anchor, entry in re.findall(r"<a id='([^']+)'></a>\n(.+)", cell.source):
            entries[anchor] = re.sub(r"^\\\[[^\]]*\\\]\s*", "", entry.strip())
    return entries


def postprocess(nb, docname: str, docs: dict[str, str], bibliography: dict[str, str] | None = None):
    """The edition notebook from the tojupyter notebook ``nb`` of ``docname`` (a new notebook).

    ``docs``: ``{docname: edition name}`` of the whole edition (for links between notebooks);
    ``bibliography``: ``{anchor: entry}`` for the citations (see :func:`bibliography_entries`).
    """
    cells = [nbformat.v4.new_markdown_cell(c.source) if c.cell_type == "markdown"
             else nbformat.v4.new_code_cell(c.source) for c in nb.cells if c.cell_type in ("markdown", "code")]
    cells = _merge_admonitions(cells)
    out, cited = [], {}
    for cell in cells:
        fenced = _fenced(cell)
        if fenced and fenced[0] == LISTING_LANG:
            cell.source = f"```python\n{fenced[1]}\n```"
        elif fenced and fenced[0] == SOLUTION_LANG:
            cell.source = (f"<details>\n<summary>{SOLUTION_SUMMARY}</summary>\n\n```python\n{fenced[1]}\n```\n\n"
                           "</details>")
            out.append(cell)
            out.append(nbformat.v4.new_code_cell(YOUR_SOLUTION))  # room to try before peeking
            continue
        elif cell.cell_type == "markdown":
            source = _ADMONITION_RE.sub(_admonition, cell.source)
            if ADMONITION_START in source or ADMONITION_END in source:
                raise ValueError(f"{docname}: unbalanced admonition markers in {source[:200]!r}")
            cell.source = _rewrite_links(source, docname, docs, cited, bibliography or {})
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\n{3,}", "\n\n", cell.source).strip("\n")
            if not cell.source.strip():
                continue
            if out and out[-1].cell_type == "markdown" and _ANCHOR_ONLY_RE.match(out[-1].source):
                cell.source = out.pop().source.strip() + "\n" + cell.source  # the anchor with its text
        out.append(cell)
    if cited:
        order = list(bibliography)
        entries = [f"<a id='cite-{a}'></a>\n{bibliography[a]}" for a in sorted(cited, key=order.index)]
        out.append(nbformat.v4.new_markdown_cell(f"## {REFERENCES_TITLE}\n\n" + "\n\n".join(entries)))
    # The Colab install cell first (it installs what every later cell imports).
    first_code = next((i for i, c in enumerate(out) if c.cell_type == "code"), None)
    if first_code is not None:
        out.insert(0, out.pop(first_code))
    for i, cell in enumerate(out):
        cell.id = f"cell-{i}"
    result = nbformat.v4.new_notebook(cells=out)
    result.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    if "title" in nb.metadata:
        result.metadata["title"] = nb.metadata["title"]
    nbformat.validate(result)
    return result


# ---------------------------------------------------------------------------------------------
# The check: what plain Jupyter would show as raw MyST
# ---------------------------------------------------------------------------------------------

MYST_PATTERNS = {
    "{eq}": re.compile(r"\{eq\}"),
    "{ref}": re.compile(r"\{ref\}"),
    "{numref}": re.compile(r"\{numref\}"),
    "{cite": re.compile(r"\{cite"),
    "(label)=": re.compile(r"^\s*\([\w:.-]+\)=\s*$", re.M),
    "$$ … (eq-": re.compile(r"\$\$\s*\(eq-"),
    "```{": re.compile(r"```\{"),
    ":::": re.compile(r":::"),
}
_EQ_CITE_RE = re.compile(r"\((\d+)\.(\d+)\)")
_EQ_LINK_RE = re.compile(r"\[[^\[\]]*\((\d+\.\d+)\)[^\[\]]*\]\(([^()\s#]*)#[^()\s]+\)")
_MATH_RE = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_CODE_RE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _tags(nb) -> set[str]:
    return {t for c in nb.cells for t in re.findall(r"\\tag\{(\d+\.\d+)\}", c.source)}


def markup_problems(nb, name: str = "notebook", edition: dict[str, object] | None = None) -> list[str]:
    """MyST markup left in the markdown cells of ``nb``, and equation numbers "(N.k)" cited with
    neither a ``\\tag{N.k}`` in the same notebook nor a link to a notebook of ``edition``
    (``{file name: notebook}``) that has the tag. Code (fenced or inline) is not prose: skipped."""
    problems = []
    tags = _tags(nb)
    edition = edition or {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for label, pattern in MYST_PATTERNS.items():
            # Roles never sit inside math, where \\text{ref} is LaTeX: look for them outside it.
            text = cell.source if label.startswith("$$") else _MATH_RE.sub("", cell.source)
            for match in pattern.finditer(text):
                problems.append(f"{name}: cell {i}: MyST markup {label!r}: ...{text[max(0, match.start() - 40):match.end() + 40]!r}")
        prose = _CODE_RE.sub("", cell.source)
        linked = set()
        for match in _EQ_LINK_RE.finditer(prose):
            number, target = match.group(1), match.group(2)
            target_nb = nb if not target else edition.get(target)
            if target_nb is not None and number in _tags(target_nb):
                linked.add(match.start())
        spans = [(m.start(), m.end()) for m in _EQ_LINK_RE.finditer(prose) if m.start() in linked]
        for match in _EQ_CITE_RE.finditer(prose):
            number = f"{match.group(1)}.{match.group(2)}"
            if number in tags or any(a <= match.start() < b for a, b in spans):
                continue
            problems.append(f"{name}: cell {i}: cites ({number}) with no \\tag{{{number}}} here nor a link to it: "
                            f"...{prose[max(0, match.start() - 40):match.end() + 20]!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def build(out: Path = EDITION, root: Path = ROOT) -> list[Path]:
    """Build the edition into ``out`` (``notebooks/`` by default); return the notebooks written.

    Runs ``jupyter-book build`` with the tojupyter builder in a temporary folder, then
    :func:`postprocess` on every document of :func:`edition_docs`. Other ``*.ipynb`` in ``out``
    are removed, so a renamed chapter leaves no stale notebook behind.
    """
    import yaml

    docs = edition_docs(root)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    with tempfile.TemporaryDirectory(prefix="edition-") as tmp:
        tmp = Path(tmp)
        config = tmp / "_config.yml"
        config.write_text(yaml.safe_dump(edition_config(root), allow_unicode=True, sort_keys=False), "utf-8")
        cmd = [str(jupyter_book), "build", str(root), "--config", str(config), "--builder", "custom",
               "--custom-builder", "jupyter", "--path-output", str(tmp), "--keep-going", "-W"]
        result = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        built = tmp / "_build" / "jupyter"
        if result.returncode != 0:
            raise RuntimeError(f"edition build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        bib_path = built / f"{BIBLIOGRAPHY_DOC}.ipynb"
        bibliography = bibliography_entries(nbformat.read(bib_path, as_version=4)) if bib_path.exists() else {}
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for docname, name in docs.items():
            nb = postprocess(nbformat.read(built / f"{docname}.ipynb", as_version=4), docname, docs, bibliography)
            path = out / f"{name}.ipynb"
            nbformat.write(nb, path)
            written.append(path)
    for stale in set(out.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


def check(folder: Path = EDITION) -> dict[str, list[str]]:
    """``{notebook file name: problems}`` for every edition notebook in ``folder``."""
    edition = {p.name: nbformat.read(p, as_version=4) for p in sorted(folder.glob("*.ipynb"))}
    return {name: markup_problems(nb, name, edition) for name, nb in edition.items()}


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["build"]
    if command not in ("build", "check") or len(args) > 1:
        sys.exit("usage: python book/_ext/edition.py build|check [FOLDER]")
    folder = Path(args[0]) if args else EDITION
    if command == "build":
        for path in build(folder):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    results = check(folder)
    for name, problems in results.items():
        print(f"{name}: {len(problems)} MyST-markup / equation-reference problems")
        print("".join(f"  {p}\n" for p in problems[:20]), end="")
    sys.exit(1 if any(results.values()) else 0)
