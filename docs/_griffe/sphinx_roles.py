"""A griffe extension for the docs build (mkdocs.yml): the source docstrings cross-reference in Sphinx style
(:class:`~pytest_ktrace._errors.KtraceError`), which mkdocstrings would print literally. Each role becomes a code
span of the name as Sphinx would show it (only the last component after a leading ``~``). It changes only what
the site shows, never the sources."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`(~?)([^`]+)`")


def _shown(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(Extension):
    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_shown, obj.docstring.value)
