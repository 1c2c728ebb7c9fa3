"""Every relative link in the docs points at a file that exists and, with ``#``, at a heading it has: readers
follow these links from the guides to the results, and a renamed heading breaks them silently."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)  # a "# comment" in code is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.MULTILINE)}


def test_relative_links_reach_their_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        for path, anchor in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", path):
                continue  # http(s), mailto: not checked offline
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {path} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {path or page.name}#{anchor} names no heading")
    assert not broken, "\n".join(broken)
