"""
Unit tests for L{esmtpkit.smtp.protocol.ESMTPProtocol}, driven in memory through
L{esmtpkit.testing.SMTPTestConnection} (StringTransport and a fake Clock; no
sockets, no reactor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from esmtpkit import ESMTPHandler, Reply, ReplyError
from esmtpkit.core.hooks import HOOK_TIMEOUT
from esmtpkit.testing import SMTPTestConnection, dotStuff

HOSTNAME = "mx.example.test"

HOOKS = (
    "CONNECT",
    "HELO",
    "EHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "HEADER",
    "EOH",
    "BODY",
    "EOM",
    "ABORT",
    "RSET",
    "NOOP",
    "VRFY",
    "EXPN",
    "HELP",
    "QUIT",
    "UNKNOWN",
    "DISCONNECT",
)

Call = tuple[str, tuple[Any, ...]]


class Recorder(ESMTPHandler):
    """
    A handler that records every hook call as C{(name, args)} in C{calls}.

    Keyword arguments map a hook name to a function C{f(handler, *args)}
    whose result replaces the default behaviour of that hook.
    """

    def __init__(self, **behaviour: Callable[..., Any]) -> None:
        self.calls: list[Call] = []
        self.behaviour = behaviour
        self.saved: dict[str, Any] = {}

    def names(self) -> list[str]:
        """
        The names of the hooks called so far, in order.
        """
        return [name for name, _ in self.calls]

    def body(self) -> bytes:
        """
        All BODY chunks received so far, joined.
        """
        return b"".join(args[0] for name, args in self.calls if name == "BODY")


def _recordingHook(name: str) -> Callable[..., Any]:
    def hook(self: Recorder, *args: Any) -> Any:
        self.calls.append((name, args))
        special = self.behaviour.get(name)
        if special is not None:
            return special(self, *args)
        return getattr(ESMTPHandler, name)(self, *args)

    hook.__name__ = name
    hook.__doc__ = f"Record a call of {name}, then behave as configured."
    return hook


for _name in HOOKS:
    setattr(Recorder, _name, _recordingHook(_name))


def recorderFactory(**behaviour: Callable[..., Any]) -> Callable[[], Recorder]:
    """
    A handler factory building a L{Recorder} with C{behaviour}.
    """
    return lambda: Recorder(**behaviour)


def collapsed(calls: list[Call]) -> list[Call]:
    """
    C{calls} with each run of consecutive BODY calls merged into one, so
    sessions that differ only in how the body was chunked compare equal.
    """
    out: list[Call] = []
    for name, args in calls:
        if name == "BODY" and out and out[-1][0] == "BODY":
            out[-1] = ("BODY", (out[-1][1][0] + args[0],))
        else:
            out.append((name, args))
    return out


def connect(
    handlerFactory: Callable[[], Any] = Recorder, **settings: Any
) -> SMTPTestConnection:
    """
    A new in-memory connection to C{handlerFactory}.
    """
    return SMTPTestConnection(handlerFactory, **settings)


def openTransaction(
    case: SynchronousTestCase,
    conn: SMTPTestConnection,
    sender: str = "alice@example.org",
    recipients: tuple[str, ...] = ("bob@example.net",),
) -> None:
    """
    EHLO, MAIL and RCPT, asserting each is accepted.
    """
    case.assertEqual(conn.command("EHLO client.example").code, 250)
    case.assertEqual(conn.command(f"MAIL FROM:<{sender}>").code, 250)
    for recipient in recipients:
        case.assertEqual(conn.command(f"RCPT TO:<{recipient}>").code, 250)


def startData(case: SynchronousTestCase, conn: SMTPTestConnection) -> None:
    """
    Open a transaction and send DATA, asserting the 354.
    """
    openTransaction(case, conn)
    case.assertEqual(conn.command("DATA").code, 354)


def failureEvents(conn: SMTPTestConnection) -> list[dict[str, Any]]:
    """
    The log events of C{conn} that carry a failure.
    """
    return [event for event in conn.log.events if "log_failure" in event]


def greetingOf(conn: SMTPTestConnection) -> Reply:
    """
    The greeting of C{conn}, which must have been sent.
    """
    assert conn.greeting is not None, "no greeting yet"
    return conn.greeting


def raiser(*args: Any) -> Any:
    """
    A hook body that always raises.
    """
    raise RuntimeError("handler bug: secret internal detail")


class DefaultReplyTests(SynchronousTestCase):
    """
    The replies of the default handler, as seen on the wire.
    """

    def setUp(self) -> None:
        self.conn = connect()

    def output(self) -> bytes:
        """
        Everything the server wrote so far.
        """
        value: bytes = self.conn.transport.value()
        return value

    def test_greeting(self) -> None:
        """
        The greeting is 220, starts with the hostname and has no enhanced
        status code.
        """
        self.assertEqual(
            self.output(), f"220 {HOSTNAME} ESMTP Mail Server\r\n".encode()
        )
        self.assertEqual(
            self.conn.greeting, Reply(220, f"{HOSTNAME} ESMTP Mail Server")
        )

    def test_ehlo(self) -> None:
        """
        The EHLO reply starts with the hostname, lists the extensions on the
        following lines and has no enhanced status code.
        """
        before = len(self.output())
        reply = self.conn.command("EHLO client.example")
        self.assertEqual(reply.code, 250)
        self.assertEqual(reply.lines[0].split()[0], HOSTNAME)
        self.assertIn("client.example", reply.lines[0])
        self.assertIn("PIPELINING", reply.lines)
        self.assertIn("8BITMIME", reply.lines)
        self.assertIn("SMTPUTF8", reply.lines)
        self.assertIn("ENHANCEDSTATUSCODES", reply.lines)
        self.assertIn(f"SIZE {32 * 1024 * 1024}", reply.lines)
        self.assertIsNone(reply.enhanced)
        wire = self.output()[before:].split(b"\r\n")[:-1]
        self.assertEqual(len(wire), len(reply.lines))
        self.assertTrue(wire[0].startswith(f"250-{HOSTNAME} ".encode()))
        self.assertTrue(all(line.startswith(b"250-") for line in wire[:-1]))
        # LIMITS is the last keyword with the default settings.
        self.assertEqual(wire[-1], b"250 LIMITS RCPTMAX=1000")
        self.assertNotIn(b"2.0.0", self.output()[before:])

    def test_helo(self) -> None:
        """
        The HELO reply is one line starting with the hostname, without
        extensions or enhanced status code.
        """
        before = len(self.output())
        reply = self.conn.command("HELO client.example")
        self.assertEqual(reply.code, 250)
        self.assertEqual(len(reply.lines), 1)
        self.assertEqual(reply.lines[0].split()[0], HOSTNAME)
        self.assertTrue(self.output()[before:].startswith(f"250 {HOSTNAME} ".encode()))
        self.assertNotIn(b"2.0.0", self.output()[before:])

    def test_vrfy(self) -> None:
        """
        VRFY: 252 "Cannot VRFY user; try RCPT to attempt delivery".
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("VRFY someone")
        self.assertEqual(reply.code, 252)
        self.assertEqual(reply.text, "Cannot VRFY user; try RCPT to attempt delivery")
        self.assertTrue((reply.enhanced or "").startswith("2."), reply)

    def test_expn(self) -> None:
        """
        EXPN: 502 with a 5.x.x enhanced code.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("EXPN staff")
        self.assertEqual(reply.code, 502)
        self.assertEqual(reply.text, "Sorry we don't allow this operation")
        self.assertTrue(reply.enhanced and reply.enhanced.startswith("5."))

    def test_noop_rset(self) -> None:
        """
        NOOP and RSET: 250 OK with enhanced code 2.0.0.
        """
        self.conn.command("EHLO client.example")
        before = len(self.output())
        self.assertEqual(self.conn.command("NOOP"), Reply(250, "OK", enhanced="2.0.0"))
        self.assertEqual(self.conn.command("RSET"), Reply(250, "OK", enhanced="2.0.0"))
        self.assertEqual(self.output()[before:], b"250 2.0.0 OK\r\n" * 2)

    def test_help(self) -> None:
        """
        HELP, with or without a topic: 214.
        """
        self.conn.command("EHLO client.example")
        self.assertEqual(self.conn.command("HELP").code, 214)
        reply = self.conn.command("HELP MAIL")
        self.assertEqual(reply.code, 214)
        self.assertTrue(reply.enhanced and reply.enhanced.startswith("2."))

    def test_mailRcptDataEom(self) -> None:
        """
        MAIL 250 2.1.0, RCPT 250 2.1.5, DATA 354 without enhanced code and
        with the seed's text, EOM 250 "Message accepted for delivery...".
        """
        self.conn.command("EHLO client.example")
        before = len(self.output())
        mail = self.conn.command("MAIL FROM:<alice@example.org>")
        self.assertEqual((mail.code, mail.enhanced), (250, "2.1.0"))
        rcpt = self.conn.command("RCPT TO:<bob@example.net>")
        self.assertEqual((rcpt.code, rcpt.enhanced), (250, "2.1.5"))
        data = self.conn.command("DATA")
        self.assertEqual(
            data, Reply(354, 'Enter mail, end with "." on a line by itself')
        )
        self.assertIn(
            b'\r\n354 Enter mail, end with "." on a line by itself\r\n',
            self.output()[before:],
        )
        self.conn.send(b"Subject: hi\r\n\r\nHello\r\n.\r\n")
        [eom] = self.conn.replies()
        self.assertEqual(eom.code, 250)
        self.assertEqual(eom.enhanced, "2.0.0")
        self.assertTrue(eom.text.startswith("Message accepted for delivery"))
        self.assertTrue(self.output().startswith(b"250 2.1.0 ", before))

    def test_quit(self) -> None:
        """
        QUIT: 221 "Closing connection", then the connection closes.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("QUIT")
        self.assertEqual(reply, Reply(221, "Closing connection", enhanced="2.0.0"))
        self.assertTrue(self.conn.closed)

    def test_unknown(self) -> None:
        """
        An unknown command: 500 with a 5.5.x enhanced code.
        """
        reply = self.conn.command("XYZZY magic")
        self.assertEqual(reply.code, 500)
        self.assertTrue(reply.enhanced and reply.enhanced.startswith("5.5."))

    def test_errorsCarryEnhancedCodes(self) -> None:
        """
        Sequence errors carry an enhanced status code on the wire.
        """
        before = len(self.output())
        self.assertEqual(self.conn.command("MAIL FROM:<a@example.org>").code, 503)
        self.assertTrue(self.output()[before:].startswith(b"503 5.5.1 "))

    def test_enhancedCodesDisabled(self) -> None:
        """
        With enhancedStatusCodes off, neither the keyword nor the codes are
        written.
        """
        conn = connect(enhancedStatusCodes=False)
        ehlo = conn.command("EHLO client.example")
        self.assertNotIn("ENHANCEDSTATUSCODES", ehlo.lines)
        before = len(conn.transport.value())
        conn.command("NOOP")
        self.assertEqual(conn.transport.value()[before:], b"250 OK\r\n")

    def test_extensionsFollowSettings(self) -> None:
        """
        PIPELINING, SMTPUTF8 and the SIZE value follow the settings.
        """
        conn = connect(pipelining=False, smtputf8=False, maxMessageSize=0)
        lines = conn.command("EHLO client.example").lines
        self.assertNotIn("PIPELINING", lines)
        self.assertNotIn("SMTPUTF8", lines)
        self.assertIn("SIZE", lines)
        conn = connect(maxMessageSize=12345)
        self.assertIn("SIZE 12345", conn.command("EHLO client.example").lines)

    def test_greetingGetsHostname(self) -> None:
        """
        A 2xx greeting that does not start with the hostname gets it put
        in front.
        """
        conn = connect(recorderFactory(CONNECT=lambda h: Reply(220, "Welcome")))
        self.assertEqual(conn.greeting, Reply(220, f"{HOSTNAME} Welcome"))
        conn = connect(recorderFactory(CONNECT=lambda h: (220, f"{HOSTNAME} hi")))
        self.assertEqual(conn.greeting, Reply(220, f"{HOSTNAME} hi"))

    def test_ehloExtraLines(self) -> None:
        """
        Extra lines of an EHLO hook's reply come after the built-in
        extensions.
        """
        conn = connect(recorderFactory(EHLO=lambda h, d: Reply(250, "hi", "XFOO")))
        reply = conn.command("EHLO client.example")
        self.assertEqual(reply.lines[0], f"{HOSTNAME} hi")
        self.assertEqual(reply.lines[-1], "XFOO")
        self.assertIn("PIPELINING", reply.lines[1:-1])

    def test_tupleReplies(self) -> None:
        """
        A hook may return a seed-style tuple; multi-line replies are written
        C{250-...} / C{250 ...}, each line with the enhanced code.
        """
        conn = connect(recorderFactory(NOOP=lambda h: (250, "fine", "second")))
        before = len(conn.transport.value())
        conn.command("NOOP")
        self.assertEqual(
            conn.transport.value()[before:], b"250-2.0.0 fine\r\n250 2.0.0 second\r\n"
        )

    def test_hookEnhancedCodeKept(self) -> None:
        """
        An enhanced code given by the hook is written instead of the
        default one.
        """
        conn = connect(
            recorderFactory(RCPT=lambda h, r, p: (550, "5.7.1 Relaying denied"))
        )
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        before = len(conn.transport.value())
        reply = conn.command("RCPT TO:<b@example.net>")
        self.assertEqual(reply, Reply(550, "Relaying denied", enhanced="5.7.1"))
        self.assertEqual(
            conn.transport.value()[before:], b"550 5.7.1 Relaying denied\r\n"
        )

    def test_dataRefusalHasEnhancedCode(self) -> None:
        """
        A DATA refused by the handler (4xx/5xx) carries its enhanced code on
        the wire; only the 354 goes without (RFC 2034).
        """
        conn = connect(recorderFactory(DATA=lambda h: (554, "5.7.1 No thanks")))
        openTransaction(self, conn)
        before = len(conn.transport.value())
        self.assertEqual(conn.command("DATA").code, 554)
        self.assertEqual(conn.transport.value()[before:], b"554 5.7.1 No thanks\r\n")

    def test_dataHookFailureHasEnhancedCode(self) -> None:
        """
        A DATA hook that raises is answered "451 4.3.0" like any other hook.
        """
        conn = connect(recorderFactory(DATA=raiser))
        openTransaction(self, conn)
        before = len(conn.transport.value())
        self.assertEqual(conn.command("DATA").code, 451)
        self.assertTrue(
            conn.transport.value()[before:].startswith(b"451 4.3.0 "),
            conn.transport.value()[before:],
        )


class StateTests(SynchronousTestCase):
    """
    Command sequencing and argument checks done by the protocol itself.
    """

    def setUp(self) -> None:
        self.conn = connect()

    def test_senderAlreadySpecified(self) -> None:
        """
        A second MAIL in a transaction: 503 "Sender already specified".
        """
        openTransaction(self, self.conn)
        reply = self.conn.command("MAIL FROM:<carol@example.org>")
        self.assertEqual(
            reply, Reply(503, "Sender already specified", enhanced="5.5.1")
        )
        self.assertEqual(self.conn.handler.names().count("MAIL"), 1)

    def test_rcptBeforeMail(self) -> None:
        """
        RCPT before MAIL: 503 "Need MAIL before RCPT".
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("RCPT TO:<bob@example.net>")
        self.assertEqual((reply.code, reply.text), (503, "Need MAIL before RCPT"))
        self.assertNotIn("RCPT", self.conn.handler.names())

    def test_dataBeforeMail(self) -> None:
        """
        DATA before MAIL: 503 "Need MAIL command".
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("DATA")
        self.assertEqual((reply.code, reply.text), (503, "Need MAIL command"))
        self.assertNotIn("DATA", self.conn.handler.names())

    def test_dataBeforeRcpt(self) -> None:
        """
        DATA without a recipient: 503 "Need RCPT (recipient)".
        """
        self.conn.command("EHLO client.example")
        self.conn.command("MAIL FROM:<alice@example.org>")
        reply = self.conn.command("DATA")
        self.assertEqual((reply.code, reply.text), (503, "Need RCPT (recipient)"))
        self.assertNotIn("DATA", self.conn.handler.names())
        # Still a command line, not message content:
        self.assertEqual(self.conn.command("NOOP").code, 250)

    def test_mailBeforeHelo(self) -> None:
        """
        MAIL before HELO/EHLO: 503, and MAIL is not called.
        """
        self.assertEqual(self.conn.command("MAIL FROM:<a@example.org>").code, 503)
        self.assertNotIn("MAIL", self.conn.handler.names())
        self.assertIsNone(self.conn.session.transaction)

    def test_missingArguments(self) -> None:
        """
        HELO, EHLO, MAIL and RCPT without their argument: 501, hook not
        called.
        """
        for line in ("HELO", "EHLO", "HELO ", "EHLO  "):
            self.assertEqual(self.conn.command(line).code, 501, line)
        self.conn.command("EHLO client.example")
        for line in ("MAIL", "MAIL FROM:", "MAIL FROM: "):
            self.assertEqual(self.conn.command(line).code, 501, line)
        self.conn.command("MAIL FROM:<a@example.org>")
        for line in ("RCPT", "RCPT TO:", "RCPT TO:  "):
            self.assertEqual(self.conn.command(line).code, 501, line)
        names = self.conn.handler.names()
        self.assertEqual(names.count("HELO"), 0)
        self.assertEqual(names.count("EHLO"), 1)
        self.assertEqual(names.count("MAIL"), 1)
        self.assertEqual(names.count("RCPT"), 0)

    def test_unknownCommand(self) -> None:
        """
        Unknown commands go through UNKNOWN with the whole line and get 500.
        """
        self.assertEqual(self.conn.command("XYZZY magic words").code, 500)
        self.assertEqual(self.conn.command("123").code, 500)
        self.assertEqual(
            [c for c in self.conn.handler.calls if c[0] == "UNKNOWN"],
            [("UNKNOWN", ("XYZZY magic words",)), ("UNKNOWN", ("123",))],
        )

    def test_unknownHookReply(self) -> None:
        """
        UNKNOWN's reply is what the client gets for an unknown command.
        """
        conn = connect(recorderFactory(UNKNOWN=lambda h, line: (250, "sure")))
        self.assertEqual(conn.command("XFOO").code, 250)

    def test_caseInsensitive(self) -> None:
        """
        Verbs and the FROM:/TO: keywords are case-insensitive.
        """
        self.assertEqual(self.conn.command("ehlo client.example").code, 250)
        self.assertEqual(self.conn.command("mail from:<a@example.org>").code, 250)
        self.assertEqual(self.conn.command("RcPt To:<b@example.net>").code, 250)
        self.assertEqual(self.conn.command("NoOp").code, 250)
        self.assertEqual(self.conn.command("data").code, 354)

    def test_nullSender(self) -> None:
        """
        C{MAIL FROM:<>} is accepted and MAIL gets the sender C{""}.
        """
        self.conn.command("EHLO client.example")
        self.assertEqual(self.conn.command("MAIL FROM:<>").code, 250)
        self.assertIn(("MAIL", ("", {})), self.conn.handler.calls)
        self.assertEqual(self.conn.session.transaction.sender, "")

    def test_quotedLocalParts(self) -> None:
        """
        Quoted local parts with spaces and C{>} inside the quotes reach the
        hooks exactly, as do source routes (dropped).
        """
        self.conn.command("EHLO client.example")
        self.assertEqual(
            self.conn.command('MAIL FROM:<"john doe"@example.org>').code, 250
        )
        self.assertEqual(self.conn.command('RCPT TO:<"a>b"@example.net>').code, 250)
        self.assertEqual(
            self.conn.command("RCPT TO:<@relay.example:carol@example.net>").code, 250
        )
        calls = self.conn.handler.calls
        self.assertIn(("MAIL", ('"john doe"@example.org', {})), calls)
        self.assertIn(("RCPT", ('"a>b"@example.net', {})), calls)
        self.assertIn(("RCPT", ("carol@example.net", {})), calls)

    def test_paramsParsed(self) -> None:
        """
        ESMTP parameters reach MAIL as a dict with upper-cased keywords;
        C{SMTPUTF8} has the value L{None}.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command(
            "MAIL FROM:<a@example.org> size=1000 BODY=8bitmime SMTPUTF8"
        )
        self.assertEqual(reply.code, 250)
        expected = {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None}
        self.assertIn(("MAIL", ("a@example.org", expected)), self.conn.handler.calls)
        self.assertEqual(self.conn.session.transaction.mailParams, expected)

    def test_rcptParams(self) -> None:
        """
        RCPT parameters reach RCPT as a dict.
        """
        conn = connect(recorderFactory(RCPT=lambda h, r, p: (250, "ok")))
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(conn.command("RCPT TO:<b@example.net> NOTIFY=NEVER").code, 250)
        self.assertIn(
            ("RCPT", ("b@example.net", {"NOTIFY": "NEVER"})), conn.handler.calls
        )

    def test_unknownRcptParam(self) -> None:
        """
        The default handler refuses unknown RCPT parameters with 555 and
        does not add the recipient.
        """
        openTransaction(self, self.conn, recipients=())
        # NOTIFY is a known (DSN) parameter now; XFOO is not.
        reply = self.conn.command("RCPT TO:<b@example.net> XFOO=bar")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("XFOO", reply.text)
        self.assertEqual(self.conn.session.transaction.recipients, [])

    def test_unknownMailParam(self) -> None:
        """
        The default handler refuses unknown MAIL parameters with 555 5.5.4
        and the transaction does not start.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("MAIL FROM:<a@example.org> XFOO=bar")
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIsNone(self.conn.session.transaction)
        self.assertEqual(self.conn.command("MAIL FROM:<a@example.org>").code, 250)

    def test_sizeOverLimit(self) -> None:
        """
        C{SIZE=} above maxMessageSize: 552 5.3.4, MAIL not called; at the
        limit it is accepted.
        """
        conn = connect(maxMessageSize=1000)
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org> SIZE=1001")
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertNotIn("MAIL", conn.handler.names())
        self.assertEqual(conn.command("MAIL FROM:<a@example.org> SIZE=1000").code, 250)

    def test_badSize(self) -> None:
        """
        A non-numeric SIZE is a 501 syntax error.
        """
        self.conn.command("EHLO client.example")
        self.assertEqual(
            self.conn.command("MAIL FROM:<a@example.org> SIZE=x").code, 501
        )

    def test_badBody(self) -> None:
        """
        An unknown BODY type is refused and the transaction does not start.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("MAIL FROM:<a@example.org> BODY=9BIT")
        self.assertEqual(reply.code // 100, 5)
        self.assertIsNone(self.conn.session.transaction)

    def test_badSender(self) -> None:
        """
        A reverse-path that is not a mailbox: 501 5.1.7.
        """
        self.conn.command("EHLO client.example")
        for path in ("<no-at-sign>", "<a@@example.org>", "<a@-bad-.example>"):
            reply = self.conn.command(f"MAIL FROM:{path}")
            self.assertEqual((reply.code, reply.enhanced), (501, "5.1.7"), path)
        self.assertNotIn("MAIL", self.conn.handler.names())

    def test_badRecipient(self) -> None:
        """
        A forward-path that is not a mailbox: 501 5.1.3.
        """
        openTransaction(self, self.conn, recipients=())
        for path in ("<nobody>", "<a@>", "<a..b@example.org>", "<b@ex_ample.net>"):
            reply = self.conn.command(f"RCPT TO:{path}")
            self.assertEqual((reply.code, reply.enhanced), (501, "5.1.3"), path)
        self.assertNotIn("RCPT", self.conn.handler.names())

    def test_postmaster(self) -> None:
        """
        C{RCPT TO:<postmaster>} (any case) is accepted without a domain.
        """
        openTransaction(self, self.conn, recipients=())
        self.assertEqual(self.conn.command("RCPT TO:<postmaster>").code, 250)
        self.assertEqual(self.conn.command("RCPT TO:<PostMaster>").code, 250)

    def test_utf8WithoutSmtputf8(self) -> None:
        """
        A UTF-8 address without SMTPUTF8: 553 5.6.7; with it: accepted.
        """
        self.conn.command("EHLO client.example")
        reply = self.conn.command("MAIL FROM:<jörg@exämple.org>")
        self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.conn.command("MAIL FROM:<a@example.org>")
        reply = self.conn.command("RCPT TO:<jörg@example.org>")
        self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.conn.command("RSET")
        self.assertEqual(
            self.conn.command("MAIL FROM:<jörg@exämple.org> SMTPUTF8").code, 250
        )
        self.assertEqual(self.conn.command("RCPT TO:<zoë@example.org>").code, 250)
        self.assertIn(("RCPT", ("zoë@example.org", {})), self.conn.handler.calls)

    def test_smtputf8Disabled(self) -> None:
        """
        With smtputf8 off, the SMTPUTF8 parameter is refused.
        """
        conn = connect(smtputf8=False)
        conn.command("EHLO client.example")
        self.assertEqual(
            conn.command("MAIL FROM:<a@example.org> SMTPUTF8").code // 100, 5
        )
        self.assertIsNone(conn.session.transaction)

    def test_rsetResets(self) -> None:
        """
        RSET ends the transaction (ABORT is called) so MAIL is allowed again.
        """
        openTransaction(self, self.conn)
        self.assertEqual(self.conn.command("RSET").code, 250)
        self.assertIsNone(self.conn.session.transaction)
        self.assertEqual(self.conn.handler.names()[-2:], ["ABORT", "RSET"])
        self.assertEqual(self.conn.command("MAIL FROM:<c@example.org>").code, 250)
        self.assertEqual(self.conn.command("DATA").code, 503)

    def test_heloEhloReset(self) -> None:
        """
        A new HELO or EHLO ends the transaction (ABORT first).
        """
        for verb in ("EHLO", "HELO"):
            conn = connect()
            openTransaction(self, conn)
            self.assertEqual(conn.command(f"{verb} again.example").code, 250)
            self.assertIsNone(conn.session.transaction)
            self.assertEqual(conn.handler.names()[-2:], ["ABORT", verb])
            self.assertEqual(conn.session.heloName, "again.example")
            self.assertEqual(conn.session.esmtp, verb == "EHLO")
            self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 503)

    def test_noAbortWithoutTransaction(self) -> None:
        """
        RSET and HELO without a transaction do not call ABORT.
        """
        self.conn.command("EHLO client.example")
        self.conn.command("RSET")
        self.conn.command("HELO client.example")
        self.assertNotIn("ABORT", self.conn.handler.names())

    def test_quitCloses(self) -> None:
        """
        QUIT closes the connection after the 221.
        """
        self.assertFalse(self.conn.closed)
        self.assertEqual(self.conn.command("QUIT").code, 221)
        self.assertTrue(self.conn.closed)

    def test_paramsAfterHelo(self) -> None:
        """
        ESMTP parameters after HELO (not EHLO): 555.
        """
        self.conn.command("HELO client.example")
        reply = self.conn.command("MAIL FROM:<a@example.org> SIZE=10")
        self.assertEqual(reply.code, 555)
        self.assertNotIn("MAIL", self.conn.handler.names())
        self.conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(self.conn.command("RCPT TO:<b@example.net> X=Y").code, 555)

    def test_refusedMailNoTransaction(self) -> None:
        """
        A MAIL refused by the handler leaves no transaction.
        """
        conn = connect(recorderFactory(MAIL=lambda h, s, p: (550, "no")))
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 550)
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 503)

    def test_refusedRcptNotAdded(self) -> None:
        """
        A RCPT refused by the handler is not added to the transaction.
        """
        conn = connect(recorderFactory(RCPT=lambda h, r, p: (550, "unknown user")))
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 550)
        self.assertEqual(conn.session.transaction.recipients, [])
        self.assertEqual(conn.command("DATA").code, 503)

    def test_refusedData(self) -> None:
        """
        A DATA refused by the handler leaves the protocol reading commands.
        """
        conn = connect(recorderFactory(DATA=lambda h: (554, "no thanks")))
        openTransaction(self, conn)
        self.assertEqual(conn.command("DATA").code, 554)
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertIsNotNone(conn.session.transaction)

    def test_recipientsRecorded(self) -> None:
        """
        Accepted recipients and their parameters are in the transaction.
        """
        openTransaction(self, self.conn, recipients=("b@example.net", "c@example.net"))
        recipients = self.conn.session.transaction.recipients
        self.assertEqual(
            [r.address for r in recipients], ["b@example.net", "c@example.net"]
        )

    def test_maxRecipients(self) -> None:
        """
        Past maxRecipients, RCPT gets 452 4.5.3 and the hook is not called.
        """
        conn = connect(maxRecipients=2)
        openTransaction(self, conn, recipients=("b@example.net", "c@example.net"))
        reply = conn.command("RCPT TO:<d@example.net>")
        self.assertEqual((reply.code, reply.enhanced), (452, "4.5.3"))
        self.assertEqual(conn.handler.names().count("RCPT"), 2)

    def test_bareLineFeedInCommand(self) -> None:
        """
        A command line ended by a bare LF is refused with 500 5.5.2 (the
        default "reject" policy) and never executed; the session goes on.
        """
        self.conn.command("EHLO client.example")
        self.conn.send(b"QUIT\n")
        [reply] = self.conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (500, "5.5.2"))
        self.assertNotIn("QUIT", self.conn.handler.names())
        self.assertFalse(self.conn.closed)
        self.assertEqual(self.conn.command("NOOP").code, 250)

    def test_bareCarriageReturnInCommand(self) -> None:
        """
        A bare CR inside a command line does not split it either.
        """
        self.conn.send(b"NOOP\rQUIT\r\n")
        [reply] = self.conn.replies()
        self.assertEqual(reply.code // 100, 5)
        self.assertNotIn("QUIT", self.conn.handler.names())

    def test_argumentChecks(self) -> None:
        """
        VRFY and EXPN need an argument; RSET and QUIT take none; HELO needs a
        single printable word.
        """
        for line in ("VRFY", "EXPN", "RSET now", "QUIT now", "HELO a b", "EHLO a\x01b"):
            self.assertEqual(self.conn.command(line).code, 501, line)
        names = self.conn.handler.names()
        for hook in ("VRFY", "EXPN", "RSET", "QUIT", "HELO", "EHLO"):
            self.assertNotIn(hook, names)
        self.assertFalse(self.conn.closed)

    def test_nothingAfterQuit(self) -> None:
        """
        Commands pipelined after QUIT are not executed.
        """
        self.conn.send(b"QUIT\r\nNOOP\r\nHELP\r\n")
        self.assertEqual([r.code for r in self.conn.replies()], [221])
        self.assertEqual(self.conn.handler.names(), ["CONNECT", "QUIT", "DISCONNECT"])

    def test_dataWithArgument(self) -> None:
        """
        DATA with an argument is a 501 and does not start the message.
        """
        openTransaction(self, self.conn)
        self.assertEqual(self.conn.command("DATA now").code, 501)
        self.assertEqual(self.conn.command("NOOP").code, 250)


class HookArgumentTests(SynchronousTestCase):
    """
    Hooks are called in the right order with the right arguments.
    """

    def test_fullSession(self) -> None:
        """
        A whole session calls each hook once, in order, with parsed
        arguments.
        """
        conn = connect()
        openTransaction(self, conn)
        self.assertEqual(conn.command("VRFY bob").code, 252)
        self.assertEqual(conn.command("EXPN list").code, 502)
        self.assertEqual(conn.command("HELP DATA").code, 214)
        self.assertEqual(conn.command("NOOP").code, 250)
        self.assertEqual(conn.sendMessage(b"Subject: hi\r\n\r\nHello\r\n").code, 250)
        self.assertEqual(conn.command("QUIT").code, 221)
        self.assertEqual(
            conn.handler.calls,
            [
                ("CONNECT", ()),
                ("EHLO", ("client.example",)),
                ("MAIL", ("alice@example.org", {})),
                ("RCPT", ("bob@example.net", {})),
                ("VRFY", ("bob",)),
                ("EXPN", ("list",)),
                ("HELP", ("DATA",)),
                ("NOOP", ()),
                ("DATA", ()),
                ("HEADER", ("Subject", "hi")),
                ("EOH", ()),
                ("BODY", (b"Hello\r\n",)),
                ("EOM", ()),
                ("QUIT", ()),
                ("DISCONNECT", ()),
            ],
        )

    def test_helpWithoutTopic(self) -> None:
        """
        HELP without an argument passes L{None}.
        """
        conn = connect()
        conn.command("HELP")
        self.assertIn(("HELP", (None,)), conn.handler.calls)

    def test_sessionState(self) -> None:
        """
        The handler sees the session: peer, HELO name, ESMTP, transaction.
        """
        conn = connect()
        handler = conn.handler
        self.assertIs(handler.session, conn.session)
        self.assertEqual(conn.session.peerHost, "192.0.2.1")
        self.assertEqual(conn.session.hostname, HOSTNAME)
        openTransaction(self, conn)
        self.assertEqual(conn.session.heloName, "client.example")
        self.assertTrue(conn.session.esmtp)
        transaction = conn.session.transaction
        self.assertEqual(transaction.sender, "alice@example.org")
        self.assertTrue(transaction.id.startswith(conn.session.id))

    def test_transactionIdsDiffer(self) -> None:
        """
        Each transaction gets its own id.
        """
        conn = connect()
        openTransaction(self, conn)
        first = conn.session.transaction.id
        conn.command("RSET")
        conn.command("MAIL FROM:<a@example.org>")
        self.assertNotEqual(conn.session.transaction.id, first)

    def message(self, data: bytes, **settings: Any) -> SMTPTestConnection:
        """
        Send C{data} (already dot-stuffed and terminated) after DATA, with a
        handler that keeps the transaction's C{rawHeaders} and C{headers}
        at EOM.
        """

        def eom(handler: Recorder) -> None:
            transaction = handler.session.transaction
            assert transaction is not None
            handler.saved["rawHeaders"] = transaction.rawHeaders
            handler.saved["headers"] = list(transaction.headers)

        conn = connect(recorderFactory(EOM=eom), **settings)
        startData(self, conn)
        conn.send(data)
        return conn

    def contentCalls(self, conn: SMTPTestConnection) -> list[Call]:
        """
        The calls from DATA (exclusive) through EOM, BODY runs collapsed.
        """
        names = conn.handler.names()
        start = names.index("DATA") + 1
        end = names.index("EOM") + 1
        return collapsed(conn.handler.calls[start:end])

    def test_headersUnfolded(self) -> None:
        """
        HEADER gets each field with continuation lines unfolded (CRLF
        removed, leading white space kept); EOH at the blank line.
        """
        data = (
            b"Subject: hello\r\n"
            b"  world\r\n"
            b"\tagain\r\n"
            b"To: bob@example.net\r\n"
            b"X-Empty:\r\n"
            b"\r\n"
            b"Body line\r\n"
            b".\r\n"
        )
        conn = self.message(data)
        self.assertEqual(
            self.contentCalls(conn),
            [
                ("HEADER", ("Subject", "hello  world\tagain")),
                ("HEADER", ("To", "bob@example.net")),
                ("HEADER", ("X-Empty", "")),
                ("EOH", ()),
                ("BODY", (b"Body line\r\n",)),
                ("EOM", ()),
            ],
        )
        self.assertEqual(conn.handler.saved["rawHeaders"], data[: data.index(b"Body")])
        self.assertEqual(
            conn.handler.saved["headers"],
            [
                ("Subject", "hello  world\tagain"),
                ("To", "bob@example.net"),
                ("X-Empty", ""),
            ],
        )
        self.assertEqual(conn.replies()[0].code, 250)

    def test_eohAtNonHeaderLine(self) -> None:
        """
        The first line that is not a header ends the headers and is the
        first line of the body.
        """
        data = b"Subject: x\r\nthis is not a header\r\nmore\r\n.\r\n"
        conn = self.message(data)
        self.assertEqual(
            self.contentCalls(conn),
            [
                ("HEADER", ("Subject", "x")),
                ("EOH", ()),
                ("BODY", (b"this is not a header\r\nmore\r\n",)),
                ("EOM", ()),
            ],
        )
        self.assertEqual(conn.handler.saved["rawHeaders"], b"Subject: x\r\n")

    def test_noHeadersAtAll(self) -> None:
        """
        A message whose first line is not a header: EOH first, that line
        starts the body.
        """
        conn = self.message(b"Hello there\r\n.\r\n")
        self.assertEqual(
            self.contentCalls(conn),
            [("EOH", ()), ("BODY", (b"Hello there\r\n",)), ("EOM", ())],
        )
        self.assertEqual(conn.handler.saved["rawHeaders"], b"")

    def test_emptyMessage(self) -> None:
        """
        "." right after DATA: EOH then EOM, no body.
        """
        conn = self.message(b".\r\n")
        self.assertEqual(self.contentCalls(conn), [("EOH", ()), ("EOM", ())])
        self.assertEqual(conn.handler.body(), b"")
        self.assertEqual(conn.handler.saved["rawHeaders"], b"")
        self.assertEqual(conn.replies()[0].code, 250)

    def test_headersOnlyThenDot(self) -> None:
        """
        "." right after the headers (no blank line): the last header is
        completed, then EOH and EOM with an empty body.
        """
        conn = self.message(b"Subject: a\r\n folded\r\n.\r\n")
        self.assertEqual(
            self.contentCalls(conn),
            [("HEADER", ("Subject", "a folded")), ("EOH", ()), ("EOM", ())],
        )
        self.assertEqual(conn.handler.saved["rawHeaders"], b"Subject: a\r\n folded\r\n")

    def test_blankLineThenDot(self) -> None:
        """
        Headers, blank line, then "." gives an empty body.
        """
        conn = self.message(b"Subject: a\r\n\r\n.\r\n")
        self.assertEqual(
            self.contentCalls(conn),
            [("HEADER", ("Subject", "a")), ("EOH", ()), ("EOM", ())],
        )
        self.assertEqual(conn.handler.saved["rawHeaders"], b"Subject: a\r\n\r\n")

    def test_dotStuffingUndone(self) -> None:
        """
        Dot-stuffing is undone in headers and body.
        """
        data = (
            b"..Hidden: yes\r\nSubject: s\r\n\r\n..leading\r\n...\r\nmid.dle\r\n.\r\n"
        )
        conn = self.message(data)
        self.assertEqual(
            self.contentCalls(conn),
            [
                ("HEADER", (".Hidden", "yes")),
                ("HEADER", ("Subject", "s")),
                ("EOH", ()),
                ("BODY", (b".leading\r\n..\r\nmid.dle\r\n",)),
                ("EOM", ()),
            ],
        )
        self.assertEqual(
            conn.handler.saved["rawHeaders"], b".Hidden: yes\r\nSubject: s\r\n\r\n"
        )

    def test_bodyEndsWithCRLF(self) -> None:
        """
        The body includes the CRLF before the final dot, and is exactly what
        was sent (binary bytes, control characters, long lines).
        """
        # Bare CR and LF are no longer kept (they are refused or normalised;
        # see test_smuggling), so the body has none.
        body = b"a\r\n\r\nb\x00\xff\xfe\r\n" + b"x" * 5000 + b"\r\n\x0b\x0c\x7f\r\n"
        conn = self.message(b"Subject: s\r\n\r\n" + body + b".\r\n")
        self.assertEqual(conn.handler.body(), body)

    def test_bodyWithoutFinalCRLFFromHarness(self) -> None:
        """
        C{sendMessage} (dotStuff) round-trips a message with dots at line
        starts exactly.
        """
        message = b"Subject: s\r\n\r\n.one\r\n..two\r\n.\r\nend"
        conn = connect()
        openTransaction(self, conn)
        self.assertEqual(conn.sendMessage(message).code, 250)
        rebuilt = b"Subject: s\r\n\r\n" + conn.handler.body()
        self.assertEqual(rebuilt, message + b"\r\n")

    def test_chunkSize(self) -> None:
        """
        No BODY chunk is larger than chunkSize, and the chunks join to the
        body.
        """
        body = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 3 + b"\r\n"
        conn = self.message(b"\r\n" + body + b".\r\n", chunkSize=7)
        chunks = [args[0] for name, args in conn.handler.calls if name == "BODY"]
        self.assertGreater(len(chunks), 1)
        self.assertTrue(all(0 < len(c) <= 7 for c in chunks), [len(c) for c in chunks])
        self.assertEqual(b"".join(chunks), body)

    def test_chunkSizeFirstBodyLine(self) -> None:
        """
        A first body line read in line mode (it ended the headers) is also
        cut to chunkSize.
        """
        data = b"Subject: x\r\nthis is not a header line\r\nmore\r\n.\r\n"
        conn = self.message(data, chunkSize=5)
        chunks = [args[0] for name, args in conn.handler.calls if name == "BODY"]
        self.assertTrue(all(0 < len(c) <= 5 for c in chunks), chunks)
        self.assertEqual(b"".join(chunks), b"this is not a header line\r\nmore\r\n")

    def test_chunkSizeAcrossReads(self) -> None:
        """
        chunkSize is respected when the body arrives in many reads.
        """
        body = b"0123456789" * 50 + b"\r\n"
        conn = connect(chunkSize=16)
        startData(self, conn)
        data = b"\r\n" + body + b".\r\n"
        for i in range(0, len(data), 37):
            conn.send(data[i : i + 37])
        chunks = [args[0] for name, args in conn.handler.calls if name == "BODY"]
        self.assertTrue(all(len(c) <= 16 for c in chunks))
        self.assertEqual(b"".join(chunks), body)
        self.assertEqual(conn.replies()[0].code, 250)

    def test_pipelinedAfterEndOfData(self) -> None:
        """
        Commands sent after the end of data in the same read are answered
        (as RFC 2920 allows, the client waits only for the 354).
        """
        conn = connect()
        startData(self, conn)
        conn.send(
            b"Subject: a\r\n\r\nbody\r\n.\r\n"
            b"MAIL FROM:<x@example.org>\r\n"
            b"RCPT TO:<y@example.net>\r\n"
            b"DATA\r\n"
        )
        codes = [r.code for r in conn.replies()]
        self.assertEqual(codes, [250, 250, 250, 354])
        conn.send(b"Subject: b\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        codes = [r.code for r in conn.replies()]
        self.assertEqual(codes, [250, 221])
        self.assertEqual(conn.handler.names().count("EOM"), 2)
        self.assertIn(("MAIL", ("x@example.org", {})), conn.handler.calls)
        self.assertIn(("BODY", (b"second\r\n",)), conn.handler.calls)
        self.assertTrue(conn.closed)

    def test_wholeSessionInOneRead(self) -> None:
        """
        With enforceSync off, a complete session in a single read gives every
        reply in order (with it on, that is a synchronization violation; see
        test_sync).
        """
        conn = connect(enforceSync=False)
        conn.send(
            b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<b@example.net>\r\n"
            b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n"
        )
        self.assertEqual(
            [r.code for r in conn.replies()], [250, 250, 250, 354, 250, 250, 221]
        )

    SESSION = (
        b"Subject: split\r\n"
        b"X-Long: one\r\n two\r\n"
        b"\r\n"
        b"line one\r\n"
        b"..dotted\r\n"
        b"\r\n"
        b".\r\n"
        b"NOOP\r\n"
    )

    def runSplit(
        self, pieces: list[bytes]
    ) -> tuple[list[Call], list[tuple[int, str | None]]]:
        """
        Send C{pieces} as separate reads after DATA; return the collapsed
        hook calls after DATA and the replies.
        """
        conn = connect(chunkSize=4)
        startData(self, conn)
        for piece in pieces:
            conn.send(piece)
        start = conn.handler.names().index("DATA") + 1
        replies = [(r.code, r.enhanced) for r in conn.replies()]
        return collapsed(conn.handler.calls[start:]), replies

    def test_splitAtEveryPosition(self) -> None:
        """
        The message and the command after it give the same hook calls and
        replies however the bytes are split in two reads, and byte by byte.
        """
        expected = self.runSplit([self.SESSION])
        self.assertEqual(
            expected[0],
            [
                ("HEADER", ("Subject", "split")),
                ("HEADER", ("X-Long", "one two")),
                ("EOH", ()),
                ("BODY", (b"line one\r\n.dotted\r\n\r\n",)),
                ("EOM", ()),
                ("NOOP", ()),
            ],
        )
        self.assertEqual(expected[1], [(250, "2.0.0"), (250, "2.0.0")])
        for i in range(1, len(self.SESSION)):
            got = self.runSplit([self.SESSION[:i], self.SESSION[i:]])
            self.assertEqual(got, expected, f"split at {i}")
        bytewise = [self.SESSION[i : i + 1] for i in range(len(self.SESSION))]
        self.assertEqual(self.runSplit(bytewise), expected)

    def test_terminatorSplitThreeWays(self) -> None:
        """
        CRLF.CRLF split into three reads at any two positions still ends the
        message exactly once.
        """
        tail = b"body\r\n.\r\nNOOP\r\n"
        expected = self.runSplit([b"\r\n" + tail])
        for i in range(1, len(tail)):
            for j in range(i + 1, len(tail)):
                got = self.runSplit([b"\r\n", tail[:i], tail[i:j], tail[j:]])
                self.assertEqual(got, expected, (i, j))


class AsyncHookTests(SynchronousTestCase):
    """
    Hooks that return Deferreds or are coroutines.
    """

    def test_deferredReply(self) -> None:
        """
        A Deferred reply is sent when it fires; the input is paused until
        then.
        """
        pending: list[Deferred[Any]] = []

        def noop(handler: Recorder) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d

        conn = connect(recorderFactory(NOOP=noop))
        conn.send(b"NOOP\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.transport.producerState, "paused")
        pending[0].callback((250, "later"))
        self.assertEqual(conn.replies(), [Reply(250, "later", enhanced="2.0.0")])
        self.assertEqual(conn.transport.producerState, "producing")

    def test_deferredNoneIsDefault(self) -> None:
        """
        A Deferred that fires with L{None} gives the default reply.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(RSET=lambda h: d))
        conn.send(b"RSET\r\n")
        d.callback(None)
        self.assertEqual(conn.replies(), [Reply(250, "OK", enhanced="2.0.0")])

    def test_coroutineHook(self) -> None:
        """
        C{async def} hooks work, awaiting Deferreds.
        """
        gate: Deferred[None] = Deferred()

        class Handler(ESMTPHandler):
            async def NOOP(self) -> Reply:
                await gate
                return Reply(250, "async ok")

            async def MAIL(self, sender: str, params: dict[str, Any]) -> None:
                return None

        conn = connect(Handler)
        conn.command("EHLO client.example")
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)
        conn.send(b"NOOP\r\n")
        self.assertEqual(conn.replies(), [])
        gate.callback(None)
        self.assertEqual(conn.replies(), [Reply(250, "async ok", enhanced="2.0.0")])

    def test_asyncGreeting(self) -> None:
        """
        An asynchronous CONNECT delays the greeting; nothing is written
        before it fires, and the session then works. (A client that talks
        before the greeting is an early talker; see test_sync.)
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(CONNECT=lambda h: d))
        self.assertIsNone(conn.greeting)
        self.assertEqual(conn.transport.value(), b"")
        self.assertEqual(conn.handler.names(), ["CONNECT"])
        d.callback(None)
        replies = conn.replies()
        self.assertEqual([r.code for r in replies], [220])
        self.assertTrue(replies[0].lines[0].startswith(HOSTNAME))
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_asyncGreetingEarlyTalkerAllowed(self) -> None:
        """
        With enforceSync off, commands sent before an asynchronous greeting
        are answered after it, in order.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(CONNECT=lambda h: d), enforceSync=False)
        conn.send(b"NOOP\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertEqual(conn.handler.names(), ["CONNECT"])
        d.callback(None)
        self.assertEqual([r.code for r in conn.replies()], [220, 250])


class HookErrorTests(SynchronousTestCase):
    """
    What the client gets when a hook fails, and what is logged.
    """

    def assertLoggedFailure(self, conn: SMTPTestConnection) -> None:
        """
        A failure event naming the session id was logged.
        """
        events = failureEvents(conn)
        self.assertTrue(events, conn.log.events)
        self.assertTrue(
            any(conn.session.id in formatEvent(e) for e in events),
            [formatEvent(e) for e in events],
        )

    def test_hookRaises(self) -> None:
        """
        A raising hook: 451 4.3.0 without the exception text, logged with
        the session id, and the session goes on.
        """
        conn = connect(recorderFactory(NOOP=raiser))
        before = len(conn.transport.value())
        reply = conn.command("NOOP")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        written = conn.transport.value()[before:]
        self.assertNotIn(b"secret", written)
        self.assertNotIn(b"Traceback", written)
        self.assertLoggedFailure(conn)
        self.assertEqual(conn.command("EHLO client.example").code, 250)
        self.assertFalse(conn.closed)

    def test_deferredFails(self) -> None:
        """
        A failing Deferred: 451 4.3.0, logged.
        """
        conn = connect(recorderFactory(NOOP=lambda h: fail(RuntimeError("boom"))))
        reply = conn.command("NOOP")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertLoggedFailure(conn)

    def test_deferredFailsLater(self) -> None:
        """
        A Deferred that fails after a while: 451 4.3.0, logged.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(MAIL=lambda h, s, p: d))
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\n")
        d.errback(RuntimeError("later"))
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertLoggedFailure(conn)
        self.assertIsNone(conn.session.transaction)

    def test_coroutineRaises(self) -> None:
        """
        An C{async def} hook that raises: 451 4.3.0.
        """

        class Handler(ESMTPHandler):
            async def NOOP(self) -> None:
                raise ValueError("bad")

        conn = connect(Handler)
        self.assertEqual(conn.command("NOOP").code, 451)

    def test_replyError(self) -> None:
        """
        ReplyError sends its reply (not logged as a failure).
        """

        def refuse(handler: Recorder, sender: str, params: Any) -> None:
            raise ReplyError(550, "5.7.1 Not from you")

        conn = connect(recorderFactory(MAIL=refuse))
        conn.command("EHLO client.example")
        reply = conn.command("MAIL FROM:<a@example.org>")
        self.assertEqual(reply, Reply(550, "Not from you", enhanced="5.7.1"))
        self.assertEqual(failureEvents(conn), [])
        self.assertIsNone(conn.session.transaction)

    def test_replyErrorInDeferred(self) -> None:
        """
        A Deferred failing with ReplyError sends its reply.
        """
        conn = connect(
            recorderFactory(VRFY=lambda h, a: fail(ReplyError(Reply(550, "nope"))))
        )
        reply = conn.command("VRFY x")
        self.assertEqual((reply.code, reply.text), (550, "nope"))

    def test_badReturnValue(self) -> None:
        """
        A hook returning something that is not a reply: 451 4.3.0, logged.
        """
        for bad in ("hello", 42, (), (999, "x"), ("250", "x"), object()):
            conn = connect(recorderFactory(NOOP=lambda h, bad=bad: bad))
            reply = conn.command("NOOP")
            self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"), bad)
            self.assertLoggedFailure(conn)
            self.assertEqual(conn.command("EHLO client.example").code, 250)

    def test_bodyRaises(self) -> None:
        """
        BODY raising: ABORT at once, EOM never, 451 after the end of data,
        and the next transaction works.
        """
        conn = connect(recorderFactory(BODY=raiser))
        startData(self, conn)
        conn.send(b"Subject: s\r\n\r\nfirst part\r\n")
        self.assertIn("ABORT", conn.handler.names())
        self.assertEqual(conn.replies(), [])
        conn.send(b"MAIL FROM:<not-a-command@example.org>\r\nmore\r\n")
        self.assertEqual(conn.replies(), [])
        conn.send(b".\r\n")
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertNotIn("EOM", conn.handler.names())
        self.assertEqual(conn.handler.names().count("BODY"), 1)
        self.assertEqual(conn.handler.names().count("ABORT"), 1)
        self.assertLoggedFailure(conn)
        self.assertIsNone(conn.session.transaction)
        conn.handler.behaviour.clear()
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)
        self.assertEqual(conn.command("RCPT TO:<b@example.net>").code, 250)
        self.assertEqual(conn.sendMessage(b"\r\nok\r\n").code, 250)
        self.assertEqual(conn.handler.names().count("EOM"), 1)

    def test_headerReplyError(self) -> None:
        """
        HEADER raising ReplyError: no more content hooks, ABORT, that reply
        after the end of data.
        """

        def header(handler: Recorder, name: str, value: str) -> None:
            if name == "X-Spam":
                raise ReplyError(550, "5.7.1 Spam")

        conn = connect(recorderFactory(HEADER=header))
        startData(self, conn)
        conn.send(b"X-Spam: yes\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
        [reply] = conn.replies()
        self.assertEqual(reply, Reply(550, "Spam", enhanced="5.7.1"))
        names = conn.handler.names()
        self.assertEqual(names.count("HEADER"), 1)
        self.assertNotIn("EOH", names)
        self.assertNotIn("BODY", names)
        self.assertNotIn("EOM", names)
        self.assertIn("ABORT", names)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_eohRaises(self) -> None:
        """
        EOH raising: message refused with 451, BODY and EOM not called.
        """
        conn = connect(recorderFactory(EOH=raiser))
        startData(self, conn)
        conn.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
        [reply] = conn.replies()
        self.assertEqual(reply.code, 451)
        names = conn.handler.names()
        self.assertNotIn("BODY", names)
        self.assertNotIn("EOM", names)
        self.assertIn("ABORT", names)

    def test_eomRaises(self) -> None:
        """
        EOM raising: 451, the transaction is over.
        """
        conn = connect(recorderFactory(EOM=raiser))
        startData(self, conn)
        conn.send(b"\r\nbody\r\n.\r\n")
        self.assertEqual(conn.replies()[0].code, 451)
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.command("MAIL FROM:<a@example.org>").code, 250)

    def test_hookTimeout(self) -> None:
        """
        A hook slower than hookTimeout: 451 4.3.0; the session goes on.
        """
        conn = connect(recorderFactory(NOOP=lambda h: Deferred()), hookTimeout=5)
        conn.send(b"NOOP\r\n")
        conn.clock.advance(4.9)
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(0.2)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertFalse(conn.closed)
        self.assertEqual(conn.command("EHLO client.example").code, 250)

    def test_hookTimeoutReported(self) -> None:
        """
        A timed-out hook is answered with the timeout reply and logged as a
        timeout naming the session, not as a hook failure with a traceback.
        """
        conn = connect(recorderFactory(NOOP=lambda h: Deferred()), hookTimeout=5)
        conn.send(b"NOOP\r\n")
        conn.clock.advance(5)
        self.assertEqual(conn.replies(), [HOOK_TIMEOUT])
        messages = [formatEvent(e) for e in conn.log.events]
        self.assertTrue(
            any("timed out" in m and conn.session.id in m for m in messages),
            messages,
        )
        self.assertEqual(failureEvents(conn), [])

    def test_bodyTimeout(self) -> None:
        """
        A BODY hook that times out refuses the message (451 after the end of
        data) and ABORT is called.
        """
        conn = connect(recorderFactory(BODY=lambda h, c: Deferred()), hookTimeout=3)
        startData(self, conn)
        conn.send(b"\r\nbody\r\n.\r\nNOOP\r\n")
        self.assertEqual(conn.replies(), [])
        conn.clock.advance(3)
        self.assertEqual([r.code for r in conn.replies()], [451, 250])
        self.assertIn("ABORT", conn.handler.names())
        self.assertNotIn("EOM", conn.handler.names())

    def test_abortRaises(self) -> None:
        """
        ABORT raising is logged; RSET still answers 250.
        """
        conn = connect(recorderFactory(ABORT=raiser))
        openTransaction(self, conn)
        self.assertEqual(conn.command("RSET").code, 250)
        self.assertLoggedFailure(conn)
        self.assertIsNone(conn.session.transaction)


class LifeCycleTests(SynchronousTestCase):
    """
    disconnect, ABORT, DISCONNECT, timeouts and limits.
    """

    def test_disconnectFlag(self) -> None:
        """
        C{disconnect = True} set by a hook closes the connection after its
        reply.
        """

        def noop(handler: Recorder) -> Reply:
            handler.disconnect = True
            return Reply(250, "bye now")

        conn = connect(recorderFactory(NOOP=noop))
        conn.command("EHLO client.example")
        conn.send(b"NOOP\r\nRSET\r\n")
        self.assertEqual([r.text for r in conn.replies()], ["bye now"])
        self.assertTrue(conn.closed)
        self.assertNotIn("RSET", conn.handler.names())
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")

    def test_disconnectFlagAsync(self) -> None:
        """
        C{disconnect} set by an asynchronous hook closes after its reply.
        """
        d: Deferred[Any] = Deferred()

        def mail(handler: Recorder, sender: str, params: Any) -> Deferred[Any]:
            handler.disconnect = True
            return d

        conn = connect(recorderFactory(MAIL=mail))
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertFalse(conn.closed)
        d.callback((550, "go away"))
        self.assertEqual([r.code for r in conn.replies()], [550])
        self.assertTrue(conn.closed)

    def test_abortOnRset(self) -> None:
        """
        RSET mid-transaction calls ABORT before RSET.
        """
        conn = connect()
        openTransaction(self, conn)
        conn.command("RSET")
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "RSET"])

    def test_abortOnQuit(self) -> None:
        """
        QUIT mid-transaction: ABORT, QUIT, DISCONNECT.
        """
        conn = connect()
        openTransaction(self, conn)
        conn.command("QUIT")
        self.assertEqual(conn.handler.names()[-3:], ["ABORT", "QUIT", "DISCONNECT"])

    def test_abortOnDrop(self) -> None:
        """
        The client dropping mid-transaction: ABORT then DISCONNECT.
        """
        conn = connect()
        openTransaction(self, conn)
        conn.close()
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])

    def test_abortOnDropDuringData(self) -> None:
        """
        The client dropping in the middle of a message: ABORT, DISCONNECT,
        no EOM.
        """
        conn = connect()
        startData(self, conn)
        conn.send(b"Subject: s\r\n\r\npartial body")
        conn.close()
        names = conn.handler.names()
        self.assertEqual(names[-2:], ["ABORT", "DISCONNECT"])
        self.assertNotIn("EOM", names)

    def test_noAbortAfterEom(self) -> None:
        """
        After EOM the transaction is over: QUIT and the drop do not ABORT.
        """
        conn = connect()
        startData(self, conn)
        conn.send(b"\r\nhi\r\n.\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250])
        conn.command("RSET")
        conn.command("QUIT")
        self.assertNotIn("ABORT", conn.handler.names())
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")

    def test_disconnectOnce(self) -> None:
        """
        DISCONNECT is called exactly once, last, whatever closes the
        connection.
        """
        conn = connect()
        conn.command("QUIT")
        conn.close()
        conn.protocol.connectionLost()
        self.assertEqual(conn.handler.names().count("DISCONNECT"), 1)
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")

    def test_dropWhileHookPending(self) -> None:
        """
        A drop while a hook is pending: DISCONNECT only after that hook has
        finished, and still exactly once.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(NOOP=lambda h: d))
        conn.command("EHLO client.example")
        conn.send(b"NOOP\r\nRSET\r\n")
        conn.close()
        self.assertNotIn("DISCONNECT", conn.handler.names())
        d.callback(None)
        self.assertEqual(
            conn.handler.names(), ["CONNECT", "EHLO", "NOOP", "DISCONNECT"]
        )

    def test_dropWhileBodyPending(self) -> None:
        """
        A drop while BODY is pending: ABORT and DISCONNECT once BODY has
        finished.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(BODY=lambda h, c: d))
        startData(self, conn)
        conn.send(b"\r\nsome body")
        conn.close()
        self.assertEqual(conn.handler.names()[-1], "BODY")
        d.callback(None)
        self.assertEqual(conn.handler.names()[-3:], ["BODY", "ABORT", "DISCONNECT"])
        self.assertEqual(conn.handler.names().count("DISCONNECT"), 1)
        self.assertNotIn("EOM", conn.handler.names())

    def test_dropWhileMailPending(self) -> None:
        """
        A drop while MAIL is pending: if MAIL then accepts, the new
        transaction is aborted before DISCONNECT.
        """
        d: Deferred[Any] = Deferred()
        conn = connect(recorderFactory(MAIL=lambda h, s, p: d))
        conn.command("EHLO client.example")
        conn.send(b"MAIL FROM:<a@example.org>\r\n")
        conn.close()
        d.callback(None)
        self.assertEqual(conn.handler.names()[-3:], ["MAIL", "ABORT", "DISCONNECT"])

    def test_dropWhileHookNeverAnswers(self) -> None:
        """
        A drop while a hook hangs: DISCONNECT once the hook times out.
        """
        conn = connect(recorderFactory(NOOP=lambda h: Deferred()), hookTimeout=5)
        conn.send(b"NOOP\r\n")
        conn.close()
        self.assertNotIn("DISCONNECT", conn.handler.names())
        conn.clock.advance(5)
        self.assertEqual(conn.handler.names(), ["CONNECT", "NOOP", "DISCONNECT"])

    def test_reply421Closes(self) -> None:
        """
        A 421 from a hook closes the connection: pipelined commands are not
        run, the transaction is aborted, DISCONNECT is called once.
        """
        conn = connect(recorderFactory(RCPT=lambda h, r, p: (421, "4.7.0 go away")))
        conn.command("EHLO client.example")
        conn.command("MAIL FROM:<a@example.org>")
        conn.send(b"RCPT TO:<b@example.net>\r\nNOOP\r\n")
        self.assertEqual([r.code for r in conn.replies()], [421])
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names()[-3:], ["RCPT", "ABORT", "DISCONNECT"])
        self.assertNotIn("NOOP", conn.handler.names())

    def test_disconnectFlagInEom(self) -> None:
        """
        C{disconnect} set in EOM closes after the EOM reply; no ABORT.
        """

        def eom(handler: Recorder) -> None:
            handler.disconnect = True

        conn = connect(recorderFactory(EOM=eom))
        startData(self, conn)
        conn.send(b"\r\nbody\r\n.\r\nNOOP\r\n")
        self.assertEqual([r.code for r in conn.replies()], [250])
        self.assertTrue(conn.closed)
        self.assertNotIn("ABORT", conn.handler.names())
        self.assertEqual(conn.handler.names()[-2:], ["EOM", "DISCONNECT"])

    def test_eomRefusedNoAbort(self) -> None:
        """
        An EOM that refuses the message ends the transaction without ABORT
        (EOM was called) and counts no message.
        """
        conn = connect(recorderFactory(EOM=lambda h: (554, "5.6.0 rejected")))
        startData(self, conn)
        conn.send(b"\r\nbody\r\n.\r\n")
        self.assertEqual([r.code for r in conn.replies()], [554])
        self.assertIsNone(conn.session.transaction)
        self.assertEqual(conn.session.messages, 0)
        conn.command("QUIT")
        self.assertNotIn("ABORT", conn.handler.names())

    def test_messageSizeRecorded(self) -> None:
        """
        The transaction's size is the number of message bytes (headers and
        body, after unstuffing); accepted messages are counted.
        """
        sizes: list[int] = []
        conn = connect(
            recorderFactory(EOM=lambda h: sizes.append(h.session.transaction.size))
        )
        startData(self, conn)
        conn.send(b"Subject: s\r\n\r\n..body\r\n.\r\n")
        self.assertEqual(conn.replies()[0].code, 250)
        self.assertEqual(sizes, [len(b"Subject: s\r\n\r\n.body\r\n")])
        self.assertEqual(conn.session.messages, 1)

    def test_idleTimeoutDuringData(self) -> None:
        """
        A client that stops in the middle of a message gets 421 4.4.2; the
        transaction is aborted, EOM never called.
        """
        conn = connect(idleTimeout=30)
        startData(self, conn)
        conn.send(b"Subject: s\r\n\r\nhalf a bo")
        conn.clock.advance(30)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"))
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])
        self.assertNotIn("EOM", conn.handler.names())

    def test_idleTimeout(self) -> None:
        """
        A silent client gets 421 4.4.2 after idleTimeout and is dropped;
        activity restarts the timer.
        """
        conn = connect(idleTimeout=30)
        conn.clock.advance(20)
        conn.command("NOOP")
        conn.clock.advance(20)
        self.assertEqual(conn.replies(), [])
        self.assertFalse(conn.closed)
        conn.clock.advance(10)
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"))
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names()[-1], "DISCONNECT")

    def test_idleTimeoutInTransaction(self) -> None:
        """
        An idle timeout mid-transaction calls ABORT then DISCONNECT.
        """
        conn = connect(idleTimeout=30)
        openTransaction(self, conn)
        conn.clock.advance(30)
        self.assertEqual(conn.replies()[0].code, 421)
        self.assertEqual(conn.handler.names()[-2:], ["ABORT", "DISCONNECT"])

    def test_longCommandLine(self) -> None:
        """
        An over-long command line: 500 5.5.6, and the next command in the
        same read is answered; nothing inside the long line is executed.
        """
        conn = connect(maxLineLength=510)
        conn.command("EHLO client.example")
        long = b"NOOP " + b"x" * 600 + b"RSET\r\n"
        conn.send(long + b"HELP\r\n")
        replies = conn.replies()
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(500, "5.5.6"), (214, "2.0.0")]
        )
        self.assertNotIn("RSET", conn.handler.names())
        self.assertNotIn("NOOP", conn.handler.names())
        self.assertFalse(conn.closed)

    def test_longCommandLineSplit(self) -> None:
        """
        An over-long command line split over reads at any point: exactly one
        500, then the next command; no fragment executed.
        """
        data = b"MAIL FROM:<" + b"a" * 600 + b"QUIT\r\nNOOP\r\n"
        for i in range(1, len(data)):
            conn = connect(maxLineLength=510)
            conn.command("EHLO client.example")
            conn.send(data[:i])
            conn.send(data[i:])
            codes = [r.code for r in conn.replies()]
            self.assertEqual(codes, [500, 250], i)
            self.assertNotIn("QUIT", conn.handler.names(), i)
            self.assertNotIn("MAIL", conn.handler.names(), i)

    def test_lineLengthBoundary(self) -> None:
        """
        A line of exactly maxLineLength bytes (without CRLF) is accepted;
        one byte more is not.
        """
        conn = connect(maxLineLength=510)
        conn.command("EHLO client.example")
        exact = "VRFY " + "a" * 505
        self.assertEqual(conn.command(exact).code, 252)
        self.assertEqual(conn.command(exact + "a").code, 500)
        self.assertEqual(conn.command("NOOP").code, 250)

    def test_longHeaderLine(self) -> None:
        """
        An over-long header line refuses the message with 552 after the end
        of data; nothing before the real end of data is a command.
        """
        conn = connect(maxHeaderSize=100)
        startData(self, conn)
        conn.send(
            b"Subject: " + b"x" * 300 + b"\r\nQUIT\r\n\r\nMAIL FROM:<a@example.org>\r\n"
        )
        self.assertEqual(conn.replies(), [])
        self.assertIn("ABORT", conn.handler.names())
        conn.send(b"more body\r\n.\r\nNOOP\r\n")
        replies = conn.replies()
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(552, "5.3.4"), (250, "2.0.0")]
        )
        names = conn.handler.names()
        self.assertNotIn("QUIT", names)
        self.assertNotIn("EOM", names)
        self.assertEqual(names.count("MAIL"), 1)
        self.assertFalse(conn.closed)

    def test_longHeaderLineSplit(self) -> None:
        """
        The over-long header case gives the same result however the bytes
        are split in two reads.
        """
        data = b"A: b\r\nX: " + b"y" * 150 + b"\r\nQUIT\r\n.\r\nNOOP\r\n"
        for i in range(1, len(data)):
            conn = connect(maxHeaderSize=100)
            startData(self, conn)
            conn.send(data[:i])
            conn.send(data[i:])
            replies = [(r.code, r.enhanced) for r in conn.replies()]
            self.assertEqual(replies, [(552, "5.3.4"), (250, "2.0.0")], i)
            self.assertNotIn("QUIT", conn.handler.names(), i)

    def test_messageOneByteTooBig(self) -> None:
        """
        One byte over maxMessageSize is refused.
        """
        message = b"Subject: ok\r\n\r\n" + b"z" * 84 + b"\r\n"
        self.assertEqual(len(message), 101)
        conn = connect(maxMessageSize=100)
        openTransaction(self, conn)
        self.assertEqual(conn.sendMessage(message).code, 552)
        self.assertNotIn("EOM", conn.handler.names())

    def test_longHeaderLineJustBeforeEnd(self) -> None:
        """
        An over-long header line directly followed by the terminator ends
        the message there.
        """
        conn = connect(maxHeaderSize=100)
        startData(self, conn)
        conn.send(b"X: " + b"y" * 200 + b"\r\n.\r\nNOOP\r\n")
        self.assertEqual([r.code for r in conn.replies()], [552, 250])

    def test_headerSectionTooBig(self) -> None:
        """
        Many short headers over maxHeaderSize: 552 after the end of data.
        """
        conn = connect(maxHeaderSize=200)
        startData(self, conn)
        headers = b"".join(b"X-H%d: value\r\n" % i for i in range(40))
        conn.send(headers + b"\r\nbody\r\n.\r\n")
        [reply] = conn.replies()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"))
        self.assertNotIn("EOM", conn.handler.names())

    def test_messageTooBig(self) -> None:
        """
        A message over maxMessageSize: 552 5.3.4 after the end of data, EOM
        not called, ABORT called, and the next command is answered.
        """
        conn = connect(maxMessageSize=100)
        startData(self, conn)
        conn.send(b"Subject: big\r\n\r\n")
        for _ in range(10):
            conn.send(b"y" * 48 + b"\r\n")
        self.assertEqual(conn.replies(), [])
        self.assertIn("ABORT", conn.handler.names())
        conn.send(b".\r\nNOOP\r\n")
        replies = conn.replies()
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(552, "5.3.4"), (250, "2.0.0")]
        )
        self.assertNotIn("EOM", conn.handler.names())
        self.assertLessEqual(len(conn.handler.body()), 100)
        self.assertEqual(conn.handler.names().count("ABORT"), 1)

    def test_messageAtLimit(self) -> None:
        """
        A message of exactly maxMessageSize bytes is accepted.
        """
        message = b"Subject: ok\r\n\r\n" + b"z" * 83 + b"\r\n"
        self.assertEqual(len(message), 100)
        conn = connect(maxMessageSize=100)
        openTransaction(self, conn)
        self.assertEqual(conn.sendMessage(message).code, 250)
        self.assertEqual(conn.session.messages, 1)


class ConnectTests(SynchronousTestCase):
    """
    CONNECT refusing service, and handler factories that fail.
    """

    def test_connect554(self) -> None:
        """
        CONNECT 554: every command but QUIT gets 503, QUIT works.
        """
        conn = connect(recorderFactory(CONNECT=lambda h: (554, "no service")))
        self.assertEqual(greetingOf(conn).code, 554)
        self.assertTrue(conn.transport.value().startswith(b"554 no service"))
        for line in ("EHLO client.example", "MAIL FROM:<a@example.org>", "NOOP"):
            self.assertEqual(conn.command(line).code, 503, line)
        self.assertEqual(conn.handler.names(), ["CONNECT"])
        self.assertEqual(conn.command("QUIT").code, 221)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names(), ["CONNECT", "QUIT", "DISCONNECT"])

    def test_connect421(self) -> None:
        """
        CONNECT 421: the greeting is sent and the connection closed.
        """
        conn = connect(recorderFactory(CONNECT=lambda h: (421, "busy")))
        self.assertEqual(greetingOf(conn).code, 421)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.handler.names(), ["CONNECT", "DISCONNECT"])

    def test_connectRaises(self) -> None:
        """
        CONNECT raising: the greeting is one RFC 5321 allows for a server
        that cannot serve (554, or 421 and close; section 3.1 and 4.3.2
        allow no other greeting codes), with no traceback; the failure is
        logged; QUIT still works.
        """
        conn = connect(recorderFactory(CONNECT=raiser))
        greeting = greetingOf(conn)
        self.assertIn(greeting.code, (421, 554), greeting)
        self.assertNotIn(b"secret", conn.transport.value())
        self.assertTrue(failureEvents(conn))
        if greeting.code == 554:
            self.assertEqual(conn.command("EHLO client.example").code, 503)
            self.assertEqual(conn.command("QUIT").code, 221)
        self.assertTrue(conn.closed)

    def test_connectTimesOut(self) -> None:
        """
        A CONNECT slower than hookTimeout: an allowed greeting code too.
        """
        conn = connect(recorderFactory(CONNECT=lambda h: Deferred()), hookTimeout=5)
        self.assertIsNone(conn.greeting)
        conn.clock.advance(5)
        [greeting] = conn.replies()
        self.assertIn(greeting.code, (421, 554), greeting)

    def test_factoryRaises(self) -> None:
        """
        A handler factory that raises: 421 and close, no traceback to the
        client, the failure is logged.
        """

        def broken() -> Any:
            raise RuntimeError("secret factory failure")

        conn = connect(broken)
        output = conn.transport.value()
        self.assertTrue(output.startswith(b"421 "), output)
        self.assertEqual(output.count(b"\r\n"), 1)
        self.assertNotIn(b"secret", output)
        self.assertNotIn(b"Traceback", output)
        self.assertTrue(conn.closed)
        self.assertTrue(failureEvents(conn))

    def test_factoryReturnsNonHandler(self) -> None:
        """
        A factory returning something that is not an IESMTPHandler: 421.
        """
        conn = connect(lambda: object())
        self.assertTrue(conn.transport.value().startswith(b"421 "))
        self.assertTrue(conn.closed)

    def test_oneHandlerPerConnection(self) -> None:
        """
        The factory is called once per connection.
        """
        built: list[Recorder] = []

        def factory() -> Recorder:
            handler = Recorder()
            built.append(handler)
            return handler

        first, second = connect(factory), connect(factory)
        self.assertEqual(len(built), 2)
        self.assertIs(first.handler, built[0])
        self.assertIs(second.handler, built[1])
        self.assertIsNot(first.session, second.session)
        self.assertNotEqual(first.session.id, second.session.id)


def test_dotStuffRoundTrip() -> None:
    """
    A message that contains the terminator sequence itself arrives intact
    when dot-stuffed.
    """
    message = b"Subject: t\r\n\r\nbefore\r\n.\r\nafter\r\n"
    conn = connect()
    conn.command("EHLO c.example")
    conn.command("MAIL FROM:<a@example.org>")
    conn.command("RCPT TO:<b@example.net>")
    conn.command("DATA")
    conn.send(dotStuff(message))
    assert [r.code for r in conn.replies()] == [250]
    assert conn.handler.body() == b"before\r\n.\r\nafter\r\n"
