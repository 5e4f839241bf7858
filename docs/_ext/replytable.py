"""
A Sphinx extension with the directive C{reply-table}: the table of the
replies esmtpkit sends by itself, read from its source code.

Every call C{Reply(CODE, "text", ..., enhanced="X.Y.Z")} with a literal
code in the package is a row (f-string parts that are not literal show as
C{<name>}), and so is every call of a helper whose body is C{return
Reply(CODE, parameter, enhanced=...)} with a literal text (C{_syntax("MAIL
requires return-path")}). The default replies of the hooks
(C{esmtpkit/handler.py}) and the success replies (2xx, 3xx) are left out
unless the directive is given C{:all:}.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SentReply", "findReplies", "setup"]


@dataclass(frozen=True, order=True)
class SentReply:
    """
    A reply found in the source.
    """

    code: int
    enhanced: str
    text: str
    module: str


def _placeholder(node: ast.expr, constants: dict[str, str]) -> str:
    if isinstance(node, ast.Name):
        if node.id in constants:
            return constants[node.id]
        return "<hostname>" if node.id == "host" else f"<{node.id.strip('_')}>"
    if isinstance(node, ast.Attribute):
        return f"<{node.attr}>"
    return "<...>"


def _text(node: ast.expr, constants: dict[str, str] | None = None) -> str | None:
    constants = constants or {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(_placeholder(value.value, constants))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, constants), _text(node.right, constants)
        if left is not None and right is not None:
            return left + right
    return None


def _constants(tree: ast.Module) -> dict[str, str]:
    """
    The module's string constants (C{NAME = "text"} at the top level).
    """
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found[node.targets[0].id] = node.value.value
    return found


def _enhanced(call: ast.Call) -> str:
    for keyword in call.keywords:
        if keyword.arg == "enhanced":
            value = _text(keyword.value)
            return value or ""
    return ""


def _isReply(call: ast.Call) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name == "Reply"


def _literalCode(call: ast.Call) -> int | None:
    if call.args and isinstance(call.args[0], ast.Constant):
        value = call.args[0].value
        if isinstance(value, int):
            return value
    return None


def _helpers(tree: ast.Module) -> dict[str, tuple[int, str]]:
    """
    The module's functions of one parameter that return C{Reply(CODE,
    parameter, enhanced=...)}: their name, to the code and enhanced code.
    """
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or len(node.args.args) != 1:
            continue
        parameter = node.args.args[0].arg
        body = [n for n in node.body if not isinstance(n, ast.Expr)]
        if len(body) != 1 or not isinstance(body[0], ast.Return):
            continue
        call = body[0].value
        if not isinstance(call, ast.Call) or not _isReply(call):
            continue
        code = _literalCode(call)
        if (
            code is not None
            and len(call.args) == 2
            and isinstance(call.args[1], ast.Name)
            and call.args[1].id == parameter
        ):
            found[node.name] = (code, _enhanced(call))
    return found


def findReplies(package: Path, root: Path | None = None) -> list[SentReply]:
    """
    Every reply with a literal code in the modules under C{package}
    (sorted, without duplicates).
    """
    root = root or package.parent
    replies: set[SentReply] = set()
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        helpers = _helpers(tree)
        constants = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if _isReply(node):
                code = _literalCode(node)
                if code is None:
                    continue
                lines = [_text(arg, constants) for arg in node.args[1:]]
                if not lines or None in lines:
                    continue  # its text is not in the source
                text = " / ".join(line for line in lines if line is not None)
                replies.add(SentReply(code, _enhanced(node), text, module))
            elif isinstance(func, ast.Name) and func.id in helpers and node.args:
                text = _text(node.args[0], constants)
                if text is not None:
                    code, enhanced = helpers[func.id]
                    replies.add(SentReply(code, enhanced, text, module))
    return sorted(replies)


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.parsers.rst import directives
    from sphinx.util.docutils import SphinxDirective

    class ReplyTable(SphinxDirective):
        has_content = False
        option_spec = {"all": directives.flag}

        def run(self) -> list[Any]:
            package = Path(self.env.srcdir).parent / "esmtpkit"
            rows = findReplies(package)
            if "all" not in self.options:
                rows = [
                    r
                    for r in rows
                    if r.code >= 400 and not r.module.endswith(".handler")
                ]
            table = nodes.table()
            group = nodes.tgroup(cols=4)
            table += group
            for width in (8, 10, 60, 22):
                group += nodes.colspec(colwidth=width)
            head = nodes.thead()
            group += head
            body = nodes.tbody()
            group += body

            def row(cells: list[str], literal: bool) -> Any:
                line = nodes.row()
                for index, cell in enumerate(cells):
                    entry = nodes.entry()
                    if literal and index in (2, 3) and cell:
                        entry += nodes.paragraph("", "", nodes.literal(cell, cell))
                    else:
                        entry += nodes.paragraph(cell, cell)
                    line += entry
                return line

            head += row(["Code", "Enhanced", "Text", "Module"], False)
            for reply in rows:
                body += row(
                    [str(reply.code), reply.enhanced, reply.text, reply.module], True
                )
            return [table]

    app.add_directive("reply-table", ReplyTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
