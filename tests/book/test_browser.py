"""The rendered book in a real browser: Debian's headless Chromium driven by Playwright, offline.

For every page in ``_toc.yml``: it loads with no console error, math is typeset by the vendored
MathJax, code-cell images are present, the figure-slider widgets render and moving a slider
changes the figure, the sidebar lists every chapter, and no request leaves 127.0.0.1.
A full-page screenshot of each page goes to ``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, toc_files

pytestmark = [pytest.mark.book, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Messages Jupyter Book 1's theme prints on every page by itself (see DESIGN.md). Nothing broader.
ALLOWED_CONSOLE_ERRORS = (
    "Identifier 'THEBE_JS_URL' has already been declared",
    "Got invalid theme mode",
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _notebook_facts(name: str) -> dict:
    """What the executed notebook behind a page promises: figure count and slider count."""
    ipynb = ROOT / f"{name}.ipynb"
    facts = {"images": 0, "sliders": 0}
    if not ipynb.exists():
        return facts
    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data and "remove-output" not in cell.metadata.get("tags", []):
                facts["images"] += 1
            if WIDGET_VIEW in data and data.get("text/plain", "").startswith("FigureSlider("):
                facts["sliders"] += 1
    return facts


@pytest.fixture(scope="module")
def server(built_html):
    handler = functools.partial(_QuietHandler, directory=str(built_html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium missing: run `make sysdeps` (make test does it)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ppo-book-chromium-")
    with sync_playwright() as p:
        # A fresh, empty profile directory (Chromium's --user-data-dir).
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


PAGES = toc_files()


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_offline(name, server, browser):
    page = browser.new_page()
    errors: list[str] = []
    outside: list[str] = []
    failed: list[str] = []

    def on_console(msg):
        if msg.type == "error" and not any(a in msg.text for a in ALLOWED_CONSOLE_ERRORS):
            errors.append(f"console: {msg.text}")

    def on_request(request):
        if not request.url.startswith(server) and not request.url.startswith(("data:", "blob:", "about:")):
            outside.append(request.url)

    def on_response(response):
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    def on_pageerror(exc):
        if not any(a in str(exc) for a in ALLOWED_CONSOLE_ERRORS):
            errors.append(f"pageerror: {exc}")

    page.on("pageerror", on_pageerror)
    page.on("request", on_request)
    page.on("response", on_response)
    # Anything not served by our server is blocked (and recorded above), never fetched.
    page.route(lambda url: not url.startswith(server), lambda route: route.abort())

    page.goto(f"{server}/{name}.html", wait_until="load")
    if page.locator("script[src*='mathjax']").count():  # Sphinx loads MathJax only where there is math
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20_000)
        page.evaluate("() => MathJax.startup.promise")
    page.wait_for_timeout(300)

    # -- math is typeset: every math node became a MathJax container, no raw TeX delimiters
    math_nodes = page.locator("main .math").count()
    containers = page.locator("main mjx-container").count()
    assert containers >= math_nodes, f"{name}: {math_nodes} math nodes but {containers} typeset"
    text = page.locator("main").inner_text()
    for raw in ("$$", "\\(", "\\[", "\\begin{"):
        assert raw not in text, f"{name}: raw TeX {raw!r} left in the page"
    # ...and no TeX command is printed literally: a backslash in a text-mode run (mjx-mtext) is
    # an unknown macro, e.g. \_ in \text{episode\_ends} without MathJax's textmacros package
    literal = page.locator("main mjx-mtext mjx-c.mjx-c5C").count()
    assert literal == 0, f"{name}: {literal} literal backslashes in typeset math"
    # ...and every display equation fits the text column at this width (1280 px): MathJax 3 does not
    # break lines, and what overflows slides under the equation number or out of sight
    too_wide = page.evaluate("""() => window.MathJax && MathJax.startup && MathJax.startup.document ?
        Array.from(MathJax.startup.document.math).filter(item => item.display && item.typesetRoot
            && item.typesetRoot.closest('main')
            && item.typesetRoot.firstElementChild.getBoundingClientRect().width
               > item.typesetRoot.getBoundingClientRect().width + 1)
        .map(item => item.math.trim().slice(0, 60)) : []""")
    assert not too_wide, f"{name}: display equations wider than the column (break them with aligned): {too_wide}"
    source = next((ROOT / f"{name}{ext}" for ext in (".ipynb", ".md") if (ROOT / f"{name}{ext}").exists()))
    if "$" in source.read_text("utf-8"):
        assert containers > 0, f"{name}: page has math but MathJax typeset nothing"

    # -- figures from code cells are there and decoded
    facts = _notebook_facts(name)
    if facts["images"]:
        imgs = page.locator("main .cell_output img")
        assert imgs.count() >= facts["images"], f"{name}: {imgs.count()} output images, notebook has {facts['images']}"
        for i in range(imgs.count()):
            imgs.nth(i).scroll_into_view_if_needed()
            assert imgs.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), f"{name}: image {i} not decoded"

    # -- figure sliders render and switch figures with no kernel
    sliders = page.locator(".ppo-figure-slider")
    assert sliders.count() == facts["sliders"], f"{name}: {sliders.count()} sliders rendered, notebook has {facts['sliders']}"
    for i in range(sliders.count()):
        box = sliders.nth(i)
        box.scroll_into_view_if_needed()
        visible_img = box.locator(".widget-image:visible, img:visible").first
        before = visible_img.get_attribute("src")
        readout_before = box.locator(".widget-readout").inner_text()
        handle = box.locator(".noUi-handle").first
        handle.focus()
        handle.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_timeout(200)
        after = box.locator(".widget-image:visible, img:visible").first.get_attribute("src")
        assert box.locator(".widget-readout").inner_text() != readout_before, f"{name}: slider {i} did not move"
        assert before and after and before != after, f"{name}: moving slider {i} did not change the figure"

    # -- the interface speaks the book's language: hidden-code toggles and header buttons too
    assert "Show code cell" not in text, f"{name}: English code-cell toggle"
    labels = page.locator(".article-header-buttons").evaluate_all(
        """els => els.flatMap(el => [el.innerText,
            ...Array.from(el.querySelectorAll('[title], [aria-label], [data-bs-original-title]'))
               .flatMap(b => [b.title, b.getAttribute('aria-label'), b.getAttribute('data-bs-original-title')])])
           .filter(Boolean).join(' | ')""")
    for english in ("Repository", "Open issue", "Source repositories"):
        assert english not in labels, f"{name}: English header-button label {english!r}: {labels}"

    # -- code listings (literalinclude, code blocks) and code cells fit the text column at 1280 px:
    # no horizontal scroll bar hides part of a line (book/_ext/static/ppo-book.css wraps long lines)
    wide_code = page.evaluate(r"""() => Array.from(document.querySelectorAll('main div.highlight pre'))
        .filter(pre => !pre.closest('.cell_output') && pre.scrollWidth > pre.clientWidth + 1)
        .map(pre => pre.innerText.split('\n').reduce((a, b) => b.length > a.length ? b : a, '').slice(0, 80))""")
    assert not wide_code, f"{name}: code wider than the column, behind a scroll bar: {wide_code}"

    # -- one search field, in the sidebar (no second one in a header bar above the page)
    assert page.locator(".search-button-field:visible").count() == 1, f"{name}: not exactly one search field"
    assert not page.locator(".bd-header:visible").count(), f"{name}: a header bar above the page"

    # -- the sidebar lists every chapter
    nav_links = page.locator("nav.bd-docs-nav a.reference").evaluate_all("els => els.map(e => e.href)")
    for other in PAGES[1:]:
        assert any(href.split("#")[0].endswith(f"/{other}.html") for href in nav_links), f"{name}: sidebar lacks {other}"

    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name.replace('/', '__')}.png"), full_page=True)
    page.close()

    assert not outside, f"{name}: requests left 127.0.0.1: {json.dumps(outside[:5])}"
    assert not failed, f"{name}: failed requests: {failed[:5]}"
    assert not errors, f"{name}: console errors: {errors[:5]}"


@pytest.mark.parametrize("query, page", [
    ("幽灵转移", "book/05_ppo/ppo"),  # a section title
    ("裁剪比例", "book/05_ppo/ppo"),  # body text: needs jieba and the book's term dictionary
    ("广义优势估计", "book/04_gae/gae"),
])
def test_chinese_search_finds_the_page(query, page, server, browser):
    """The search box works offline for Chinese: Sphinx indexes Chinese words only when jieba is
    installed (requirements.txt); book/_ext/search_terms.txt keeps the book's terms whole."""
    tab = browser.new_page()
    tab.route(lambda url: not url.startswith(server), lambda route: route.abort())
    tab.goto(f"{server}/search.html?q={query}", wait_until="load")
    tab.wait_for_selector("#search-results .search-summary", timeout=20_000)
    links = tab.locator("#search-results ul.search li a").evaluate_all("els => els.map(e => e.href)")
    assert any(f"/{page}.html" in href for href in links), f"{query!r}: {links}"


# -- the Colab / Jupyter edition, rendered the way plain Jupyter renders it ---------------------

MATHJAX2 = ROOT / "vendor" / "nbconvert" / "mathjax2"
EDITION_PAGE = "04_gae"  # a chapter with labelled equations, listings, admonitions and solutions


@pytest.fixture(scope="module")
def edition_html(tmp_path_factory):
    """``jupyter nbconvert --to html`` of one edition notebook, MathJax 2 from vendor/ (npm)."""
    import subprocess
    import sys

    if not (MATHJAX2 / "MathJax.js").exists():
        pytest.fail("vendored MathJax 2 missing: run `make vendor` (make test does it)")
    out = tmp_path_factory.mktemp("edition-html")
    shutil.copytree(MATHJAX2, out / "mathjax2")
    shutil.copy(ROOT / "vendor" / "static" / "_vendor" / "require.js", out / "require.js")
    nbconvert = Path(sys.executable).with_name("jupyter-nbconvert")
    subprocess.run([str(nbconvert), "--to", "html", str(ROOT / "notebooks" / f"{EDITION_PAGE}.ipynb"),
                    "--output-dir", str(out), "--HTMLExporter.mathjax_url=mathjax2/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
                    "--HTMLExporter.require_js_url=require.js"],  # the template's other CDN script
                   check=True, capture_output=True, text=True)
    handler = functools.partial(_QuietHandler, directory=str(out))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{EDITION_PAGE}.html"
    httpd.shutdown()


def test_edition_notebook_renders_in_plain_jupyter(edition_html, browser):
    """What a reader sees opening the edition in Jupyter (nbconvert's lab template, as the
    notebook UI renders Markdown): math typeset by MathJax 2, no raw MyST or TeX labels, the
    literalinclude listings visible as code, solutions collapsed, nothing fetched from outside."""
    nb = nbformat.read(ROOT / "notebooks" / f"{EDITION_PAGE}.ipynb", as_version=4)
    listings = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("```python\n")]
    page = browser.new_page()
    origin = edition_html.rsplit("/", 1)[0]
    outside, errors = [], []
    page.on("request", lambda r: None if r.url.startswith((origin, "data:", "blob:", "about:")) else outside.append(r.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route(lambda url: not url.startswith(origin), lambda route: route.abort())
    page.goto(edition_html, wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.Hub", timeout=20_000)
    page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")

    markdown = page.locator(".jp-RenderedMarkdown")
    assert markdown.count() > 20
    typeset = page.locator(".jp-RenderedMarkdown .mjx-chtml").count()
    errors_tex = page.locator(".jp-RenderedMarkdown .mjx-chtml .MJXc-TeX-error, .MathJax_Error, merror").count()
    assert typeset > 100 and errors_tex == 0, f"{typeset} typeset formulas, {errors_tex} TeX errors"
    text = "\n".join(markdown.all_inner_texts())
    for raw in ("$$", "\\tag", "\\begin{", "{eq}", "{ref}", "{cite", ":::", "```", "(eq-", "⟦"):
        assert raw not in text, f"raw markup {raw!r} in the rendered edition"
    assert "(4.9)" in text  # an equation number, typeset from \tag{4.9}
    # every listing is visible code: the rendered <pre> blocks hold each listing's first line
    code = "\n".join(page.locator(".jp-RenderedMarkdown pre").all_inner_texts())
    assert listings and all(listing.split("\n")[1] in code for listing in listings)
    details = page.locator(".jp-RenderedMarkdown details")
    assert details.count() >= 4 and not any(details.evaluate_all("els => els.map(d => d.open)"))
    assert not page.locator(".jp-OutputArea-output").count(), "the edition carries no outputs"
    (ROOT / "_build" / "screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ROOT / "_build" / "screenshots" / f"edition__{EDITION_PAGE}.png"), full_page=True)
    page.close()
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"
    assert not errors, f"page errors: {errors[:5]}"
