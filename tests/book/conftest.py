"""Fixtures for the book tests: the chapter list, and the HTML build (built once per session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import notebooks  # noqa: E402  (book/_ext/notebooks.py)

JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


def toc_files(toc: dict | None = None) -> list[str]:
    """Every document named in ``_toc.yml`` (root first), without extension."""
    toc = toc or yaml.safe_load((ROOT / "_toc.yml").read_text("utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def build_book(source: Path, out: Path | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``jupyter-book build SOURCE -W --keep-going`` (the exact command ``make html`` runs)."""
    cmd = [str(JUPYTER_BOOK), "build", str(source), "-W", "--keep-going", *extra]
    if out is not None:
        cmd += ["--path-output", str(out)]
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=source, env=env, timeout=1200)


@pytest.fixture(scope="session")
def chapters() -> list[Path]:
    return notebooks.chapter_sources(ROOT)


@pytest.fixture(scope="session")
def built_html() -> Path:
    """The whole book rendered into ``_build/html`` with ``-W`` (a warning fails the build)."""
    html = ROOT / "_build" / "html"
    if not (ROOT / "vendor" / "static" / "_vendor" / ".stamp").exists():
        pytest.fail("vendored JS missing: run `make vendor` (make test does it)")
    shutil.rmtree(html, ignore_errors=True)
    shutil.rmtree(ROOT / "_build" / ".doctrees", ignore_errors=True)
    result = build_book(ROOT)
    if result.returncode != 0:
        pytest.fail(f"jupyter-book build failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return html
