"""
Parsing a message's header section: lines classified one at a time (with
unfolding), or a whole plain section at once, as pure functions of bytes
with no I/O and no wire framing.
"""

from __future__ import annotations

import re

__all__ = [
    "HeaderParser",
    "parseHeaderSection",
    "HEADER",
    "CONTINUATION",
    "END",
    "BODY",
]

HEADER = "header"
CONTINUATION = "continuation"
END = "end"
BODY = "body"

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:[ \t]*", re.S)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class HeaderParser:
    """
    Classifies the lines of a message's header section one at a time and
    unfolds continuation lines.

    Each call to L{line} returns what kind of line it was and the header, if
    any, that it completed; a header is only complete once the next line is
    known not to continue it.
    """

    __slots__ = ("_name", "_parts")

    def __init__(self) -> None:
        self._name: bytes | None = None
        self._parts: list[bytes] = []

    def line(self, line: bytes) -> tuple[str, tuple[str, str] | None]:
        """
        Classify one line (without its CRLF, dot-stuffing undone).

        @return: C{(kind, completed)}: C{kind} is L{HEADER} (a new field
            starts), L{CONTINUATION} (a folded line of the current field),
            L{END} (the empty line that ends the headers) or L{BODY} (a line
            that is not a header: the headers ended and this line is the
            first of the body); C{completed} is the C{(name, value)} field
            this line completed, or L{None}.
        """
        if not line:
            return END, self.finish()
        first = line[0]
        if first in (0x20, 0x09):
            if self._name is None:
                return BODY, None
            self._parts.append(line)
            return CONTINUATION, None
        match = _FIELD.match(line)
        if match is None:
            return BODY, self.finish()
        completed = self.finish()
        self._name = match.group(1)
        self._parts = [line[match.end() :]]
        return HEADER, completed

    def finish(self) -> tuple[str, str] | None:
        """
        Complete the pending field, if any (at the end of the headers).
        """
        if self._name is None:
            return None
        name, parts = self._name, self._parts
        self._name = None
        self._parts = []
        value = parts[0] if len(parts) == 1 else b"".join(parts)
        return _text(name), _text(value)


def parseHeaderSection(section: bytes) -> list[tuple[str, str]] | None:
    """
    The fields of a whole header section at once, as L{HeaderParser} would
    give them line by line, or L{None} if the section is not a plain one.

    @param section: header lines, each ended by CRLF, without the empty
        line that ends the section; dot-stuffing and line endings already
        checked by the caller.
    @return: the unfolded C{(name, value)} fields in order; L{None} when a
        line is neither a field nor the continuation of one (the line-by-line
        parser then decides where the body starts).
    """
    fields: list[tuple[str, str]] = []
    name = b""
    parts: list[bytes] = []
    match = _FIELD.match
    for line in section.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not parts:
                return None
            parts.append(line)
            continue
        found = match(line)
        if found is None:
            return None
        if parts:
            fields.append(
                (
                    name.decode("utf-8", "surrogateescape"),
                    b"".join(parts).decode("utf-8", "surrogateescape"),
                )
            )
        name = found.group(1)
        parts = [line[found.end() :]]
    if parts:
        fields.append(
            (
                name.decode("utf-8", "surrogateescape"),
                b"".join(parts).decode("utf-8", "surrogateescape"),
            )
        )
    return fields
