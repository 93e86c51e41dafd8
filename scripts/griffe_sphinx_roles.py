"""A griffe extension for the docs site: Sphinx roles in docstrings rendered as code.

skedlib's docstrings name other objects with Sphinx roles (``:class:`Placer```,
``:meth:`~skedlib.Lock.fence```); mkdocstrings renders Markdown, where they would show
as text with their colons. This turns each into inline code of the name (the last
component after a ``~``, as Sphinx shows it). Loaded by mkdocs.yml
(``extensions: [scripts/griffe_sphinx_roles.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(m: re.Match[str]) -> str:
    name = m.group(2)
    return f"`{name.rsplit('.', 1)[-1] if m.group(1) else name}`"


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role turned into inline code."""
    return _ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the docstring of every object griffe loads."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any,
                    **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
