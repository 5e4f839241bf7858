"""
The framing of DATA content on the SMTP wire: dot-unstuffing and the
end-of-data marker, found in a stream that arrives in arbitrary pieces, and
the checks for bare line endings.

Only C{<CR><LF>.<CR><LF>} ends the data (RFC 5321 section 4.1.1.4); a line
start is the position after a CRLF, so C{<LF>.<LF>} and similar near misses
are ordinary content.
"""

from __future__ import annotations

import re

__all__ = [
    "BodyScanner",
    "hasBareLineEnding",
    "firstBareLineEnding",
    "normalizeLineEndings",
]

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def hasBareLineEnding(data: bytes) -> bool:
    """
    Whether C{data} has a CR or LF that is not part of a CRLF.
    """
    newlines = data.count(b"\n")
    return newlines != data.count(b"\r") or newlines != data.count(b"\r\n")


def firstBareLineEnding(data: bytes) -> int:
    """
    Where the first CR or LF of C{data} that is not part of a CRLF is, or
    -1 if there is none.
    """
    found = _BARE.search(data)
    return -1 if found is None else found.start()


def normalizeLineEndings(data: bytes) -> bytes:
    """
    C{data} with every bare LF made a CRLF and every bare CR dropped.
    """
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")


class BodyScanner:
    """
    Finds the end-of-data marker in a stream of body bytes that arrives in
    arbitrary pieces, and undoes dot-stuffing on the way.

    L{feed} returns the content bytes it could decide on and, once the
    marker has been seen, the bytes that followed it (the next pipelined
    commands). At most two bytes are held back between calls (a dot at the
    start of a line, and a CR that may be followed by LF).
    """

    __slots__ = ("_tail", "_atLineStart")

    def __init__(self, atLineStart: bool = True) -> None:
        self._tail = b""
        self._atLineStart = atLineStart

    def feed(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        """
        Scan the next bytes of the stream.

        @return: C{(pieces, leftover)}: C{pieces} are content bytes in order
            (join them); C{leftover} is L{None} while the message goes on, and
            the bytes after C{<CR><LF>.<CR><LF>} (possibly empty) once it
            ended. The CRLF before the final dot is content.
        """
        buf = self._tail + data if self._tail else data
        self._tail = b""
        pieces: list[bytes] = []
        start = 0
        if self._atLineStart and buf[:1] == b".":
            dot = 0
        else:
            found = buf.find(b"\r\n.")
            dot = found + 2 if found >= 0 else -1
        while dot >= 0:
            after = buf[dot + 1 : dot + 3]
            if dot > start:
                pieces.append(buf[start:dot])
            if after == b"\r\n":
                self._atLineStart = True
                return pieces, buf[dot + 3 :]
            if after == b"" or after == b"\r":
                self._tail = buf[dot:]
                self._atLineStart = True
                return pieces, None
            start = dot + 1
            found = buf.find(b"\r\n.", start)
            dot = found + 2 if found >= 0 else -1
        end = len(buf)
        if buf.endswith(b"\r\n"):
            self._atLineStart = True
        elif buf.endswith(b"\r"):
            end -= 1
            self._tail = b"\r"
            self._atLineStart = False
        else:
            self._atLineStart = end == 0 and self._atLineStart
        if end > start:
            pieces.append(buf[start:end] if start or end != len(buf) else buf)
        return pieces, None
