"""A Griffe extension: the reST bits of polytask's docstrings, as Markdown.

The docstrings are written for ``help()`` and IDEs, with a few reST habits
(``:class:`Task```, a paragraph ending in ``::`` before an indented example).
mkdocstrings renders docstrings as Markdown, where those would show literally.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

# :class:`Task`, :func:`~polytask.spawn`, :meth:`Task.result` -> `Task`, `spawn`...
_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`~?([^`]+)`")
# "Example::" -> "Example:"; a line that is only "::" goes (the block after it is
# indented, so Markdown shows it as code either way).
_LITERAL = re.compile(r"(?m)(?<=\S)::$|^\s*::\s*$")


def markdown_docstring(text: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return _LITERAL.sub(lambda m: ":" if m.group(0) == "::" else "", text)


class ReSTRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
