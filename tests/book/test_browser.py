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

    # -- the interface speaks the book's language: hidden-code toggles too
    assert "Show code cell" not in text, f"{name}: English code-cell toggle"

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
