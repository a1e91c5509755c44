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


# ipywidgets' embed manager typesets widget labels with the MathJax 2 call
# ``MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])``; the book loads MathJax 3, which has no
# ``Hub``. Bridge the one call to MathJax 3's ``typesetPromise``: a stub before MathJax loads
# (MathJax 3 turns the pre-existing object into its config), the bridge once it is ready.
MATHJAX2_BRIDGE = """
window.MathJax = window.MathJax || {};
(function () {
  var pending = [];
  function bridge() {
    return {Queue: function (job) {
      var el = Array.isArray(job) ? job[2] : undefined;
      if (window.MathJax.typesetPromise) { window.MathJax.typesetPromise(el ? [el] : undefined); }
      else { pending.push(el); }
    }};
  }
  window.MathJax.Hub = bridge();
  window.MathJax.startup = Object.assign(window.MathJax.startup || {}, {
    ready: function () {
      window.MathJax.startup.defaultReady();
      window.MathJax.Hub = bridge();
      pending.forEach(function (el) { window.MathJax.typesetPromise(el ? [el] : undefined); });
      pending = [];
    }
  });
})();
"""


def _add_mathjax2_bridge(app, pagename, templatename, context, doctree) -> None:
    # Runs after sphinx.ext.mathjax's handler; priority 501 puts it after the MathJax
    # config script (500); the MathJax script is deferred, so this still runs before it.
    if app.builder.format == "html":
        app.add_js_file(None, body=MATHJAX2_BRIDGE, priority=501)


def _exclude_paired_sources(app, config) -> None:
    """Render each chapter from its executed ``.ipynb``: exclude the paired jupytext ``.md``."""
    srcdir = Path(app.srcdir)
    for ipynb in (srcdir / "book").rglob("*.ipynb"):
        md = ipynb.with_suffix(".md")
        if md.exists() and ".ipynb_checkpoints" not in ipynb.parts:
            config.exclude_patterns.append(str(md.relative_to(srcdir)))


def setup(app):
    app.connect("config-inited", _exclude_paired_sources)
    app.connect("build-finished", _copy_widget_fonts)
    app.connect("html-page-context", _add_mathjax2_bridge, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
