"""Sphinx glue for the offline book.

The ipywidgets embed manager (``embed-amd.js``) asks for its icon fonts relative to the page
that loads it (``<page dir>/@jupyter-widgets/html-manager/dist/<hash>.woff2``), not relative to
the script. After the build, copy the web-font files next to every page directory, so the
fonts load from 127.0.0.1 and nothing 404s or leaves the machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FONT_SUFFIXES = (".woff2", ".woff")
DIST = Path("@jupyter-widgets") / "html-manager" / "dist"


def _copy_widget_fonts(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    source = outdir / "_vendor" / DIST
    if not source.is_dir():
        raise RuntimeError(f"vendored widget JS missing: {source} (run `make vendor`)")
    fonts = [p for p in source.iterdir() if p.suffix in FONT_SUFFIXES]
    page_dirs = {p.parent for p in outdir.rglob("*.html") if "_vendor" not in p.parts}
    for page_dir in sorted(page_dirs):
        target = page_dir / DIST
        target.mkdir(parents=True, exist_ok=True)
        for font in fonts:
            shutil.copy2(font, target / font.name)


def setup(app):
    app.connect("build-finished", _copy_widget_fonts)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
