"""The documentation holds together: every relative link in README.md and docs/*.md resolves (the file exists and,
for a ``#anchor``, the target has a heading with that GitHub slug), and the README stays a newcomer's page."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links or headings."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the page's headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(m.group(2).replace("`", ""))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    links = _LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_slug_follows_github():
    assert slug("Several encoders, one decode") == "several-encoders-one-decode"
    assert slug("Sources (vidprobe extract SOURCE)") == "sources-vidprobe-extract-source"
    assert slug("The logistic-regression sweep") == "the-logistic-regression-sweep"
    assert slug("A million clips") == "a-million-clips"


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    return broken


def test_broken_links_are_found(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## Two words: `code`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#two-words-code) [ok](#here) [web](https://example.com/x.md) `[code](none.md)`\n"
        "[gone](none.md) [bad anchor](b.md#not-a-heading) [bad local](#nowhere)\n\n## Here\n"
    )
    assert broken_links(page) == [
        "none.md: no such file",
        "b.md#not-a-heading: no heading with that anchor in b.md",
        "#nowhere: no heading with that anchor in a.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_docs_pages_are_linked_from_readme_or_docs():
    """A reader finds every docs page from the README, directly or through another page."""
    linked = {(p.parent / t.partition("#")[0]).resolve() for p in PAGES for t in relative_links(p)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages no page links to: {orphans}"


def test_readme_is_short_and_starts_with_make_demo_and_make_test():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    first = [line.strip() for line in lines[:8]]
    demo = next(i for i, line in enumerate(first) if line.startswith("make demo"))
    test = next(i for i, line in enumerate(first) if line.startswith("make test"))
    assert demo < test
    assert "#" in first[demo] and "#" in first[test], "each make command keeps its comment"
