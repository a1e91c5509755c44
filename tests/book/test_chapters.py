"""Chapter pairs, the table of contents, the Colab cell and the -W book build."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

import ppo_lab
from conftest import ROOT, build_book, notebooks, toc_files

pytestmark = pytest.mark.book

REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text("utf-8"))["repository"]["url"]


def test_every_chapter_pair_is_in_sync_and_executed(chapters):
    assert chapters, "no chapter sources found under book/NN_*/"
    problems = [p for md in chapters for p in notebooks.pair_problems(md)]
    assert not problems, "\n".join(problems)


def test_toc_lists_every_chapter_and_only_existing_files(chapters):
    listed = toc_files()
    for name in listed:
        assert any((ROOT / f"{name}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml names missing {name}"
    for md in chapters:
        assert str(md.relative_to(ROOT).with_suffix("")) in listed, f"{md} is not in _toc.yml"


def colab_install_problems(source: str, where: str) -> list[str]:
    """What is wrong with a first code cell that should install ppo-lab on Colab: the cell must
    guard the install with ``"google.colab" in sys.modules`` and install
    ``ppo-lab[llm] @ git+<_config.yml repository.url>@v<ppo_lab.__version__>`` (the release tag)."""
    if 'if "google.colab" in sys.modules:' not in source:
        return [f"{where}: first code cell is not the Colab cell"]
    specs = re.findall(r'%pip install[^"]*"ppo-lab\[llm\] @ git\+(\S+?)@(v[^"@]+)"', source)
    expected = (REPO_URL, f"v{ppo_lab.__version__}")
    if specs != [expected]:
        return [f"{where}: Colab cell installs {specs or source!r}, expected ppo-lab[llm] from {expected}"]
    return []


def test_first_cell_installs_from_the_configured_repository(chapters):
    """The Colab install cell names `_config.yml`'s repository.url and the release tag of
    `ppo_lab.__version__`, in every chapter and in its executed pair."""
    for md in chapters:
        pair = md.with_suffix(".ipynb")  # (a missing pair is reported by the pair check)
        versions = [(jupytext.read(md), md)] + ([(nbformat.read(pair, as_version=4), pair)] if pair.exists() else [])
        for nb, where in versions:
            first = next(c for c in nb.cells if c.cell_type == "code")
            assert not colab_install_problems(first.source, str(where)), colab_install_problems(first.source, str(where))


def test_install_cell_check_fails_on_a_stale_tag_or_url():
    good = f'import sys\nif "google.colab" in sys.modules:\n    %pip install -q "ppo-lab[llm] @ git+{REPO_URL}@v{ppo_lab.__version__}"'
    assert colab_install_problems(good, "x") == []
    assert colab_install_problems(good.replace(f"@v{ppo_lab.__version__}", "@v0.0.0"), "x")
    assert colab_install_problems(good.replace(f"@v{ppo_lab.__version__}", ""), "x")
    assert colab_install_problems(good.replace(REPO_URL, "https://example.org/fork"), "x")
    assert colab_install_problems(good.replace("ppo-lab[llm]", "ppo-lab"), "x")
    assert colab_install_problems(good.replace('if "google.colab" in sys.modules:\n', ""), "x")


def _write_chapter(folder: Path, cells: list[str]) -> Path:
    folder.mkdir(parents=True)
    body = "\n\n".join(f"```{{code-cell}} ipython3\n{c}\n```" for c in cells)
    md = folder / "demo.md"
    md.write_text(
        "---\njupytext:\n  formats: ipynb,md:myst\n  text_representation:\n    extension: .md\n"
        "    format_name: myst\nkernelspec:\n  display_name: Python 3\n  language: python\n"
        f"  name: python3\n---\n\n# Demo\n\n{body}\n",
        "utf-8",
    )
    return md


def _execute(md: Path) -> Path:
    from nbclient import NotebookClient

    nb = jupytext.read(md)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    ipynb = md.with_suffix(".ipynb")
    nbformat.write(nb, ipynb)
    return ipynb


def test_pair_check_catches_desync_unexecuted_and_errors(tmp_path):
    md = _write_chapter(tmp_path / "01_demo", ["x = 1 + 1\nprint(x)"])
    ipynb = _execute(md)
    assert notebooks.pair_problems(md) == []

    md.write_text(md.read_text("utf-8").replace("1 + 1", "2 + 2"), "utf-8")  # edit the source only
    assert any("differs" in p for p in notebooks.pair_problems(md))

    nb = jupytext.read(md)
    nbformat.write(nb, ipynb)  # in sync but never executed
    assert any("never executed" in p for p in notebooks.pair_problems(md))

    ipynb.unlink()
    assert any("missing pair" in p for p in notebooks.pair_problems(md))


def test_a_raising_cell_fails_the_book_build(tmp_path):
    """A tiny book with execution on: a cell that raises must fail `jupyter-book build -W`."""
    book = tmp_path / "book"
    _write_chapter(book / "ch", ["print('fine')", "raise RuntimeError('broken cell')"])
    (book / "_config.yml").write_text(
        textwrap.dedent(
            """\
            title: raising-cell check
            only_build_toc_files: true
            execute:
              execute_notebooks: force
              raise_on_error: true
            sphinx:
              config:
                nb_output_stderr: warn
            """
        ),
        "utf-8",
    )
    (book / "_toc.yml").write_text("format: jb-book\nroot: ch/demo\n", "utf-8")
    result = build_book(book)
    assert result.returncode != 0, "a raising cell was rendered silently"
    assert "broken cell" in result.stdout + result.stderr

    # The same book without the raising cell builds: the failure above is the cell's doing.
    shutil.rmtree(book / "ch")
    shutil.rmtree(book / "_build", ignore_errors=True)
    _write_chapter(book / "ch", ["print('fine')"])
    ok = build_book(book)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]


def test_whole_book_builds_with_warnings_as_errors(built_html):
    for name in toc_files():
        assert (built_html / f"{name}.html").exists(), f"{name}.html not built"
    # Launch buttons open the chapter's notebook of the Colab / Jupyter edition (notebooks/).
    branch = yaml.safe_load((ROOT / "_config.yml").read_text("utf-8"))["repository"]["branch"]
    repo = REPO_URL.removeprefix("https://github.com/")
    for page, name in (("book/00_preface/preface", "00_preface"), ("book/04_gae/gae", "04_gae"),
                       ("book/appendix/errata", "appendix_errata")):
        html = (built_html / f"{page}.html").read_text("utf-8")
        colab = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html)
        assert colab == [f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name}.ipynb"], colab
        assert (ROOT / "notebooks" / f"{name}.ipynb").exists()
        binder = re.findall(r'href="(https://mybinder\.org/[^"]+)"', html)
        assert binder and all(b.endswith(f"/notebooks/{name}.ipynb") for b in binder), binder
        assert REPO_URL in html
    assert "colab.research.google.com" not in (built_html / "book" / "appendix" / "api.html").read_text("utf-8")
