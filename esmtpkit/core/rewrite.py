"""
Applying L{Modifications} to a message: the header section rewritten, the
body streamed (the one received or its replacement), and the envelope that
results.

Pure functions of bytes and values, with no I/O of their own: a delivering
handler (the built-in Maildir, a relay) uses L{ModifiedMessage} to write
the message the handler asked for, chunk by chunk.

Unchanged header lines are kept byte for byte (folding, spacing and line
endings as received); a header added or changed is written C{Name: value}
with CRLF, a value with line breaks folded at them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..session import Params, Recipient, Transaction
from .modifications import BodySource, HeaderChange, Modifications

__all__ = [
    "Envelope",
    "ModifiedMessage",
    "bodyChunks",
    "formatHeader",
    "rewriteEnvelope",
    "rewriteHeaderSection",
    "splitHeaderSection",
]

CHUNK_SIZE = 65536
"""How many bytes L{bodyChunks} reads from a file at a time."""

_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_LINE_BREAK = re.compile(r"\r\n|\n|\r")


def formatHeader(name: str, value: str) -> bytes:
    """
    The bytes of header C{name: value}, ending with CRLF.

    A value with line breaks (CRLF, LF or CR: a milter folds with LF) is
    folded at them with CRLF; a continuation line that does not start with
    white space gets one space, and an empty continuation line is left out,
    so that no value can end the header section or start another header.
    """
    if "\n" not in value and "\r" not in value:
        return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
    return _foldHeader(name, value)


def _foldHeader(name: str, value: str) -> bytes:
    # formatHeader, line by line (its fast path's reference).
    first, *rest = _LINE_BREAK.split(value)
    lines = [f"{name}: {first}"]
    for line in rest:
        if not line.strip(" \t"):
            continue
        lines.append(line if line[0] in " \t" else " " + line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def splitHeaderSection(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """
    Split a header section as received (L{Transaction.rawHeaders
    <esmtpkit.session.Transaction.rawHeaders>}) into its fields.

    @return: C{(fields, rest)}: each field as its name and its exact bytes
        (first line and continuation lines, with their line endings), in
        order; C{rest} is what follows the last field: the empty line that
        ended the section, if there was one.
    """
    fields: list[tuple[str, bytes]] = []
    pos = 0
    size = len(raw)
    while pos < size:
        end = raw.find(b"\n", pos)
        end = size if end < 0 else end + 1
        line = raw[pos:end]
        if line[:1] in (b" ", b"\t") and fields:
            name, previous = fields[-1]
            fields[-1] = (name, previous + line)
        else:
            found = _FIELD_NAME.match(line)
            if found is None:
                break  # the empty line, or something that is no field
            fields.append((found.group(1).decode("ascii"), line))
        pos = end
    return fields, raw[pos:]


def _applyHeaderChanges(
    fields: list[tuple[str, bytes]], changes: Iterable[HeaderChange]
) -> list[tuple[str, bytes]]:
    fields = list(fields)
    for change in changes:
        if change.kind == "add":
            fields.append((change.name, formatHeader(change.name, change.value or "")))
        elif change.kind == "insert":
            field = (change.name, formatHeader(change.name, change.value or ""))
            fields.insert(min(change.index, len(fields)), field)
        elif change.kind == "change":
            wanted = change.name.lower()
            matching = [
                i for i, (name, _) in enumerate(fields) if name.lower() == wanted
            ]
            value = change.value
            if len(matching) < change.index:
                if value is not None:  # as Sendmail and Postfix: added
                    fields.append((change.name, formatHeader(change.name, value)))
            elif value is None:
                del fields[matching[change.index - 1]]
            else:
                field = (change.name, formatHeader(change.name, value))
                fields[matching[change.index - 1]] = field
        else:
            raise ValueError(f"unknown header change {change.kind!r}")
    return fields


def rewriteHeaderSection(raw: bytes, changes: Sequence[HeaderChange]) -> bytes:
    """
    The header section C{raw} with C{changes} applied in order, each to the
    result of the ones before (as a milter's are): indexes and occurrences
    count the headers as they are at that point.

    Without changes the result is C{raw} itself.
    """
    if not changes:
        return raw
    fields, rest = splitHeaderSection(raw)
    return b"".join(data for _, data in _applyHeaderChanges(fields, changes)) + rest


def bodyChunks(source: BodySource, chunkSize: int = CHUNK_SIZE) -> Iterator[bytes]:
    """
    The bytes of C{source} in chunks: C{bytes} as one chunk, a binary file
    read from its position to its end C{chunkSize} bytes at a time, any
    other iterable chunk by chunk (empty chunks left out).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if source:
            yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(chunkSize):
            yield chunk
        return
    for chunk in source:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a body chunk must be bytes, not {type(chunk).__name__}")
        if chunk:
            yield bytes(chunk)


@dataclass(frozen=True, slots=True)
class Envelope:
    """
    The envelope of a message after its modifications.

    @ivar sender: the reverse-path address (C{""}: the null sender).
    @ivar senderParams: its ESMTP parameters.
    @ivar recipients: the recipients, in order: those accepted at RCPT that
        were not deleted, then those added (an addition after a deletion of
        the same address adds it back).
    """

    sender: str
    senderParams: Params
    recipients: tuple[Recipient, ...]


def rewriteEnvelope(
    transaction: Transaction, modifications: Modifications | None = None
) -> Envelope:
    """
    The envelope of C{transaction} with C{modifications} (by default, the
    transaction's own) applied.
    """
    if modifications is None:
        modifications = transaction._modifications
    sender, params = transaction.sender, transaction.mailParams
    recipients = list(transaction.recipients)
    if modifications is not None:
        if modifications.sender is not None:
            sender, params = modifications.sender
        for kind, address, extra in modifications.recipientChanges:
            if kind == "add":
                recipients.append(Recipient(address, extra or Params()))
            else:
                folded = address.casefold()
                recipients = [r for r in recipients if r.address.casefold() != folded]
    return Envelope(sender, params, tuple(recipients))


class ModifiedMessage:
    """
    A transaction's message as its modifications make it.

    @ivar envelope: the L{Envelope} after the changes.
    @ivar quarantine: the quarantine reason, or L{None} to deliver.
    @ivar headersChanged: whether the header section differs from the one
        received.
    @ivar replacement: the replacement body, or L{None} to keep the body
        received.
    @ivar headerSection: the header section to write (the one received when
        no header changed), ending with the empty line if the received one
        did, or if the body is replaced.
    """

    def __init__(
        self, transaction: Transaction, modifications: Modifications | None = None
    ) -> None:
        """
        @param transaction: the transaction, its C{rawHeaders} complete (at
            EOM).
        @param modifications: the changes to apply; by default the
            transaction's own.
        """
        if modifications is None:
            modifications = transaction._modifications or Modifications()
        self.envelope = rewriteEnvelope(transaction, modifications)
        self.quarantine = modifications.quarantine
        self.replacement = modifications.body
        raw = transaction.rawHeaders
        section = rewriteHeaderSection(raw, modifications.headers)
        if self.replacement is not None and not _endsSection(section):
            # A new body follows an empty line, whatever the old one did.
            section += b"\r\n"
        self.headerSection = section
        self.headersChanged = section != raw

    @property
    def contentChanged(self) -> bool:
        """
        Whether the message bytes differ from those received (headers
        changed or body replaced).
        """
        return self.headersChanged or self.replacement is not None

    def chunks(self, body: BodySource, chunkSize: int = CHUNK_SIZE) -> Iterator[bytes]:
        """
        The modified message, chunk by chunk: the header section, then the
        replacement body if there is one, else C{body} (the body received:
        bytes, chunks or a file positioned at its start). Nothing is read
        whole.
        """
        yield self.headerSection
        source = self.replacement if self.replacement is not None else body
        yield from bodyChunks(source, chunkSize)


def _endsSection(section: bytes) -> bool:
    # The section ends with its empty line: it is only that line, or its
    # last two lines end one right after the other.
    return section in (b"\r\n", b"\n") or section.endswith((b"\n\r\n", b"\n\n"))
