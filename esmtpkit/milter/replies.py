"""
What the milter server face sends back: a hook's L{Reply} as a milter
verdict (L{verdict}), and a message's L{Modifications} as the SMFIR_*
requests that come before the verdict at end of body (L{modificationPackets}).

A 2xx or 3xx reply lets the MTA go on (SMFIR_CONTINUE; at end of body,
SMFIR_ACCEPT); a 4xx or 5xx reply becomes SMFIR_REPLYCODE with the reply's
own code, enhanced code and text, which the MTA gives its client. Postfix
takes a custom reply only if every line is C{[45]dd[- ]} followed by an
enhanced status code of the same class, and reads C{%%} as C{%} (Sendmail
uses the text as a format): every line is written so, with C{%} doubled.
A handler that asks to disconnect (C{handler.disconnect}) gets
SMFIR_SHUTDOWN: the MTA answers its client 421 and closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO

from ..core.modifications import BodySource, Modifications
from ..reply import Reply
from . import wire
from .macros import formatParams

__all__ = [
    "verdict",
    "replyText",
    "modificationPackets",
    "bodyChunks",
    "ModificationRefused",
]

_CONTINUE = wire.packet(wire.CONTINUE)
_ACCEPT = wire.packet(wire.ACCEPT)
_SHUTDOWN = wire.packet(wire.SHUTDOWN)


class ModificationRefused(Exception):
    """
    The handler asked for a change the MTA did not allow (its action was
    not negotiated).
    """


def replyText(reply: Reply) -> str:
    """
    The text of SMFIR_REPLYCODE for C{reply}: every line C{CODE[- ]X.Y.Z
    text}, CRLF between lines, C{%} doubled.
    """
    enhanced = reply.enhanced or f"{reply.code // 100}.0.0"
    lines = reply.lines
    last = len(lines) - 1
    out = []
    for index, line in enumerate(lines):
        separator = " " if index == last else "-"
        out.append(f"{reply.code}{separator}{enhanced} {line}".rstrip(" "))
    return "\r\n".join(out).replace("%", "%%")


def verdict(reply: Reply, disconnect: bool = False, end: bool = False) -> bytes:
    """
    The packet that answers a command with C{reply}.

    @param disconnect: the handler asked to close the connection.
    @param end: the command is the end of the body (2xx is SMFIR_ACCEPT).
    """
    if disconnect:
        return _SHUTDOWN
    if reply.code < 400:
        return _ACCEPT if end else _CONTINUE
    return wire.packet(wire.REPLYCODE, wire.strings(replyText(reply)))


def _headerValue(value: str, leadingSpace: bool) -> str:
    value = value.replace("\r\n", "\n")
    if leadingSpace and not value.startswith((" ", "\t")):
        value = " " + value  # the MTA adds none of its own
    return value


def _address(address: str) -> str:
    return f"<{address}>"


def modificationPackets(
    changes: Modifications, actions: int, leadingSpace: bool, insertOffset: int = 0
) -> Iterator[bytes]:
    """
    The SMFIR_* requests for C{changes}, in the order the MTA applies them:
    header changes in the order asked, then the sender, the recipients
    added and deleted (in the order asked: a deletion after an addition of
    the same address removes it again, as stand-alone), the body (its
    chunks in a row: Postfix cannot mix other requests into a body
    replacement) and the quarantine.

    @param actions: the actions negotiated (SMFIF_*).
    @param leadingSpace: SMFIP_HDR_LEADSPC was negotiated: header values go
        with the space after the colon.
    @param insertOffset: added to each C{insertHeader} index: 1 for an MTA
        that counts a header of its own the milter never saw (Postfix, its
        C{Received:}), so that index 0 is the top of the message's own
        header section under every face.
    @raise ModificationRefused: a change needs an action not negotiated
        (raised before any packet is yielded).
    """
    _check(changes, actions)
    for change in changes.headers:
        value = "" if change.value is None else _headerValue(change.value, leadingSpace)
        if change.kind == "add":
            yield wire.packet(wire.ADDHEADER, wire.strings(change.name, value))
        elif change.kind == "insert":
            data = wire.encodeIndexed(change.index + insertOffset, change.name, value)
            yield wire.packet(wire.INSHEADER, data)
        else:
            data = wire.encodeIndexed(change.index, change.name, value)
            yield wire.packet(wire.CHGHEADER, data)
    if changes.sender is not None:
        sender, params = changes.sender
        parts = [_address(sender)]
        if params:
            parts.append(formatParams(params))
        yield wire.packet(wire.CHGFROM, wire.strings(*parts))
    for kind, address, params in changes.recipientChanges:
        if kind == "delete":
            yield wire.packet(wire.DELRCPT, wire.strings(_address(address)))
        elif params:
            data = wire.strings(_address(address), formatParams(params))
            yield wire.packet(wire.ADDRCPT_PAR, data)
        else:
            yield wire.packet(wire.ADDRCPT, wire.strings(_address(address)))
    if changes.body is not None:
        empty = True
        for chunk in bodyChunks(changes.body):
            if chunk:
                empty = False
                yield wire.packet(wire.REPLBODY, chunk)
        if empty:
            yield wire.packet(wire.REPLBODY)  # an empty body replaces it too
    if changes.quarantine is not None:
        yield wire.packet(wire.QUARANTINE, wire.strings(changes.quarantine))


def _check(changes: Modifications, actions: int) -> None:
    needed: list[tuple[int, str]] = []
    for change in changes.headers:
        if change.kind == "change":
            needed.append((wire.SMFIF_CHGHDRS, "change a header"))
        else:
            needed.append((wire.SMFIF_ADDHDRS, "add a header"))
    if changes.sender is not None:
        needed.append((wire.SMFIF_CHGFROM, "change the sender"))
    for _, params in changes.added:
        if params:
            needed.append((wire.SMFIF_ADDRCPT_PAR, "add a recipient with parameters"))
        else:
            needed.append((wire.SMFIF_ADDRCPT, "add a recipient"))
    if changes.deleted:
        needed.append((wire.SMFIF_DELRCPT, "delete a recipient"))
    if changes.body is not None:
        needed.append((wire.SMFIF_CHGBODY, "replace the body"))
    if changes.quarantine is not None:
        needed.append((wire.SMFIF_QUARANTINE, "quarantine"))
    for action, what in needed:
        if not actions & action:
            raise ModificationRefused(f"the MTA does not let this milter {what}")


def bodyChunks(body: BodySource) -> Iterator[bytes]:
    """
    A replacement body in chunks of at most 65,535 octets (the largest an
    MTA takes without negotiating more), read as it goes.
    """
    size = wire.MAX_BODY_CHUNK
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
        for start in range(0, len(data), size):
            yield data[start : start + size]
        return
    read = getattr(body, "read", None)
    if read is not None:
        stream: IO[bytes] = body  # type: ignore[assignment]
        while chunk := stream.read(size):
            yield chunk
        return
    pieces: Iterable[bytes] = body  # type: ignore[assignment]
    for piece in pieces:
        for start in range(0, len(piece), size):
            yield bytes(piece[start : start + size])
