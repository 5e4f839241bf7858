"""
Issue 4, the ESMTP extensions: what EHLO advertises and how each extension
is turned off (L{Settings} fields and C{--disable-extension}); SIZE, 8BITMIME
and C{BODY=}, SMTPUTF8, BINARYMIME, ENHANCEDSTATUSCODES, DSN and unknown
MAIL/RCPT parameters. In memory (L{SMTPTestConnection}: StringTransport and
a fake Clock), no sockets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, Reply
from esmtpkit.server.tap import Options
from esmtpkit.testing import SMTPTestConnection, dotStuff, parseReplies

from .test_protocol import Recorder, connect, openTransaction, recorderFactory

DEFAULT_KEYWORDS = [
    "PIPELINING",
    f"SIZE {32 * 1024 * 1024}",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "BINARYMIME",
    "DSN",
    "LIMITS RCPTMAX=1000",
]

# EHLO keyword -> the Settings field that turns it off.
EXTENSION_FIELDS = {
    "PIPELINING": "pipelining",
    "SIZE": "size",
    "8BITMIME": "eightBitMIME",
    "SMTPUTF8": "smtputf8",
    "ENHANCEDSTATUSCODES": "enhancedStatusCodes",
    "CHUNKING": "chunking",
    "BINARYMIME": "binaryMIME",
    "DSN": "dsn",
    "LIMITS": "limits",
}

WIRE_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def keywords(reply: Reply) -> list[str]:
    """
    The EHLO keywords of an EHLO reply (every line but the first).
    """
    return list(reply.lines[1:])


def keywordNames(reply: Reply) -> list[str]:
    """
    The keyword names (first word of each line) of an EHLO reply.
    """
    return [line.split()[0] for line in keywords(reply)]


def ehlo(**settings: Any) -> Reply:
    """
    The EHLO reply of a new connection with C{settings}.
    """
    conn = connect(**settings)
    reply = conn.command("EHLO client.example")
    assert reply.code == 250, reply
    return reply


def bdat(conn: SMTPTestConnection, chunk: bytes, last: bool = False) -> Reply:
    """
    Send C{BDAT <size> [LAST]} and C{chunk} in one read; return the one
    reply.
    """
    command = b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
    conn.send(command + chunk)
    replies = conn.replies()
    assert len(replies) == 1, replies
    return replies[0]


def parseOptions(*argv: str) -> Options:
    """
    C{twistd esmtpkit} options parsed from C{argv} (with a handler that
    needs no folder).
    """
    options = Options()
    options.parseOptions(["--handler", "esmtpkit.ESMTPHandler", *argv])
    return options


def mailParamsSeen(conn: SMTPTestConnection) -> Any:
    """
    The params of the last MAIL call a L{Recorder} saw.
    """
    return [args for name, args in conn.handler.calls if name == "MAIL"][-1][1]


def rcptParamsSeen(conn: SMTPTestConnection) -> Any:
    """
    The params of the last RCPT call a L{Recorder} saw.
    """
    return [args for name, args in conn.handler.calls if name == "RCPT"][-1][1]


class AdvertisementTests(SynchronousTestCase):
    """
    The EHLO keywords, and the settings and options that turn them off.
    """

    def test_defaultKeywords(self) -> None:
        """
        With the default settings EHLO lists every extension, in order,
        with C{SIZE} giving the 32 MiB limit and C{LIMITS RCPTMAX} the
        recipient cap.
        """
        self.assertEqual(keywords(ehlo()), DEFAULT_KEYWORDS)

    def test_heloListsNothing(self) -> None:
        """
        HELO gets a one-line reply without extensions.
        """
        conn = connect()
        self.assertEqual(len(conn.command("HELO client.example").lines), 1)

    def test_eachCanBeTurnedOff(self) -> None:
        """
        Turning one Settings field off drops exactly its keyword (BINARYMIME
        needs CHUNKING, so it goes too when CHUNKING is off).
        """
        for keyword, field in EXTENSION_FIELDS.items():
            names = keywordNames(ehlo(**{field: False}))
            self.assertNotIn(keyword, names, field)
            expected = [
                k.split()[0] for k in DEFAULT_KEYWORDS if k.split()[0] != keyword
            ]
            if keyword == "CHUNKING":
                expected.remove("BINARYMIME")
            self.assertEqual(names, expected, field)

    def test_allOff(self) -> None:
        """
        With every extension off, EHLO lists nothing after its first line.
        """
        reply = ehlo(**{field: False for field in EXTENSION_FIELDS.values()})
        self.assertEqual(keywords(reply), [])

    def test_sizeValue(self) -> None:
        """
        SIZE advertises maxMessageSize; without a limit, bare C{SIZE}.
        """
        self.assertIn("SIZE 12345", keywords(ehlo(maxMessageSize=12345)))
        self.assertIn("SIZE", keywords(ehlo(maxMessageSize=0)))
        self.assertNotIn("SIZE 0", keywords(ehlo(maxMessageSize=0)))

    def test_limitsValue(self) -> None:
        """
        LIMITS advertises the recipient cap as RCPTMAX.
        """
        self.assertIn("LIMITS RCPTMAX=7", keywords(ehlo(maxRecipients=7)))

    def test_disableExtensionOption(self) -> None:
        """
        C{--disable-extension KEYWORD} (any case) turns the Settings field
        off, and a server with those settings does not advertise it.
        """
        for keyword, field in EXTENSION_FIELDS.items():
            for spelling in (keyword, keyword.lower()):
                settings = parseOptions("--disable-extension", spelling)["settings"]
                self.assertIs(getattr(settings, field), False, spelling)
                others = [f for f in EXTENSION_FIELDS.values() if f != field]
                self.assertTrue(all(getattr(settings, f) for f in others), spelling)
                names = keywordNames(ehlo(settings=settings))
                self.assertNotIn(keyword, names, spelling)

    def test_disableExtensionRepeatable(self) -> None:
        """
        C{--disable-extension} may be given several times.
        """
        settings = parseOptions(
            "--disable-extension", "DSN", "--disable-extension", "chunking"
        )["settings"]
        names = keywordNames(ehlo(settings=settings))
        for gone in ("DSN", "CHUNKING", "BINARYMIME"):
            self.assertNotIn(gone, names)
        self.assertIn("PIPELINING", names)

    def test_disableUnknownExtension(self) -> None:
        """
        An unknown keyword is a usage error naming the option and the
        keyword.
        """
        with self.assertRaises(UsageError) as raised:
            parseOptions("--disable-extension", "XFROBNICATE")
        self.assertIn("--disable-extension", str(raised.exception))
        self.assertIn("XFROBNICATE", str(raised.exception))

    def test_sizeAndLimitsOptions(self) -> None:
        """
        C{--max-message-size} and C{--max-recipients} set what SIZE and
        LIMITS advertise.
        """
        settings = parseOptions("--max-message-size", "10K", "--max-recipients", "5")[
            "settings"
        ]
        lines = keywords(ehlo(settings=settings))
        self.assertIn("SIZE 10240", lines)
        self.assertIn("LIMITS RCPTMAX=5", lines)


class SizeTests(SynchronousTestCase):
    """
    SIZE (RFC 1870): the declared size, and a message that grows past the
    limit while it streams.
    """

    LIMIT = 1000

    def test_declaredSizeOverLimit(self) -> None:
        """
        C{SIZE=} over the limit: 552 5.3.4 at MAIL, MAIL not called, no
        transaction; at the limit it is accepted and handed over.
        """
        conn = connect(maxMessageSize=self.LIMIT)
        conn.command("EHLO client.example")
        reply = conn.command(f"MAIL FROM:<a@example.org> SIZE={self.LIMIT + 1}")
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertNotIn("MAIL", conn.handler.names())
        self.assertIsNone(conn.session.transaction)
        reply = conn.command(f"MAIL FROM:<a@example.org> SIZE={self.LIMIT}")
        self.assertEqual(reply.code, 250)
        self.assertEqual(mailParamsSeen(conn), {"SIZE": str(self.LIMIT)})

    def test_declaredSizeHuge(self) -> None:
        """
        An absurdly large declared size is refused, not crashed on.
        """
        conn = connect(maxMessageSize=self.LIMIT)
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org> SIZE=" + "9" * 19)
        self.assertEqual(reply.code, 552)
        reply = conn.command("MAIL FROM:<a@example.org> SIZE=" + "9" * 200)
        self.assertEqual(reply.code // 100, 5)
        self.assertNotIn("MAIL", conn.handler.names())

    def test_growingPastLimitWithData(self) -> None:
        """
        A DATA message that grows far past the limit: BODY stops before the
        limit is passed, ABORT comes at once, the rest is drained (the
        protocol buffers no more than a little of it), no reply until the
        end of data, then 552 5.3.4; EOM is never called.
        """
        conn = sizeConnection(maxMessageSize=self.LIMIT, chunkSize=100)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(b"Subject: big\r\n\r\n")
        line = b"y" * 78 + b"\r\n"
        for _ in range(1000):  # 80 kB, in reads of 80 bytes
            conn.send(line)
            self.assertLess(bufferedBytes(conn), 4 * len(line))
        self.assertEqual(conn.replies(), [])
        self.assertIn("ABORT", conn.handler.names())
        self.assertNotIn("EOM", conn.handler.names())
        delivered = deliveredBytes(conn)
        self.assertLessEqual(delivered, self.LIMIT)
        self.assertEqual(conn.transport.producerState, "producing")
        conn.send(b".\r\n")
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertNotIn("EOM", conn.handler.names())
        self.assertEqual(conn.handler.names().count("ABORT"), 1)
        self.assertEqual(deliveredBytes(conn), delivered)
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_growingPastLimitOneRead(self) -> None:
        """
        The same when the whole oversized message arrives in one read: BODY
        never sees more than the limit.
        """
        conn = sizeConnection(maxMessageSize=self.LIMIT)
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 354)
        conn.send(dotStuff(b"Subject: big\r\n\r\n" + b"z" * 50_000 + b"\r\n"))
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertLessEqual(deliveredBytes(conn), self.LIMIT)
        self.assertNotIn("EOM", conn.handler.names())
        self.assertIn("ABORT", conn.handler.names())

    def test_growingPastLimitWithBdat(self) -> None:
        """
        The limit applies across BDAT chunks: the chunk that passes it is
        answered 552 5.3.4, BODY never sees more than the limit, ABORT is
        called, EOM never; the chunk bytes are drained without buffering.
        """
        conn = sizeConnection(maxMessageSize=self.LIMIT, chunkSize=100)
        openTransaction(self, conn)
        first = b"Subject: big\r\n\r\n" + b"a" * 584
        self.assertEqual(len(first), 600)
        reply = bdat(conn, first)
        self.assertEqual(reply.code, 250)
        conn.send(b"BDAT 50000\r\n")
        for _ in range(500):
            conn.send(b"b" * 100)
            self.assertLess(bufferedBytes(conn), 400)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertLessEqual(deliveredBytes(conn), self.LIMIT)
        self.assertIn("ABORT", conn.handler.names())
        self.assertNotIn("EOM", conn.handler.names())
        # The chunk was consumed: the next line is a command again.
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_lastChunkPastLimit(self) -> None:
        """
        When the LAST chunk passes the limit: 552 5.3.4 for it, no EOM.
        """
        conn = sizeConnection(maxMessageSize=self.LIMIT)
        openTransaction(self, conn)
        self.assertEqual(bdat(conn, b"\r\n" + b"a" * 598).code, 250)
        reply = bdat(conn, b"b" * 600, last=True)
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertNotIn("EOM", conn.handler.names())
        self.assertIn("ABORT", conn.handler.names())

    def test_atLimitWithBdat(self) -> None:
        """
        Chunks adding up to exactly the limit are delivered.
        """
        conn = sizeConnection(maxMessageSize=self.LIMIT)
        openTransaction(self, conn)
        self.assertEqual(bdat(conn, b"\r\n" + b"a" * 498).code, 250)
        self.assertEqual(bdat(conn, b"b" * 500, last=True).code, 250)
        self.assertIn("EOM", conn.handler.names())
        self.assertEqual(deliveredBytes(conn), self.LIMIT)


def _saveRawHeaders(handler: Recorder) -> None:
    transaction = handler.session.transaction
    assert transaction is not None
    handler.saved["rawHeaders"] = transaction.rawHeaders


def sizeConnection(**settings: Any) -> SMTPTestConnection:
    """
    A connection to a L{Recorder} that keeps the raw headers it is given at
    EOH (in C{saved}), for L{deliveredBytes}.
    """
    return connect(recorderFactory(EOH=_saveRawHeaders), **settings)


def deliveredBytes(conn: SMTPTestConnection) -> int:
    """
    How many message bytes the handler was given: the raw headers (at EOH;
    before EOH, the HEADER names and values) and the BODY chunks.
    """
    raw = conn.handler.saved.get("rawHeaders")
    if raw is None:
        headers = sum(
            len(args[0]) + len(args[1])
            for name, args in conn.handler.calls
            if name == "HEADER"
        )
    else:
        headers = len(raw)
    return headers + len(conn.handler.body())


def bufferedBytes(conn: SMTPTestConnection) -> int:
    """
    The bytes the protocol holds on to between reads (line buffer, pushed
    back input, queued body, header buffers, the scanner's tail).
    """
    protocol = conn.protocol
    total = 0
    for name in (
        "_buffer",
        "_pushedBack",
        "_bodyQueue",
        "_headerBuffer",
        "_rawHeaders",
    ):
        total += len(getattr(protocol, name, b"") or b"")
    scanner = getattr(protocol, "_scanner", None)
    total += len(getattr(scanner, "_tail", b"") or b"")
    return total


class EightBitTests(SynchronousTestCase):
    """
    8BITMIME (RFC 6152) and the C{BODY=} parameter.
    """

    def test_bodyValues(self) -> None:
        """
        BODY=7BIT, 8BITMIME and BINARYMIME (any case) are accepted and
        handed to MAIL upper-cased.
        """
        for value in ("7BIT", "8bitmime", "BinaryMIME"):
            conn = connect()
            conn.command("EHLO client.example")
            reply = conn.command(f"MAIL FROM:<a@example.org> BODY={value}")
            self.assertEqual(reply.code, 250, value)
            self.assertEqual(mailParamsSeen(conn), {"BODY": value.upper()})

    def test_badBody(self) -> None:
        """
        An unknown BODY type is refused (5xx, 5.5.4) without calling MAIL.
        """
        conn = connect()
        conn.command("EHLO client.example")
        for text in ("BODY=9BIT", "BODY", "BODY=BINARY"):
            reply = conn.command(f"MAIL FROM:<a@example.org> {text}")
            self.assertEqual(reply.code // 100, 5, text)
            self.assertEqual(reply.enhanced, "5.5.4", text)
        self.assertNotIn("MAIL", conn.handler.names())

    def test_binaryMimeNeedsChunking(self) -> None:
        """
        BODY=BINARYMIME is refused when BINARYMIME or CHUNKING is off.
        """
        settingsList: list[dict[str, Any]] = [
            {"binaryMIME": False},
            {"chunking": False},
        ]
        for settings in settingsList:
            conn = connect(**settings)
            conn.command("EHLO client.example")
            reply = conn.command("MAIL FROM:<a@example.org> BODY=BINARYMIME")
            self.assertEqual(reply.code // 100, 5, settings)
            self.assertNotIn("MAIL", conn.handler.names())

    def test_eightBitContentDelivered(self) -> None:
        """
        With BODY=8BITMIME, 8-bit bytes in headers and body arrive exactly.
        """
        conn = connect()
        conn.command("EHLO client.example")
        self.assertEqual(
            conn.command("MAIL FROM:<a@example.org> BODY=8BITMIME").code, 250
        )
        self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 250)
        body = "Grüße, ½ € \u00ff\r\n".encode() + bytes(range(128, 256)) + b"\r\n"
        reply = conn.sendMessage("Subject: caf\u00e9\r\n\r\n".encode() + body)
        self.assertEqual(reply.code, 250)
        self.assertEqual(conn.handler.body(), body)
        self.assertIn(("HEADER", ("Subject", "caf\u00e9")), conn.handler.calls)


class SMTPUTF8Tests(SynchronousTestCase):
    """
    SMTPUTF8 (RFC 6531): UTF-8 addresses with the parameter, 553 5.6.7
    without, invalid UTF-8 never.
    """

    SENDER = "用户@例子.广告"
    RECIPIENT = "josé@exämple.net"

    def test_utf8Accepted(self) -> None:
        """
        With SMTPUTF8, UTF-8 sender and recipients reach the hooks as text.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command(f"MAIL FROM:<{self.SENDER}> SMTPUTF8")
        self.assertEqual(reply.code, 250)
        self.assertEqual(conn.command(f"RCPT TO:<{self.RECIPIENT}>").code, 250)
        self.assertIn(("MAIL", (self.SENDER, {"SMTPUTF8": None})), conn.handler.calls)
        self.assertIn(("RCPT", (self.RECIPIENT, {})), conn.handler.calls)
        self.assertEqual(conn.sendMessage(b"Subject: x\r\n\r\nhi\r\n").code, 250)

    def test_utf8WithoutParameter(self) -> None:
        """
        Without SMTPUTF8 on MAIL, a UTF-8 sender or recipient gets 553 5.6.7
        and the hook is not called.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command(f"MAIL FROM:<{self.SENDER}>")
        self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.assertNotIn("MAIL", conn.handler.names())
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)
        reply = conn.command(f"RCPT TO:<{self.RECIPIENT}>")
        self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.assertNotIn("RCPT", conn.handler.names())

    def test_invalidUtf8Refused(self) -> None:
        """
        Bytes that are not UTF-8 in an address are refused even with
        SMTPUTF8 (501 5.1.7 / 5.1.3), without reaching the handler.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command(b"MAIL FROM:<\xff\xfe@example.org> SMTPUTF8")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.1.7"))
        reply = conn.command(b"MAIL FROM:<caf\xc3@example.org> SMTPUTF8")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.1.7"))
        self.assertNotIn("MAIL", conn.handler.names())
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> SMTPUTF8").code, 250)
        reply = conn.command(b"RCPT TO:<\xc0\xaf@example.net>")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.1.3"))
        self.assertNotIn("RCPT", conn.handler.names())

    def test_parameterTakesNoValue(self) -> None:
        """
        C{SMTPUTF8=yes} is a syntax error (501 5.5.4).
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org> SMTPUTF8=yes")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"))

    def test_disabled(self) -> None:
        """
        With SMTPUTF8 turned off, the parameter is refused and UTF-8
        addresses cannot get in.
        """
        conn = connect(smtputf8=False)
        conn.command("EHLO client.example")
        reply = conn.command(f"MAIL FROM:<{self.SENDER}> SMTPUTF8")
        self.assertEqual(reply.code // 100, 5)
        self.assertNotIn("MAIL", conn.handler.names())


class BinaryMimeTests(SynchronousTestCase):
    """
    BINARYMIME (RFC 3030): only with BDAT.
    """

    def test_withBdat(self) -> None:
        """
        BODY=BINARYMIME with BDAT: any bytes (NUL, bare CR and LF, a lone
        dot line) are delivered exactly, in both bare line ending policies.
        """
        body = b"\x00\x01\r\n.\r\n\nbare\rcr\xff" * 3
        message = b"Content-Type: application/octet-stream\r\n\r\n" + body
        for policy in ("reject", "normalize"):
            conn = connect(bareLineEndings=policy)
            conn.command("EHLO client.example")
            self.assertEqual(
                conn.command("MAIL FROM:<a@example.org> BODY=BINARYMIME").code, 250
            )
            self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 250)
            reply = bdat(conn, message, last=True)
            self.assertEqual(reply.code, 250, policy)
            self.assertEqual(conn.handler.body(), body, policy)
            self.assertIn("EOM", conn.handler.names())

    def test_withData(self) -> None:
        """
        BODY=BINARYMIME with DATA: 503 5.5.1, DATA not called; the line
        after it is still a command.
        """
        conn = connect()
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org> BODY=BINARYMIME")
        conn.command("RCPT TO:<b@example.net>")
        reply = conn.command("DATA")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"))
        self.assertNotIn("DATA", conn.handler.names())
        self.assertEqual(conn.command("NOOP").code, 250)


# -- ENHANCEDSTATUSCODES ------------------------------------------------------


def _scenario(
    settings: dict[str, Any],
    steps: list[bytes],
    handler: Callable[[], Any] = Recorder,
    advance: float = 0,
) -> list[bytes]:
    """
    Run C{steps} (each a read, the client waiting for replies between them)
    and return the raw reply lines written after the greeting.
    """
    conn = connect(handler, **settings)
    start = len(conn.transport.value())
    for step in steps:
        conn.send(step)
    if advance:
        conn.clock.advance(advance)
    output: bytes = conn.transport.value()
    return output[start:].split(b"\r\n")[:-1]


EHLO = b"EHLO client.example\r\n"
TX = [EHLO, b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"]

# Server-generated replies (not from a handler hook): name -> (settings,
# steps, expected code of the last reply, advance).
SERVER_REPLIES: dict[str, tuple[dict[str, Any], list[bytes], int, float]] = {
    "mail before helo": ({}, [b"MAIL FROM:<a@example.org>\r\n"], 503, 0),
    "helo without domain": ({}, [b"HELO\r\n"], 501, 0),
    "sender already specified": ({}, [*TX, b"MAIL FROM:<c@example.org>\r\n"], 503, 0),
    "rcpt before mail": ({}, [EHLO, b"RCPT TO:<b@example.net>\r\n"], 503, 0),
    "data before rcpt": (
        {},
        [EHLO, b"MAIL FROM:<a@example.org>\r\n", b"DATA\r\n"],
        503,
        0,
    ),
    "data with argument": ({}, [*TX, b"DATA now\r\n"], 501, 0),
    "bad mail syntax": ({}, [EHLO, b"MAIL TO:<a@example.org>\r\n"], 501, 0),
    "bad sender": ({}, [EHLO, b"MAIL FROM:<a..b@example.org>\r\n"], 501, 0),
    "bad recipient": ({}, [EHLO, b"MAIL FROM:<>\r\n", b"RCPT TO:<@>\r\n"], 501, 0),
    "utf8 without smtputf8": (
        {},
        [EHLO, "MAIL FROM:<é@example.org>\r\n".encode()],
        553,
        0,
    ),
    "bad parameter syntax": ({}, [EHLO, b"MAIL FROM:<a@example.org> =x\r\n"], 501, 0),
    "duplicate parameter": (
        {},
        [EHLO, b"MAIL FROM:<a@example.org> SIZE=1 SIZE=2\r\n"],
        501,
        0,
    ),
    "parameters after helo": (
        {},
        [b"HELO c\r\n", b"MAIL FROM:<a@example.org> SIZE=1\r\n"],
        555,
        0,
    ),
    "bad size": ({}, [EHLO, b"MAIL FROM:<a@example.org> SIZE=x\r\n"], 501, 0),
    "declared size too big": (
        {"maxMessageSize": 10},
        [EHLO, b"MAIL FROM:<a@example.org> SIZE=11\r\n"],
        552,
        0,
    ),
    "bad body": ({}, [EHLO, b"MAIL FROM:<a@example.org> BODY=x\r\n"], 555, 0),
    "bad notify": (
        {},
        [*TX[:2], b"RCPT TO:<b@example.net> NOTIFY=NEVER,DELAY\r\n"],
        501,
        0,
    ),
    "too many recipients": (
        {"maxRecipients": 1},
        [*TX, b"RCPT TO:<c@example.net>\r\n"],
        452,
        0,
    ),
    "line too long": (
        {"maxLineLength": 510},
        [EHLO, b"NOOP " + b"x" * 600 + b"\r\n"],
        500,
        0,
    ),
    "bare lf command": ({}, [EHLO, b"NOOP\n"], 500, 0),
    "bare cr command": ({}, [EHLO, b"NOOP\rx\r\n"], 500, 0),
    "message too big": (
        {"maxMessageSize": 10},
        [*TX, b"DATA\r\n", b"\r\n" + b"x" * 20 + b"\r\n.\r\n"],
        552,
        0,
    ),
    "header too big": (
        {"maxHeaderSize": 20},
        [*TX, b"DATA\r\n", b"X: " + b"y" * 40 + b"\r\n\r\n.\r\n"],
        552,
        0,
    ),
    "bare lf in data": ({}, [*TX, b"DATA\r\n", b"\r\nbare\nlf\r\n.\r\n"], 550, 0),
    "binarymime with data": (
        {},
        [EHLO, b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n", TX[2], b"DATA\r\n"],
        503,
        0,
    ),
    "data after bdat": ({}, [*TX, b"BDAT 2\r\n\r\n", b"DATA\r\n"], 503, 0),
    "bdat without transaction": ({}, [EHLO, b"BDAT 3\r\nabc"], 503, 0),
    "bdat not offered": ({"chunking": False}, [*TX, b"BDAT 3\r\nabc"], 502, 0),
    "bdat malformed": ({}, [*TX, b"BDAT x\r\n"], 501, 0),
    "sync violation": ({}, [b"NOOP\r\nNOOP\r\n"], 554, 0),
    "rset with argument": ({}, [b"RSET x\r\n"], 501, 0),
    "quit with argument": ({}, [b"QUIT x\r\n"], 501, 0),
    "idle timeout": ({"idleTimeout": 10}, [EHLO], 421, 10),
    "idle timeout in data": (
        {"idleTimeout": 10},
        [*TX, b"DATA\r\n", b"\r\nx"],
        421,
        10,
    ),
    "too many errors": (
        {"hardErrorLimit": 2, "softErrorLimit": 0},
        [b"DATA\r\n", b"DATA\r\n"],
        421,
        0,
    ),
}


@pytest.mark.parametrize("name", sorted(SERVER_REPLIES))
def test_serverRepliesCarryEnhancedCodes(name: str) -> None:
    """
    Every reply the server writes itself (all but the greeting, HELO/EHLO
    replies and 354) carries an enhanced status code on each line, whose
    class is the class of the reply code; the scenario ends with the
    expected code.
    """
    settings, steps, code, advance = SERVER_REPLIES[name]
    lines = _scenario(settings, steps, advance=advance)
    replies, rest = parseReplies(b"".join(line + b"\r\n" for line in lines))
    assert rest == b""
    assert replies and replies[-1].code == code, replies
    _checkEnhancedLines(lines)


def _checkEnhancedLines(lines: list[bytes]) -> None:
    inEhlo = False
    for line in lines:
        code = line[:3]
        if line.startswith(b"250-") and b"Hello" in line:
            inEhlo = True
        if inEhlo:
            inEhlo = line[3:4] == b"-"
            continue
        if code == b"354" or b" Hello " in line:
            continue
        match = WIRE_ENHANCED.match(line)
        assert match is not None, f"no enhanced status code in {line!r}"
        assert line[4:5] == code[:1], f"enhanced class does not match in {line!r}"


def test_defaultHandlerRepliesCarryEnhancedCodes() -> None:
    """
    The default handler's replies (MAIL, RCPT, EOM, RSET, NOOP, VRFY, EXPN,
    HELP, QUIT, unknown command, unknown parameter) carry correct enhanced
    codes on the wire.
    """
    lines = _scenario(
        {},
        [
            EHLO,
            b"MAIL FROM:<a@example.org> XFOO=1\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.net> XBAR\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"DATA\r\n",
            b"\r\nhi\r\n.\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"VRFY x\r\n",
            b"EXPN x\r\n",
            b"HELP\r\n",
            b"XYZZY\r\n",
            b"QUIT\r\n",
        ],
    )
    codes = [line[:3] for line in lines if line[3:4] == b" "]
    assert codes[1:] == [
        b"555",
        b"250",
        b"555",
        b"250",
        b"354",
        b"250",
        b"250",
        b"250",
        b"252",
        b"502",
        b"214",
        b"500",
        b"221",
    ], codes
    _checkEnhancedLines(lines)


class HandlerReplyEnhancedTests(SynchronousTestCase):
    """
    A handler reply without an enhanced code gets one derived from its
    code (and the command); one of its own is kept.
    """

    def wire(self, **behaviour: Callable[..., Any]) -> list[bytes]:
        conn = connect(recorderFactory(**behaviour))
        conn.command("EHLO client.example")
        start = len(conn.transport.value())
        conn.command("MAIL FROM:<a@example.org>")
        conn.command("RCPT TO:<b@example.net>")
        conn.command("NOOP")
        conn.command("VRFY x")
        output: bytes = conn.transport.value()
        return output[start:].split(b"\r\n")[:-1]

    def test_derived(self) -> None:
        """
        Plain tuples get X.0.0 codes of their class (2.1.0 for MAIL and
        2.1.5 for RCPT when accepted).
        """
        lines = self.wire(
            MAIL=lambda h, s, p: (250, "ok"),
            RCPT=lambda h, r, p: (550, "no such user"),
            NOOP=lambda h: (451, "later"),
            VRFY=lambda h, a: (252, "maybe", "second line"),
        )
        self.assertEqual(
            lines,
            [
                b"250 2.1.0 ok",
                b"550 5.0.0 no such user",
                b"451 4.0.0 later",
                b"252-2.5.0 maybe",
                b"252 2.5.0 second line",
            ],
        )

    def test_derivedRcptAccepted(self) -> None:
        """
        An accepted RCPT without a code gets 2.1.5.
        """
        lines = self.wire(RCPT=lambda h, r, p: Reply(251, "will forward"))
        self.assertIn(b"251 2.1.5 will forward", lines)

    def test_ownKept(self) -> None:
        """
        A handler's own enhanced code is kept; one of the wrong class is
        replaced by a derived one of the right class.
        """
        lines = self.wire(
            MAIL=lambda h, s, p: (250, "2.1.9 fine"),
            RCPT=lambda h, r, p: (550, "4.1.1 wrong class"),
        )
        self.assertIn(b"250 2.1.9 fine", lines)
        self.assertIn(b"550 5.0.0 wrong class", lines)

    def test_hookFailureAndTimeout(self) -> None:
        """
        A hook that raises, or never answers, gets 451 4.3.0.
        """
        conn = connect(
            recorderFactory(NOOP=lambda h: 1 / 0, VRFY=lambda h, a: Deferred()),
            hookTimeout=5,
        )
        conn.command("EHLO client.example")
        start = len(conn.transport.value())
        conn.command("NOOP")
        conn.send(b"VRFY x\r\n")
        conn.clock.advance(5)
        lines = conn.transport.value()[start:].split(b"\r\n")[:-1]
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertTrue(line.startswith(b"451 4.3.0 "), line)


def test_enhancedCodesOff() -> None:
    """
    With ENHANCEDSTATUSCODES off, no reply line carries an enhanced code,
    whatever wrote it (handler, server checks, timeouts).
    """
    settings = {"enhancedStatusCodes": False, "idleTimeout": 10, "maxRecipients": 1}
    lines = _scenario(
        settings,
        [
            EHLO,
            b"MAIL FROM:<a@example.org> XFOO\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"RCPT TO:<c@example.net>\r\n",
            b"RCPT TO:<bad>\r\n",
            b"DATA\r\n",
            b"\r\nbare\nlf\r\n.\r\n",
            b"NOOP\n",
            b"VRFY x\r\n",
            b"XYZZY\r\n",
            b"RSET\r\n",
        ],
        advance=10,
    )
    codes = [line[:3] for line in lines if line[3:4] == b" "]
    assert b"452" in codes and b"550" in codes and codes[-1] == b"421", codes
    for line in lines:
        assert WIRE_ENHANCED.match(line) is None, line


# -- DSN and unknown parameters -------------------------------------------------


class DSNTests(SynchronousTestCase):
    """
    DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT are parsed, checked and
    handed over in C{params}.
    """

    def setUp(self) -> None:
        self.conn = connect()
        self.conn.command("EHLO client.example")

    def mail(self, params: str) -> Reply:
        return self.conn.command(f"MAIL FROM:<a@example.org> {params}".rstrip())

    def rcpt(self, params: str) -> Reply:
        if self.conn.session.transaction is None:
            assert self.mail("").code == 250
        return self.conn.command(f"RCPT TO:<b@example.net> {params}".rstrip())

    def test_retAndEnvid(self) -> None:
        """
        RET (upper-cased) and ENVID (xtext decoded) reach MAIL and the
        transaction.
        """
        reply = self.mail("RET=hdrs ENVID=QQ314159+2Bx+3Dy")
        self.assertEqual(reply.code, 250)
        expected = {"RET": "HDRS", "ENVID": "QQ314159+x=y"}
        self.assertEqual(mailParamsSeen(self.conn), expected)
        self.assertEqual(self.conn.session.transaction.mailParams, expected)
        self.conn.command("RSET")
        self.assertEqual(self.mail("RET=FULL").code, 250)
        self.assertEqual(mailParamsSeen(self.conn), {"RET": "FULL"})

    def test_badRetEnvid(self) -> None:
        """
        A bad RET or ENVID (not xtext, lower-case hex, too long, no value):
        501 5.5.4, MAIL not called.
        """
        for params in (
            "RET=ALL",
            "RET",
            "ENVID",
            "ENVID=a+2",
            "ENVID=a+zz",
            "ENVID=a+2b",
            "ENVID=" + "x" * 101,
        ):
            reply = self.mail(params)
            self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"), params)
        self.assertNotIn("MAIL", self.conn.handler.names())
        self.assertEqual(self.mail("ENVID=" + "x" * 100).code, 250)

    def test_notifyValid(self) -> None:
        """
        NOTIFY with NEVER alone or any set of SUCCESS, FAILURE and DELAY
        (any case, any order) is accepted and handed over upper-cased.
        """
        for value in (
            "NEVER",
            "never",
            "SUCCESS",
            "FAILURE",
            "DELAY",
            "SUCCESS,FAILURE",
            "delay,failure",
            "FAILURE,DELAY,SUCCESS",
        ):
            reply = self.rcpt(f"NOTIFY={value}")
            self.assertEqual(reply.code, 250, value)
            self.assertEqual(rcptParamsSeen(self.conn), {"NOTIFY": value.upper()})

    def test_notifyInvalid(self) -> None:
        """
        NEVER with anything else, repeats, unknown words or no value: 501
        5.5.4, RCPT not called, recipient not added.
        """
        for value in (
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SUCCESS,NEVER",
            "NOTIFY=SUCCESS,SUCCESS",
            "NOTIFY=ALWAYS",
            "NOTIFY=SUCCESS,",
            "NOTIFY=,DELAY",
            "NOTIFY",
        ):
            reply = self.rcpt(value)
            self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"), value)
        self.assertNotIn("RCPT", self.conn.handler.names())
        self.assertEqual(self.conn.session.transaction.recipients, [])

    def test_orcpt(self) -> None:
        """
        ORCPT is xtext-decoded and handed to RCPT and the recipient's
        params, with NOTIFY.
        """
        reply = self.rcpt("NOTIFY=SUCCESS ORCPT=rfc822;bob+2Btag+40example.net")
        self.assertEqual(reply.code, 250)
        expected = {"NOTIFY": "SUCCESS", "ORCPT": "rfc822;bob+tag@example.net"}
        self.assertEqual(rcptParamsSeen(self.conn), expected)
        [recipient] = self.conn.session.transaction.recipients
        self.assertEqual(recipient.params, expected)

    def test_badOrcpt(self) -> None:
        """
        ORCPT without an address type, without an address, or with bad
        xtext: 501 5.5.4.
        """
        for value in (
            "ORCPT=bob@example.net",
            "ORCPT=rfc822;",
            "ORCPT=;bob@example.net",
            "ORCPT=rfc822;bob+4",
            "ORCPT",
        ):
            reply = self.rcpt(value)
            self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"), value)
        self.assertNotIn("RCPT", self.conn.handler.names())

    def test_utf8Orcpt(self) -> None:
        """
        In an SMTPUTF8 transaction, ORCPT=utf-8;... may carry UTF-8.
        """
        self.assertEqual(self.mail("SMTPUTF8").code, 250)
        reply = self.rcpt("ORCPT=utf-8;jos\u00e9@example.net")
        self.assertEqual(reply.code, 250)
        self.assertEqual(
            rcptParamsSeen(self.conn), {"ORCPT": "utf-8;jos\u00e9@example.net"}
        )

    def test_dsnOff(self) -> None:
        """
        With DSN turned off, its parameters are unknown ones: the default
        handler refuses them with 555 5.5.4.
        """
        conn = connect(dsn=False)
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org> RET=FULL")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("RET", reply.text)
        conn.command("MAIL FROM:<a@example.org>")
        reply = conn.command("RCPT TO:<b@example.net> NOTIFY=NEVER")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("NOTIFY", reply.text)


class UnknownParameterTests(SynchronousTestCase):
    """
    Unknown MAIL/RCPT parameters go to the handler; the default handler
    answers 555 5.5.4 naming the parameter.
    """

    def test_defaultRefusesNamingIt(self) -> None:
        """
        The default handler names the (first) unknown parameter, after
        known ones that are fine, for MAIL and RCPT.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org> SIZE=10 X-FOO=bar XBAZ")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("X-FOO", reply.text)
        self.assertNotIn("SIZE", reply.text)
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> SIZE=10").code, 250)
        reply = conn.command("RCPT TO:<b@example.net> NOTIFY=NEVER XRCPT=1")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("XRCPT", reply.text)
        self.assertEqual(conn.session.transaction.recipients, [])

    def test_handlerMayAccept(self) -> None:
        """
        A handler that overrides MAIL and RCPT sees unknown parameters (and
        which ones esmtpkit did not know) and may accept them.
        """
        seen: list[tuple[str, dict[str, Any], frozenset[str]]] = []

        class Handler(ESMTPHandler):
            def MAIL(self, sender: str, params: Any) -> Any:
                seen.append(("MAIL", dict(params), params.unknown))
                return Reply(250, "ok")

            def RCPT(self, recipient: str, params: Any) -> Any:
                seen.append(("RCPT", dict(params), params.unknown))
                return None if params.unknown == {"XOK"} else (250, "fine")

        conn = connect(Handler)
        conn.command("EHLO client.example")
        self.assertEqual(
            conn.command("MAIL FROM:<a@example.org> MT-PRIORITY=3 SIZE=5").code, 250
        )
        self.assertEqual(conn.command("RCPT TO:<b@example.net> XRCPT=y").code, 250)
        # Returning None falls back to the default reply, which refuses.
        reply = conn.command("RCPT TO:<c@example.net> XOK NOTIFY=NEVER")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertEqual(
            seen,
            [
                ("MAIL", {"MT-PRIORITY": "3", "SIZE": "5"}, frozenset({"MT-PRIORITY"})),
                ("RCPT", {"XRCPT": "y"}, frozenset({"XRCPT"})),
                ("RCPT", {"XOK": None, "NOTIFY": "NEVER"}, frozenset({"XOK"})),
            ],
        )
        self.assertEqual(
            [r.address for r in conn.session.transaction.recipients], ["b@example.net"]
        )

    def test_knownValidNeverRefused(self) -> None:
        """
        Valid known parameters together are never refused by default.
        """
        conn = connect()
        conn.command("EHLO client.example")
        reply = conn.command(
            "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=FULL "
            "ENVID=abc"
        )
        self.assertEqual(reply.code, 250)
        reply = conn.command(
            "RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.net"
        )
        self.assertEqual(reply.code, 250)
