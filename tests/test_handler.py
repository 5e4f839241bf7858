"""
Tests for L{esmtpkit.handler.ESMTPHandler} (the default replies, called
directly) and the built-in L{Sink}, against L{IESMTPHandler}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from esmtpkit import ESMTPHandler, IESMTPHandler, Reply, Session
from esmtpkit.handler import defaultReply
from esmtpkit.handlers import Sink
from esmtpkit.session import Params
from esmtpkit.settings import Settings
from esmtpkit.smtp.command import parseParams
from esmtpkit.smtp.params import checkMailParams, checkRcptParams

HOOKS_WITHOUT_REPLY = ("HEADER", "EOH", "BODY", "ABORT", "DISCONNECT")

SETTINGS = Settings(hostname="mx.example.test")


def mailParams(text: str) -> Params:
    """
    MAIL parameters parsed and checked as the protocol does (after EHLO).
    """
    return checkMailParams(parseParams(text), SETTINGS, True)


def rcptParams(text: str) -> Params:
    """
    RCPT parameters parsed and checked as the protocol does (after EHLO).
    """
    return checkRcptParams(parseParams(text), SETTINGS, True, False)


def makeHandler(cls: type[ESMTPHandler] = ESMTPHandler) -> Any:
    """
    A handler with a session, as esmtpkit sets it up (typed L{Any}: the
    hooks are declared to return any kind of hook result, these tests look
    at the actual replies).
    """
    handler = cls()
    handler.session = Session(
        hostname="mx.example.test", peer=IPv4Address("TCP", "192.0.2.7", 1234)
    )
    handler.disconnect = False
    return handler


class InterfaceTests(SynchronousTestCase):
    """
    The base class and Sink provide L{IESMTPHandler}.
    """

    def test_verifyESMTPHandler(self) -> None:
        """
        An ESMTPHandler with a session passes verifyObject.
        """
        self.assertTrue(verifyObject(IESMTPHandler, makeHandler()))
        self.assertTrue(verifyClass(IESMTPHandler, ESMTPHandler))

    def test_verifySink(self) -> None:
        """
        Sink passes verifyObject.
        """
        self.assertTrue(verifyObject(IESMTPHandler, makeHandler(Sink)))
        self.assertTrue(IESMTPHandler.implementedBy(Sink))

    def test_everyHookDeclared(self) -> None:
        """
        The interface declares all twenty-one hooks (the seventeen of the
        seed, ABORT and DISCONNECT, and STARTTLS and AUTH for issue 5) and
        the two attributes.
        """
        names = set(IESMTPHandler.names())
        hooks = {
            "CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "HEADER", "EOH",
            "BODY", "EOM", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT",
            "UNKNOWN", "ABORT", "DISCONNECT", "STARTTLS", "AUTH",
        }  # fmt: skip
        self.assertEqual(names, hooks | {"session", "disconnect"})

    def test_disconnectDefault(self) -> None:
        """
        C{disconnect} is false unless a hook sets it.
        """
        self.assertFalse(ESMTPHandler().disconnect)


class DefaultReplyTests(SynchronousTestCase):
    """
    The default reply of each hook, word for word where the seed gives it.
    """

    def setUp(self) -> None:
        self.handler = makeHandler()

    def test_connect(self) -> None:
        """
        220 with the hostname first.
        """
        self.assertEqual(
            self.handler.CONNECT(), Reply(220, "mx.example.test ESMTP Mail Server")
        )

    def test_hello(self) -> None:
        """
        HELO and EHLO: 250, hostname first, naming the client and its
        address.
        """
        for hook in (self.handler.HELO, self.handler.EHLO):
            reply = hook("client.example")
            self.assertEqual(reply.code, 250)
            self.assertEqual(reply.lines[0].split()[0], "mx.example.test")
            self.assertIn("client.example", reply.text)
            self.assertIn("192.0.2.7", reply.text)

    def test_mail(self) -> None:
        """
        MAIL: 250 2.1.0 naming the sender; parameters that esmtpkit.smtp.params
        marked unknown get 555 5.5.4 naming the first of them, known ones
        are accepted.
        """
        reply = self.handler.MAIL("a@example.org", mailParams("SIZE=10 BODY=8BITMIME"))
        self.assertEqual((reply.code, reply.enhanced), (250, "2.1.0"))
        self.assertIn("a@example.org", reply.text)
        reply = self.handler.MAIL("a@example.org", mailParams("SIZE=10 XFOO"))
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("XFOO", reply.text)
        self.assertNotIn("SIZE", reply.text)

    def test_mailPlainDict(self) -> None:
        """
        Only C{Params.unknown} decides what is unknown: a plain dict (never
        checked by esmtpkit.smtp.params) is accepted whatever its keys.
        """
        reply = self.handler.MAIL("a@example.org", {"XFOO": None})
        self.assertEqual((reply.code, reply.enhanced), (250, "2.1.0"))

    def test_rcpt(self) -> None:
        """
        RCPT: 250 2.1.5 naming the recipient; DSN parameters are accepted,
        unknown ones get 555 5.5.4 naming the parameter.
        """
        reply = self.handler.RCPT("b@example.net", rcptParams(""))
        self.assertEqual((reply.code, reply.enhanced), (250, "2.1.5"))
        self.assertIn("b@example.net", reply.text)
        reply = self.handler.RCPT("b@example.net", rcptParams("NOTIFY=NEVER"))
        self.assertEqual(reply.code, 250)
        reply = self.handler.RCPT("b@example.net", rcptParams("NOTIFY=NEVER XBAR=1"))
        self.assertEqual((reply.code, reply.enhanced), (555, "5.5.4"))
        self.assertIn("XBAR", reply.text)

    def test_data(self) -> None:
        """
        DATA: 354 with the seed's text.
        """
        self.assertEqual(
            self.handler.DATA(),
            Reply(354, 'Enter mail, end with "." on a line by itself'),
        )

    def test_eom(self) -> None:
        """
        EOM: 250 2.0.0 "Message accepted for delivery", with the
        transaction id when there is one.
        """
        reply = self.handler.EOM()
        self.assertEqual(
            reply, Reply(250, "Message accepted for delivery", enhanced="2.0.0")
        )
        transaction = self.handler.session.newTransaction("a@example.org", {})
        self.handler.session.transaction = transaction
        reply = self.handler.EOM()
        self.assertEqual(
            reply.text, f"Message accepted for delivery as {transaction.id}"
        )

    def test_vrfy(self) -> None:
        """
        VRFY: 252 "Cannot VRFY user; try RCPT to attempt delivery".
        """
        reply = self.handler.VRFY("someone")
        self.assertEqual(
            (reply.code, reply.text),
            (252, "Cannot VRFY user; try RCPT to attempt delivery"),
        )

    def test_expn(self) -> None:
        """
        EXPN: 502 with the seed's text.
        """
        reply = self.handler.EXPN("list")
        self.assertEqual(
            (reply.code, reply.text), (502, "Sorry we don't allow this operation")
        )

    def test_simpleReplies(self) -> None:
        """
        RSET and NOOP: 250 OK; QUIT: 221 "Closing connection"; HELP: 214.
        """
        self.assertEqual(self.handler.RSET(), Reply(250, "OK", enhanced="2.0.0"))
        self.assertEqual(self.handler.NOOP(), Reply(250, "OK", enhanced="2.0.0"))
        self.assertEqual(
            self.handler.QUIT(), Reply(221, "Closing connection", enhanced="2.0.0")
        )
        self.assertEqual(self.handler.HELP(None).code, 214)
        self.assertEqual(self.handler.HELP("MAIL").code, 214)

    def test_unknown(self) -> None:
        """
        UNKNOWN: 500 naming the command, without control characters and
        cut to a sane length.
        """
        reply = self.handler.UNKNOWN("XYZZY \x1b[31m" + "x" * 500)
        self.assertEqual(reply.code, 500)
        self.assertIn("XYZZY", reply.text)
        self.assertNotIn("\x1b", reply.text)
        self.assertLess(len(reply.text), 200)

    def test_noReplyHooks(self) -> None:
        """
        HEADER, EOH, BODY, ABORT and DISCONNECT return None.
        """
        self.assertIsNone(self.handler.HEADER("Subject", "x"))
        self.assertIsNone(self.handler.EOH())
        self.assertIsNone(self.handler.BODY(b"chunk"))
        self.assertIsNone(self.handler.ABORT())
        self.assertIsNone(self.handler.DISCONNECT())

    def test_defaultReply(self) -> None:
        """
        L{defaultReply} gives the base class reply even for a subclass that
        overrides the hook.
        """

        class Custom(ESMTPHandler):
            def NOOP(self) -> Reply:
                return Reply(250, "custom")

        handler = makeHandler(Custom)
        self.assertEqual(
            defaultReply("NOOP", handler, ()), Reply(250, "OK", enhanced="2.0.0")
        )
        self.assertEqual(defaultReply("VRFY", handler, ("x",)).code, 252)


class SinkTests(SynchronousTestCase):
    """
    Sink accepts everything.
    """

    def test_acceptsEverything(self) -> None:
        """
        Sender, recipient, data and message are all accepted.
        """
        sink = makeHandler(Sink)
        self.assertEqual(sink.MAIL("a@example.org", {"SIZE": "1"}).code, 250)
        self.assertEqual(sink.RCPT("b@example.net", {}).code, 250)
        self.assertEqual(sink.DATA().code, 354)
        self.assertIsNone(sink.BODY(b"x" * 100))
        self.assertEqual(sink.EOM().code, 250)
