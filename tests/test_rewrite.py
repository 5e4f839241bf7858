"""
Tests for L{esmtpkit.core.rewrite}: header changes applied to a received
header section (checked against an independent model on a list of fields),
folding kept byte for byte, the body streamed, and the envelope that
results from sender and recipient changes.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esmtpkit.core.modifications import Modifications
from esmtpkit.core.rewrite import (
    ModifiedMessage,
    _foldHeader,
    bodyChunks,
    formatHeader,
    rewriteEnvelope,
    rewriteHeaderSection,
    splitHeaderSection,
)
from esmtpkit.session import Params, Recipient, Transaction

RAW = (
    b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"Subject:  a folded\r\n   subject line \r\n"
    b"X-Tag: one\r\n"
    b"x-tag:two\r\n"
    b"\r\n"
)


def _transaction(raw: bytes = RAW, recipients: tuple[str, ...] = ()) -> Transaction:
    transaction = Transaction(id="T.1", sender="alice@example.org")
    transaction.rawHeaders = raw
    transaction.recipients.extend(Recipient(r) for r in recipients)
    return transaction


# -- the model: fields as (name, bytes) pairs, changes as list operations ----


def _model(
    fields: list[tuple[str, bytes]], changes: Modifications
) -> list[tuple[str, bytes]]:
    """
    What the milter's semantics say, written as plainly as possible.
    """
    result = list(fields)

    def line(name: str, value: str) -> bytes:
        return f"{name}: {value}\r\n".encode()

    for kind, name, value, index in changes.headers:
        if kind == "add":
            result.append((name, line(name, value)))
        elif kind == "insert":
            if index >= len(result):
                result.append((name, line(name, value)))
            else:
                result.insert(index, (name, line(name, value)))
        else:
            matching = [i for i, f in enumerate(result) if f[0].lower() == name.lower()]
            if len(matching) < index:
                if value is not None:
                    result.append((name, line(name, value)))
            elif value is None:
                result.pop(matching[index - 1])
            else:
                result[matching[index - 1]] = (name, line(name, value))
    return result


_names = st.sampled_from(["Subject", "subject", "X-Tag", "X-TAG", "From", "To", "Z"])
_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12
)
_fieldBytes = st.tuples(_names, _values, st.booleans()).map(
    lambda t: (
        t[0],
        (f"{t[0]}:{t[1]}\r\n\t folded\r\n" if t[2] else f"{t[0]}: {t[1]}\r\n").encode(),
    )
)
_change = st.one_of(
    st.tuples(st.just("add"), _names, _values),
    st.tuples(st.just("insert"), st.integers(0, 8), _names, _values),
    st.tuples(st.just("change"), _names, st.none() | _values, st.integers(1, 3)),
)


def _record(changes: list[tuple]) -> Modifications:  # type: ignore[type-arg]
    record = Modifications()
    for change in changes:
        if change[0] == "add":
            record.addHeader(change[1], change[2])
        elif change[0] == "insert":
            record.insertHeader(change[1], change[2], change[3])
        elif change[2] is None:
            record.deleteHeader(change[1], change[3])
        else:
            record.changeHeader(change[1], change[2], change[3])
    return record


@settings(max_examples=300, deadline=None)
@given(st.lists(_fieldBytes, max_size=6), st.lists(_change, max_size=8))
def test_headerChangesMatchModel(
    fields: list[tuple[str, bytes]],
    changes: list[tuple],  # type: ignore[type-arg]
) -> None:
    """
    Any sequence of adds, inserts, changes and deletes on any header section
    gives what the model gives: untouched fields byte for byte (folding
    kept), new ones as C{Name: value}, the empty line last.
    """
    raw = b"".join(data for _, data in fields) + b"\r\n"
    record = _record(changes)
    expected = b"".join(data for _, data in _model(fields, record)) + b"\r\n"
    assert rewriteHeaderSection(raw, record.headers) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(_fieldBytes, max_size=6), st.lists(_change, max_size=8))
def test_rewrittenSectionParsesAsModelFields(
    fields: list[tuple[str, bytes]],
    changes: list[tuple],  # type: ignore[type-arg]
) -> None:
    """
    The standard library's parser reads the rewritten section as the
    model's fields, names and unfolded values (an independent reading of
    the bytes).
    """
    raw = b"".join(data for _, data in fields) + b"\r\n"
    record = _record(changes)
    rewritten = rewriteHeaderSection(raw, record.headers)
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        rewritten
    )
    expected = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        b"".join(data for _, data in _model(fields, record)) + b"\r\n"
    )
    assert parsed.items() == expected.items()
    assert [k for k, _ in parsed.items()] == [n for n, _ in _model(fields, record)]


def test_splitKeepsExactBytes() -> None:
    """
    A header section splits into its fields, each with its continuation
    lines and line endings as received, and the empty line.
    """
    fields, rest = splitHeaderSection(RAW)
    assert [name for name, _ in fields] == [
        "Received",
        "From",
        "Subject",
        "X-Tag",
        "x-tag",
    ]
    assert fields[2][1] == b"Subject:  a folded\r\n   subject line \r\n"
    assert rest == b"\r\n"
    assert b"".join(d for _, d in fields) + rest == RAW


def test_splitBareLineFeedsAndNoEmptyLine() -> None:
    """
    Lines ended by a bare LF (possible with BDAT) are kept as they are; a
    section without its empty line (the body started with a non-header
    line) has nothing after its fields.
    """
    raw = b"A: 1\n b\nB: 2\r\n"
    fields, rest = splitHeaderSection(raw)
    assert fields == [("A", b"A: 1\n b\n"), ("B", b"B: 2\r\n")]
    assert rest == b""
    record = Modifications()
    record.addHeader("C", "3")
    assert rewriteHeaderSection(raw, record.headers) == raw + b"C: 3\r\n"


def test_changesInOrder() -> None:
    """
    The changes apply one after the other: an index counts the headers as
    the earlier changes left them; names compare without regard to case;
    a change keeps the position and takes the name given.
    """
    record = Modifications()
    record.deleteHeader("x-TAG")  # the first X-Tag
    record.changeHeader("X-Tag", "second", 1)  # now x-tag:two is the first
    record.insertHeader(0, "X-Top", "top")
    record.insertHeader(99, "X-End", "end")
    record.addHeader("X-Last", "last")
    record.changeHeader("Subject", "plain")
    assert rewriteHeaderSection(RAW, record.headers) == (
        b"X-Top: top\r\n"
        b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"From: Alice <alice@example.org>\r\n"
        b"Subject: plain\r\n"
        b"X-Tag: second\r\n"
        b"X-End: end\r\n"
        b"X-Last: last\r\n"
        b"\r\n"
    )


def test_missingOccurrence() -> None:
    """
    Deleting an occurrence that does not exist changes nothing; changing
    one that does not exist adds the header at the end (as Sendmail and
    Postfix do with a milter's change).
    """
    record = Modifications()
    record.deleteHeader("X-Tag", 3)
    record.deleteHeader("Nowhere")
    assert rewriteHeaderSection(RAW, record.headers) == RAW
    record.changeHeader("X-Tag", "third", 3)
    assert rewriteHeaderSection(RAW, record.headers) == (
        RAW[:-2] + b"X-Tag: third\r\n\r\n"
    )


def test_foldedValues() -> None:
    """
    A value with line breaks is folded with CRLF; a continuation without
    leading white space gets a space, and empty lines are left out, so no
    value can start a header or end the section.
    """
    assert formatHeader("X", "a\n\tb") == b"X: a\r\n\tb\r\n"
    assert formatHeader("X", "a\r\n b\rc") == b"X: a\r\n b\r\n c\r\n"
    assert formatHeader("X", "a\n\nBcc: evil@example.org\n \n") == (
        b"X: a\r\n Bcc: evil@example.org\r\n"
    )
    assert formatHeader("X", "caf\xe9 \udcff") == b"X: caf\xc3\xa9 \xff\r\n"


def test_recordRefusesBadNamesAndValues() -> None:
    """
    The record refuses what cannot be written as a header: names with
    white space, a colon, controls or 8-bit characters, values with NUL or
    characters that are no bytes.
    """
    record = Modifications()
    for name in ("", "A B", "A:B", "A\x7f", "Ä"):
        with pytest.raises(ValueError):
            record.addHeader(name, "v")
    for value in ("a\0b", "\ud800"):
        with pytest.raises(ValueError):
            record.addHeader("X", value)
    assert record.headers == []


def _collect(chunks: Iterator[bytes]) -> list[bytes]:
    return list(chunks)


def test_bodyChunksSources() -> None:
    """
    A body source is bytes (one chunk), a binary file (read from its
    position in chunks of the size asked), or an iterable of chunks (empty
    ones left out).
    """
    assert _collect(bodyChunks(b"")) == []
    assert _collect(bodyChunks(b"abc")) == [b"abc"]
    source = io.BytesIO(b"skip" + b"x" * 10)
    source.seek(4)
    assert _collect(bodyChunks(source, chunkSize=4)) == [b"xxxx", b"xxxx", b"xx"]
    assert _collect(bodyChunks(iter([b"a", b"", bytearray(b"b")]))) == [b"a", b"b"]
    with pytest.raises(TypeError):
        _collect(bodyChunks(["text"]))  # type: ignore[list-item]


def test_bodyNeverReadWhole() -> None:
    """
    A replacement given as a generator is pulled chunk by chunk as the
    message is written: the header section comes out before the body's
    first chunk is made.
    """
    made: list[int] = []

    def generate() -> Iterator[bytes]:
        for index in range(3):
            made.append(index)
            yield b"line %d\r\n" % index

    transaction = _transaction()
    transaction.modifications.replaceBody(generate())
    chunks = ModifiedMessage(transaction).chunks(io.BytesIO(b"old body\r\n"))
    assert next(chunks) == RAW
    assert made == []
    assert next(chunks) == b"line 0\r\n"
    assert made == [0]
    assert list(chunks) == [b"line 1\r\n", b"line 2\r\n"]


def test_unmodifiedMessage() -> None:
    """
    Without modifications the message is the one received, and the
    envelope is the transaction's.
    """
    transaction = _transaction(recipients=("bob@example.net",))
    message = ModifiedMessage(transaction)
    assert not message.contentChanged
    assert message.quarantine is None
    assert b"".join(message.chunks([b"body\r\n"])) == RAW + b"body\r\n"
    assert message.envelope.sender == "alice@example.org"
    assert message.envelope.recipients == (Recipient("bob@example.net"),)


def test_replacedBodyAfterSectionWithoutEmptyLine() -> None:
    """
    A replaced body always follows an empty line, even when the received
    section had none (its body began with a line that was no header).
    """
    transaction = _transaction(raw=b"Subject: x\r\n")
    transaction.modifications.replaceBody(b"new\r\n")
    message = ModifiedMessage(transaction)
    assert message.contentChanged
    assert message.headerSection == b"Subject: x\r\n\r\n"
    assert b"".join(message.chunks(b"not a header\r\n")) == (
        b"Subject: x\r\n\r\nnew\r\n"
    )


def test_envelope() -> None:
    """
    The sender is replaced with its parameters; recipient additions and
    deletions apply in order, a deletion (without regard to case) removing
    every recipient of that address known at that point.
    """
    transaction = _transaction(
        recipients=("bob@example.net", "Carol@example.net", "bob@example.net")
    )
    changes = transaction.modifications
    changes.changeSender("<bounce@example.org>", Params(BODY="8BITMIME"))
    changes.addRecipient("dave@example.net", Params(NOTIFY="NEVER"))
    changes.deleteRecipient("BOB@example.net")
    changes.addRecipient("bob@example.net")
    changes.deleteRecipient("carol@EXAMPLE.net")
    changes.addRecipient("erin@example.net")
    changes.deleteRecipient("erin@example.net")
    envelope = rewriteEnvelope(transaction)
    assert envelope.sender == "bounce@example.org"
    assert envelope.senderParams == {"BODY": "8BITMIME"}
    assert envelope.recipients == (
        Recipient("dave@example.net", Params(NOTIFY="NEVER")),
        Recipient("bob@example.net"),
    )
    # The record keeps its compatible views too.
    assert [a for a, _ in changes.added] == [
        "dave@example.net",
        "bob@example.net",
        "erin@example.net",
    ]
    assert changes.deleted == [
        "BOB@example.net",
        "carol@EXAMPLE.net",
        "erin@example.net",
    ]


def test_quarantine() -> None:
    """
    A quarantine reason reaches the modified message.
    """
    transaction = _transaction()
    transaction.modifications.quarantineMessage("looks like a virus")
    assert ModifiedMessage(transaction).quarantine == "looks like a virus"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["X", "Delivered-To", "Return-Path"]),
    value=st.text(st.sampled_from(list("ab \t\r\n:\xe9\udcff")), max_size=40),
)
def test_formatHeaderFastPathIsTheFolding(name: str, value: str) -> None:
    """
    formatHeader's fast path (a value without line breaks) gives what
    folding it line by line gives, for any value.
    """
    assert formatHeader(name, value) == _foldHeader(name, value)
