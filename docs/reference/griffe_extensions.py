"""Griffe extensions for the API reference: teach the static reader two idioms the code uses.

mkdocs.yml loads this file by path; the site is built from the sources without importing them,
so griffe sees only the syntax, and two idioms read wrong there:

- ``@asynccontextmanager async def open_pool(...) -> AsyncIterator[Pool]`` would be shown as an
  ``async`` function returning an iterator, when callers write ``async with open_pool(...)``.
  It is shown as returning ``AbstractAsyncContextManager[Pool]``, labelled ``async with``.
- attrs classes (``@attrs.frozen``, ``@attrs.define``) have no ``__init__`` in the source, and
  each field's value reads ``attrs.field(default=10.0, validator=...)``. Their fields get the
  default as value (or none), and the class a generated ``__init__`` signature, as attrs makes
  it (keyword-only when asked, a leading underscore dropped from the parameter name).

An attribute assigned in ``__init__`` (``self.size = size``) is shown without its value: that
is code, not a default.

And the docstrings are reST-ish where Markdown renders them: ``literals`` are code either way,
but Sphinx roles (``:class:`Name```) and literal blocks introduced by ``::`` are rewritten to a
code span and a fenced Python block.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from griffe import (
    Attribute,
    Class,
    Decorator,
    Docstring,
    Expr,
    ExprCall,
    ExprKeyword,
    ExprSubscript,
    ExprTuple,
    Extension,
    Function,
    Module,
    Object,
    Parameter,
    ParameterKind,
    Parameters,
)

_CONTEXT_MANAGERS = {
    "contextlib.asynccontextmanager": ("AbstractAsyncContextManager", "async with"),
    "contextlib.contextmanager": ("AbstractContextManager", "with"),
}
_ATTRS_CLASSES = {
    f"{module}.{name}"
    for module in ("attrs", "attr")
    for name in ("define", "frozen", "mutable", "s", "attrs")
}
_ATTRS_FIELDS = {"attrs.field", "attr.field", "attr.ib", "attr.attrib"}


def _keywords(expr: object) -> dict[str, str | Expr]:
    """The keyword arguments of a call expression (``{}`` for anything else)."""
    if not isinstance(expr, ExprCall):
        return {}
    return {arg.name: arg.value for arg in expr.arguments if isinstance(arg, ExprKeyword)}


def _is_true(value: str | Expr | None) -> bool:
    return value is not None and str(value) == "True"


class ContextManagers(Extension):
    """``@asynccontextmanager`` / ``@contextmanager`` functions, shown as what callers get."""

    def on_function_instance(self, *, func: Function, **kwargs: Any) -> None:
        for decorator in func.decorators:
            known = _CONTEXT_MANAGERS.get(decorator.callable_path)
            if known is None:
                continue
            manager, label = known
            # AsyncIterator[T] / AsyncGenerator[T, None] (and the sync ones): keep T.
            returns = func.returns
            if isinstance(returns, ExprSubscript):
                yielded = returns.slice
                if isinstance(yielded, ExprTuple) and yielded.elements:
                    yielded = yielded.elements[0]
                func.returns = ExprSubscript(left=manager, slice=yielded)
            func.labels.discard("async")
            func.labels.add(label)
            return


def _attrs_decorator(cls: Class) -> Decorator | None:
    return next((d for d in cls.decorators if d.callable_path in _ATTRS_CLASSES), None)


class InitAssignments(Extension):
    """Attributes set in ``__init__``: their type and docstring, not the code that sets them."""

    def on_class_members(self, *, cls: Class, **kwargs: Any) -> None:
        if _attrs_decorator(cls) is not None:
            return  # AttrsClasses shows each field's default instead
        for member in cls.members.values():
            if (
                isinstance(member, Attribute)
                and "instance-attribute" in member.labels
                and "class-attribute" not in member.labels
            ):
                member.value = None


class AttrsClasses(Extension):
    """attrs classes: clean field values and a generated ``__init__`` signature."""

    def on_class_members(self, *, cls: Class, **kwargs: Any) -> None:
        decorator = next((d for d in cls.decorators if d.callable_path in _ATTRS_CLASSES), None)
        if decorator is None:
            return
        options = _keywords(decorator.value)
        class_kw_only = _is_true(options.get("kw_only"))
        parameters: list[Parameter] = []
        for member in list(cls.members.values()):
            if not isinstance(member, Attribute) or member.annotation is None:
                continue
            # A ClassVar (only a class attribute) is not a field.
            if "instance-attribute" not in member.labels:
                continue
            field = _keywords(member.value)
            if isinstance(member.value, ExprCall) and member.value.canonical_path in _ATTRS_FIELDS:
                if "default" in field:
                    default: str | Expr | None = field["default"]
                elif "factory" in field:
                    factory = field["factory"]
                    default = (
                        ExprCall(function=factory, arguments=[])
                        if isinstance(factory, Expr)
                        else f"{factory}()"
                    )
                else:
                    default = None
                member.value = default
            else:
                field = {}
                default = member.value
            # attrs classes are slotted: a field is an instance attribute only.
            member.labels.discard("class-attribute")
            if "__init__" in cls.members or str(field.get("init", "True")) == "False":
                continue
            name = str(field["alias"]).strip("'\"") if "alias" in field else member.name.lstrip("_")
            kw_only = class_kw_only or _is_true(field.get("kw_only"))
            parameters.append(
                Parameter(
                    name,
                    annotation=member.annotation,
                    kind=ParameterKind.keyword_only
                    if kw_only
                    else ParameterKind.positional_or_keyword,
                    default=default,
                    docstring=member.docstring,
                )
            )
        if "__init__" in cls.members or str(options.get("init", "True")) == "False":
            return
        # As attrs orders them: keyword-only parameters after the others.
        parameters.sort(key=lambda p: p.kind is ParameterKind.keyword_only)
        self_ = Parameter("self", kind=ParameterKind.positional_or_keyword)
        init = Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parent=cls,
            parameters=Parameters(self_, *parameters),
            returns="None",
        )
        cls.set_member("__init__", init)


# :class:`Name`, :py:meth:`~pkg.Class.method` (the ~ shows only the last name), ...
_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|exc|data|obj|const):`(~?)([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _literal_blocks(text: str) -> str:
    """reST ``paragraph::`` + an indented block -> ``paragraph:`` + a fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.rstrip().endswith("::"):
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip())
        block_start = i
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            i += 1
        block = textwrap.dedent("\n".join(lines[block_start:i])).strip("\n")
        if not block:  # not a literal block after all
            out.append(line)
            continue
        head = line.rstrip()[:-2].rstrip()
        # "text::" reads "text:"; a lone "::" (or "text ::") disappears.
        if head and not line.rstrip().endswith(" ::"):
            head += ":"
        if head.strip():
            out.append(head)
        prefix = " " * indent
        out += ["", prefix + "```python"]
        out += [prefix + code if code else "" for code in block.split("\n")]
        out += [prefix + "```", ""]
    return "\n".join(out)


def _markdown(text: str) -> str:
    return _literal_blocks(_ROLE.sub(_role_to_code, text))


class ReSTMarkup(Extension):
    """Sphinx roles and ``::`` literal blocks in docstrings, made Markdown."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        seen: set[str] = set()
        todo: list[Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            docstring = obj.docstring
            if docstring is not None:
                converted = _markdown(docstring.value)
                if converted != docstring.value:
                    obj.docstring = Docstring(
                        converted,
                        lineno=docstring.lineno,
                        endlineno=docstring.endlineno,
                        parent=obj,
                        parser=docstring.parser,
                        parser_options=docstring.parser_options,
                    )
            todo += [m for m in obj.members.values() if not m.is_alias and isinstance(m, Object)]
