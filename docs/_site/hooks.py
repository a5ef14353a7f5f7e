"""MkDocs hooks: README.md is the site's home page.

The guides link to ``../README.md`` and the README links to ``docs/x.md``: both
are right on GitHub, where the files sit side by side. In the site the README
becomes ``index.md`` at the root of the guides, so these links are rewritten
as the pages are read (the files themselves stay as they are).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# A markdown link target: ](target) with an optional #anchor.
_TO_DOCS = re.compile(r"\]\(docs/")
_TO_README = re.compile(r"\]\(((?:\.\./)+)README\.md")


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "index.md":
        return _TO_DOCS.sub("](", markdown)
    depth = page.file.src_uri.count("/")
    return _TO_README.sub("](" + "../" * depth + "index.md", markdown)


# Args entries that name several parameters at once ("initializer, initargs: ...")
# are this project's docstring convention; griffe's Google parser reads the whole
# list as one unknown name and warns, which --strict turns into a failure. Only
# those warnings are dropped: any other docstring problem still fails the build.
_SEVERAL_NAMES = re.compile(r"'\w+(?:, *\w+)+,?'")


class _SeveralNamesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SEVERAL_NAMES.search(record.getMessage())


for _name in ("griffe", "mkdocs.plugins.griffe"):
    logging.getLogger(_name).addFilter(_SeveralNamesFilter())
