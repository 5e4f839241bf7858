"""
Issue 4, line endings and SMTP smuggling (Dec 2023; CVE-2023-51764/5/6,
CVE-2024-27305): only <CR><LF>.<CR><LF> ends DATA; the near-miss
terminators <LF>.<LF>, <CR><LF>.<LF>, <LF>.<CR><LF> and <CR>.<CR> never end
a message nor let a smuggled second one through, under both bare line
ending policies (C{reject}: drained, 550 5.5.2, nothing delivered;
C{normalize}: bare LF made CRLF, bare CR dropped); and commands with bare
LF or CR. In memory (L{SMTPTestConnection}), no sockets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from esmtpkit.handlers import Maildir
from esmtpkit.testing import SMTPTestConnection

from .helpers import maildirFiles, splitReceived
from .test_protocol import Recorder, collapsed, connect, recorderFactory

POLICIES = ["reject", "normalize"]

NEAR_MISSES = {
    "LF.LF": b"\n.\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
}

# Where the near miss sits in the content sent after the 354.
POSITIONS = {
    "right after the 354": (b"", b""),
    "after the header section": (b"Subject: real\r\n", b""),
    "after a header": (b"Subject: real", b""),
    "in the body": (b"Subject: real\r\n\r\nfirst line", b""),
    "after a body line": (b"Subject: real\r\n\r\nfirst line\r\n", b""),
}

SMUGGLED = (
    b"MAIL FROM:<evil@example.org>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"evil\r\n"
)

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def _saveRawHeaders(handler: Recorder) -> None:
    transaction = handler.session.transaction
    assert transaction is not None
    handler.saved["rawHeaders"] = transaction.rawHeaders


def dataConnection(policy: str, **settings: Any) -> SMTPTestConnection:
    """
    A connection to a L{Recorder} (which keeps its raw headers at EOH)
    with the bare line ending C{policy}, after EHLO, MAIL, RCPT and DATA.
    """
    conn = connect(
        recorderFactory(EOH=_saveRawHeaders), bareLineEndings=policy, **settings
    )
    assert conn.command("EHLO client.example").code == 250
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command("RCPT TO:<bob@example.net>").code == 250
    assert conn.command("DATA").code == 354
    return conn


def delivered(conn: SMTPTestConnection) -> bytes:
    """
    The message bytes the handler was given (raw headers, then BODY).
    """
    raw: bytes = conn.handler.saved.get("rawHeaders", b"")
    body: bytes = conn.handler.body()
    return raw + body


def unstuffed(content: bytes) -> bytes:
    """
    C{content} (what follows the 354, before the real end of data) with
    dot-stuffing undone: a dot that starts a CRLF-delimited line is dropped.
    """
    lines = content.split(b"\r\n")
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines)


def normalized(data: bytes) -> bytes:
    """
    C{data} with every bare LF made CRLF and every bare CR dropped.
    """
    out = bytearray()
    index = 0
    while index < len(data):
        if data[index : index + 2] == b"\r\n":
            out += b"\r\n"
            index += 2
            continue
        if data[index] == 0x0A:
            out += b"\r\n"
        elif data[index] != 0x0D:
            out.append(data[index])
        index += 1
    return bytes(out)


def _run(policy: str, content: bytes, split: int | str | None) -> SMTPTestConnection:
    """
    After DATA, send C{content}, the real end of data and a NOOP: in one
    read (C{split} L{None}), byte by byte (C{"bytes"}), or in two reads cut
    at offset C{split}.
    """
    conn = dataConnection(policy)
    wire = content + b".\r\nNOOP\r\n"
    if split is None:
        conn.send(wire)
    elif split == "bytes":
        for index in range(len(wire)):
            conn.send(wire[index : index + 1])
    else:
        assert isinstance(split, int)
        conn.send(wire[:split])
        conn.send(wire[split:])
    return conn


@pytest.mark.parametrize("split", [None, "bytes"], ids=["one read", "byte by byte"])
@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("nearMiss", list(NEAR_MISSES))
@pytest.mark.parametrize("policy", POLICIES)
def test_nearMissNeverEndsData(
    policy: str, nearMiss: str, position: str, split: str | None
) -> None:
    """
    A near-miss terminator followed by a smuggled MAIL/RCPT/DATA and a
    second message: the message ends only at the real <CR><LF>.<CR><LF>,
    with exactly one reply; the smuggled commands are never executed and
    never make a second message. C{reject}: 550 5.5.2, ABORT, no EOM,
    nothing of the smuggled part reaches the handler; C{normalize}: 250,
    the handler gets the whole content (smuggled part included, as content)
    with bare LF made CRLF and no bare CR.
    """
    before, _ = POSITIONS[position]
    content = before + NEAR_MISSES[nearMiss] + SMUGGLED
    conn = _run(policy, content, split)
    replies = conn.replies()
    names = conn.handler.names()
    # One reply for the message (after its real end), one for the NOOP.
    assert len(replies) == 2, replies
    assert (replies[1].code, replies[1].enhanced) == (250, "2.0.0")
    assert names.count("MAIL") == 1
    assert names.count("RCPT") == 1
    assert names.count("DATA") == 1
    assert "UNKNOWN" not in names
    assert names.count("NOOP") == 1
    assert [args for name, args in conn.handler.calls if name == "MAIL"] == [
        ("alice@example.org", {})
    ]
    got = delivered(conn)
    assert BARE.search(got) is None, got
    if policy == "reject":
        assert (replies[0].code, replies[0].enhanced) == (550, "5.5.2")
        assert "EOM" not in names
        assert names.count("ABORT") == 1
        assert b"evil" not in got
        assert conn.session.messages == 0
    else:
        assert (replies[0].code, replies[0].enhanced) == (250, "2.0.0"), replies
        assert names.count("EOM") == 1
        assert "ABORT" not in names
        assert got == normalized(unstuffed(content)), (got, content)
        assert b"evil" in got
        assert conn.session.messages == 1
    assert conn.session.transaction is None
    assert not conn.closed


@pytest.mark.parametrize("nearMiss", list(NEAR_MISSES))
@pytest.mark.parametrize("policy", POLICIES)
def test_nearMissEverySplit(policy: str, nearMiss: str) -> None:
    """
    The near-miss case (after the header section) gives the same result
    however the bytes are split in two reads.
    """
    content = b"Subject: real\r\n" + NEAR_MISSES[nearMiss] + SMUGGLED
    reference = _run(policy, content, None)
    expected = (
        [(r.code, r.enhanced) for r in reference.replies()],
        delivered(reference),
        collapsed(reference.handler.calls),
    )
    assert expected[0][0][0] == (550 if policy == "reject" else 250)
    wire = content + b".\r\nNOOP\r\n"
    for split in range(1, len(wire)):
        conn = _run(policy, content, split)
        replies = [(r.code, r.enhanced) for r in conn.replies()]
        names = conn.handler.names()
        assert replies == expected[0], split
        if policy == "normalize":
            assert delivered(conn) == expected[1], split
            assert collapsed(conn.handler.calls) == expected[2], split
        else:
            # How much content came before the refusal may vary; the
            # refusal itself may not.
            assert b"evil" not in delivered(conn), split
            assert "EOM" not in names, split
            assert names.count("ABORT") == 1, split
            assert names.count("MAIL") == 1, split


@pytest.mark.parametrize("policy", POLICIES)
def test_onlyCRLFDotCRLFEndsData(policy: str) -> None:
    """
    <CR><LF>.<CR><LF> ends the message; what follows is a command.
    """
    conn = dataConnection(policy)
    conn.send(b"Subject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n")
    assert [r.code for r in conn.replies()] == [250, 250]
    assert delivered(conn) == b"Subject: s\r\n\r\nbody\r\n"


@pytest.mark.parametrize("policy", POLICIES)
def test_endRightAfter354(policy: str) -> None:
    """
    ".<CR><LF>" right after the 354 ends the message (an empty one): the
    CRLF that ended the DATA line counts as the first <CR><LF>.
    """
    conn = dataConnection(policy)
    conn.send(b".\r\nNOOP\r\n")
    assert [r.code for r in conn.replies()] == [250, 250]
    assert delivered(conn) == b""
    assert conn.handler.names().count("EOM") == 1


@pytest.mark.parametrize("terminator", [b".\n", b".\r", b". \r\n", b"..\r\n"])
@pytest.mark.parametrize("policy", POLICIES)
def test_nearMissRightAfter354(policy: str, terminator: bytes) -> None:
    """
    A dot line right after the 354 that is not exactly ".<CR><LF>" does not
    end the message, and the smuggled commands after it are content.
    """
    conn = dataConnection(policy)
    conn.send(terminator + SMUGGLED + b".\r\n")
    replies = conn.replies()
    assert len(replies) == 1, replies
    names = conn.handler.names()
    assert names.count("MAIL") == 1
    assert names.count("DATA") == 1
    bare = BARE.search(terminator) is not None
    if policy == "reject" and bare:
        assert (replies[0].code, replies[0].enhanced) == (550, "5.5.2")
        assert "EOM" not in names
    else:
        assert replies[0].code == 250
        assert b"evil" in delivered(conn)


@pytest.mark.parametrize("policy", POLICIES)
def test_bareLineEndingsInBody(policy: str) -> None:
    """
    Bare LF and bare CR in an otherwise normal message: C{reject} drains
    the message, ABORTs at once (before the end of data) and answers 550
    5.5.2 after the end; C{normalize} delivers LF as CRLF and drops CR.
    """
    conn = dataConnection(policy)
    conn.send(b"Subject: s\r\n\r\nline one\nline two\rstill two\r\n")
    assert conn.replies() == []
    if policy == "reject":
        assert "ABORT" in conn.handler.names()
    conn.send(b"more\r\n.\r\n")
    [reply] = conn.replies()
    if policy == "reject":
        assert (reply.code, reply.enhanced) == (550, "5.5.2")
        assert "EOM" not in conn.handler.names()
        assert conn.handler.names().count("ABORT") == 1
    else:
        assert reply.code == 250
        assert delivered(conn) == (
            b"Subject: s\r\n\r\nline one\r\nline twostill two\r\nmore\r\n"
        )
    assert conn.command("NOOP").code == 250


@pytest.mark.parametrize("policy", POLICIES)
def test_bareLineEndingsInHeaders(policy: str) -> None:
    """
    A bare LF ending a header line: C{reject} refuses (550 5.5.2, no EOM);
    C{normalize} takes it as CRLF (the header is seen as such).
    """
    conn = dataConnection(policy)
    conn.send(b"Subject: one\nX-Two: 2\r\n\r\nbody\r\n.\r\n")
    [reply] = conn.replies()
    calls = conn.handler.calls
    if policy == "reject":
        assert (reply.code, reply.enhanced) == (550, "5.5.2")
        assert "EOM" not in conn.handler.names()
        assert ("HEADER", ("Subject", "one")) not in calls
    else:
        assert reply.code == 250
        assert ("HEADER", ("Subject", "one")) in calls
        assert ("HEADER", ("X-Two", "2")) in calls
        assert delivered(conn) == b"Subject: one\r\nX-Two: 2\r\n\r\nbody\r\n"


@pytest.mark.parametrize("policy", POLICIES)
def test_bareCRNeverPassedOn(policy: str) -> None:
    """
    No bare CR reaches the handler in either policy, wherever it sits
    (header value, body, line start, before a CRLF).
    """
    conn = dataConnection(policy)
    conn.send(b"X-A: a\rb\r\n\r\n\rstart\r\nend\r\r\nx\r\r\r\n.\r\n")
    [reply] = conn.replies()
    got = delivered(conn)
    assert b"\r" not in got.replace(b"\r\n", b""), got
    for name, args in conn.handler.calls:
        if name == "HEADER":
            assert "\r" not in args[1], args
    if policy == "normalize":
        assert reply.code == 250
        assert got == b"X-A: ab\r\n\r\nstart\r\nend\r\nx\r\n"
    else:
        assert reply.code == 550


def test_rejectDeliversNothingToMaildir(tmp_path: Path) -> None:
    """
    With the Maildir handler, a smuggling attempt under C{reject} leaves no
    file anywhere in the Maildir; under C{normalize} exactly one message
    with the smuggled text as content.
    """
    for policy in POLICIES:
        path = tmp_path / policy

        def handler(path: Path = path) -> Maildir:
            return Maildir(str(path), fsync=False)

        conn = SMTPTestConnection(handler, bareLineEndings=policy)
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<alice@example.org>")
        conn.command("RCPT TO:<bob@example.net>")
        assert conn.command("DATA").code == 354
        conn.send(b"Subject: real\r\n\r\nhi\n.\n" + SMUGGLED + b".\r\nQUIT\r\n")
        codes = [r.code for r in conn.replies()]
        files = [maildirFiles(path, sub) for sub in ("new", "tmp", "cur")]
        if policy == "reject":
            assert codes == [550, 221]
            assert files == [[], [], []]
        else:
            assert codes == [250, 221]
            assert len(files[0]) == 1 and files[1:] == [[], []]
            _, message = splitReceived(files[0][0].read_bytes())
            assert message == b"Subject: real\r\n\r\nhi\r\n.\r\n" + SMUGGLED


# -- commands --------------------------------------------------------------


def commandConnection(policy: str) -> SMTPTestConnection:
    """
    A connection with the bare line ending C{policy}, after EHLO.
    """
    conn = connect(bareLineEndings=policy)
    assert conn.command("EHLO client.example").code == 250
    return conn


def test_bareLFCommandRejected() -> None:
    """
    C{reject}: a command ended by a bare LF gets 500 5.5.2 and is not
    executed; pipelined after it, MAIL then RCPT: RCPT finds no MAIL.
    """
    conn = commandConnection("reject")
    conn.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.net>\r\n")
    replies = conn.replies()
    assert [(r.code, r.enhanced) for r in replies] == [(500, "5.5.2"), (503, "5.5.1")]
    names = conn.handler.names()
    assert "MAIL" not in names and "RCPT" not in names
    assert conn.session.transaction is None
    assert not conn.closed


def test_bareLFCommandNormalized() -> None:
    """
    C{normalize}: commands ended by a bare LF work like CRLF ones, a whole
    transaction included.
    """
    conn = commandConnection("normalize")
    conn.send(b"MAIL FROM:<a@example.org>\nRCPT TO:<b@example.net>\nDATA\n")
    assert [r.code for r in conn.replies()] == [250, 250, 354]
    conn.send(b"Subject: s\n\nbody\r\n.\r\nNOOP\n")
    assert [r.code for r in conn.replies()] == [250, 250]
    assert conn.handler.body() == b"body\r\n"
    assert conn.handler.saved == {}
    assert ("HEADER", ("Subject", "s")) in conn.handler.calls
    assert ("MAIL", ("a@example.org", {})) in conn.handler.calls


@pytest.mark.parametrize("policy", POLICIES)
def test_bareCRCommand(policy: str) -> None:
    """
    A bare CR in a command line: 500 5.5.2 in both policies; the command
    is not executed and nothing after the CR is taken as a command.
    """
    conn = commandConnection(policy)
    conn.send(b"NOOP\rQUIT\r\n")
    [reply] = conn.replies()
    assert (reply.code, reply.enhanced) == (500, "5.5.2")
    assert "NOOP" not in conn.handler.names()
    assert "QUIT" not in conn.handler.names()
    assert not conn.closed
    conn.send(b"MAIL FROM:<a@example.org>\r\r\n")
    [reply] = conn.replies()
    assert (reply.code, reply.enhanced) == (500, "5.5.2")
    assert "MAIL" not in conn.handler.names()


@pytest.mark.parametrize("policy", POLICIES)
def test_bareLFInDataCommandLine(policy: str) -> None:
    """
    "DATA" ended by a bare LF: C{reject} refuses it (no 354, content after
    it is read as commands, so a correct client is not confused);
    C{normalize} accepts it.
    """
    conn = commandConnection(policy)
    conn.command("MAIL FROM:<a@example.org>")
    conn.command("RCPT TO:<b@example.net>")
    conn.send(b"DATA\n")
    [reply] = conn.replies()
    if policy == "reject":
        assert (reply.code, reply.enhanced) == (500, "5.5.2")
        assert "DATA" not in conn.handler.names()
    else:
        assert reply.code == 354
