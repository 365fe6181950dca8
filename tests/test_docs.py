"""The documentation: README.md stays a front door, and every relative link in it and in docs/
leads to a file that exists and, with a ``#fragment``, to a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# [text](target) outside code spans; images too. Targets with spaces are not used here.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a ``# comment`` in a sh block is no heading)."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                targets.append(target)
    return targets


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, more than {MAX_README_LINES}: move the detail to "
        "the docs/ page of its topic and link to it")


def test_there_are_docs_pages():
    assert PAGES, "docs/ holds no .md page"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    problems = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no file {linked.relative_to(REPO)}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{target}: no heading with anchor #{fragment} in "
                            f"{linked.relative_to(REPO)}")
    assert not problems, f"broken links in {path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.relative_to(REPO) for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md does not link to {missing}"


def test_slug_follows_github():
    assert slug("Threads, slow clients and compute slots") == (
        "threads-slow-clients-and-compute-slots")
    assert slug("The Open Inference Protocol (KServe V2)") == (
        "the-open-inference-protocol-kserve-v2")
    assert slug("2026-11-30: round 2, the CNN") == "2026-11-30-round-2-the-cnn"
    assert slug("Today's figures") == "todays-figures"
    assert slug("`server/imaging/` pipeline") == "serverimaging-pipeline"
