"""mkdocs hook: every public name of a documented module has a place in the API reference.

A package is documented when a reference page renders something of it (``::: package.Name``),
and a public module (no part of its dotted name private) when a page renders a member of it by
its own path (``::: package.testing.helper``). Its public names are its ``__all__`` (read from
the source, not imported), dunders aside. A name missing from every page is a warning, so
``mkdocs build --strict`` fails until whoever exports a new name documents it too.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

# Under "mkdocs.", so that --strict counts these warnings.
log = logging.getLogger("mkdocs.hooks.reference_coverage")

_RENDERED = re.compile(r"^::: *([A-Za-z_][\w.]*)", re.MULTILINE)


def _public_names(init: Path) -> list[str]:
    """The string entries of the ``__all__`` list assigned in ``init``."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                value = ast.literal_eval(node.value) if node.value is not None else []
                return [n for n in value if not (n.startswith("__") and n.endswith("__"))]
    return []


def _source(module: str, search: list[Path]) -> Path | None:
    """The file of ``module`` (``a.b``: ``a/b.py`` or ``a/b/__init__.py``) on the search path."""
    relative = Path(*module.split("."))
    for root in search:
        for candidate in (root / relative / "__init__.py", root / relative.with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


def on_pre_build(config: Any, **kwargs: Any) -> None:
    root = Path(config.config_file_path).parent
    pages = sorted((Path(config.docs_dir) / "reference").glob("*.md"))
    rendered = {m for page in pages for m in _RENDERED.findall(page.read_text(encoding="utf-8"))}
    # Where mkdocstrings looks for sources: the modules are found the same way.
    handler = config.plugins["mkdocstrings"].config.handlers.get("python", {})
    search = [root / path for path in handler.get("paths", ["."])]
    # The packages, and each public module that a page renders a member of by its own path
    # (a module rendered whole, for its docstring, is not one: its __all__ may hold helpers).
    modules: dict[str, Path] = {}
    for identifier in rendered:
        parts = identifier.split(".")
        for end in range(1, len(parts)):
            if parts[end - 1].startswith("_"):
                break
            module = ".".join(parts[:end])
            source = _source(module, search)
            if source is not None and (end == 1 or end == len(parts) - 1):
                modules[module] = source
            elif source is None and end == 1:
                log.warning("reference: cannot find the package %s in %s", module, search)
    for module, source in sorted(modules.items()):
        for name in _public_names(source):
            if f"{module}.{name}" not in rendered:
                log.warning(
                    "reference: %s.%s is public (in __all__) but on no page of docs/reference/",
                    module,
                    name,
                )
