"""Line breaks inside Chinese prose: removed where Chinese typesetting has no space, kept (drawn as
a space) between Chinese and Latin text, numbers, code or math."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, toc_files
from ppo_book_ext import join_cjk_lines  # book/_ext/ppo_book_ext.py


@pytest.mark.parametrize("source, rendered", [
    ("在 CPU 上运行，\n并行环境数", "在 CPU 上运行，并行环境数"),  # after full-width punctuation
    ("两个\n小数", "两个小数"),  # between two Han characters
    ("（计划中）\n的语言模型", "（计划中）的语言模型"),
    ("情形。\n  这是", "情形。这是"),  # a continuation line of a list item, indented
    ("环境始终在\nCPU 上步进", "环境始终在\nCPU 上步进"),  # Han | Latin: the space belongs
    ("约 0.4\n倍", "约 0.4\n倍"),
    ("plain\nEnglish", "plain\nEnglish"),
    ("末尾\n", "末尾\n"),
])
def test_join_cjk_lines(source, rendered):
    assert join_cjk_lines(source) == rendered


def test_breaks_at_a_node_boundary_use_the_neighbours():
    # MyST gives each soft break its own "\n" text node: its neighbours decide
    assert join_cjk_lines("\n", before="。", after="这") == ""
    assert join_cjk_lines("\n", before="型", after="x") == "\n"
    assert join_cjk_lines("\n并行", before="，") == "并行"
    assert join_cjk_lines("运行\n", after="，") == "运行"


JOINABLE = re.compile(r"[\u4e00-\u9fff，。：；！？（）、]\n[\u4e00-\u9fff，。：；！？（）、]")


@pytest.mark.book
@pytest.mark.slow
def test_no_page_draws_a_space_inside_chinese_text(built_html):
    for name in toc_files():
        html = (built_html / f"{name}.html").read_text("utf-8")
        body = re.sub(r"<(pre|script|style)\b.*?</\1>", "", html, flags=re.S)  # code is verbatim
        left = [body[m.start() - 20:m.end() + 20] for m in JOINABLE.finditer(body)]
        assert not left, f"{name}: {left[:3]}"


INLINE_VERBATIM = re.compile(r"\{[a-z-]+\}`[^`]*`|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|https?://\S+|<[^>]+>")


def _chinese_prose_lines(path):
    """(line number, text) of the lines of a chapter's Markdown that are Chinese prose: outside the
    front matter and code fences, without inline code, roles, math, URLs and HTML tags."""
    lines = path.read_text("utf-8").split("\n")
    fence, front = None, lines[0] == "---"
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if front:
            front = not (number > 1 and line == "---")
            continue
        if fence:
            fence = None if stripped.startswith(fence) else fence
            continue
        if match := re.match(r"`{3,}|~{3,}", stripped):
            fence = match.group()
            continue
        if re.search(r"[\u4e00-\u9fff]", line) and not (stripped.startswith(":") and not stripped.startswith(":::")):
            yield number, INLINE_VERBATIM.sub("", line)


def test_chinese_prose_uses_chinese_quotation_marks():
    """“…” in the sources: an ASCII "…" next to Chinese text is turned into ”…” by the smart-quotes
    transform (a Han character counts as a letter, so the opening mark comes out as a closing one)."""
    found = [f"{path.relative_to(ROOT)}:{number}: {text.strip()[:60]}"
             for path in sorted((ROOT / "book").rglob("*.md")) if "_build" not in path.parts
             for number, text in _chinese_prose_lines(path) if '"' in text]
    assert not found, "\n".join(found)
