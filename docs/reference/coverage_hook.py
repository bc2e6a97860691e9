"""mkdocs hook: every public name of a documented package has a place in the API reference.

A package is documented when a reference page renders something of it (``::: package.Name``).
Its public names are its ``__all__`` (read from the source, not imported), dunders aside. A
name missing from every page is a warning, so ``mkdocs build --strict`` fails until whoever
exports a new name documents it too.
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


def on_pre_build(config: Any, **kwargs: Any) -> None:
    root = Path(config.config_file_path).parent
    pages = sorted((Path(config.docs_dir) / "reference").glob("*.md"))
    rendered = {m for page in pages for m in _RENDERED.findall(page.read_text(encoding="utf-8"))}
    # Where mkdocstrings looks for sources: the packages are found the same way.
    handler = config.plugins["mkdocstrings"].config.handlers.get("python", {})
    search = [root / path for path in handler.get("paths", ["."])]
    for package in sorted({name.split(".")[0] for name in rendered}):
        init = next((p / package / "__init__.py" for p in search if (p / package).is_dir()), None)
        if init is None:
            log.warning("reference: cannot find the package %s in %s", package, search)
            continue
        for name in _public_names(init):
            if f"{package}.{name}" not in rendered:
                log.warning(
                    "reference: %s.%s is public (in __all__) but on no page of docs/reference/",
                    package,
                    name,
                )
