"""The documentation site builds in strict mode, and every link inside it resolves.

``mkdocs build --strict`` already fails on a warning (a link to a missing page
or anchor in the Markdown, a docstring griffe cannot parse). This test then
reads the built HTML, as a browser would, and checks every relative ``href``
and ``src``: the file it names exists in the site and, when it has a
``#fragment``, that element id is on that page. No network: external links
(with a scheme) are not followed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs").glob("*.md"))
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
EXTRAS = ("numpy", "joblib", "dask", "ray", "anyio", "trio")
#: How each extra shows in a guide's examples (imports and backend names).
USES = {
    "numpy": re.compile(r"^\s*(import numpy|from numpy)", re.M),
    "joblib": re.compile(r"^\s*(import joblib|from joblib|import polytask\.joblib)", re.M),
    "dask": re.compile(r"backend=\"dask\"|^\s*(import dask|from dask|from distributed)", re.M),
    "ray": re.compile(r"backend=\"ray\"|^\s*(import ray|from ray)", re.M),
    "anyio": re.compile(r"^\s*(import anyio|from anyio|import polytask\.anyio)", re.M),
    "trio": re.compile(r"backend=\"trio\"|^\s*(import trio|from trio)", re.M),
}
EXTRAS_LINE = re.compile(r"^> \*\*Extras:\*\* (.+)$", re.M)
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in ("id", "name"):
                self.ids.add(value)
            elif key in ("href", "src") and tag in ("a", "img", "script", "link"):
                self.links.append(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_every_internal_link_and_anchor_resolves(site: Path) -> None:
    pages = {p: _parse(p) for p in site.rglob("*.html")}
    assert len(pages) >= 10, sorted(map(str, pages))
    broken = []
    checked = 0
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue  # external: not followed (no network in tests)
            path = unquote(parts.path)
            if path.startswith("/"):  # the 404 page's links are from the site's root
                target = (site / path.lstrip("/")).resolve()
            elif path:
                target = (page.parent / path).resolve()
            else:
                target = page
            if target.is_dir():
                target = target / "index.html"
            rel = page.relative_to(site)
            if not target.is_file() or site.resolve() not in target.parents:
                broken.append(f"{rel}: {link} (no such file)")
                continue
            checked += 1
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{rel}: {link} (no element with id {parts.fragment!r})")
    assert not broken, "broken links in the site:\n" + "\n".join(broken)
    assert checked > 100  # the checker saw the site's links, not an empty page


def test_the_site_has_every_guide_the_readme_and_the_api(site: Path) -> None:
    for guide in GUIDES:
        assert (site / guide.stem / "index.html").is_file(), guide.name
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "nothing outlives its owner" in home  # the README is the home page
    # The README's docs/x.md links point at the site's pages there.
    assert 'href="commands/"' in home and 'href="docs/' not in home
    tasks = (site / "api" / "tasks" / "index.html").read_text(encoding="utf-8")
    # Generated from the docstrings: spawn's own words, its options.
    assert "in the background and return its" in tasks and "daemon" in tasks
    assert ":class:" not in tasks  # reST roles were turned into Markdown


@pytest.mark.parametrize("page", GUIDES + API_PAGES, ids=lambda p: p.name)
def test_every_page_says_which_extras_its_examples_need(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = EXTRAS_LINE.findall(text)
    assert len(found) == 1, f"{page.name}: needs one line '> **Extras:** ...'"
    line = found[0]
    code = "\n".join(BLOCK.findall(text))
    for extra in EXTRAS:
        if USES[extra].search(code):
            assert extra in line, f"{page.name}: its examples use {extra}; say so: {line}"
    if not any(extra in line for extra in EXTRAS):
        assert line.startswith("none"), line
