"""
Hostile client text and the headers esmtpkit writes: a HELO/EHLO/LHLO name
longer than RFC 5321 allows a domain (255 octets) is refused with
C{501 5.5.2}; whatever the client sends, the C{Received:} header keeps every
line within RFC 5322's 998 octets, has no CR or LF but its CRLF line ends,
and no character from the client can close its comment or end its clauses
early.
"""

from __future__ import annotations

import email.parser
import email.policy
import tempfile
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from esmtpkit import ESMTPHandler
from esmtpkit.handlers import Maildir
from esmtpkit.received import _cleanToken, headerToken, receivedHeader
from esmtpkit.session import Params, Recipient, Session, Transaction
from esmtpkit.testing import LMTPTestConnection, SMTPTestConnection

from .helpers import maildirFiles, splitReceived

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Recorder(ESMTPHandler):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def HELO(self, name: str) -> None:
        self.calls.append("HELO")

    def EHLO(self, name: str) -> None:
        self.calls.append("EHLO")


def _lines(header: bytes) -> list[bytes]:
    """
    The lines of C{header}, which must end with CRLF and hold no other CR or
    LF.
    """
    assert header.endswith(b"\r\n")
    lines = header[:-2].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, header
    return lines


def _assertWellFormed(header: bytes) -> None:
    """
    Every line of C{header} at most 998 octets, no bare CR or LF, every
    continuation line starts with white space, the comment of the first line
    is balanced, and the header parses as one Received: field.
    """
    lines = _lines(header)
    assert lines[0].startswith(b"Received: from ")
    for line in lines:
        assert len(line) <= 998, (len(line), header)
    for line in lines[1:]:
        assert line[:1] in (b" ", b"\t"), header
    first = lines[0]
    assert first.count(b"(") == first.count(b")") == 1, header
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        header + b"\r\nbody\r\n"
    )
    assert message.keys() == ["Received"]
    assert not message.defects


# -- the HELO name ------------------------------------------------------------


def test_heloNameOf255OctetsAccepted() -> None:
    """
    A 255-octet name (the most RFC 5321 4.5.3.1.2 allows a domain) is
    accepted by HELO and EHLO.
    """
    name = ("a" * 63 + ".") * 3 + "b" * 63  # 255 octets
    assert len(name) == 255
    for verb in ("HELO", "EHLO"):
        conn = SMTPTestConnection(Recorder)
        assert conn.command(f"{verb} {name}").code == 250
        assert conn.session.heloName == name


def test_heloNameTooLongRefused() -> None:
    """
    HELO and EHLO with a name of 256 octets, 1,200 octets, or 128 two-octet
    characters get 501 5.5.2; the hook is not called, the session has no
    HELO name, and MAIL still wants a greeting first.
    """
    names = ["a" * 256, "x" * 1200, "\u00e9" * 128]
    for verb in ("HELO", "EHLO"):
        for name in names:
            conn = SMTPTestConnection(Recorder)
            reply = conn.command(f"{verb} {name}".encode())
            assert (reply.code, reply.enhanced) == (501, "5.5.2"), reply
            assert conn.handler.calls == []
            assert conn.session.heloName is None
            assert conn.command("MAIL FROM:<a@example.org>").code == 503
            # The client may greet properly afterwards.
            assert conn.command(f"{verb} client.example").code == 250


def test_lhloNameTooLongRefused() -> None:
    """
    LMTP's LHLO has the same limit.
    """
    conn = LMTPTestConnection(Recorder)
    reply = conn.command("LHLO " + "b" * 256)
    assert (reply.code, reply.enhanced) == (501, "5.5.2")
    assert conn.handler.calls == []
    assert conn.command("LHLO " + "b" * 255).code == 250


def _deliverWithHelo(maildir: Path, helo: bytes) -> bytes:
    conn = SMTPTestConnection(lambda: Maildir(str(maildir), fsync=False))
    assert conn.command(b"EHLO " + helo).code == 250
    assert conn.command("MAIL FROM:<alice@example.org>").code == 250
    assert conn.command("RCPT TO:<bob@example.org>").code == 250
    assert conn.sendMessage(b"Subject: hi\r\n\r\nbody\r\n").code == 250
    files = maildirFiles(maildir, "new")
    assert len(files) == 1
    received, rest = splitReceived(files[0].read_bytes())
    assert rest == b"Subject: hi\r\n\r\nbody\r\n"
    return received


def test_hostileHeloNameInReceived(tmp_path: Path) -> None:
    """
    A HELO name made to forge the header's structure (a comment closed
    early, a fake date clause, a quote, 8-bit text without SMTPUTF8) reaches
    the Received: header with those characters replaced by '?', and the
    header stays well formed.
    """
    helo = 'evil);Mon,"1\\Jan<>\u00e9'.encode()
    received = _deliverWithHelo(tmp_path / "m", helo)
    _assertWellFormed(received)
    assert received.startswith(b"Received: from evil??Mon,?1?Jan??? ([192.0.2.1])")
    assert received.count(b";") == 1
    assert b"for <bob@example.org>;" in received


def test_longestHeloNameInReceived(tmp_path: Path) -> None:
    """
    The longest HELO name accepted goes into the header whole, on a line
    well under 998 octets.
    """
    name = ("a" * 63 + ".") * 3 + "b" * 63
    received = _deliverWithHelo(tmp_path / "m", name.encode())
    _assertWellFormed(received)
    assert received.startswith(f"Received: from {name} ([192.0.2.1])".encode())


# -- receivedHeader itself ------------------------------------------------------


def _header(
    helo: str | None = "client.example",
    peer: object = None,
    hostname: str = "mx.example.test",
    recipient: str | None = "bob@example.org",
    transactionId: str = "abcdef012345.1",
    utf8: bool = False,
) -> bytes:
    session = Session(
        peer=peer or IPv4Address("TCP", "192.0.2.7", 1234),  # type: ignore[arg-type]
        hostname=hostname,
        heloName=helo,
        esmtp=True,
    )
    params = Params({"SMTPUTF8": None} if utf8 else {})
    transaction = Transaction(
        id=transactionId, sender="a@example.org", mailParams=params
    )
    if recipient is not None:
        transaction.recipients.append(Recipient(recipient))
    return receivedHeader(session, transaction, WHEN)


def test_receivedHeaderPlain() -> None:
    """
    An ordinary header: the same text as before the fields were cleaned.
    """
    assert _header() == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby mx.example.test (esmtpkit) with ESMTP id abcdef012345.1\r\n"
        b"\tfor <bob@example.org>;\r\n"
        b"\tFri, 02 Jan 2026 03:04:05 +0000\r\n"
    )


def test_receivedHeaderPeers() -> None:
    """
    An IPv6 peer is an IPv6 address literal; a unix socket peer is named by
    its path, and one without a name is unknown.
    """
    six = _header(peer=IPv6Address("TCP", "2001:db8::1", 25))
    assert six.startswith(b"Received: from client.example ([IPv6:2001:db8::1])")
    unix = _header(peer=UNIXAddress(b"/run/esmtpkit (x).sock"))
    assert unix.startswith(b"Received: from client.example (/run/esmtpkit??x?.sock)")
    anonymous = _header(peer=UNIXAddress(None))
    assert anonymous.startswith(b"Received: from client.example (unknown)")


def test_receivedHeaderUTF8() -> None:
    """
    8-bit text stays when the message came with SMTPUTF8 (a UTF-8 HELO name
    and recipient), and becomes '?' without it; a recipient that is not a
    valid mailbox is left out.
    """
    with8 = _header(
        helo="m\u00fcller.example", recipient="j\u00f6rg@example.org", utf8=True
    )
    assert with8.startswith("Received: from m\u00fcller.example (".encode())
    assert "for <j\u00f6rg@example.org>;".encode() in with8
    without = _header(helo="m\u00fcller.example", recipient="j\u00f6rg@example.org")
    assert without.startswith(b"Received: from m?ller.example (")
    assert b"for <" not in without
    _assertWellFormed(without)


def test_headerTokenCutsWholeCharacters() -> None:
    """
    headerToken cuts at the octet limit without splitting a character.
    """
    assert headerToken("\u00e9" * 10, 5, utf8=True) == "\u00e9\u00e9"
    assert headerToken("ab\r\ncd\x00e f", 255) == "ab??cd?e?f"
    assert headerToken("x" * 300, 255) == "x" * 255


_anyText = st.text(st.characters(codec=None), max_size=2000)
_asciiText = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=400)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(_asciiText, st.text(max_size=300)),
    limit=st.integers(0, 300),
    utf8=st.booleans(),
)
def test_headerTokenFastPathIsTheGeneralOne(text: str, limit: int, utf8: bool) -> None:
    """
    headerToken's fast path (text with nothing to clean) gives what the
    character-by-character path gives, for any text, limit and utf8.
    """
    assert headerToken(text, limit, utf8) == _cleanToken(text, limit, utf8)


def test_receivedDateIsNow() -> None:
    """
    Without C{when}, the date clause is the present second's (made once a
    second): the one C{email.utils} gives for now, give or take a second.
    """
    session = Session(
        peer=IPv4Address("TCP", "192.0.2.7", 1234),
        hostname="mx.example.test",
        heloName="client.example",
    )
    transaction = Transaction(id="x.1", sender="a@example.org")
    before = time.time()
    header = receivedHeader(session, transaction)
    after = time.time()
    date = header.decode().rsplit(";", 1)[1].strip()
    stamp = parsedate_to_datetime(date).timestamp()
    assert int(before) <= stamp <= after


_hostileText = st.text(
    st.sampled_from(list('\r\n\t ();<>\\"\x00\x7f\u0085\u2028é€a.-[]:@') + ["\udcff"]),
    max_size=1500,
)
_clientText = st.one_of(_anyText, _hostileText)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    helo=_clientText,
    hostname=_clientText,
    recipient=_clientText,
    transactionId=_clientText,
    peerHost=_clientText,
    unixPeer=st.booleans(),
    utf8=st.booleans(),
)
def test_receivedHeaderAnyClientText(
    helo: str,
    hostname: str,
    recipient: str,
    transactionId: str,
    peerHost: str,
    unixPeer: bool,
    utf8: bool,
) -> None:
    """
    Whatever text the HELO name, peer address, recipient, host name and
    transaction id hold, every line of the Received: header has at most
    998 octets, there is no CR or LF but the CRLF line ends, the first
    line's comment is balanced, and the header parses as one field.
    """
    peer = (
        UNIXAddress(peerHost.encode("utf-8", "surrogatepass"))
        if unixPeer
        else IPv4Address("TCP", peerHost, 25)
    )
    header = _header(helo, peer, hostname, recipient, transactionId, utf8)
    _assertWellFormed(header)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(helo=st.binary(min_size=1, max_size=1500))
def test_anyHeloOverTheWire(helo: bytes) -> None:
    """
    Any bytes after EHLO (up to 1,500, without CR and LF): a name over 255
    octets is refused with 501, and a message delivered after the greeting
    (or after a proper one, when it was refused) has a well-formed
    Received: header.
    """
    with tempfile.TemporaryDirectory(prefix="esmtpkit-test-") as folder:
        maildir = Path(folder) / "m"
        conn = SMTPTestConnection(lambda: Maildir(str(maildir), fsync=False))
        name = helo.replace(b"\r", b"").replace(b"\n", b"")
        conn.send(b"EHLO " + name + b"\r\n")
        greeted = [r.code for r in conn.replies()]
        if len(name) > 255:
            assert greeted == [501]
        if greeted != [250]:
            conn.command("EHLO fallback.example")
        assert conn.command("MAIL FROM:<alice@example.org>").code == 250
        assert conn.command("RCPT TO:<bob@example.org>").code == 250
        assert conn.sendMessage(b"Subject: hi\r\n\r\nbody\r\n").code == 250
        files = maildirFiles(maildir, "new")
        assert len(files) == 1
        received, _ = splitReceived(files[0].read_bytes())
        _assertWellFormed(received)
