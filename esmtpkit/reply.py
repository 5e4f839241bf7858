"""
SMTP replies: the L{Reply} value type, L{ReplyError}, and how replies are
written on the wire.

A reply is a three-digit code and one or more lines of text (RFC 5321
section 4.2). Replies with a 2xx, 4xx or 5xx code may carry an enhanced
status code (RFC 3463, advertised with ENHANCEDSTATUSCODES, RFC 2034), such as
C{2.1.5}; esmtpkit writes one on every such reply except the greeting and the
HELO/EHLO replies, as RFC 2034 asks.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["Reply", "ReplyError", "ReplyLike", "HookResult", "toReply", "replyOfLines"]

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_VALID_ENHANCED: dict[str, bool] = {}


def _clean(line: object) -> str:
    text = line if type(line) is str else str(line)
    # isprintable() is False for every control character, and quick.
    return text if text.isprintable() else _UNSAFE.sub(" ", text)


class Reply:
    """
    An SMTP reply: a code, text lines, and an optional enhanced status code.

    C{Reply(250, "OK")}, C{Reply(550, "5.7.1 Relaying denied")} (the enhanced
    code may lead the first line, or be given as C{enhanced="5.7.1"}), and
    C{Reply(250, "first line", "second line")} for a multi-line reply.

    Text is sanitised: control characters (CR and LF among them) become
    spaces, so a handler can never inject a second reply into the stream.

    @ivar code: the three-digit reply code, 200 to 599.
    @ivar lines: the text lines, at least one (possibly empty).
    @ivar enhanced: the enhanced status code such as C{"2.1.0"}, or L{None}
        when none was given; see L{Reply.withEnhanced}.
    """

    __slots__ = ("code", "lines", "enhanced", "_wire")

    code: int
    lines: tuple[str, ...]
    enhanced: str | None

    def __init__(self, code: int, *lines: str, enhanced: str | None = None) -> None:
        if type(code) is not int:
            raise TypeError(f"reply code must be an int, not {code!r}")
        if not 200 <= code <= 599:
            raise ValueError(f"reply code {code} is not between 200 and 599")
        clean = [_clean(line) for line in lines] or [""]
        if enhanced is None:
            if clean[0][:1] in ("2", "4", "5"):
                match = _ENHANCED.match(clean[0])
                if match is not None:
                    enhanced = clean[0][: match.end()].strip()
                    clean[0] = clean[0][match.end() :]
        if enhanced is not None:
            valid = _VALID_ENHANCED.get(enhanced)
            if valid is None:
                match = _ENHANCED.match(enhanced)
                if match is None or enhanced.endswith(" "):
                    raise ValueError(f"{enhanced!r} is not an enhanced status code")
                if len(_VALID_ENHANCED) < 1000:
                    _VALID_ENHANCED[enhanced] = True
            if enhanced[0] != str(code // 100):
                # RFC 3463: the class must agree with the reply code.
                enhanced = None
        self.code = code
        self.lines = tuple(clean)
        self.enhanced = enhanced
        self._wire: tuple[bytes | None, bytes | None] = (None, None)

    @classmethod
    def _checked(cls, code: int, line: str, enhanced: str | None) -> Reply:
        """
        A one-line reply from parts esmtpkit has already checked (a valid
        code and enhanced code, printable text): skips the checks.
        """
        reply = cls.__new__(cls)
        reply.code = code
        reply.lines = (line,)
        reply.enhanced = enhanced
        reply._wire = (None, None)
        return reply

    @property
    def text(self) -> str:
        """
        The text lines joined with newlines (for logs and assertions).
        """
        return "\n".join(self.lines)

    @property
    def positive(self) -> bool:
        """
        C{True} for a 2xx or 3xx reply.
        """
        return self.code < 400

    def withEnhanced(self, enhanced: str) -> Reply:
        """
        This reply, given C{enhanced} as its enhanced status code if it has
        none of its own.
        """
        if self.enhanced is not None:
            return self
        return Reply(self.code, *self.lines, enhanced=enhanced)

    def toBytes(self, enhanced: bool = True) -> bytes:
        """
        The reply as it goes on the wire: C{"250-..."} for every line but the
        last, C{"250 ..."} for the last, each ended by CRLF.

        @param enhanced: whether to write the enhanced status code (when the
            reply has one) after the reply code on each line.
        """
        cached = self._wire[1 if enhanced else 0]
        if cached is not None:
            return cached
        prefix = self.enhanced + " " if enhanced and self.enhanced is not None else ""
        lines = self.lines
        text = (
            f"{self.code} {prefix}{lines[0]}".rstrip(" ") + "\r\n"
            if len(lines) == 1
            else formatLines(self.code, lines, prefix)
        )
        wire = text.encode("utf-8", "surrogateescape")
        self._wire = (wire, self._wire[1]) if not enhanced else (self._wire[0], wire)
        return wire

    @classmethod
    def _ofCleanLines(
        cls, code: int, lines: tuple[str, ...], wire: bytes | None = None
    ) -> Reply:
        """
        A reply without an enhanced code, made of lines taken from other
        replies (already checked), and optionally its wire form.
        """
        reply = cls.__new__(cls)
        reply.code = code
        reply.lines = lines
        reply.enhanced = None
        reply._wire = (wire, wire)
        return reply

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.lines, self.enhanced) == (
            other.code,
            other.lines,
            other.enhanced,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.lines, self.enhanced))

    def __repr__(self) -> str:
        extra = f", enhanced={self.enhanced!r}" if self.enhanced else ""
        lines = ", ".join(repr(line) for line in self.lines)
        return f"Reply({self.code}, {lines}{extra})"


def formatLines(
    code: int, lines: Sequence[str], prefix: str = "", final: bool = True
) -> str:
    """
    Reply lines as text: C{"250-line"} for each but the last, which is
    C{"250 line"} if C{final}; each ends with CRLF.

    @param prefix: put before each line's text (an enhanced status code).
    """
    out = []
    last = len(lines) - 1
    for index, line in enumerate(lines):
        sep = " " if final and index == last else "-"
        text = prefix + line if (prefix or line) else ""
        out.append(f"{code}{sep}{text}".rstrip(" ") + "\r\n")
    return "".join(out)


ReplyLike = Reply | Sequence[object]
"""
What a reply hook may return: a L{Reply}, or a tuple C{(code, "line", ...)}
as in Apache2::Protocol::ESMTP.
"""

HookResult = ReplyLike | None | Deferred[Any] | Awaitable[Any]
"""
What a reply hook may return: a reply, L{None} for the default reply, or a
Deferred or awaitable of either.
"""


def toReply(value: object) -> Reply:
    """
    Convert what a hook returned into a L{Reply}.

    @param value: a L{Reply}, or a tuple or list whose first item is the
        integer code and whose other items are text lines.
    @raise TypeError: C{value} is neither.
    @raise ValueError: the code or enhanced code is out of range.
    """
    if isinstance(value, Reply):
        return value
    if isinstance(value, (tuple, list)) and value:
        code, *lines = value
        if isinstance(code, int):
            return Reply(code, *(str(line) for line in lines))
    raise TypeError(f"a hook returned {value!r}, which is not a reply")


def replyOfLines(code: int, lines: list[str]) -> Reply:
    """
    The L{Reply} that the text lines C{lines} of a received reply with
    C{code} make (the reply code and separator already removed from each):
    the enhanced status code of the first line, if any, is taken out of
    every line.
    """
    first = Reply(code, lines[0])
    enhanced = first.enhanced
    rest = []
    for line in lines[1:]:
        if enhanced and line.startswith(enhanced + " "):
            line = line[len(enhanced) + 1 :]
        elif enhanced and line == enhanced:
            line = ""
        rest.append(line)
    return Reply(code, *first.lines, *rest, enhanced=enhanced)


class ReplyError(Exception):
    """
    Raise this from any hook to answer with a given reply.

    From a reply hook (MAIL, RCPT, ...) it is the same as returning the reply.
    From HEADER, EOH or BODY it refuses the message: no more content hooks are
    called, the transaction is aborted, and the reply is sent once the client
    has finished sending the message.

    C{ReplyError(550, "5.7.1 No thanks")} or C{ReplyError(Reply(...))}.
    """

    def __init__(self, code: int | Reply, *lines: str) -> None:
        self.reply = code if isinstance(code, Reply) else Reply(code, *lines)
        super().__init__(self.reply)
