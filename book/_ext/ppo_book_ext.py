"""Sphinx glue for the offline book.

Chinese line breaks: the chapters' prose is wrapped at ~120 columns, and a line break inside a
paragraph reaches the HTML as a newline, which browsers (Chromium among them) draw as a space:
"运行，<space>并行". ``join_cjk_lines`` removes a newline where Chinese typesetting has no space —
between two Chinese characters, or next to full-width punctuation — and keeps it (as a space)
between a Chinese character and Latin text, numbers, code or math, where the sources put one too.

Widget fonts: the ipywidgets embed manager (``embed-amd.js``) asks for its icon fonts relative to the page
that loads it (``<page dir>/@jupyter-widgets/html-manager/dist/<hash>.woff2``), not relative to
the script. After the build, copy the web-font files next to every page directory, so the
fonts load from 127.0.0.1 and nothing 404s or leaves the machine.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from docutils import nodes

FONT_SUFFIXES = (".woff2", ".woff")
DIST = Path("@jupyter-widgets") / "html-manager" / "dist"


_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
_FULL_WIDTH_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"  # 。、《》，：；！？（）…
_HAN_RE = re.compile(f"[{_HAN}]")
_PUNCT_RE = re.compile(f"[{_FULL_WIDTH_PUNCT}]")
_BREAK_RE = re.compile(r"[ \t]*\n[ \t]*")


def _joins(left: str, right: str) -> bool:
    """True where no space belongs between ``left`` and ``right`` (single characters or '')."""
    if _PUNCT_RE.fullmatch(left or " ") or _PUNCT_RE.fullmatch(right or " "):
        return True
    return bool(_HAN_RE.fullmatch(left or " ") and _HAN_RE.fullmatch(right or " "))


def join_cjk_lines(text: str, before: str = "", after: str = "") -> str:
    """``text`` with its line breaks removed where Chinese typesetting has no space.

    ``before`` / ``after``: the characters just outside ``text`` (from the neighbouring inline
    nodes), for a break at its very start or end. Other breaks are left as they are.
    """

    def replace(match: re.Match) -> str:
        left = text[match.start() - 1] if match.start() > 0 else before
        right = text[match.end()] if match.end() < len(text) else after
        return "" if _joins(left, right) else match.group()

    return _BREAK_RE.sub(replace, text)


_VERBATIM = (nodes.FixedTextElement, nodes.literal, nodes.math, nodes.raw, nodes.comment)


def _join_cjk_lines_in_doctree(app, doctree) -> None:
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if "\n" not in text or parent is None or isinstance(parent, _VERBATIM):
            continue
        # By identity: Text nodes are strings, and MyST gives each soft line break its own "\n"
        # node, so parent.index() (equality) would find the first of them.
        index = next(i for i, child in enumerate(parent.children) if child is text)
        before = parent[index - 1].astext()[-1:] if index > 0 else ""
        after = parent[index + 1].astext()[:1] if index + 1 < len(parent) else ""
        joined = join_cjk_lines(str(text), before, after)
        if joined != str(text):
            parent[index] = nodes.Text(joined)


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


def _launch_the_edition(app, pagename, templatename, context, doctree) -> None:
    """Colab and Binder open the page's notebook of the Colab / Jupyter edition
    (``notebooks/NN_name.ipynb``, see ``book/_ext/edition.py``), not the MyST pair the theme
    derives from the page's source path; a page outside the edition gets no launch buttons."""
    from edition import edition_docs  # book/_ext/edition.py

    if app.builder.format != "html":
        return
    buttons = context.get("header_buttons", [])
    group = next((b for b in buttons if b.get("label") == "launch-buttons"), None)
    if group is None:
        return
    name = edition_docs(Path(app.srcdir)).get(pagename)
    if name is None:
        buttons.remove(group)
        return
    for button in group["buttons"]:
        url = button.get("url", "")
        for suffix in (f"{pagename}.ipynb", f"{pagename}.md"):
            url = url.replace(f"/{suffix}", f"/notebooks/{name}.ipynb")
        button["url"] = url


def _exclude_paired_sources(app, config) -> None:
    """Render each chapter from its executed ``.ipynb``: exclude the paired jupytext ``.md``."""
    srcdir = Path(app.srcdir)
    for ipynb in (srcdir / "book").rglob("*.ipynb"):
        md = ipynb.with_suffix(".md")
        if md.exists() and ".ipynb_checkpoints" not in ipynb.parts:
            config.exclude_patterns.append(str(md.relative_to(srcdir)))


# sphinx-book-theme's header buttons whose labels its zh_CN catalogue leaves in English.
_BUTTON_LABELS_ZH = {
    "Repository": "代码仓库",
    "Source repositories": "代码仓库",
    "Open issue": "提交问题",
    "Launch interactive content": "在线运行",
    "Search": "搜索",
}


def _translate_header_buttons(app, pagename, templatename, context, doctree):
    """Header-button labels in Chinese: the theme adds the buttons (priority 501) with labels its
    zh_CN message catalogue lacks ("Repository", "Open issue", ...); translate them after it."""
    def walk(buttons):
        for button in buttons:
            for key in ("text", "tooltip"):
                value = button.get(key)
                if isinstance(value, str):
                    if value in _BUTTON_LABELS_ZH:
                        button[key] = _BUTTON_LABELS_ZH[value]
                    elif value.startswith("Launch on "):
                        button[key] = f"在 {value[len('Launch on '):]} 中运行"
            walk(button.get("buttons", []))

    walk(context.get("header_buttons", []))


def _add_book_css(app) -> None:
    """book/_ext/static/ppo-book.css on every page (code listings that fit the column)."""
    app.config.html_static_path.append(str(Path(__file__).resolve().parent / "static"))
    app.add_css_file("ppo-book.css")


def setup(app):
    app.connect("builder-inited", _add_book_css)
    app.connect("html-page-context", _translate_header_buttons, priority=800)
    app.connect("config-inited", _exclude_paired_sources)
    app.connect("doctree-read", _join_cjk_lines_in_doctree)
    app.connect("build-finished", _copy_widget_fonts)
    app.connect("html-page-context", _add_mathjax2_bridge, priority=900)
    app.connect("html-page-context", _launch_the_edition, priority=600)  # after the theme's (501)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
