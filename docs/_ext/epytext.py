"""
A Sphinx extension that turns the epytext markup of esmtpkit's docstrings
into reStructuredText for autodoc (an C{autodoc-process-docstring} hook):

  - C{L{name}} and C{L{text <name>}} become C{:py:obj:} references,
    C{C{code}} inline literals, C{I{x}} emphasis, C{B{x}} strong,
    C{U{url}} links;
  - the fields (C{@param x:}, C{@type}, C{@ivar}, C{@cvar}, C{@return:},
    C{@rtype:}, C{@raise E:}, C{@note:}, C{@see:}) become reST fields;
  - an indented block after a blank line (epytext's code examples) becomes
    a literal block, unless it is a list.
"""

from __future__ import annotations

import re
from typing import Any

_FIELDS = {
    "param": "param",
    "type": "type",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
    "keyword": "keyword",
    "return": "returns",
    "returns": "returns",
    "rtype": "rtype",
    "raise": "raises",
    "raises": "raises",
    "note": "note",
    "see": "see",
    "since": "since",
    "author": "author",
}
_FIELD = re.compile(r"^(\s*)@(\w+)(?:\s+([^:]+?))?:\s?(.*)$")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")
_MARKUP = re.compile(r"([LCIBUM])\{")


def _closing(text: str, start: int) -> int:
    """
    The index of the C{}} that closes the brace opened before C{start}, or
    -1.
    """
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _literal(code: str) -> str:
    code = " ".join(code.split())
    if not code:
        return ""
    if "``" in code:
        return code
    return f"``{code}``"


def convertInline(text: str) -> str:
    """
    The epytext inline markup of C{text} in reST.
    """
    out: list[str] = []
    position = 0
    while True:
        match = _MARKUP.search(text, position)
        if match is None:
            out.append(_escape(text[position:]))
            return "".join(out)
        end = _closing(text, match.end())
        if end < 0:
            out.append(_escape(text[position:]))
            return "".join(out)
        out.append(_escape(text[position : match.start()]))
        kind, inner = match.group(1), text[match.end() : end]
        if kind == "C":
            rendered = _literal(inner)
        elif kind == "L":
            label, _, target = inner.partition("<")
            if target.endswith(">"):
                rendered = f":py:obj:`{label.strip()} <{target[:-1].strip()}>`"
            else:
                rendered = f":py:obj:`{inner.strip()}`"
        elif kind == "I":
            rendered = f"*{convertInline(inner).strip()}*"
        elif kind == "B":
            rendered = f"**{convertInline(inner).strip()}**"
        elif kind == "U":
            label, _, target = inner.partition("<")
            if target.endswith(">"):
                rendered = f"`{label.strip()} <{target[:-1].strip()}>`__"
            else:
                rendered = f"`<{inner.strip()}>`__"
        else:
            rendered = _literal(inner)
        # Escaped spaces: nothing in the output, but the markup is
        # recognized next to letters ("L{Reply}s").
        out.append("\\ " + rendered + "\\ ")
        position = end + 1


def _escape(text: str) -> str:
    """
    Plain text, with what reST would take for markup escaped.
    """
    return re.sub(r"([*`|_\\])", r"\\\1", text)


def _unclosed(text: str) -> bool:
    """
    Whether C{text} opens inline markup it does not close.
    """
    position = 0
    while True:
        match = _MARKUP.search(text, position)
        if match is None:
            return False
        end = _closing(text, match.end())
        if end < 0:
            return True
        position = end + 1


def _joinMarkup(lines: list[str]) -> list[str]:
    """
    Lines with inline markup that goes on over the next lines, joined.
    """
    joined: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        while (
            _unclosed(line)
            and index < len(lines)
            and lines[index].strip()
            and not _FIELD.match(lines[index])
        ):
            line = line.rstrip() + " " + lines[index].strip()
            index += 1
        joined.append(line)
    return joined


def convertLines(lines: list[str]) -> list[str]:
    """
    The lines of an epytext docstring (already dedented) as reST.
    """
    lines = _joinMarkup(lines)
    out: list[str] = []
    literal = False
    previousBlank = True
    inField = False
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal:
            if not stripped or indent > 0:
                out.append(line)
                continue
            literal = False
        if not stripped:
            out.append("")
            previousBlank = True
            continue
        if previousBlank and indent > 0 and not inField and not _LIST.match(line):
            if out and out[-1] != "":
                out.append("")
            out += ["::", "", line]
            literal = True
            previousBlank = False
            continue
        field = _FIELD.match(line)
        if field and field.group(2) in _FIELDS:
            name = _FIELDS[field.group(2)]
            argument = field.group(3)
            body = convertInline(field.group(4))
            head = f":{name} {argument.strip()}:" if argument else f":{name}:"
            if out and out[-1] != "" and not inField:
                out.append("")
            out.append(f"{head} {body}".rstrip())
            inField = True
        else:
            if inField and indent == 0:
                inField = False
                if out and out[-1] != "":
                    out.append("")
            text = convertInline(stripped)
            out.append(" " * indent + text.strip())
        previousBlank = False
    return out


def _process(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    lines[:] = convertLines(lines)


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
