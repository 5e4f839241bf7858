"""
What a milter answers: L{MilterReply} (its verdict, with the changes it asks
at the end of a message), its custom replies (C{SMFIR_REPLYCODE}) read as
Postfix reads them, and its changes recorded on a L{Modifications}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..core.modifications import Modifications
from ..reply import Reply
from ..session import Params
from . import wire

__all__ = ["MilterReply", "decodeReply", "customReply", "recordEdits"]

_LINE = re.compile(r"([45])(\d\d)([ -])(.*)\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: |\Z)")


class MilterReply:
    """
    A milter's answer to one command.

    @ivar action: the final reply's command octet: C{wire.CONTINUE},
        C{ACCEPT}, C{REJECT}, C{TEMPFAIL}, C{DISCARD}, C{REPLYCODE},
        C{SKIP}, C{SHUTDOWN} or C{CONN_FAIL}.
    @ivar reply: the SMTP reply of a C{REPLYCODE}, else L{None}.
    @ivar edits: the changes asked before the final reply to the end of a
        message, C{(command, data)} in order.
    """

    __slots__ = ("action", "reply", "edits")

    def __init__(
        self,
        action: bytes,
        reply: Reply | None = None,
        edits: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.action = action
        self.reply = reply
        self.edits = list(edits)

    def __repr__(self) -> str:
        return f"MilterReply({self.action!r}, {self.reply!r}, {len(self.edits)} edits)"


def decodeReply(
    command: bytes, data: bytes, edits: Sequence[tuple[bytes, bytes]] = ()
) -> MilterReply:
    """
    The L{MilterReply} for final reply C{command} with C{data}.

    @raise wire.MilterProtocolError: data where none belongs, or a custom
        reply Postfix would not take.
    """
    if command == wire.REPLYCODE:
        (text,) = wire.splitStrings(data, 1)
        return MilterReply(command, customReply(text), edits)
    if data:
        raise wire.MilterProtocolError(f"reply {command!r} with data")
    return MilterReply(command, None, edits)


def customReply(text: bytes) -> Reply:
    """
    The L{Reply} a milter's C{SMFIR_REPLYCODE} text stands for: one or more
    lines C{"550-5.7.1 text"} joined by CRLF, each a 4xx or 5xx code (the
    same on every line) whose enhanced code, if any, has the same class; a
    C{%%} stands for C{%} (Sendmail uses the text as a format), a lone C{%}
    is dropped.

    @raise wire.MilterProtocolError: anything else.
    """
    decoded = text.decode("utf-8", "replace")
    lines = decoded.split("\r\n")
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()
    code: str | None = None
    enhanced: str | None = None
    texts: list[str] = []
    for number, line in enumerate(lines):
        match = _LINE.match(line)
        last = number == len(lines) - 1
        if match is None or (match.group(3) == "-") == last:
            raise wire.MilterProtocolError(f"malformed reply {decoded[:80]!r}")
        lineCode = match.group(1) + match.group(2)
        if code is None:
            code = lineCode
        elif lineCode != code:
            raise wire.MilterProtocolError(f"reply codes differ in {decoded[:80]!r}")
        rest = match.group(4)
        found = _ENHANCED.match(rest)
        if found is not None:
            if found.group(1)[0] != code[0]:
                raise wire.MilterProtocolError(
                    f"enhanced code class differs in {decoded[:80]!r}"
                )
            if enhanced is None and number == 0:
                enhanced = found.group(1)
            if found.group(1) == enhanced:
                rest = rest[found.end() :]
        texts.append(_percent(rest))
    assert code is not None
    return Reply(int(code), *texts, enhanced=enhanced)


def _percent(text: str) -> str:
    if "%" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "%":
            char = next(chars, "")
        out.append(char)
    return "".join(out)


def recordEdits(
    edits: Sequence[tuple[bytes, bytes]],
    changes: Modifications,
    leadingSpace: bool = False,
) -> None:
    """
    Record a milter's changes on C{changes}, in order.

    Header values come as the milter sent them: folded with LF (kept as
    line breaks); with C{leadingSpace} (the milter negotiated
    C{SMFIP_HDR_LEADSPC}) the value includes what follows the colon, so a
    single leading space is taken off (esmtpkit writes C{"Name: value"}).
    A change index 0 means 1, as in Postfix and Sendmail; an empty new
    value deletes the header.

    @raise wire.MilterProtocolError: a change whose data does not parse.
    """
    body: list[bytes] | None = None
    try:
        for command, data in edits:
            if command == wire.REPLBODY:
                if not isinstance(data, bytes):
                    changes.replaceBody(data)  # the client's spool file
                    continue
                if body is None:
                    body = []
                    changes.replaceBody(body)
                body.append(data)
            elif command == wire.ADDHEADER:
                name, value = _texts(wire.splitStrings(data, 2))
                changes.addHeader(name, _value(value, leadingSpace))
            elif command in (wire.INSHEADER, wire.CHGHEADER):
                index, parts = wire.decodeIndexed(data, 2)
                name, value = _texts(parts)
                if command == wire.INSHEADER:
                    changes.insertHeader(index, name, _value(value, leadingSpace))
                elif value:
                    changes.changeHeader(name, _value(value, leadingSpace), index or 1)
                else:
                    changes.deleteHeader(name, index or 1)
            elif command == wire.CHGFROM:
                words = _texts(wire.splitStrings(data))
                changes.changeSender(words[0], _params(words[1:]))
            elif command in (wire.ADDRCPT, wire.ADDRCPT_PAR):
                words = _texts(wire.splitStrings(data))
                changes.addRecipient(words[0], _params(words[1:]))
            elif command == wire.DELRCPT:
                (address,) = _texts(wire.splitStrings(data, 1))
                changes.deleteRecipient(address)
            elif command == wire.QUARANTINE:
                (reason,) = _texts(wire.splitStrings(data, 1))
                changes.quarantineMessage(reason or "milter")
    except ValueError as e:
        raise wire.MilterProtocolError(f"change {command!r}: {e}") from None


def _texts(parts: Sequence[bytes]) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _value(value: str, leadingSpace: bool) -> str:
    if leadingSpace and value.startswith(" "):
        return value[1:]
    return value


def _params(parts: Sequence[str]) -> Params:
    params = Params()
    for part in parts:
        for word in part.split():
            keyword, equals, value = word.partition("=")
            params[keyword.upper()] = value if equals else None
    return params
